//! `egress-agent spf check` against a real DNS server (dnsmasq in the lab's internet-host
//! namespace): a good record, a broken one, an egress IP the record misses and without PTR, a
//! PTR that does not resolve back, no record, and more than 10 DNS lookups.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{net::Ipv4Addr, process::Stdio};

use egress_tests::{
    agent::agent_binary,
    dns::{DnsServer, Record},
    lab::{command_in, require_root, Lab, LabSpec, INTERNET_HOST},
};
use serde_json::Value;

const D: &str = "x.example";
const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const EXTRA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// A lab with only the internet host and one node, and dnsmasq on the internet host serving
/// `records` for `x.example`.
fn dns(records: &[Record]) -> (Lab, DnsServer) {
    require_root();
    let lab = Lab::up(&LabSpec {
        workers: 0,
        pods_per_node: 0,
        ..LabSpec::default()
    })
    .expect("lab up");
    let server = DnsServer::start(&lab.internet().ns, INTERNET_HOST, &[D], records, &lab.dir())
        .expect("dnsmasq");
    (lab, server)
}

/// Runs `egress-agent spf check --domain x.example --egress-ip ... --json` from the internet
/// host against the lab's DNS server: (exit success, report).
fn check(lab: &Lab, server: &DnsServer, ips: &[Ipv4Addr]) -> (bool, Value) {
    let mut c = command_in(&lab.internet().ns, agent_binary()).expect("netns");
    c.args(["spf", "check", "--json", "--domain", D, "--dns-server"])
        .arg(server.socket_addr().to_string());
    for ip in ips {
        c.arg("--egress-ip").arg(ip.to_string());
    }
    let out = c.stdin(Stdio::null()).output().expect("run egress-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {stdout}\nstderr {}\ndns log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        )
    });
    (out.status.success(), report)
}

fn ip_report(report: &Value, ip: Ipv4Addr) -> &Value {
    report["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .find(|c| c["ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("no result for {ip} in {report:#}"))
}

fn problems(report: &Value) -> String {
    report["problems"].to_string()
}

#[test]
fn spf_check_good_record_with_include_a_and_mx() {
    let (lab, server) = dns(&[
        Record::txt(D, "v=spf1 a:mail.x.example mx include:_spf.x.example ~all"),
        Record::txt("_spf.x.example", "v=spf1 ip4:192.0.2.100 -all"),
        Record::mx(D, "mx.x.example", 10),
        Record::host("mx.x.example", Ipv4Addr::new(198, 51, 100, 25)),
        Record::host("mail.x.example", GW),
        Record::host("out.x.example", EXTRA),
    ]);
    let (ok, r) = check(&lab, &server, &[GW, EXTRA]);
    assert!(ok, "the check fails: {r:#}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["lookups"]["total"], 3, "a, mx, include: {r:#}");
    for (ip, name) in [(GW, "mail.x.example"), (EXTRA, "out.x.example")] {
        let c = ip_report(&r, ip);
        assert_eq!(c["spf"], "pass", "{r:#}");
        assert_eq!(c["fcrdns"], "pass", "{r:#}");
        assert_eq!(c["ptr"], serde_json::json!([name]));
    }
    assert_eq!(r["suggested_record"], Value::Null);
}

#[test]
fn spf_check_broken_record_is_permerror_and_replaced() {
    let (lab, server) = dns(&[
        Record::txt(D, "v=spf1 ip4:192.0.2.10 ~al"),
        Record::host("mail.x.example", GW),
    ]);
    let (ok, r) = check(&lab, &server, &[GW]);
    assert!(!ok, "a broken record must fail the check: {r:#}");
    assert_eq!(ip_report(&r, GW)["spf"], "permerror", "{r:#}");
    assert!(problems(&r).contains("does not parse"), "{r:#}");
    assert_eq!(r["suggested_record"], "v=spf1 ip4:192.0.2.10 ~all");
}

#[test]
fn spf_check_uncovered_ip_without_ptr_gets_the_record_to_publish() {
    let (lab, server) = dns(&[
        Record::txt(D, "v=spf1 ip4:192.0.2.10 ~all"),
        Record::host("mail.x.example", GW),
    ]);
    let (ok, r) = check(&lab, &server, &[GW, EXTRA]);
    assert!(!ok, "{r:#}");
    let gw = ip_report(&r, GW);
    assert_eq!(
        (&gw["spf"], &gw["fcrdns"]),
        (&"pass".into(), &"pass".into())
    );
    let extra = ip_report(&r, EXTRA);
    assert_eq!(extra["spf"], "softfail", "{r:#}");
    assert_ne!(extra["fcrdns"], "pass", "{r:#}");
    assert_eq!(extra["ptr"], serde_json::json!([]));
    let p = problems(&r);
    assert!(p.contains("192.0.2.100 is not authorised"), "{p}");
    assert!(p.contains("192.0.2.100 has no PTR record"), "{p}");
    assert_eq!(
        r["suggested_record"],
        "v=spf1 ip4:192.0.2.100 ip4:192.0.2.10 ~all"
    );
}

#[test]
fn spf_check_ptr_that_does_not_resolve_back_fails_fcrdns() {
    let (lab, server) = dns(&[
        Record::txt(D, "v=spf1 ip4:192.0.2.10 ~all"),
        Record::ptr(GW, "liar.x.example"),
        Record::a("liar.x.example", Ipv4Addr::new(192, 0, 2, 99)),
    ]);
    let (ok, r) = check(&lab, &server, &[GW]);
    assert!(!ok, "{r:#}");
    let c = ip_report(&r, GW);
    assert_eq!(c["spf"], "pass");
    assert_eq!(c["ptr"], serde_json::json!(["liar.x.example"]));
    assert_eq!(c["fcrdns"], "fail", "{r:#}");
    assert!(
        problems(&r).contains("does not resolve back"),
        "{}",
        problems(&r)
    );
    // SPF is fine, so there is no record to publish.
    assert_eq!(r["suggested_record"], Value::Null);
}

#[test]
fn spf_check_no_record_at_all() {
    let (lab, server) = dns(&[Record::host("mail.x.example", GW)]);
    let (ok, r) = check(&lab, &server, &[GW]);
    assert!(!ok, "{r:#}");
    assert_eq!(r["published"]["state"], "none");
    assert_eq!(ip_report(&r, GW)["spf"], "none");
    assert_eq!(r["suggested_record"], "v=spf1 ip4:192.0.2.10 ~all");
}

#[test]
fn spf_check_more_than_ten_lookups_overflow() {
    // 4 include + 4 a + 3 mx = 11 DNS-querying terms before the ip4 that would match.
    let mut top = String::from("v=spf1");
    let mut records = Vec::new();
    for i in 1..=4 {
        top += &format!(" include:i{i}.x.example");
        records.push(Record::txt(&format!("i{i}.x.example"), "v=spf1 -all"));
    }
    for i in 1..=4 {
        top += &format!(" a:a{i}.x.example");
        records.push(Record::a(
            &format!("a{i}.x.example"),
            Ipv4Addr::new(198, 51, 100, 100 + i),
        ));
    }
    for i in 1..=3 {
        top += &format!(" mx:m{i}.x.example");
    }
    top += " ip4:192.0.2.10 ~all";
    records.push(Record::txt(D, &top));
    records.push(Record::host("mail.x.example", GW));
    let (lab, server) = dns(&records);
    let (ok, r) = check(&lab, &server, &[GW]);
    assert!(!ok, "{r:#}");
    assert_eq!(r["lookups"]["total"], 11, "{r:#}");
    // A receiver stops at the 11th lookup, before the ip4 term.
    assert_eq!(ip_report(&r, GW)["spf"], "permerror", "{r:#}");
    assert!(
        problems(&r).contains("needs 11 DNS lookups, more than the limit of 10"),
        "{}",
        problems(&r)
    );
}

#[test]
fn spf_check_without_live_policies_or_egress_ip_says_what_to_do() {
    let dir = std::env::temp_dir().join(format!("egw-spf-nopins-{}", std::process::id()));
    let out = std::process::Command::new(agent_binary())
        .args(["spf", "check", "--domain", D, "--pin-root"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run egress-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reading the live policies") && err.contains("--egress-ip"),
        "{err}"
    );
}
