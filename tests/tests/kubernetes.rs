//! End to end with the Kubernetes source: the real agents run `--kubernetes` on every lab node
//! against an in-process fake API server (list, watch, status patches); relabelling a pod in
//! the API moves its traffic onto the gateway and off again, deleting it removes its endpoint,
//! and the policy status is written.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent,
    fake_api::{self, FakeApi},
    lab::{require_root, Lab, LabSpec, INTERNET_HOST},
    net::{eventually, tcp_roundtrip, TcpEcho},
};
use serde_json::{json, Value};

const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// The source address the internet host sees for a TCP connection from `pod`.
fn tcp_source(lab: &Lab, server: &TcpEcho, pod: &str) -> IpAddr {
    let echo = tcp_roundtrip(&lab.pod(pod).ns, server.addr, b"EHLO")
        .unwrap_or_else(|e| panic!("{pod}: tcp: {e}"));
    assert_eq!(echo, b"EHLO");
    server.next_peer().ip()
}

fn selected(agent: &Agent, ip: Ipv4Addr) -> Option<bool> {
    let eps = agent.inspect("endpoints").ok()?;
    let ep = eps.as_array()?.iter().find(|e| e["ip"] == ip.to_string())?;
    ep["selected"].as_bool()
}

fn last_status(api: &FakeApi) -> Option<Value> {
    api.status_patches()
        .into_iter()
        .rev()
        .find(|(name, _)| name == "mail")
        .map(|(_, p)| p["status"].clone())
}

#[test]
fn relabelling_a_pod_in_the_api_moves_it_onto_the_gateway_and_off_with_status() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let api = FakeApi::new().expect("fake API server");
    for n in lab.nodes() {
        let labels = if n.name == "gateway" {
            json!({"egress-gateway": "true"})
        } else {
            json!({})
        };
        api.put(fake_api::node(&n.name, n.underlay_ip, labels));
    }
    api.put(fake_api::namespace("mailu", json!({"team": "mail"})));
    for p in lab.pods() {
        api.put(fake_api::pod("mailu", &p.name, p.ip, &p.node, "other"));
    }
    api.put(fake_api::policy(
        "mail",
        json!({
            "selectors": [{
                "podSelector": {"matchLabels": {"app": "mail"}},
                "namespaceSelector": {"matchLabels": {"team": "mail"}},
            }],
            "destinationCIDRs": ["198.51.100.0/24"],
            "gateway": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}}},
        }),
    ));
    // Settings only: the defaults (cluster CIDRs 10.244.0.0/16 and 10.96.0.0/12) fit the lab.
    let settings = lab.dir().join("settings.yaml");
    std::fs::write(&settings, "nat: { portRange: [61000, 65535] }\n").expect("settings");
    let agents: Vec<Agent> = lab
        .nodes()
        .iter()
        .map(|n| {
            let kubeconfig = api.serve_in(&n.ns, &lab.dir()).expect("serve in the node");
            Agent::start_kubernetes(&lab, &n.name, &settings, &kubeconfig).expect("agent")
        })
        .collect();
    for a in &agents {
        let pods = lab.pods().iter().filter(|p| p.node == a.node).count();
        a.wait_endpoints(pods, Duration::from_secs(20))
            .expect("agent programs its pods from the API");
    }
    let worker1 = agents
        .iter()
        .find(|a| a.node == "worker1")
        .expect("worker1");
    let pod = lab.pod("pod-worker1-0");
    let tcp = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let w1 = IpAddr::V4(lab.node("worker1").external_ip);
    assert_eq!(tcp_source(&lab, &tcp, "pod-worker1-0"), w1);
    let st = eventually(Duration::from_secs(5), || last_status(&api))
        .expect("the gateway agent writes the policy status");
    assert_eq!(st["gatewayNode"], "gateway", "{st:#}");
    assert_eq!(st["selectedPods"], 0, "{st:#}");

    // Relabel onto the policy.
    api.put(fake_api::pod("mailu", &pod.name, pod.ip, &pod.node, "mail"));
    let start = Instant::now();
    let took = eventually(Duration::from_secs(5), || {
        (selected(worker1, pod.ip) == Some(true)).then(|| start.elapsed())
    })
    .expect("the relabelled pod is selected");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        tcp_source(&lab, &tcp, "pod-worker1-0"),
        IpAddr::V4(GATEWAY_IP)
    );
    let st = eventually(Duration::from_secs(5), || {
        last_status(&api).filter(|s| s["selectedPods"] == 1)
    })
    .unwrap_or_else(|| panic!("status not updated: {:?}", api.status_patches()));
    assert_eq!(st["egressIP"], GATEWAY_IP.to_string());
    assert_eq!(st["conditions"][0]["type"], "Ready");
    assert_eq!(st["conditions"][0]["status"], "True");
    // The API names no uplink and neither does the command line: the default route's.
    let gw = agents
        .iter()
        .find(|a| a.node == "gateway")
        .expect("gateway");
    assert!(gw.log().contains("uplink=eth0"), "{}", gw.log());
    assert!(
        worker1.log().contains("trigger=Kubernetes"),
        "{}",
        worker1.log()
    );

    // And off again.
    api.put(fake_api::pod(
        "mailu", &pod.name, pod.ip, &pod.node, "other",
    ));
    let start = Instant::now();
    let took = eventually(Duration::from_secs(5), || {
        (selected(worker1, pod.ip) == Some(false)).then(|| start.elapsed())
    })
    .expect("the pod is deselected");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(tcp_source(&lab, &tcp, "pod-worker1-0"), w1);
    assert!(eventually(Duration::from_secs(5), || {
        last_status(&api).filter(|s| s["selectedPods"] == 0)
    })
    .is_some());
    // A pod deleted from the API (selected until then) is forgotten by its node.
    api.put(fake_api::pod("mailu", &pod.name, pod.ip, &pod.node, "mail"));
    assert!(eventually(Duration::from_secs(5), || {
        (selected(worker1, pod.ip) == Some(true)).then_some(())
    })
    .is_some());
    api.delete("Pod", &format!("mailu/{}", pod.name));
    let start = Instant::now();
    let took = eventually(Duration::from_secs(5), || {
        selected(worker1, pod.ip).is_none().then(|| start.elapsed())
    })
    .expect("the deleted pod's endpoint is removed");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(eventually(Duration::from_secs(5), || {
        last_status(&api).filter(|s| s["selectedPods"] == 0)
    })
    .is_some());

    // Written when it changed, by one agent: no write loop through its own watch event.
    std::thread::sleep(Duration::from_millis(500));
    let writes = api.status_patches().len();
    assert!(
        writes <= 6,
        "{writes} status writes: {:#?}",
        api.status_patches()
    );
}
