//! The demo's whole flow (`cargo xtask demo`), asserted: real SMTP from every pod to the
//! internet host, SPF evaluated against the lab's DNS, before and after the agents start.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use egress_tests::{
    demo::{self, EGRESS_IP},
    lab::require_root,
};

#[test]
fn demo_mail_pods_pass_spf_after_the_agent_starts() {
    require_root();
    let mut out = Vec::new();
    let outcome = demo::run(&mut out, false).unwrap_or_else(|e| {
        panic!(
            "demo failed: {e:#}\noutput so far:\n{}",
            String::from_utf8_lossy(&out)
        )
    });
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    assert_eq!(outcome.rows.len(), 4, "{text}");
    for r in &outcome.rows {
        // Before: every pod leaves with its node's address; SPF names only the gateway's.
        assert_eq!(r.before.from_ip, r.node_ip, "{} before\n{text}", r.pod);
        let expected_before = if r.node_ip == EGRESS_IP {
            "pass"
        } else {
            "softfail"
        };
        assert_eq!(r.before.spf, expected_before, "{} before\n{text}", r.pod);
        if r.mail {
            // After: every mail pod leaves through the gateway with the egress IP.
            assert_eq!(r.after.from_ip, EGRESS_IP, "{} after\n{text}", r.pod);
            assert_eq!(r.after.spf, "pass", "{} after\n{text}", r.pod);
            assert!(
                r.after.received_spf.starts_with("Received-SPF: pass"),
                "{}",
                r.after.received_spf
            );
        } else {
            // The pod the policy leaves out keeps its node's address (and its softfail).
            assert_eq!(r.after.from_ip, r.node_ip, "{} after\n{text}", r.pod);
            assert_eq!(r.after.spf, "softfail", "{} after\n{text}", r.pod);
        }
    }
    let workers_softfailed = outcome
        .rows
        .iter()
        .filter(|r| r.mail && r.node != "gateway")
        .all(|r| r.before.spf == "softfail");
    assert!(workers_softfailed, "{text}");
    assert!(
        outcome.spf_check_ok,
        "spf check on the live policies failed:\n{}",
        outcome.spf_check_output
    );
    assert!(outcome.spf_check_output.contains("192.0.2.10       pass"));
    assert!(text.contains("== summary =="), "{text}");
    assert!(text.contains(&format!("Lab {} removed", outcome.lab_id)));
    let prefix = format!("{}{}-", egress_tests::lab::PREFIX, outcome.lab_id);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
}
