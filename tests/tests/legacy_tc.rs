//! Legacy tc (issue 14 point 2). Below Linux 6.6 there are no TCX links: the agent attaches
//! with the clsact qdisc and cls_bpf filters in direct-action mode, at its own priority and
//! handles. This kernel has TCX, so `EGRESS_FORCE_LEGACY_TC=1` makes the agent attach that way
//! here (the kernel matrix runs the smoke test on Debian's 6.1, where the agent finds it on
//! its own). And the other side of "what works where": an agent whose datapath cannot load or
//! attach says so (`Ready=False`, `DatapathUnavailable`; `/readyz` failing; a log line) and
//! keeps running.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use egress_tests::{
    agent::{agent_binary, ready_condition, start_all_with_env, time_scale, Agent},
    config::{write_config, ConfigSpec},
    fake_api::{self, FakeApi},
    lab::{command_in, exec, in_netns, require_root, Lab, LabSpec, INTERNET_HOST},
    neighbours::LegacyFilter,
    net::{eventually, tcp_roundtrip, udp_roundtrip, TcpEcho, UdpEcho},
};

const LEGACY: &[(&str, &str)] = &[("EGRESS_FORCE_LEGACY_TC", "1")];
/// Our filters' priority (`egress_agent::datapath::LEGACY_PRIORITY`).
const OUR_PREF: u64 = 1;
/// The foreign filters' priority (`LegacyFilter`).
const FOREIGN_PREF: u64 = 7;
const N: u64 = 20;

/// One tc filter as `tc -j filter show` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    pref: u64,
    handle: String,
    /// The cls_bpf program's name (`bpf_name`; empty for classic BPF).
    name: String,
    /// The eBPF program's id (0 for classic BPF).
    prog_id: u64,
}

/// The filters on `dev`'s `dir` hook (`ingress` or `egress`) in `ns`.
fn filters(ns: &str, dev: &str, dir: &str) -> Vec<Filter> {
    let out = exec(ns, &["tc", "-j", "filter", "show", "dev", dev, dir])
        .unwrap_or_else(|e| panic!("tc filter show dev {dev} {dir} in {ns}: {e}"));
    let v: serde_json::Value =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .unwrap_or_else(|e| panic!("tc json {out}: {e}"));
    v.as_array()
        .into_iter()
        .flatten()
        // The first line of each priority has no options (the classifier itself).
        .filter(|f| f.get("options").is_some())
        .map(|f| Filter {
            pref: f["pref"].as_u64().unwrap_or(0),
            handle: f["options"]["handle"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| f["options"]["handle"].to_string()),
            name: f["options"]["bpf_name"]
                .as_str()
                .unwrap_or("")
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == ':')
                .to_owned(),
            prog_id: f["options"]["prog"]["id"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Our filters (a program name starting `egw_`) on `dev`'s `dir` hook.
fn ours(ns: &str, dev: &str, dir: &str) -> Vec<Filter> {
    filters(ns, dev, dir)
        .into_iter()
        .filter(|f| f.name.starts_with("egw_"))
        .collect()
}

/// Asserts that `dev`'s `dir` hook carries exactly one filter of ours, of `program`, at our
/// priority; returns its program id.
fn one_of_ours(ns: &str, dev: &str, dir: &str, program: &str) -> u64 {
    let f = ours(ns, dev, dir);
    assert_eq!(
        f.len(),
        1,
        "{dev} {dir} in {ns}: expected exactly one filter of ours ({program}), found {f:#?}; \
         all: {:#?}",
        filters(ns, dev, dir)
    );
    assert_eq!(f[0].name, program, "{dev} {dir} in {ns}: {f:#?}");
    assert_eq!(f[0].pref, OUR_PREF, "{dev} {dir} in {ns}: {f:#?}");
    assert!(
        f[0].handle.starts_with("0xe9e9"),
        "{dev} {dir} in {ns}: our handle: {f:#?}"
    );
    f[0].prog_id
}

/// Every hook of the lab carries exactly the filters of ours it should, once each, and the
/// foreign ones are still there. Returns the program ids of ours, by hook.
fn check_hooks(lab: &Lab, foreign: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut ids = BTreeMap::new();
    for n in lab.nodes() {
        let mut hooks = vec![
            (n.underlay_dev.clone(), "ingress", "egw_from_wire"),
            (n.underlay_dev.clone(), "egress", "egw_to_wire"),
            ("egw0".to_owned(), "ingress", "egw_from_tunnel"),
        ];
        for p in lab.pods().iter().filter(|p| p.node == n.name) {
            hooks.push((p.host_veth.clone(), "ingress", "egw_from_pod"));
            hooks.push((p.host_veth.clone(), "egress", "egw_to_pod"));
        }
        for (dev, dir, program) in hooks {
            let id = one_of_ours(&n.ns, &dev, dir, program);
            ids.insert(format!("{}/{dev}/{dir}", n.name), id);
        }
    }
    for (ns, dev) in foreign {
        let f = filters(ns, dev, "ingress");
        assert_eq!(
            f.iter().filter(|f| f.pref == FOREIGN_PREF).count(),
            1,
            "the foreign filter on {dev} in {ns} is gone or doubled: {f:#?}"
        );
    }
    ids
}

fn send(ns: &str, to: SocketAddrV4, n: u64) {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            s.send_to(b"hello", to).expect("send");
        }
    });
}

fn tcp_source(lab: &Lab, server: &TcpEcho, pod: &str) -> IpAddr {
    let echo = tcp_roundtrip(&lab.pod(pod).ns, server.addr, b"EHLO legacy")
        .unwrap_or_else(|e| panic!("{pod}: tcp: {e}"));
    assert_eq!(echo, b"EHLO legacy");
    server.next_peer().ip()
}

fn udp_source(lab: &Lab, server: &UdpEcho, pod: &str) -> IpAddr {
    let echo = udp_roundtrip(&lab.pod(pod).ns, server.addr, b"dns?")
        .unwrap_or_else(|e| panic!("{pod}: udp: {e}"));
    assert_eq!(echo, b"dns?");
    server.next_peer().ip()
}

/// The egress path: selected pods on a worker and on the gateway leave as the gateway's
/// address over TCP, UDP and ICMP; an unselected pod with its node's.
fn check_egress(lab: &Lab, tcp: &TcpEcho, udp: &UdpEcho) {
    let gw = IpAddr::V4(lab.gateway().external_ip);
    for pod in ["pod-worker1-0", "pod-gateway-0"] {
        assert_eq!(tcp_source(lab, tcp, pod), gw, "{pod}: TCP as the egress IP");
        assert_eq!(udp_source(lab, udp, pod), gw, "{pod}: UDP as the egress IP");
        exec(
            &lab.pod(pod).ns,
            &["ping", "-c", "2", "-W", "2", &INTERNET_HOST.to_string()],
        )
        .unwrap_or_else(|e| panic!("{pod}: ping: {e}"));
    }
    let w2 = IpAddr::V4(lab.node("worker2").external_ip);
    assert_eq!(tcp_source(lab, tcp, "pod-worker2-0"), w2);
}

/// Restarts `agent` and waits until it has replaced the programs of its filters (new program
/// ids on every hook of its node).
fn restart_and_wait(lab: &Lab, agent: &mut Agent, before: &BTreeMap<String, u64>) {
    agent.restart().expect("restart agent");
    let node = lab.node(&agent.node).clone();
    let prefix = format!("{}/", node.name);
    let replaced = eventually(Duration::from_secs(30) * time_scale(), || {
        before
            .iter()
            .filter(|(hook, _)| hook.starts_with(&prefix))
            .all(|(hook, old)| {
                let mut parts = hook.split('/').skip(1);
                let (dev, dir) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                ours(&node.ns, dev, dir)
                    .iter()
                    .any(|f| f.prog_id != 0 && f.prog_id != *old)
            })
            .then_some(())
    });
    assert!(
        replaced.is_some(),
        "agent on {} did not replace its filters' programs; log:\n{}",
        agent.node,
        agent.log()
    );
}

#[test]
fn legacy_filters_carry_the_egress_path_once_each_and_leave_others_running() {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-worker1-0", "pod-gateway-0"],
            ..ConfigSpec::default()
        },
    );
    let w1 = lab.node("worker1").clone();
    let gw = lab.gateway().clone();
    let selected = lab.pod("pod-worker1-0").clone();
    let unselected = lab.pod("pod-worker1-1").clone();
    // Foreign filters (a CNI's, the bandwidth plugin's) before the agents start: the clsact
    // qdisc is there already, and theirs come after ours (priority 7).
    let foreign = [
        LegacyFilter::add(&w1.ns, &selected.host_veth, "mirsel"),
        LegacyFilter::add(&w1.ns, &unselected.host_veth, "mirun"),
        LegacyFilter::add(&gw.ns, &gw.uplink, "mirup"),
    ];
    let foreign_hooks = [
        (w1.ns.as_str(), selected.host_veth.as_str()),
        (w1.ns.as_str(), unselected.host_veth.as_str()),
        (gw.ns.as_str(), gw.uplink.as_str()),
    ];
    let mut agents = start_all_with_env(&lab, &cfg, LEGACY);
    for a in agents.values() {
        let log = a.log();
        assert!(
            log.contains("tc=legacy") && log.contains("forced by EGRESS_FORCE_LEGACY_TC=1"),
            "agent on {} does not say it attaches with legacy filters:\n{log}",
            a.node
        );
        let links = std::fs::read_dir(a.pin_root.join("links"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(links, 0, "no TCX link pinned in legacy mode on {}", a.node);
    }
    let ids = check_hooks(&lab, &foreign_hooks);

    let inet = &lab.internet().ns;
    let tcp = TcpEcho::start(inet, INTERNET_HOST, 25);
    let udp = UdpEcho::start(inet, INTERNET_HOST, 53);
    check_egress(&lab, &tcp, &udp);

    // What ours take (the selected pod to the internet, into the tunnel) ends there; what they
    // leave alone (TC_ACT_UNSPEC) goes on to the foreign filter: a selected pod's packet to
    // a destination outside its policy, an unselected pod's, the gateway host's own.
    let before = foreign[0].count();
    send(&selected.ns, udp.addr, N);
    for _ in 0..N {
        assert_eq!(udp.next_peer().ip(), IpAddr::V4(gw.external_ip));
    }
    let taken = foreign[0].count() - before;
    assert!(
        taken < N,
        "redirected packets went on to the foreign filter: {taken} of {N}"
    );
    let node_addr = SocketAddrV4::new(lab.node("worker2").external_ip, 9);
    type Traffic<'a> = Box<dyn Fn() + 'a>;
    let cases: [(usize, &str, Traffic); 3] = [
        (
            0,
            "selected pod, not a policy destination",
            Box::new(|| send(&selected.ns, node_addr, N)),
        ),
        (
            1,
            "unselected pod",
            Box::new(|| {
                send(&unselected.ns, udp.addr, N);
                // The echo server's queue of peers stays in step with what is sent.
                for _ in 0..N {
                    assert_eq!(
                        udp.next_peer().ip(),
                        IpAddr::V4(w1.external_ip),
                        "the unselected pod leaves with its node's address"
                    );
                }
            }),
        ),
        (
            2,
            "the gateway host's own traffic",
            Box::new(|| {
                exec(
                    inet,
                    &[
                        "ping",
                        "-c",
                        &N.to_string(),
                        "-i",
                        "0.01",
                        "-q",
                        &gw.external_ip.to_string(),
                    ],
                )
                .expect("ping the gateway");
            }),
        ),
    ];
    for (i, what, traffic) in cases {
        let before = foreign[i].count();
        traffic();
        std::thread::sleep(Duration::from_millis(200));
        let seen = foreign[i].count() - before;
        assert!(
            seen >= N,
            "{what}: the foreign filter on {} saw {seen} of {N}",
            foreign_hooks[i].1
        );
    }

    // A restart replaces the program of each of our filters in place: still exactly one per
    // hook, the foreign ones untouched, the path working.
    for node in ["worker1", "gateway"] {
        let a = agents.get_mut(node).expect("agent");
        restart_and_wait(&lab, a, &ids);
    }
    check_hooks(&lab, &foreign_hooks);
    // And a second time (the filters found are the restarted agent's own).
    let ids = check_hooks(&lab, &foreign_hooks);
    restart_and_wait(&lab, agents.get_mut("worker1").expect("agent"), &ids);
    check_hooks(&lab, &foreign_hooks);
    check_egress(&lab, &tcp, &udp);

    // A pod that goes takes our filters off its veth, and only ours.
    write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-worker1-0", "pod-gateway-0"],
            only_pods: Some(&[
                "pod-worker1-0",
                "pod-gateway-0",
                "pod-gateway-1",
                "pod-worker2-0",
                "pod-worker2-1",
            ]),
            ..ConfigSpec::default()
        },
    );
    let gone = eventually(Duration::from_secs(10) * time_scale(), || {
        (ours(&w1.ns, &unselected.host_veth, "ingress").is_empty()
            && ours(&w1.ns, &unselected.host_veth, "egress").is_empty())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "our filters stayed on {} after its pod left: {:#?}",
        unselected.host_veth,
        filters(&w1.ns, &unselected.host_veth, "ingress")
    );
    let left = filters(&w1.ns, &unselected.host_veth, "ingress");
    assert!(
        left.iter().any(|f| f.pref == FOREIGN_PREF),
        "detaching ours removed the foreign filter: {left:#?}"
    );

    // Back to TCX (a kernel upgrade, the knob removed): the legacy filters give way to TCX
    // links, never both.
    let a = agents.get_mut("worker1").expect("agent");
    a.env.clear();
    a.restart().expect("restart agent in TCX mode");
    let switched = eventually(Duration::from_secs(30) * time_scale(), || {
        (ours(&w1.ns, &selected.host_veth, "ingress").is_empty()
            && ours(&w1.ns, &w1.underlay_dev, "ingress").is_empty()
            && a.pin_root
                .join("links")
                .join(format!("egw_from_pod@{}", selected.host_veth))
                .exists())
        .then_some(())
    });
    assert!(
        switched.is_some(),
        "worker1 did not move from legacy filters to TCX links; filters {:#?}; log:\n{}",
        filters(&w1.ns, &selected.host_veth, "ingress"),
        a.log()
    );
    check_egress(&lab, &tcp, &udp);

    // `egress-agent cleanup` takes our filters off every interface of the node (they are not
    // pinned), and only ours.
    let g = agents.get_mut("gateway").expect("agent");
    g.kill();
    let out = command_in(&gw.ns, agent_binary())
        .expect("gateway namespace")
        .arg("cleanup")
        .arg("--pin-root")
        .arg(&g.pin_root)
        .output()
        .expect("egress-agent cleanup");
    assert!(out.status.success(), "cleanup: {out:?}");
    let mut hooks = vec![gw.underlay_dev.clone()];
    hooks.extend(
        lab.pods()
            .iter()
            .filter(|p| p.node == "gateway")
            .map(|p| p.host_veth.clone()),
    );
    for dev in &hooks {
        for dir in ["ingress", "egress"] {
            let left = ours(&gw.ns, dev, dir);
            assert!(left.is_empty(), "cleanup left {left:#?} on {dev} {dir}");
        }
    }
    let f = filters(&gw.ns, &gw.uplink, "ingress");
    assert!(
        f.iter().any(|f| f.pref == FOREIGN_PREF),
        "cleanup removed the foreign filter: {f:#?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed the egw_from_wire filter"),
        "cleanup says what it removed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `GET path` from the agent's metrics server inside `ns`: status code and body.
fn http_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    in_netns(ns, || {
        let mut s = TcpStream::connect("127.0.0.1:9479").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Some((code, body))
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("kernel release")
        .trim()
        .to_owned()
}

/// Waits until the gateway agent reports the datapath unavailable everywhere: the policy
/// `Ready=False`/`DatapathUnavailable` naming the kernel, `/readyz` 503 saying why, the
/// metric 0, an error line in the log; and the agent still running.
fn check_unavailable(agent: &mut Agent, what: &str) {
    let kernel = kernel_release();
    let t = Duration::from_secs(20) * time_scale();
    let cond = eventually(t, || {
        ready_condition(&agent.state_dir).filter(|(s, _, _)| s == "False")
    });
    let (status, reason, message) = cond.unwrap_or_else(|| {
        panic!(
            "no Ready=False in {}; log:\n{}",
            agent.state_dir.display(),
            agent.log()
        )
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DatapathUnavailable")
    );
    assert!(
        message.contains(&kernel) && message.contains(what),
        "the condition says what failed and on which kernel: {message}"
    );
    let ready = eventually(t, || http_get(&agent.ns, "/readyz"))
        .unwrap_or_else(|| panic!("/readyz did not answer; log:\n{}", agent.log()));
    assert_eq!(ready.0, 503, "/readyz must fail: {ready:?}");
    assert!(ready.1.contains("datapath unavailable"), "{ready:?}");
    let (_, metrics) = http_get(&agent.ns, "/metrics").expect("/metrics");
    assert!(metrics.contains("egress_datapath_up 0"), "{metrics}");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("datapath unavailable")
            && l.contains(&kernel)
            && l.contains(what)),
        "no error line saying what failed and on which kernel:\n{log}"
    );
    assert!(agent.running(), "the agent keeps running:\n{log}");
}

/// Waits until the agent is Ready again: `/readyz` 200, the policy `Ready=True`.
fn check_ready(agent: &Agent) {
    let t = Duration::from_secs(30) * time_scale();
    let ok = eventually(t, || {
        let ready = http_get(&agent.ns, "/readyz")?;
        let cond = ready_condition(&agent.state_dir)?;
        (ready.0 == 200 && cond.0 == "True").then_some(())
    });
    assert!(
        ok.is_some(),
        "not ready again: /readyz {:?}, condition {:?}; log:\n{}",
        http_get(&agent.ns, "/readyz"),
        ready_condition(&agent.state_dir),
        agent.log()
    );
}

#[test]
fn an_agent_whose_datapath_cannot_load_says_so_and_keeps_running() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-gateway-0"],
            ..ConfigSpec::default()
        },
    );
    let bogus = lab.dir().join("bogus.bpf.o");
    std::fs::write(&bogus, b"not an ELF object").expect("write the bogus object");
    let bogus = bogus.to_string_lossy().into_owned();
    let mut agent = Agent::start_with_env(
        &lab,
        "gateway",
        &cfg,
        &[("EGRESS_EBPF_OBJECT_FILE", bogus.as_str())],
    )
    .expect("start agent");
    check_unavailable(&mut agent, "loading the datapath");

    // With its object the agent loads, and says it is ready.
    agent.env.clear();
    agent.restart().expect("restart agent");
    check_ready(&agent);
}

#[test]
fn a_foreign_filter_in_the_way_of_ours_is_datapath_unavailable_until_it_goes() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-gateway-0"],
            ..ConfigSpec::default()
        },
    );
    let gw = lab.gateway().clone();
    let dev = gw.underlay_dev.as_str();
    // Someone else's filter at our priority, for another protocol: the kernel refuses ours
    // there (EINVAL). Classic BPF returning 0: it matches nothing.
    exec(&gw.ns, &["tc", "qdisc", "add", "dev", dev, "clsact"]).expect("clsact");
    let prio = OUR_PREF.to_string();
    exec(
        &gw.ns,
        &[
            "tc",
            "filter",
            "add",
            "dev",
            dev,
            "ingress",
            "prio",
            &prio,
            "protocol",
            "ip",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    )
    .expect("the foreign filter");
    let mut agent = Agent::start_with_env(&lab, "gateway", &cfg, LEGACY).expect("start agent");
    check_unavailable(&mut agent, "attaching egw_from_wire");

    // It goes: the agent (retrying every second) attaches and is ready.
    exec(
        &gw.ns,
        &["tc", "filter", "del", "dev", dev, "ingress", "prio", &prio],
    )
    .expect("delete the foreign filter");
    check_ready(&agent);
    one_of_ours(&gw.ns, dev, "ingress", "egw_from_wire");
}

#[test]
fn with_kubernetes_the_policy_status_in_the_api_says_datapath_unavailable() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let api = FakeApi::new().expect("fake API server");
    for n in lab.nodes() {
        let labels = if n.name == "gateway" {
            serde_json::json!({"egress-gateway": "true"})
        } else {
            serde_json::json!({})
        };
        api.put(fake_api::node(&n.name, n.underlay_ip, labels));
    }
    api.put(fake_api::namespace(
        "mailu",
        serde_json::json!({"team": "mail"}),
    ));
    for p in lab.pods() {
        api.put(fake_api::pod("mailu", &p.name, p.ip, &p.node, "mail"));
    }
    api.put(fake_api::policy(
        "mail",
        serde_json::json!({
            "selectors": [{
                "podSelector": {"matchLabels": {"app": "mail"}},
                "namespaceSelector": {"matchLabels": {"team": "mail"}},
            }],
            "destinationCIDRs": ["198.51.100.0/24"],
            "gateway": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}}},
        }),
    ));
    let settings = lab.dir().join("settings.yaml");
    std::fs::write(&settings, "nat: { portRange: [61000, 65535] }\n").expect("settings");
    let bogus = lab.dir().join("bogus.bpf.o");
    std::fs::write(&bogus, b"not an ELF object").expect("write the bogus object");
    let bogus = bogus.to_string_lossy().into_owned();
    let gw = lab.gateway().clone();
    let kubeconfig = api.serve_in(&gw.ns, &lab.dir()).expect("serve in the node");
    let agent = Agent::start_kubernetes_with_env(
        &lab,
        "gateway",
        &settings,
        &kubeconfig,
        &[("EGRESS_EBPF_OBJECT_FILE", bogus.as_str())],
    )
    .expect("agent");
    // The gateway's agent writes the policy's status: not Ready, and why.
    let ready = |s: &serde_json::Value| {
        s["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
    };
    let cond = eventually(Duration::from_secs(20) * time_scale(), || {
        api.status_patches()
            .into_iter()
            .rev()
            .find(|(name, _)| name == "mail")
            .and_then(|(_, p)| ready(&p["status"]))
    })
    .unwrap_or_else(|| {
        panic!(
            "no status written: {:?}; log:\n{}",
            api.status_patches(),
            agent.log()
        )
    });
    assert_eq!(cond["status"], "False", "{cond:#}");
    assert_eq!(cond["reason"], "DatapathUnavailable", "{cond:#}");
    let message = cond["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&kernel_release()) && message.contains("loading the datapath"),
        "{message}"
    );
    assert!(
        api.status_patches()
            .iter()
            .all(|(_, p)| ready(&p["status"]).is_none_or(|c| c["status"] != "True")),
        "never Ready over a datapath that is not there: {:?}",
        api.status_patches()
    );
    let r = http_get(&gw.ns, "/readyz").expect("/readyz");
    assert_eq!(r.0, 503, "{r:?}");
}
