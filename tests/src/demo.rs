//! The demo: the problem and its fix, end to end, with real mail and real SPF.
//!
//! A lab with a gateway node and two workers, a mail pod on each node and one pod without the
//! mail policy. On the internet host: dnsmasq publishing the demo domain's SPF record
//! (`v=spf1 ip4:192.0.2.10 ~all`, the gateway node's address) with A/PTR/MX records for it,
//! and a real SMTP server (aiosmtpd's Maildir handler, which stamps each message with the peer
//! address it came from). Each pod sends a message with swaks, a real SMTP client; the receiving
//! side reads the peer address and evaluates SPF for it with mail-auth against the lab's DNS,
//! as a receiving MTA does. Before the agents run, the mail pods on the workers soft-fail;
//! after, every mail pod passes and the pod the policy leaves out still leaves with its node's
//! address.
//!
//! `run` is the whole story; `cargo xtask demo` prints it and `tests/tests/demo.rs` asserts
//! on what it returns.

use std::{
    fmt::Write as _,
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use egress_agent::spf::spf_word;
use mail_auth::{
    common::headers::HeaderWriter,
    hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    spf::verify::SpfParameters,
    MessageAuthenticator, Parameters, ReceivedSpf, SpfResult,
};

use crate::{
    agent::{agent_binary, Agent},
    dns::{DnsServer, Record},
    lab::{command_in, exec, in_netns, Lab, LabSpec, INTERNET_HOST},
};

/// The mail domain whose SPF record names the egress IP.
pub const DOMAIN: &str = "demo.example";
/// The egress IP: the gateway node's own address (the default egress IP).
pub const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The name the egress IP's PTR points at (and whose A record is the egress IP).
pub const MAIL_HOST: &str = "mail.demo.example";
/// Envelope sender of every message (the SPF MAIL FROM identity).
pub const SENDER: &str = "postfix@demo.example";
pub const RECIPIENT: &str = "postmaster@inbox.example";
/// The SPF record the domain publishes.
pub const SPF_RECORD: &str = "v=spf1 ip4:192.0.2.10 ~all";
/// The receiving host's name in Received-SPF headers.
const RECEIVER: &str = "mx.inbox.example";

/// The agents' configuration, embedded: policy "mail" through the gateway node, selecting the
/// mail pods by name. The only place the demo depends on the agent's configuration format.
pub const AGENT_CONFIG: &str = include_str!("demo-agent.yaml");

/// A pod of the demo: `(name, node, selected by the mail policy)`. Created in this order, so their
/// addresses are the ones in `AGENT_CONFIG`.
pub const PODS: [(&str, &str, bool); 4] = [
    ("mail-gateway", "gateway", true),
    ("mail-worker1", "worker1", true),
    ("mail-worker2", "worker2", true),
    ("web-worker1", "worker1", false),
];

/// One message as the receiving side saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The SMTP peer address the server recorded.
    pub from_ip: Ipv4Addr,
    /// SPF verdict for MAIL FROM `SENDER` from `from_ip`: `pass`, `softfail`, ...
    pub spf: String,
    /// The Received-SPF header a receiving MTA adds.
    pub received_spf: String,
}

/// One pod's story.
#[derive(Clone, Debug)]
pub struct Row {
    pub pod: String,
    pub pod_ip: Ipv4Addr,
    pub node: String,
    pub node_ip: Ipv4Addr,
    /// A mail pod: the policy selects it.
    pub mail: bool,
    pub before: Delivery,
    pub after: Delivery,
}

/// What the demo found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub lab_id: String,
    pub rows: Vec<Row>,
    /// `egress-agent spf check` on the live policies: exit status and output.
    pub spf_check_ok: bool,
    pub spf_check_output: String,
}

impl Outcome {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<14} {:<8} {:<6} | {:<13} {:<9} | {:<13} SPF",
            "POD", "NODE", "POLICY", "BEFORE: FROM", "SPF", "AFTER: FROM"
        );
        let _ = writeln!(s, "{}", "-".repeat(83));
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<14} {:<8} {:<6} | {:<13} {:<9} | {:<13} {}",
                r.pod,
                r.node,
                if r.mail { "mail" } else { "-" },
                r.before.from_ip,
                r.before.spf,
                r.after.from_ip,
                r.after.spf
            );
        }
        s
    }
}

/// The lab plus the demo's servers. Dropping it stops the servers and removes the lab.
pub struct DemoLab {
    pub lab: Lab,
    pub dns: DnsServer,
    pub records: Vec<Record>,
    smtp: SmtpServer,
    pub maildir: PathBuf,
}

impl DemoLab {
    /// Builds the lab (no agents yet) with its DNS and SMTP servers on the internet host.
    pub fn up() -> Result<DemoLab> {
        let mut lab = Lab::up(&LabSpec {
            workers: 2,
            pods_per_node: 0,
            ..LabSpec::default()
        })?;
        for (pod, node, _) in PODS {
            let p = lab.add_pod(node, pod)?;
            if !AGENT_CONFIG.contains(&format!("{},", p.ip)) {
                bail!(
                    "pod {pod} got address {} that the embedded agent configuration does not \
                     list for it",
                    p.ip
                );
            }
        }
        let inet = lab.internet().ns.clone();
        let records = vec![
            Record::txt(DOMAIN, SPF_RECORD),
            Record::mx(DOMAIN, MAIL_HOST, 10),
            Record::host(MAIL_HOST, EGRESS_IP),
        ];
        let dns = DnsServer::start(&inet, INTERNET_HOST, &[DOMAIN], &records, &lab.dir())?;
        let maildir = lab.dir().join("maildir");
        let smtp = start_smtp_server(&inet, &maildir, &lab.dir().join("smtpd.log"))?;
        Ok(DemoLab {
            lab,
            dns,
            records,
            smtp,
            maildir,
        })
    }

    /// Sends a message from `pod` with swaks and returns it as the receiver saw it.
    pub fn send(&self, pod: &str, tag: &str) -> Result<Delivery> {
        let p = self.lab.pod(pod);
        let id = format!("{tag}/{pod}");
        exec(
            &p.ns,
            &[
                "swaks",
                "--server",
                &INTERNET_HOST.to_string(),
                "--port",
                "25",
                "--ehlo",
                MAIL_HOST,
                "--from",
                SENDER,
                "--to",
                RECIPIENT,
                "--header",
                &format!("Subject: egress demo: {id}"),
                "--header",
                &format!("X-Demo-Id: {id}"),
                "--body",
                "Sent by a pod of the egress gateway demo.",
                "--timeout",
                "10",
                "--silent",
                "2",
            ],
        )
        .with_context(|| format!("swaks in {pod}"))?;
        let headers = self.wait_message(&id)?;
        let peer = header(&headers, "X-Peer")
            .with_context(|| format!("message {id} has no X-Peer header"))?;
        let from_ip = parse_peer(&peer).with_context(|| format!("X-Peer {peer:?}"))?;
        let mail_from = header(&headers, "X-MailFrom").unwrap_or_default();
        let (result, received_spf) = spf_verdict(
            &self.lab.internet().ns,
            self.dns.socket_addr(),
            from_ip,
            MAIL_HOST,
            &mail_from,
        )?;
        Ok(Delivery {
            from_ip,
            spf: spf_word(result).to_owned(),
            received_spf,
        })
    }

    /// Waits for the message with `X-Demo-Id: id` in the Maildir and returns its header block.
    fn wait_message(&self, id: &str) -> Result<String> {
        let start = Instant::now();
        let needle = format!("X-Demo-Id: {id}\n");
        loop {
            for e in fs::read_dir(self.maildir.join("new"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .replace("\r\n", "\n");
                let head = text.split("\n\n").next().unwrap_or_default().to_owned() + "\n";
                if head.contains(&needle) {
                    return Ok(head);
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("message {id} did not arrive in {}", self.maildir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the agent on every node from `AGENT_CONFIG` and waits until each has
    /// programmed its pods.
    pub fn start_agents(&self) -> Result<Vec<Agent>> {
        let cfg = self.lab.dir().join("agent.yaml");
        fs::write(&cfg, AGENT_CONFIG)?;
        let agents = self
            .lab
            .nodes()
            .iter()
            .map(|n| Agent::start(&self.lab, &n.name, &cfg))
            .collect::<Result<Vec<_>>>()?;
        for a in &agents {
            let pods = self.lab.pods().iter().filter(|p| p.node == a.node).count();
            a.wait_endpoints(pods, Duration::from_secs(30))?;
        }
        Ok(agents)
    }

    /// `egress-agent spf check` for the demo domain on the live policies of the gateway node,
    /// asking the lab's DNS server from the internet host: (succeeded, output).
    pub fn spf_check(&self) -> Result<(bool, String)> {
        let out = command_in(&self.lab.internet().ns, agent_binary())?
            .args(["spf", "check", "--domain", DOMAIN, "--dns-server"])
            .arg(self.dns.socket_addr().to_string())
            .arg("--pin-root")
            .arg(self.lab.pin_root("gateway"))
            .stdin(Stdio::null())
            .output()
            .context("running egress-agent spf check")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// Leaves the lab and its servers running (for `--keep`).
    pub fn keep(self) {
        let DemoLab { lab, dns, smtp, .. } = self;
        // Not killed: `cargo xtask lab down` kills whatever runs in the lab's namespaces.
        std::mem::forget(dns);
        std::mem::forget(smtp);
        lab.keep();
    }
}

/// The SMTP server process; killed on drop.
struct SmtpServer(Child);

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// aiosmtpd (Debian's python3-aiosmtpd) with its Maildir handler, on the internet host's
/// port 25. The handler adds `X-Peer` (the client's address and port) and `X-MailFrom`.
fn start_smtp_server(ns: &str, maildir: &Path, log: &Path) -> Result<SmtpServer> {
    let log_file = fs::File::create(log)?;
    // Debian's interpreter: it has python3-aiosmtpd (another python3 may come first in PATH).
    let mut child = command_in(ns, "/usr/bin/python3")?
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("{INTERNET_HOST}:25"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting aiosmtpd (apt-get install python3-aiosmtpd, or `cargo xtask setup`)")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the SMTP server exited ({status}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        let listening = exec(ns, &["ss", "-Hltn", "sport", "=", ":25"]).unwrap_or_default();
        if listening.contains(&INTERNET_HOST.to_string()) {
            return Ok(SmtpServer(child));
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            bail!("the SMTP server did not listen on {INTERNET_HOST}:25 in 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of header `name` in a header block (first occurrence, unfolded).
fn header(head: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

/// `('192.0.2.11', 41234)` (aiosmtpd's X-Peer) -> 192.0.2.11.
fn parse_peer(peer: &str) -> Option<Ipv4Addr> {
    peer.trim_start_matches(['(', '['])
        .split(',')
        .next()?
        .trim()
        .trim_matches(['\'', '"'])
        .parse()
        .ok()
}

/// Evaluates SPF (HELO, then MAIL FROM, as a receiving MTA does) for a message from `ip`,
/// asking the DNS server `dns` from namespace `ns`. Returns the result and the Received-SPF
/// header.
pub fn spf_verdict(
    ns: &str,
    dns: SocketAddr,
    ip: Ipv4Addr,
    helo: &str,
    mail_from: &str,
) -> Result<(SpfResult, String)> {
    in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut udp = ConnectionConfig::udp();
            udp.port = dns.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = dns.port();
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_secs(3);
            let auth = MessageAuthenticator::new(
                ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    dns.ip(),
                    true,
                    vec![udp, tcp],
                )]),
                opts,
            )
            .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
            let ip = IpAddr::V4(ip);
            let out = auth
                .verify_spf(Parameters::new(SpfParameters::verify(
                    ip, helo, RECEIVER, mail_from,
                )))
                .await;
            let header = ReceivedSpf::new(&out, ip, helo, mail_from, RECEIVER).to_header();
            Ok((out.result(), header.trim_end().replace("\r\n", "\n")))
        })
    })
}

/// The whole demo, told on `out`. With `keep`, the lab, its servers and the agents stay up
/// and the commands to look around are printed.
pub fn run(out: &mut dyn Write, keep: bool) -> Result<Outcome> {
    writeln!(
        out,
        "== egress gateway demo: mail from every node, one SPF-approved IP ==\n"
    )?;
    let demo = DemoLab::up()?;
    let lab = &demo.lab;
    writeln!(
        out,
        "Lab {}: gateway node {}, workers {} and {}; internet host {INTERNET_HOST}.",
        lab.id(),
        lab.gateway().external_ip,
        lab.node("worker1").external_ip,
        lab.node("worker2").external_ip
    )?;
    for p in lab.pods() {
        let mail = PODS.iter().any(|(n, _, m)| *n == p.name && *m);
        writeln!(
            out,
            "  pod {:<13} {:<11} on {:<8} {}",
            p.name,
            p.ip,
            p.node,
            if mail {
                "mail pod, selected by policy mail"
            } else {
                "not selected"
            }
        )?;
    }
    writeln!(
        out,
        "\nDNS (dnsmasq on {}) publishes:\n{}",
        demo.dns.addr,
        DnsServer::describe(&demo.records)
    )?;
    writeln!(
        out,
        "SMTP server (aiosmtpd) on {INTERNET_HOST}:25; each pod sends with swaks, MAIL FROM \
         <{SENDER}>;\nthe receiver checks SPF (mail-auth) for the address the mail came from.\n"
    )?;

    writeln!(
        out,
        "-- before: no egress agent; pods leave with their node's address --"
    )?;
    let mut before = Vec::new();
    for (pod, _, _) in PODS {
        let d = demo.send(pod, "before")?;
        writeln!(out, "  {pod:<13} from {:<12} spf={}", d.from_ip, d.spf)?;
        before.push(d);
    }
    if let Some(d) = before.get(1) {
        writeln!(out, "\n  e.g. {}: {}\n", PODS[1].0, d.received_spf)?;
    }

    writeln!(
        out,
        "-- starting the egress agent on every node (policy \"mail\": mail pods via the gateway, \
         egress IP {EGRESS_IP}) --"
    )?;
    let agents = demo.start_agents()?;
    writeln!(
        out,
        "  agents running; their logs: {}/agent-<node>.log\n",
        lab.dir().display()
    )?;

    writeln!(out, "-- after --")?;
    let mut rows = Vec::new();
    for ((pod, node, mail), b) in PODS.into_iter().zip(before) {
        let a = demo.send(pod, "after")?;
        writeln!(out, "  {pod:<13} from {:<12} spf={}", a.from_ip, a.spf)?;
        rows.push(Row {
            pod: pod.to_owned(),
            pod_ip: lab.pod(pod).ip,
            node: node.to_owned(),
            node_ip: lab.node(node).external_ip,
            mail,
            before: b,
            after: a,
        });
    }
    if let Some(r) = rows.get(1) {
        writeln!(out, "\n  e.g. {}: {}\n", r.pod, r.after.received_spf)?;
    }

    writeln!(
        out,
        "-- egress-agent spf check --domain {DOMAIN} (egress IPs from the gateway's live \
         policies) --"
    )?;
    let (spf_check_ok, spf_check_output) = demo.spf_check()?;
    for l in spf_check_output.lines() {
        writeln!(out, "  {l}")?;
    }

    let outcome = Outcome {
        lab_id: lab.id().to_owned(),
        rows,
        spf_check_ok,
        spf_check_output,
    };
    writeln!(out, "\n== summary ==\n{}", outcome.table())?;
    let fixed = outcome.rows.iter().all(|r| {
        if r.mail {
            r.after.spf == "pass"
        } else {
            r.after.from_ip == r.node_ip
        }
    });
    writeln!(
        out,
        "{}",
        if fixed {
            "Every mail pod now passes SPF: its mail leaves through the gateway as 192.0.2.10.\n\
             The pod the policy does not select still leaves with its own node's address."
        } else {
            "UNEXPECTED: see the table above."
        }
    )?;

    if keep {
        write!(out, "\n{}", look_around(&demo))?;
        // The agents keep running: their processes are left alone (lab down kills them).
        std::mem::forget(agents);
        demo.keep();
    } else {
        drop(agents);
        drop(demo);
        writeln!(
            out,
            "\nLab {} removed (use --keep to leave it up).",
            outcome.lab_id
        )?;
    }
    Ok(outcome)
}

/// The commands to look around a kept demo lab.
fn look_around(demo: &DemoLab) -> String {
    let lab = &demo.lab;
    let agent = agent_binary();
    let agent = agent.display();
    let gw = lab.pin_root("gateway");
    let gw = gw.display();
    let w1 = lab.pin_root("worker1");
    let inet = &lab.internet().ns;
    let pod = &lab.pod("mail-worker1").ns;
    let mut s = String::new();
    let _ = writeln!(s, "The lab stays up. Look around:");
    let _ = writeln!(
        s,
        "  {agent} inspect nat --pin-root {gw}          # translated flows on the gateway"
    );
    let _ = writeln!(
        s,
        "  {agent} inspect endpoints --pin-root {}     # worker1's pods, selected or not",
        w1.display()
    );
    let _ = writeln!(s, "  {agent} inspect counters --pin-root {gw}");
    let _ = writeln!(s, "  bpftool map dump pinned {gw}/maps/EGW_NAT4");
    let _ = writeln!(s, "  bpftool map dump pinned {gw}/maps/EGW_POLICY4");
    let _ = writeln!(
        s,
        "  ip netns exec {inet} {agent} spf check --domain {DOMAIN} --pin-root {gw} \
         --dns-server {}",
        demo.dns.socket_addr()
    );
    let _ = writeln!(
        s,
        "  ip netns exec {pod} swaks --server {INTERNET_HOST} --ehlo {MAIL_HOST} --from {SENDER} \
         --to {RECIPIENT}"
    );
    let _ = writeln!(
        s,
        "  grep -h X-Peer {}/new/*                     # where each message came from",
        demo.maildir.display()
    );
    let _ = writeln!(s, "  ip netns exec {inet} tcpdump -ni eth0 port 25");
    let _ = writeln!(s, "  cat {}/agent-gateway.log", lab.dir().display());
    let _ = writeln!(
        s,
        "  cargo xtask lab down {}          # when done",
        lab.id()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_aiosmtpd_peer_headers() {
        assert_eq!(
            parse_peer("('192.0.2.11', 41234)"),
            Some(Ipv4Addr::new(192, 0, 2, 11))
        );
        assert_eq!(parse_peer("garbage"), None);
        let head = "Subject: x\nX-Peer: ('192.0.2.10', 5)\nX-MailFrom: a@b\n";
        assert_eq!(header(head, "x-peer").as_deref(), Some("('192.0.2.10', 5)"));
        assert_eq!(header(head, "X-MailFrom").as_deref(), Some("a@b"));
        assert_eq!(header(head, "X-RcptTo"), None);
    }
}
