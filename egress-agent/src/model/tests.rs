//! The model, one behaviour per test.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use egress_common::{
    addr::ip4,
    policy::{ACTION_EXCLUDED, ACTION_REFUSE, ACTION_VIA_GATEWAY, MAX_POLICIES},
};
use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::{ids::fnv1a, *};

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn match_labels(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(kv)),
        match_expressions: None,
    }
}

fn node(name: &str, ip: [u8; 4], l: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        labels: labels(l),
        ip: Some(Ipv4Addr::from(ip)),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, ip: [u8; 4], node: &str, l: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        node: Some(node.into()),
        ip: Some(Ipv4Addr::from(ip)),
        host_network: false,
        uid: None,
    }
}

fn spec(pod_sel: Option<LabelSelector>, ns_sel: Option<LabelSelector>) -> EgressGatewayPolicySpec {
    EgressGatewayPolicySpec {
        selectors: vec![PodSelection {
            pod_selector: pod_sel,
            namespace_selector: ns_sel,
        }],
        destination_cidrs: vec!["0.0.0.0/0".into()],
        excluded_cidrs: vec!["198.51.100.128/25".into()],
        gateway: GatewaySpec {
            node_selector: Some(match_labels(&[("egress-gateway", "true")])),
            ..Default::default()
        },
        ipv6: None,
    }
}

fn policy(name: &str, created: Option<i64>, spec: EgressGatewayPolicySpec) -> Policy {
    Policy {
        name: name.into(),
        created,
        spec,
    }
}

/// Gateway `gw` (labelled), workers `w1`, `w2`; namespaces `mailu` (team=mail) and `web`;
/// postfix pods on w1 and gw, a web pod on w2; policy `mail` selects app=postfix.
fn cluster() -> Cluster {
    Cluster {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ],
        cluster_cidrs6: vec!["2001:db8:96::/112".parse().unwrap()],
        nodes: vec![
            node("w2", [192, 0, 2, 12], &[]),
            node("gw", [192, 0, 2, 10], &[("egress-gateway", "true")]),
            node("w1", [192, 0, 2, 11], &[]),
        ],
        namespaces: vec![
            Namespace {
                name: "mailu".into(),
                labels: labels(&[("team", "mail")]),
            },
            Namespace {
                name: "web".into(),
                labels: labels(&[]),
            },
        ],
        pods: vec![
            pod(
                "mailu",
                "postfix-0",
                [10, 244, 1, 2],
                "w1",
                &[("app", "postfix")],
            ),
            pod(
                "mailu",
                "postfix-1",
                [10, 244, 0, 2],
                "gw",
                &[("app", "postfix")],
            ),
            pod("mailu", "imap-0", [10, 244, 1, 3], "w1", &[("app", "imap")]),
            pod("web", "web-0", [10, 244, 2, 2], "w2", &[("app", "web")]),
        ],
        policies: vec![policy(
            "mail",
            None,
            spec(Some(match_labels(&[("app", "postfix")])), None),
        )],
    }
}

fn run(c: &Cluster, node: &str) -> Model {
    compute(c, node, &LocalFacts::default())
}

fn id(c: &Cluster, name: &str) -> u32 {
    run(c, "w1").status[name].datapath_id.expect("has an id")
}

/// Names of the pods each policy selects, as seen from `node`'s local pods plus the gateway's
/// remote endpoints, by policy id.
fn selected(c: &Cluster) -> BTreeMap<String, Option<u32>> {
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        for p in run(c, &n.name).desired.pods {
            out.insert(p.name, p.policy_id);
        }
    }
    out
}

fn condition<'a>(st: &'a PolicyStatus, type_: &str) -> Option<&'a PolicyCondition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

fn ready(m: &Model, policy: &str) -> (String, String) {
    let c = condition(&m.status[policy], "Ready").expect("a Ready condition");
    (c.status.clone(), c.reason.clone())
}

fn not_ready_reason(c: &Cluster, policy: &str) -> String {
    let m = run(c, "w1");
    let (status, reason) = ready(&m, policy);
    assert_eq!(status, "False", "{policy}: {:?}", m.status[policy]);
    assert!(
        m.desired.policies.is_empty() && m.desired.pods.iter().all(|p| p.policy_id.is_none()),
        "an inactive policy programs nothing"
    );
    assert!(m.desired.warnings.iter().any(|w| w.contains(policy)));
    reason
}

const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const W1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

#[test]
fn worker_gets_its_pods_the_policy_and_no_remote_endpoints() {
    let c = cluster();
    let m = run(&c, "w1");
    let d = &m.desired;
    let pid = id(&c, "mail");
    assert_eq!(d.node_ip, Some(W1));
    let pods: Vec<_> = d
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.policy_id))
        .collect();
    assert_eq!(
        pods,
        [("mailu/imap-0", None), ("mailu/postfix-0", Some(pid))]
    );
    assert!(d.remote_endpoints.is_empty());
    assert_eq!(d.nodes, [GW, Ipv4Addr::new(192, 0, 2, 12)]);
    let via = d.policies[&(pid, "0.0.0.0/0".parse().unwrap())];
    assert_eq!(via.action, ACTION_VIA_GATEWAY);
    assert_eq!(via.gateway_ip4, ip4(GW));
    assert_eq!(
        via.egress_ip4,
        ip4(GW),
        "egress IP defaults to the gateway's"
    );
    assert_eq!(ready(&m, "mail"), ("True".into(), "Active".into()));
    assert_eq!(m.status["mail"].gateway_node.as_deref(), Some("gw"));
    assert_eq!(m.status["mail"].egress_ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(m.status["mail"].selected_pods, 2);
    // The only warning: the default egress IP is the gateway node's own address.
    assert!(
        d.warnings.iter().all(|w| w.contains("NodeAddress")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn cluster_and_excluded_cidrs_are_always_excluded() {
    let c = cluster();
    let d = run(&c, "w1").desired;
    let pid = id(&c, "mail");
    for cidr in ["10.244.0.0/16", "10.96.0.0/12", "198.51.100.128/25"] {
        assert_eq!(
            d.policies[&(pid, cidr.parse().unwrap())].action,
            ACTION_EXCLUDED,
            "{cidr}"
        );
    }
    // The destination, the two cluster CIDRs, the policy's exclusion, link-local, multicast,
    // broadcast and the three nodes' addresses.
    assert_eq!(d.policies.len(), 10);
}

/// k3s: pods in 10.42/16, services in 10.43/16; the agent left at the defaults. The nodes'
/// `spec.podCIDRs` keep pod-to-pod traffic off the gateway, and a pod in none of the known
/// CIDRs is a condition and a warning, not silence.
#[test]
fn node_pod_cidrs_are_excluded_and_a_pod_outside_every_known_cidr_is_reported() {
    let mut c = cluster();
    for p in &mut c.pods {
        let ip = p.ip.expect("ip").octets();
        p.ip = Some(Ipv4Addr::new(10, 42, ip[2], ip[3]));
    }
    let pid = id(&c, "mail");
    let m = run(&c, "w1");
    let cond = condition(&m.status["mail"], "ClusterCIDRs").expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "PodOutsideClusterCIDRs")
    );
    assert!(
        cond.message.contains("4 pod(s)") && cond.message.contains("mailu/postfix-0 (10.42.1.2)"),
        "{}",
        cond.message
    );
    assert!(
        m.desired
            .warnings
            .iter()
            .any(|w| w.contains("PodOutsideClusterCIDRs")),
        "{:?}",
        m.desired.warnings
    );
    assert_eq!(ready(&m, "mail").0, "True", "the policy still works");
    assert!(!m
        .desired
        .policies
        .contains_key(&(pid, "10.42.1.0/24".parse().unwrap())));

    // The nodes tell their pod CIDRs: excluded, and no condition.
    for n in &mut c.nodes {
        let third = match n.name.as_str() {
            "gw" => 0,
            "w1" => 1,
            _ => 2,
        };
        n.pod_cidrs = vec![Ipv4Net::new(Ipv4Addr::new(10, 42, third, 0), 24).unwrap()];
    }
    let m = run(&c, "w1");
    assert!(condition(&m.status["mail"], "ClusterCIDRs").is_none());
    assert!(m
        .desired
        .warnings
        .iter()
        .all(|w| !w.contains("ClusterCIDRs")));
    for cidr in ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"] {
        assert_eq!(
            m.desired.policies[&(pid, cidr.parse().unwrap())].action,
            ACTION_EXCLUDED,
            "{cidr}"
        );
    }
}

#[test]
fn node_addresses_egress_ips_link_local_multicast_and_broadcast_never_go_via_the_gateway() {
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs = vec!["0.0.0.0/0".into()];
    c.policies[0].spec.gateway.egress_ip = Some("5.75.247.168".into());
    c.nodes[1].addresses.push(Ipv4Addr::new(203, 0, 113, 9));
    let local = LocalFacts {
        interfaces: BTreeMap::from([("cni0".into(), vec![Ipv4Addr::new(10, 99, 0, 1)])]),
        ..Default::default()
    };
    let d = compute(&c, "w1", &local).desired;
    let pid = id(&c, "mail");
    for cidr in [
        "192.0.2.10/32",
        "192.0.2.11/32",
        "192.0.2.12/32",
        "203.0.113.9/32",
        "5.75.247.168/32",
        "10.99.0.1/32",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
    ] {
        assert_eq!(
            d.policies
                .get(&(pid, cidr.parse().unwrap()))
                .map(|v| v.action),
            Some(ACTION_EXCLUDED),
            "{cidr}"
        );
    }
    assert_eq!(
        d.policies[&(pid, "0.0.0.0/0".parse().unwrap())].action,
        ACTION_VIA_GATEWAY
    );
}

#[test]
fn an_excluded_cidr_wins_over_a_more_specific_destination() {
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs = vec![
        "203.0.113.0/24".into(),
        "203.0.113.64/26".into(),
        "10.244.7.0/24".into(),
        "169.254.169.254/32".into(),
        "198.51.100.0/24".into(),
    ];
    c.policies[0].spec.excluded_cidrs = vec!["203.0.113.0/24".into()];
    let d = run(&c, "w1").desired;
    let pid = id(&c, "mail");
    let action = |cidr: &str| d.policies[&(pid, cidr.parse().unwrap())].action;
    // Inside an exclusion (the policy's, the pod CIDR, link-local): excluded.
    for cidr in [
        "203.0.113.0/24",
        "203.0.113.64/26",
        "10.244.7.0/24",
        "169.254.169.254/32",
    ] {
        assert_eq!(action(cidr), ACTION_EXCLUDED, "{cidr}");
    }
    // Control: a destination no exclusion covers still goes through the gateway, and one
    // that covers an exclusion keeps the rest of its range.
    assert_eq!(action("198.51.100.0/24"), ACTION_VIA_GATEWAY);
}

#[test]
fn an_excluded_cidr_equal_to_a_destination_wins() {
    let mut c = cluster();
    c.policies[0].spec.excluded_cidrs = vec!["0.0.0.0/0".into()];
    let d = run(&c, "w1").desired;
    assert_eq!(
        d.policies[&(id(&c, "mail"), "0.0.0.0/0".parse().unwrap())].action,
        ACTION_EXCLUDED
    );
}

#[test]
fn gateway_accepts_selected_pods_of_other_nodes_only() {
    let c = cluster();
    let d = run(&c, "gw").desired;
    assert_eq!(d.remote_endpoints.len(), 1);
    let r = d.remote_endpoints[&Ipv4Addr::new(10, 244, 1, 2)];
    assert_eq!(r.node_ip4, ip4(W1));
    assert_eq!(r.policy_id, id(&c, "mail"));
    assert_eq!(d.pods.len(), 1, "its own postfix pod is a local endpoint");
    assert_eq!(d.pods[0].policy_id, Some(id(&c, "mail")));
}

#[test]
fn pod_selector_alone_selects_in_every_namespace() {
    let mut c = cluster();
    c.pods.push(pod(
        "other",
        "postfix-9",
        [10, 244, 2, 9],
        "w2",
        &[("app", "postfix")],
    ));
    let s = selected(&c);
    assert!(s["other/postfix-9"].is_some());
    assert!(s["mailu/imap-0"].is_none());
}

#[test]
fn namespace_selector_alone_selects_every_pod_of_matching_namespaces() {
    let mut c = cluster();
    c.policies[0].spec = spec(None, Some(match_labels(&[("team", "mail")])));
    let s = selected(&c);
    assert!(s["mailu/imap-0"].is_some());
    assert!(s["mailu/postfix-0"].is_some());
    assert!(s["web/web-0"].is_none());
}

#[test]
fn both_selectors_must_match() {
    let mut c = cluster();
    c.pods.push(pod(
        "web",
        "postfix-w",
        [10, 244, 2, 3],
        "w2",
        &[("app", "postfix")],
    ));
    c.policies[0].spec = spec(
        Some(match_labels(&[("app", "postfix")])),
        Some(match_labels(&[("team", "mail")])),
    );
    let s = selected(&c);
    assert!(s["mailu/postfix-0"].is_some());
    assert!(
        s["web/postfix-w"].is_none(),
        "right labels, wrong namespace"
    );
    assert!(s["mailu/imap-0"].is_none(), "right namespace, wrong labels");
}

#[test]
fn namespaces_carry_their_name_label_even_when_unlisted() {
    let mut c = cluster();
    c.namespaces.clear();
    c.policies[0].spec = spec(None, Some(match_labels(&[(NAMESPACE_NAME_LABEL, "web")])));
    let s = selected(&c);
    assert!(s["web/web-0"].is_some());
    assert!(s["mailu/postfix-0"].is_none());
}

#[test]
fn any_selector_entry_selects() {
    let mut c = cluster();
    c.policies[0].spec.selectors.push(PodSelection {
        pod_selector: Some(match_labels(&[("app", "web")])),
        namespace_selector: None,
    });
    let s = selected(&c);
    assert!(s["web/web-0"].is_some());
    assert!(s["mailu/postfix-0"].is_some());
    assert!(s["mailu/imap-0"].is_none());
}

#[test]
fn match_expressions_select_pods() {
    let mut c = cluster();
    c.policies[0].spec = spec(
        Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "In".into(),
                    values: Some(vec!["postfix".into(), "imap".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        }),
        Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "Exists".into(),
                values: None,
            }]),
        }),
    );
    c.pods.push(pod(
        "mailu",
        "canary",
        [10, 244, 1, 9],
        "w1",
        &[("app", "postfix"), ("canary", "")],
    ));
    let s = selected(&c);
    assert!(s["mailu/imap-0"].is_some());
    assert!(s["mailu/postfix-1"].is_some());
    assert!(s["mailu/canary"].is_none());
    assert!(s["web/web-0"].is_none());
}

#[test]
fn empty_pod_selector_selects_every_pod() {
    let mut c = cluster();
    c.policies[0].spec = spec(Some(LabelSelector::default()), None);
    assert!(selected(&c).values().all(Option::is_some));
}

#[test]
fn an_entry_without_selectors_is_invalid() {
    let mut c = cluster();
    c.policies[0].spec = spec(None, None);
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidSelector");
}

#[test]
fn an_invalid_operator_is_invalid() {
    let mut c = cluster();
    c.policies[0].spec = spec(
        Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "Equals".into(),
                values: Some(vec!["postfix".into()]),
            }]),
        }),
        None,
    );
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidSelector");
    let m = run(&c, "w1");
    assert!(condition(&m.status["mail"], "Ready")
        .unwrap()
        .message
        .contains("Equals"));
}

#[test]
fn no_selectors_or_destinations_is_not_ready() {
    let mut c = cluster();
    c.policies[0].spec.selectors.clear();
    assert_eq!(not_ready_reason(&c, "mail"), "NoSelectors");
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs = vec!["2001:db8::/32".into()];
    assert_eq!(not_ready_reason(&c, "mail"), "NoDestinations");
}

#[test]
fn invalid_cidrs_reject_the_policy() {
    for (field, bad) in [
        ("dst", "10.0.0.0/33"),
        ("dst", "mail.example.com"),
        ("ex", "1.2.3.4"),
    ] {
        let mut c = cluster();
        if field == "dst" {
            c.policies[0].spec.destination_cidrs.push(bad.into());
        } else {
            c.policies[0].spec.excluded_cidrs.push(bad.into());
        }
        assert_eq!(not_ready_reason(&c, "mail"), "InvalidCIDR", "{bad}");
        let m = run(&c, "w1");
        assert!(condition(&m.status["mail"], "Ready")
            .unwrap()
            .message
            .contains(bad));
    }
}

#[test]
fn host_bits_are_cleared_in_both_families() {
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs =
        vec!["203.0.113.77/24".into(), "2001:db8:5100::77/48".into()];
    let m = run(&c, "w1");
    let id = id(&c, "mail");
    assert!(m
        .desired
        .policies
        .contains_key(&(id, "203.0.113.0/24".parse().unwrap())));
    assert!(m
        .desired
        .policies6
        .contains_key(&(id, "2001:db8:5100::/48".parse().unwrap())));
    assert_eq!(ready(&m, "mail").0, "True");
}

#[test]
fn ipv6_destinations_are_refused_by_default_and_the_cluster_keeps_its_ipv6() {
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs = vec!["0.0.0.0/0".into(), "::/0".into()];
    c.policies[0].spec.excluded_cidrs = vec!["2001:db8:beef::/48".into()];
    c.nodes[1].pod_cidrs6 = vec!["2001:db8:244::/64".parse().unwrap()];
    c.nodes[2].addresses6 = vec!["2001:db8:200::11".parse().unwrap()];
    let m = run(&c, "w1");
    let id = id(&c, "mail");
    let action = |net: &str| {
        m.desired
            .policies6
            .get(&(id, net.parse().unwrap()))
            .map(|v| v.action)
    };
    assert_eq!(action("::/0"), Some(ACTION_REFUSE));
    // Excluded: the policy's own exclusions, the IPv6 cluster CIDRs, node pod CIDRs and
    // node addresses.
    for net in [
        "2001:db8:beef::/48",
        "2001:db8:96::/112",
        "2001:db8:244::/64",
        "2001:db8:200::11/128",
    ] {
        assert_eq!(action(net), Some(ACTION_EXCLUDED), "{net}");
    }
    assert_eq!(m.desired.policies6.len(), 5);
    let v6 = condition(&m.status["mail"], "IPv6Egress").expect("IPv6Egress");
    assert_eq!(
        (v6.status.as_str(), v6.reason.as_str()),
        ("False", "IPv6Refused")
    );
    assert!(v6.message.contains("::/0"), "{}", v6.message);
    // IPv4 is unaffected.
    assert_eq!(ready(&m, "mail").0, "True");

    // A refused destination inside an exclusion is programmed excluded (the trie would pick
    // the longer prefix).
    c.policies[0].spec.destination_cidrs = vec!["0.0.0.0/0".into(), "2001:db8:beef:1::/64".into()];
    let m = run(&c, "w1");
    assert_eq!(
        m.desired
            .policies6
            .get(&(id, "2001:db8:beef:1::/64".parse().unwrap()))
            .map(|v| v.action),
        Some(ACTION_EXCLUDED)
    );
}

#[test]
fn ipv6_pass_programs_nothing_and_says_so() {
    let mut c = cluster();
    c.policies[0].spec.destination_cidrs = vec!["0.0.0.0/0".into(), "::/0".into()];
    c.policies[0].spec.ipv6 = Some(Ipv6Mode::Pass);
    let m = run(&c, "w1");
    assert!(m.desired.policies6.is_empty());
    let v6 = condition(&m.status["mail"], "IPv6Egress").expect("IPv6Egress");
    assert_eq!(
        (v6.status.as_str(), v6.reason.as_str()),
        ("False", "IPv6Passed")
    );
    // Without IPv6 destinations: no condition, nothing programmed.
    let m = run(&cluster(), "w1");
    assert!(m.desired.policies6.is_empty());
    assert!(condition(&m.status["mail"], "IPv6Egress").is_none());
}

#[test]
fn a_pod_matched_by_two_policies_belongs_to_the_older() {
    let mut c = cluster();
    c.policies[0].created = Some(2000);
    // "aaa" sorts first by name but is younger: age decides.
    c.policies.push(policy(
        "aaa",
        Some(3000),
        spec(Some(match_labels(&[("app", "postfix")])), None),
    ));
    let s = selected(&c);
    let mail = id(&c, "mail");
    assert_eq!(s["mailu/postfix-0"], Some(mail));
    assert_eq!(s["mailu/postfix-1"], Some(mail));
    let m = run(&c, "w1");
    assert_eq!(m.status["aaa"].selected_pods, 0);
    assert_eq!(m.status["mail"].selected_pods, 2);
    let conflict = condition(&m.status["aaa"], "PodConflict").expect("PodConflict on the younger");
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.contains("mailu/postfix-0 (by mail)"),
        "{}",
        conflict.message
    );
    assert!(condition(&m.status["mail"], "PodConflict").is_none());
    assert_eq!(
        ready(&m, "aaa").0,
        "True",
        "the younger one still works for its other pods"
    );
}

#[test]
fn equally_old_policies_are_ordered_by_name() {
    let mut c = cluster();
    c.policies[0].created = Some(1000);
    c.policies.push(policy(
        "aaa",
        Some(1000),
        spec(Some(match_labels(&[("app", "postfix")])), None),
    ));
    assert_eq!(selected(&c)["mailu/postfix-0"], Some(id(&c, "aaa")));
    // Input order does not matter.
    c.policies.reverse();
    assert_eq!(selected(&c)["mailu/postfix-0"], Some(id(&c, "aaa")));
}

#[test]
fn an_invalid_policy_claims_no_pods() {
    let mut c = cluster();
    c.policies[0].created = Some(1);
    c.policies[0].spec.destination_cidrs = vec!["nonsense".into()];
    c.policies.push(policy(
        "young",
        Some(2),
        spec(Some(match_labels(&[("app", "postfix")])), None),
    ));
    assert_eq!(selected(&c)["mailu/postfix-0"], Some(id(&c, "young")));
    assert!(condition(&run(&c, "w1").status["young"], "PodConflict").is_none());
}

#[test]
fn unknown_gateway_node_name_is_gateway_not_found() {
    let mut c = cluster();
    c.policies[0].spec.gateway = GatewaySpec {
        node_name: Some("nowhere".into()),
        ..Default::default()
    };
    assert_eq!(not_ready_reason(&c, "mail"), "GatewayNotFound");
    let m = run(&c, "w1");
    assert!(m.desired.warnings.iter().any(|w| w.contains("nowhere")));
    assert_eq!(m.status["mail"].gateway_node, None);
}

#[test]
fn gateway_by_node_name() {
    let mut c = cluster();
    c.policies[0].spec.gateway = GatewaySpec {
        node_name: Some("w2".into()),
        ..Default::default()
    };
    let m = run(&c, "w1");
    assert_eq!(m.status["mail"].gateway_node.as_deref(), Some("w2"));
    let via = m.desired.policies[&(id(&c, "mail"), "0.0.0.0/0".parse().unwrap())];
    assert_eq!(via.gateway_ip4, ip4(Ipv4Addr::new(192, 0, 2, 12)));
}

#[test]
fn node_selector_matching_nothing_is_gateway_not_found() {
    let mut c = cluster();
    c.nodes[1].labels.clear();
    assert_eq!(not_ready_reason(&c, "mail"), "GatewayNotFound");
}

#[test]
fn a_gateway_without_an_address_is_not_found() {
    let mut c = cluster();
    c.nodes[1].ip = None;
    assert_eq!(not_ready_reason(&c, "mail"), "GatewayNotFound");
}

#[test]
fn node_selector_matching_several_picks_the_first_by_name() {
    let mut c = cluster();
    for n in &mut c.nodes {
        n.labels.insert("egress-gateway".into(), "true".into());
    }
    for from in ["w1", "w2", "gw"] {
        let m = run(&c, from);
        assert_eq!(
            m.status["mail"].gateway_node.as_deref(),
            Some("gw"),
            "seen from {from}"
        );
        let r = condition(&m.status["mail"], "Ready").unwrap();
        assert_eq!(r.status, "True");
        assert!(r.message.contains("the group gw, w1, w2"), "{}", r.message);
        assert_eq!(m.status["mail"].gateway_group, ["gw", "w1", "w2"]);
    }
}

#[test]
fn gateway_spec_needs_exactly_one_node_choice() {
    let mut c = cluster();
    c.policies[0].spec.gateway.node_name = Some("gw".into());
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidGateway");
    c.policies[0].spec.gateway = GatewaySpec::default();
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidGateway");
}

#[test]
fn egress_ip_and_interface_are_exclusive_and_egress_ip_must_parse() {
    let mut c = cluster();
    c.policies[0].spec.gateway.egress_ip = Some("192.0.2.100".into());
    c.policies[0].spec.gateway.interface = Some("eth0".into());
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidGateway");
    c.policies[0].spec.gateway.interface = None;
    c.policies[0].spec.gateway.egress_ip = Some("5.75.247".into());
    assert_eq!(not_ready_reason(&c, "mail"), "InvalidGateway");
}

#[test]
fn an_egress_ip_on_the_gateway_is_used_and_confirmed() {
    let mut c = cluster();
    c.nodes[1].addresses = vec![Ipv4Addr::new(5, 75, 247, 168)];
    c.policies[0].spec.gateway.egress_ip = Some("5.75.247.168".into());
    let m = run(&c, "w1");
    let via = m.desired.policies[&(id(&c, "mail"), "0.0.0.0/0".parse().unwrap())];
    assert_eq!(via.egress_ip4, ip4(Ipv4Addr::new(5, 75, 247, 168)));
    assert_eq!(
        condition(&m.status["mail"], "EgressIPOnGateway")
            .unwrap()
            .status,
        "True"
    );
    assert_eq!(m.status["mail"].egress_ip.as_deref(), Some("5.75.247.168"));
}

#[test]
fn an_egress_ip_not_on_the_gateway_is_programmed_with_a_false_condition() {
    let mut c = cluster();
    c.policies[0].spec.gateway.egress_ip = Some("192.0.2.100".into());
    // A worker cannot see the gateway's interfaces: it cannot tell, and does not warn.
    let m = run(&c, "w1");
    let e = condition(&m.status["mail"], "EgressIPOnGateway").unwrap();
    assert_eq!(
        (e.status.as_str(), e.reason.as_str()),
        ("Unknown", "CheckedOnGateway")
    );
    assert!(m.desired.warnings.is_empty(), "{:?}", m.desired.warnings);
    // The gateway, whose interfaces lack it, says so (and it writes the status).
    let m = run(&c, "gw");
    let e = condition(&m.status["mail"], "EgressIPOnGateway").unwrap();
    assert_eq!(
        (e.status.as_str(), e.reason.as_str()),
        ("False", "EgressIPNotOnGateway")
    );
    assert_eq!(ready(&m, "mail").0, "True");
    assert!(!m.desired.policies.is_empty());
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("EgressIPNotOnGateway")));
    // The gateway itself sees the address on an interface.
    let local = LocalFacts {
        interfaces: BTreeMap::from([("eth0".into(), vec![GW, Ipv4Addr::new(192, 0, 2, 100)])]),
        ..Default::default()
    };
    let m = compute(&c, "gw", &local);
    assert_eq!(
        condition(&m.status["mail"], "EgressIPOnGateway")
            .unwrap()
            .status,
        "True"
    );
}

#[test]
fn interface_egress_ip_is_resolved_on_the_gateway_only() {
    let mut c = cluster();
    c.policies[0].spec.gateway.interface = Some("eth1".into());
    let local = LocalFacts {
        interfaces: BTreeMap::from([("eth1".into(), vec![Ipv4Addr::new(5, 75, 247, 168)])]),
        ..Default::default()
    };
    let pid = id(&c, "mail");
    let gw = compute(&c, "gw", &local);
    let via = gw.desired.policies[&(pid, "0.0.0.0/0".parse().unwrap())];
    assert_eq!(via.egress_ip4, ip4(Ipv4Addr::new(5, 75, 247, 168)));
    assert_eq!(gw.status["mail"].egress_ip.as_deref(), Some("5.75.247.168"));
    // A worker only needs the gateway's address to tunnel.
    let w = run(&c, "w1");
    let via = w.desired.policies[&(pid, "0.0.0.0/0".parse().unwrap())];
    assert_eq!((via.gateway_ip4, via.egress_ip4), (ip4(GW), 0));
    // Missing on the gateway: the gateway does not SNAT for it.
    let gw = compute(&c, "gw", &LocalFacts::default());
    let r = condition(&gw.status["mail"], "Ready").unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "InterfaceNotFound")
    );
    assert!(gw.desired.policies.is_empty());
}

#[test]
fn an_egress_ip_the_gateway_does_not_route_out_of_its_interface_is_refused() {
    let second = Ipv4Addr::new(203, 0, 113, 10);
    let mut c = cluster();
    c.policies[0].spec.gateway.egress_ip = Some(second.to_string());
    let probe = route_probe("0.0.0.0/0".parse().unwrap());
    assert_eq!(probe, Ipv4Addr::new(0, 0, 0, 1));
    let facts = |out: Option<Option<&str>>| LocalFacts {
        interfaces: BTreeMap::from([("eth0".into(), vec![GW]), ("eth2".into(), vec![second])]),
        routes: out
            .map(|o| BTreeMap::from([((second, probe), o.map(str::to_owned))]))
            .unwrap_or_default(),
        ..Default::default()
    };
    // Control: policy routing sends it out of eth2, where it is.
    let m = compute(&c, "gw", &facts(Some(Some("eth2"))));
    assert_eq!(ready(&m, "mail").0, "True");
    assert!(!m.desired.policies.is_empty());
    // Out of another interface: replies would come back to eth2 for packets that never left.
    for out in [Some("eth0"), None] {
        let m = compute(&c, "gw", &facts(Some(out)));
        let r = condition(&m.status["mail"], "Ready").unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "EgressIPUnrouted"),
            "{out:?}"
        );
        assert!(r.message.contains("eth2"), "{}", r.message);
        assert!(m.desired.policies.is_empty(), "{out:?}: not programmed");
    }
    // Not looked up (the routes are the gateway agent's to see): not judged.
    assert_eq!(ready(&compute(&c, "gw", &facts(None)), "mail").0, "True");
}

#[test]
fn ids_are_stable_whatever_the_order_and_the_node() {
    let mut c = cluster();
    c.policies.push(policy(
        "b",
        None,
        spec(None, Some(match_labels(&[("x", "y")]))),
    ));
    c.policies.push(policy(
        "c",
        None,
        spec(None, Some(match_labels(&[("x", "y")]))),
    ));
    let before: Vec<_> = ["mail", "b", "c"].iter().map(|n| id(&c, n)).collect();
    c.policies.reverse();
    let after: Vec<_> = ["mail", "b", "c"].iter().map(|n| id(&c, n)).collect();
    assert_eq!(before, after);
    assert_eq!(run(&c, "gw").status["b"].datapath_id, Some(before[1]));
    assert!(before.iter().all(|i| (1..MAX_POLICIES).contains(i)));
    // The hash itself is pinned: changing it would change every deployed id.
    // (Reference FNV-1a 32 vectors.)
    assert_eq!(fnv1a(""), 0x811c_9dc5);
    assert_eq!(fnv1a("a"), 0xe40c_292c);
    assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    assert_eq!(
        allocate_ids(["mailu-postfix"])["mailu-postfix"],
        fnv1a("mailu-postfix") % 1023 + 1
    );
}

/// Two distinct names whose hashes collide in the id space.
fn colliding_names() -> (String, String) {
    let mut seen = BTreeMap::new();
    for i in 0.. {
        let n = format!("policy-{i}");
        let slot = fnv1a(&n) % (MAX_POLICIES - 1);
        if let Some(prev) = seen.insert(slot, n.clone()) {
            return (prev, n);
        }
    }
    unreachable!()
}

#[test]
fn a_colliding_younger_policy_never_moves_an_older_one() {
    let (a, b) = colliding_names();
    let ids = allocate_ids([a.as_str()]);
    let both = allocate_ids([a.as_str(), b.as_str()]);
    assert_eq!(ids[&a], both[&a], "the older keeps its id");
    assert_ne!(both[&a], both[&b]);
    assert_eq!(both[&b], both[&a] % 1023 + 1, "probed to the next slot");
    // Through the model: the older (by creation) keeps the hash slot.
    let mut c = cluster();
    c.policies = vec![
        policy(&b, Some(10), spec(None, Some(match_labels(&[("x", "y")])))),
        policy(&a, Some(20), spec(None, Some(match_labels(&[("x", "y")])))),
    ];
    assert_eq!(id(&c, &b), allocate_ids([b.as_str()])[&b]);
}

#[test]
fn more_policies_than_ids_leaves_the_youngest_without() {
    let mut c = cluster();
    c.policies = (0..MAX_POLICIES as i64)
        .map(|i| {
            policy(
                &format!("p{i:04}"),
                Some(i),
                spec(None, Some(match_labels(&[("x", "y")]))),
            )
        })
        .collect();
    let m = run(&c, "w1");
    let ids: BTreeSet<u32> = m.status.values().filter_map(|s| s.datapath_id).collect();
    assert_eq!(ids.len(), MAX_POLICIES as usize - 1, "every id used once");
    let youngest = &m.status[&format!("p{:04}", MAX_POLICIES - 1)];
    assert_eq!(youngest.datapath_id, None);
    assert_eq!(
        condition(youngest, "Ready").unwrap().reason,
        "TooManyPolicies"
    );
}

#[test]
fn host_network_pods_and_pods_without_address_or_node_are_never_endpoints() {
    let mut c = cluster();
    let mut hn = pod(
        "mailu",
        "postfix-hn",
        [192, 0, 2, 11],
        "w1",
        &[("app", "postfix")],
    );
    hn.host_network = true;
    let mut pending = pod(
        "mailu",
        "postfix-new",
        [0, 0, 0, 0],
        "w1",
        &[("app", "postfix")],
    );
    pending.ip = None;
    let mut unscheduled = pod(
        "mailu",
        "postfix-u",
        [10, 244, 1, 8],
        "w1",
        &[("app", "postfix")],
    );
    unscheduled.node = None;
    c.pods.extend([hn, pending, unscheduled]);
    let m = run(&c, "w1");
    let names: Vec<_> = m.desired.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["mailu/imap-0", "mailu/postfix-0"]);
    assert_eq!(m.status["mail"].selected_pods, 2);
}

#[test]
fn two_pods_with_one_address_keep_the_first_and_warn() {
    let mut c = cluster();
    c.pods.push(pod("zzz", "stale", [10, 244, 1, 2], "w1", &[]));
    let m = run(&c, "w1");
    assert_eq!(
        m.desired
            .pods
            .iter()
            .filter(|p| p.ip == Ipv4Addr::new(10, 244, 1, 2))
            .count(),
        1
    );
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("share the address")));
}

#[test]
fn pods_of_an_unknown_node_are_not_accepted_by_the_gateway() {
    let mut c = cluster();
    c.pods.push(pod(
        "mailu",
        "postfix-x",
        [10, 244, 9, 2],
        "ghost",
        &[("app", "postfix")],
    ));
    let d = run(&c, "gw").desired;
    assert!(!d
        .remote_endpoints
        .contains_key(&Ipv4Addr::new(10, 244, 9, 2)));
    assert!(d.warnings.iter().any(|w| w.contains("postfix-x")));
}

#[test]
fn an_unknown_local_node_is_a_warning() {
    let d = run(&cluster(), "nobody").desired;
    assert_eq!(d.node_ip, None);
    assert!(d.pods.is_empty());
    assert!(d.warnings.iter().any(|w| w.contains("nobody")));
}

#[test]
fn a_duplicate_policy_name_is_ignored_with_a_warning() {
    let mut c = cluster();
    c.policies.push(c.policies[0].clone());
    let m = run(&c, "w1");
    assert_eq!(m.status.len(), 1);
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("defined twice")));
}

/// Random junk in every field: the model answers, it never panics.
#[test]
fn random_input_never_panics() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(4);
    let words = [
        "",
        "a",
        "app",
        "postfix",
        "In",
        "NotIn",
        "Exists",
        "DoesNotExist",
        "Bogus",
        "0.0.0.0/0",
        "10.0.0.0/8",
        "::/0",
        "1.2.3.4",
        "300.1.1.1/8",
        "gw",
        "w1",
        "eth0",
    ];
    let mut pick = |rng: &mut StdRng| words[rng.random_range(0..words.len())].to_owned();
    for _ in 0..300 {
        let mut c = cluster();
        for p in 0..rng.random_range(0..4) {
            let sel = |rng: &mut StdRng,
                       pick: &mut dyn FnMut(&mut StdRng) -> String|
             -> Option<LabelSelector> {
                rng.random_bool(0.7).then(|| LabelSelector {
                    match_labels: Some(BTreeMap::from([(pick(rng), pick(rng))])),
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: pick(rng),
                        operator: pick(rng),
                        values: rng.random_bool(0.5).then(|| vec![pick(rng)]),
                    }]),
                })
            };
            let spec = EgressGatewayPolicySpec {
                selectors: (0..rng.random_range(0..3))
                    .map(|_| PodSelection {
                        pod_selector: sel(&mut rng, &mut pick),
                        namespace_selector: sel(&mut rng, &mut pick),
                    })
                    .collect(),
                destination_cidrs: (0..2).map(|_| pick(&mut rng)).collect(),
                excluded_cidrs: (0..2).map(|_| pick(&mut rng)).collect(),
                gateway: GatewaySpec {
                    node_name: rng.random_bool(0.5).then(|| pick(&mut rng)),
                    node_selector: sel(&mut rng, &mut pick),
                    egress_ip: rng.random_bool(0.3).then(|| pick(&mut rng)),
                    interface: rng.random_bool(0.2).then(|| pick(&mut rng)),
                    preempt: rng.random_bool(0.5).then(|| rng.random_bool(0.5)),
                },
                ipv6: None,
            };
            c.policies
                .push(policy(&format!("r{p}"), Some(rng.random_range(0..3)), spec));
        }
        for n in ["gw", "w1", "w2", "ghost"] {
            let m = run(&c, n);
            for st in m.status.values() {
                assert!(condition(st, "Ready").is_some(), "{st:?}");
            }
        }
    }
}

#[test]
fn the_gateway_says_whether_its_tunnel_is_protected() {
    let c = cluster();
    let facts = |default_route: bool, prefix: &str| LocalFacts {
        underlay: Some(UnderlayFacts {
            interface: "eth0".into(),
            default_route,
            prefixes: vec![prefix.parse().unwrap()],
        }),
        ..Default::default()
    };
    // Every peer on the segment of the internet-facing interface: the MAC check holds.
    let m = compute(&c, "gw", &facts(true, "192.0.2.10/24"));
    let t = condition(&m.status["mail"], "TunnelProtected").expect("condition");
    assert_eq!(
        (t.status.as_str(), t.reason.as_str()),
        ("True", "OnLinkPeers")
    );
    // Peers behind a router on the internet-facing interface: spoofable.
    let m = compute(&c, "gw", &facts(true, "192.0.2.10/32"));
    let t = condition(&m.status["mail"], "TunnelProtected").expect("condition");
    assert_eq!(
        (t.status.as_str(), t.reason.as_str()),
        ("False", "RoutedPublicUnderlay")
    );
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("RoutedPublicUnderlay")));
    assert_eq!(m.desired.tunnel.as_ref().map(|p| p.protected), Some(false));
    // A private underlay: protected whatever the routing.
    let m = compute(&c, "gw", &facts(false, "192.0.2.10/32"));
    let t = condition(&m.status["mail"], "TunnelProtected").expect("condition");
    assert_eq!(
        (t.status.as_str(), t.reason.as_str()),
        ("True", "PrivateUnderlay")
    );
    // A worker does not judge the gateway's underlay.
    let m = compute(&c, "w1", &facts(true, "192.0.2.11/32"));
    assert!(condition(&m.status["mail"], "TunnelProtected").is_none());
}

#[test]
fn every_node_address_and_egress_ip_is_kept_from_pods_tunnel_port() {
    let mut c = cluster();
    c.nodes[0].addresses.push(Ipv4Addr::new(5, 75, 247, 168));
    c.policies[0].spec.gateway.egress_ip = Some("192.0.2.100".into());
    let local = LocalFacts {
        interfaces: BTreeMap::from([("cni0".into(), vec![Ipv4Addr::new(10, 244, 1, 1)])]),
        ..Default::default()
    };
    let d = compute(&c, "w1", &local).desired;
    for ip in [
        GW,
        W1,
        Ipv4Addr::new(5, 75, 247, 168),
        Ipv4Addr::new(192, 0, 2, 100),
        Ipv4Addr::new(10, 244, 1, 1),
    ] {
        assert!(
            d.node_addresses.contains(&ip),
            "{ip}: {:?}",
            d.node_addresses
        );
    }
    // Peers are the other nodes' InternalIPs only.
    assert!(!d.nodes.contains(&W1));
    assert!(d.nodes.contains(&GW));
}

#[test]
fn an_egress_ip_that_is_the_gateway_nodes_own_address_is_not_dedicated() {
    // The default (the gateway's InternalIP) and one of its ExternalIPs: shared with the
    // node's own traffic and its unselected pods' masquerade.
    let mut c = cluster();
    let m = run(&c, "gw");
    let e = condition(&m.status["mail"], "EgressIPDedicated").expect("condition");
    assert_eq!(
        (e.status.as_str(), e.reason.as_str()),
        ("False", "NodeAddress")
    );
    assert!(m.desired.warnings.iter().any(|w| w.contains("NodeAddress")));
    c.nodes[1].addresses.push(Ipv4Addr::new(5, 75, 247, 168));
    c.policies[0].spec.gateway.egress_ip = Some("5.75.247.168".into());
    let m = run(&c, "gw");
    assert!(condition(&m.status["mail"], "EgressIPDedicated").is_some());
    // Control: a dedicated address (on the gateway's interface, no node address).
    c.policies[0].spec.gateway.egress_ip = Some("192.0.2.100".into());
    let local = LocalFacts {
        interfaces: BTreeMap::from([("eth0".into(), vec![GW, Ipv4Addr::new(192, 0, 2, 100)])]),
        ..Default::default()
    };
    let m = compute(&c, "gw", &local);
    assert!(condition(&m.status["mail"], "EgressIPDedicated").is_none());
    assert!(!m.desired.warnings.iter().any(|w| w.contains("NodeAddress")));
}

#[test]
fn the_gateway_says_when_its_own_connections_can_take_nat_ports() {
    let c = cluster();
    let facts = |ephemeral: [u16; 2], reserved: Vec<[u16; 2]>| LocalFacts {
        host_ports: Some(ports::HostPorts {
            ephemeral,
            reserved,
            nat: [61000, 65535],
        }),
        ..Default::default()
    };
    // A host range widened over the NAT range (a common tuning): False, with what to set.
    let m = compute(&c, "gw", &facts([1024, 65535], vec![]));
    let h = condition(&m.status["mail"], "HostPortsApart").expect("condition");
    assert_eq!(
        (h.status.as_str(), h.reason.as_str()),
        ("False", "EphemeralPortsOverlap")
    );
    assert!(h
        .message
        .contains("ip_local_reserved_ports=\"61000-65535\""));
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("EphemeralPortsOverlap")));
    // Control: the same range with the NAT range reserved, and Linux's default range.
    for f in [
        facts([1024, 65535], vec![[61000, 65535]]),
        facts([32768, 60999], vec![]),
    ] {
        let m = compute(&c, "gw", &f);
        let h = condition(&m.status["mail"], "HostPortsApart").expect("condition");
        assert_eq!(
            (h.status.as_str(), h.reason.as_str()),
            ("True", "OutsideEphemeralPorts")
        );
    }
    // Only the gateway's agent knows its ports; a worker's are not the gateway's.
    let m = compute(&c, "w1", &facts([1024, 65535], vec![]));
    assert!(condition(&m.status["mail"], "HostPortsApart").is_none());
    // A dedicated egress IP shares no ports with the host: no condition.
    let mut c = c;
    c.policies[0].spec.gateway.egress_ip = Some("192.0.2.100".into());
    let mut f = facts([1024, 65535], vec![]);
    f.interfaces = BTreeMap::from([("eth0".into(), vec![GW, Ipv4Addr::new(192, 0, 2, 100)])]);
    let m = compute(&c, "gw", &f);
    assert!(condition(&m.status["mail"], "HostPortsApart").is_none());
}

// The gateway group (see `group`).

use std::time::Duration;

use super::group::{self, TransitionReason, PRIORITY_LABEL, TIE_TOLERANCE};

fn alive(secs: u64) -> GatewayHealth {
    GatewayHealth::Alive {
        healthy_for: Duration::from_secs(secs),
    }
}

/// `cluster()` with gateways `ga`, `gb`, `gc` (all labelled) besides `gw`, whose label is
/// removed: a group of three, in name order.
fn group_cluster() -> Cluster {
    let mut c = cluster();
    for n in &mut c.nodes {
        n.labels.clear();
    }
    for (name, last) in [("gc", 23), ("ga", 21), ("gb", 22)] {
        c.nodes
            .push(node(name, [192, 0, 2, last], &[("egress-gateway", "true")]));
    }
    c
}

fn health(h: &[(&str, GatewayHealth)]) -> LocalFacts {
    LocalFacts {
        gateway_health: h.iter().map(|(n, h)| ((*n).to_owned(), *h)).collect(),
        ..Default::default()
    }
}

/// The active gateway of policy `mail` as `node` sees it with `local`, and the gateway address
/// its maps send the policy's traffic to.
fn active(c: &Cluster, node: &str, local: &LocalFacts) -> (String, Ipv4Addr) {
    let m = compute(c, node, local);
    let gw = m.status["mail"].gateway_node.clone().expect("a gateway");
    let via = m
        .desired
        .policies
        .values()
        .find(|v| v.action == ACTION_VIA_GATEWAY)
        .expect("programmed");
    (gw, Ipv4Addr::from(u32::from_be(via.gateway_ip4)))
}

fn active_name(c: &Cluster, local: &LocalFacts) -> String {
    active(c, "w1", local).0
}

#[test]
fn a_group_is_ordered_by_name_without_priorities() {
    let c = group_cluster();
    let m = run(&c, "w1");
    let st = &m.status["mail"];
    assert_eq!(st.gateway_group, ["ga", "gb", "gc"]);
    assert_eq!(st.gateway_node.as_deref(), Some("ga"));
    assert!(st.healthy_gateways.is_empty(), "nothing heard");
    assert_eq!(
        active(&c, "w1", &LocalFacts::default()),
        ("ga".into(), Ipv4Addr::new(192, 0, 2, 21))
    );
}

#[test]
fn the_priority_label_orders_the_group_lower_first_and_unlabelled_last() {
    let mut c = group_cluster();
    let set = |c: &mut Cluster, n: &str, p: &str| {
        c.nodes
            .iter_mut()
            .find(|x| x.name == n)
            .unwrap()
            .labels
            .insert(PRIORITY_LABEL.into(), p.into());
    };
    set(&mut c, "gc", "10");
    set(&mut c, "gb", "-5");
    let st = &run(&c, "w1").status["mail"];
    assert_eq!(st.gateway_group, ["gb", "gc", "ga"]);
    assert_eq!(st.gateway_node.as_deref(), Some("gb"));
    // Equal priorities: by name. Not an integer: as if absent.
    set(&mut c, "gc", "-5");
    set(&mut c, "ga", "high");
    let st = &run(&c, "w1").status["mail"];
    assert_eq!(st.gateway_group, ["gb", "gc", "ga"]);
    // Numbers, not strings: 9 before 10.
    set(&mut c, "ga", "10");
    set(&mut c, "gb", "9");
    set(&mut c, "gc", "11");
    assert_eq!(
        run(&c, "w1").status["mail"].gateway_group,
        ["gb", "ga", "gc"]
    );
}

#[test]
fn with_no_health_information_the_first_member_is_active_as_today() {
    let c = group_cluster();
    for n in ["w1", "w2", "ga", "gb", "gc"] {
        assert_eq!(
            active(&c, n, &LocalFacts::default()).0,
            "ga",
            "seen from {n}"
        );
    }
    // Health of nodes outside the group changes nothing.
    assert_eq!(
        active_name(&c, &health(&[("w2", GatewayHealth::Dead)])),
        "ga"
    );
}

#[test]
fn a_group_of_one_is_the_gateway_whatever_its_health() {
    let c = cluster();
    for h in [GatewayHealth::Dead, alive(5)] {
        let local = health(&[("gw", h)]);
        let m = compute(&c, "w1", &local);
        assert_eq!(m.status["mail"].gateway_node.as_deref(), Some("gw"));
        assert_eq!(ready(&m, "mail"), ("True".into(), "Active".into()));
        assert_eq!(
            m,
            compute(&c, "w1", &LocalFacts::default()).with_health_of(&m)
        );
    }
}

impl Model {
    /// This model with the health-dependent status fields of `other` (everything else must
    /// be equal to the model without health information).
    fn with_health_of(mut self, other: &Model) -> Model {
        for (name, st) in &mut self.status {
            st.healthy_gateways = other.status[name].healthy_gateways.clone();
        }
        self
    }
}

#[test]
fn the_member_healthy_the_longest_is_active() {
    let c = group_cluster();
    let local = health(&[("ga", alive(10)), ("gb", alive(300)), ("gc", alive(20))]);
    assert_eq!(
        active(&c, "w1", &local),
        ("gb".into(), Ipv4Addr::new(192, 0, 2, 22))
    );
    let st = &compute(&c, "w1", &local).status["mail"];
    assert_eq!(st.healthy_gateways, ["ga", "gb", "gc"]);
    let r = condition(st, "Ready").unwrap();
    assert!(r.message.contains("healthy the longest"), "{}", r.message);
}

#[test]
fn members_healthy_about_as_long_are_ordered_by_the_group() {
    let c = group_cluster();
    let almost = TIE_TOLERANCE - Duration::from_millis(1);
    let local = |gc: Duration| {
        health(&[
            (
                "gb",
                GatewayHealth::Alive {
                    healthy_for: Duration::from_secs(100),
                },
            ),
            (
                "gc",
                GatewayHealth::Alive {
                    healthy_for: Duration::from_secs(100) + gc,
                },
            ),
        ])
    };
    assert_eq!(active_name(&c, &local(almost)), "gb");
    assert_eq!(active_name(&c, &local(TIE_TOLERANCE)), "gc");
}

#[test]
fn a_dead_active_member_fails_over_to_the_next_healthy_one() {
    let c = group_cluster();
    let before = health(&[("ga", alive(100)), ("gb", alive(100)), ("gc", alive(100))]);
    assert_eq!(active_name(&c, &before), "ga");
    let after = health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", alive(101)),
        ("gc", alive(101)),
    ]);
    assert_eq!(
        active(&c, "w1", &after),
        ("gb".into(), Ipv4Addr::new(192, 0, 2, 22))
    );
    let st = &compute(&c, "w1", &after).status["mail"];
    assert_eq!(st.healthy_gateways, ["gb", "gc"]);
    assert_eq!(ready(&compute(&c, "w1", &after), "mail").0, "True");
}

#[test]
fn a_returning_member_stands_by() {
    let c = group_cluster();
    // ga died, gb took over; ga is back and has been healthy for a second.
    let back = health(&[
        ("ga", alive(1)),
        ("gb", alive(500)),
        ("gc", GatewayHealth::Dead),
    ]);
    assert_eq!(active_name(&c, &back), "gb");
    // However long after: the lead gb had stays.
    let later = health(&[
        ("ga", alive(3601)),
        ("gb", alive(4100)),
        ("gc", alive(3000)),
    ]);
    assert_eq!(active_name(&c, &later), "gb");
    // Until gb dies: ga (healthy longer than gc) takes over.
    let gb_dead = health(&[
        ("ga", alive(3700)),
        ("gb", GatewayHealth::Dead),
        ("gc", alive(3100)),
    ]);
    assert_eq!(active_name(&c, &gb_dead), "ga");
}

#[test]
fn preempt_makes_the_first_healthy_member_active() {
    let mut c = group_cluster();
    c.policies[0].spec.gateway.preempt = Some(true);
    let back = health(&[("ga", alive(1)), ("gb", alive(500)), ("gc", alive(900))]);
    assert_eq!(active_name(&c, &back), "ga");
    let st = &compute(&c, "w1", &back).status["mail"];
    let r = condition(st, "Ready").unwrap();
    assert!(r.message.contains("preempt"), "{}", r.message);
    let ga_dead = health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", alive(500)),
        ("gc", alive(900)),
    ]);
    assert_eq!(active_name(&c, &ga_dead), "gb");
    // preempt: false is the default.
    c.policies[0].spec.gateway.preempt = Some(false);
    assert_eq!(active_name(&c, &back), "gc");
}

#[test]
fn members_not_heard_yet_come_after_the_living_ones() {
    let c = group_cluster();
    assert_eq!(active_name(&c, &health(&[("gc", alive(1))])), "gc");
    // None alive: the first not known dead.
    let h = health(&[("ga", GatewayHealth::Dead)]);
    assert_eq!(active_name(&c, &h), "gb");
    let m = compute(&c, "w1", &h);
    assert_eq!(ready(&m, "mail"), ("True".into(), "Active".into()));
}

#[test]
fn with_every_member_dead_the_policy_fails_closed() {
    let c = group_cluster();
    let dead = health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", GatewayHealth::Dead),
        ("gc", GatewayHealth::Dead),
    ]);
    let m = compute(&c, "w1", &dead);
    // Not Ready, and said why.
    assert_eq!(
        ready(&m, "mail"),
        ("False".into(), "NoHealthyGateway".into())
    );
    assert!(m
        .desired
        .warnings
        .iter()
        .any(|w| w.contains("NoHealthyGateway")));
    // Still programmed to the first member: selected pods' traffic never takes the normal
    // path (their node's own address).
    assert_eq!(
        active(&c, "w1", &dead),
        ("ga".into(), Ipv4Addr::new(192, 0, 2, 21))
    );
    assert_eq!(
        m.desired
            .pods
            .iter()
            .find(|p| p.name == "mailu/postfix-0")
            .unwrap()
            .policy_id,
        Some(id(&c, "mail"))
    );
    assert!(m.status["mail"].healthy_gateways.is_empty());
    // The first member accepts them, should it still work.
    let ga = compute(&c, "ga", &dead);
    assert!(ga
        .desired
        .remote_endpoints
        .contains_key(&Ipv4Addr::new(10, 244, 1, 2)));
}

#[test]
fn only_the_active_member_accepts_the_pods_of_other_nodes() {
    let c = group_cluster();
    let h = health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", alive(9)),
        ("gc", alive(9)),
    ]);
    let postfix0 = Ipv4Addr::new(10, 244, 1, 2);
    assert!(compute(&c, "gb", &h)
        .desired
        .remote_endpoints
        .contains_key(&postfix0));
    for standby in ["ga", "gc"] {
        assert!(
            compute(&c, standby, &h).desired.remote_endpoints.is_empty(),
            "{standby}"
        );
    }
}

#[test]
fn nodes_with_the_same_health_view_pick_the_same_member() {
    let c = group_cluster();
    // Each node measures the answers at its own moment: a few milliseconds apart.
    let view = |skew_ms: u64| {
        let d = |s: u64| GatewayHealth::Alive {
            healthy_for: Duration::from_secs(s) + Duration::from_millis(skew_ms),
        };
        health(&[("ga", GatewayHealth::Dead), ("gb", d(40)), ("gc", d(700))])
    };
    let picks: BTreeSet<(String, Ipv4Addr)> = [("w1", 0), ("w2", 7), ("gb", 13), ("gc", 90)]
        .iter()
        .map(|(n, skew)| active(&c, n, &view(*skew)))
        .collect();
    assert_eq!(picks.len(), 1, "{picks:?}");
    assert_eq!(picks.first().unwrap().0, "gc");
    // The active gateway itself agrees that it is: it accepts the other nodes' pods.
    assert!(!compute(&c, "gc", &view(90))
        .desired
        .remote_endpoints
        .is_empty());
}

#[test]
fn convergence_holds_for_every_view_of_three_members() {
    // Every combination of dead / alive (short, long) members: each node's pick depends only
    // on the view, and it is a member alive in it whenever one is.
    let c = group_cluster();
    let states = [GatewayHealth::Dead, alive(5), alive(5000)];
    for a in states {
        for b in states {
            for cc in states {
                let v = health(&[("ga", a), ("gb", b), ("gc", cc)]);
                let picks: BTreeSet<_> = ["w1", "w2", "ga", "gb", "gc"]
                    .iter()
                    .map(|n| active(&c, n, &v).0)
                    .collect();
                assert_eq!(picks.len(), 1, "{v:?}: {picks:?}");
                let pick = picks.first().unwrap().clone();
                let any_alive = [a, b, cc].iter().any(|h| *h != GatewayHealth::Dead);
                assert_eq!(
                    any_alive,
                    v.gateway_health[&pick] != GatewayHealth::Dead,
                    "{v:?}: {pick}"
                );
            }
        }
    }
}

#[test]
fn a_node_name_gateway_is_a_group_of_one() {
    let mut c = group_cluster();
    c.policies[0].spec.gateway = GatewaySpec {
        node_name: Some("gb".into()),
        ..Default::default()
    };
    let m = compute(
        &c,
        "w1",
        &health(&[("gb", GatewayHealth::Dead), ("ga", alive(9))]),
    );
    assert_eq!(m.status["mail"].gateway_group, ["gb"]);
    assert_eq!(m.status["mail"].gateway_node.as_deref(), Some("gb"));
}

fn transition_of(old: &PolicyStatus, new: &PolicyStatus) -> Option<(String, String)> {
    group::transition(Some(old), new).map(|t| (t.reason, t.to.unwrap_or_default()))
}

#[test]
fn the_last_transition_says_why_the_active_gateway_changed() {
    let c = group_cluster();
    let st = |h: &LocalFacts| compute(&c, "w1", h).status["mail"].clone();
    let all = st(&health(&[
        ("ga", alive(9)),
        ("gb", alive(9)),
        ("gc", alive(9)),
    ]));
    let ga_dead = st(&health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", alive(9)),
        ("gc", alive(9)),
    ]));
    assert_eq!(
        transition_of(&all, &ga_dead),
        Some((
            TransitionReason::GatewayUnhealthy.as_str().into(),
            "gb".into()
        ))
    );
    // No change: the old transition is kept.
    let mut with_t = ga_dead.clone();
    with_t.last_transition = group::transition(Some(&all), &ga_dead);
    assert_eq!(
        group::transition(Some(&with_t), &ga_dead),
        with_t.last_transition
    );
    // Every member dead: from gb to ga, because gb is unhealthy.
    let none = st(&health(&[
        ("ga", GatewayHealth::Dead),
        ("gb", GatewayHealth::Dead),
        ("gc", GatewayHealth::Dead),
    ]));
    assert_eq!(
        transition_of(&ga_dead, &none),
        Some((
            TransitionReason::GatewayUnhealthy.as_str().into(),
            "ga".into()
        ))
    );
    // Preemption.
    let mut p = c.clone();
    p.policies[0].spec.gateway.preempt = Some(true);
    let back =
        compute(&p, "w1", &health(&[("ga", alive(1)), ("gb", alive(9))])).status["mail"].clone();
    assert_eq!(
        transition_of(&ga_dead, &back),
        Some((TransitionReason::Preempted.as_str().into(), "ga".into()))
    );
    // The old gateway left the group.
    let mut gone = c.clone();
    gone.nodes.retain(|n| n.name != "ga");
    let without = compute(&gone, "w1", &LocalFacts::default()).status["mail"].clone();
    assert_eq!(
        transition_of(&all, &without),
        Some((TransitionReason::GroupChanged.as_str().into(), "gb".into()))
    );
    // A first status has no transition; a policy that finds its gateway has one.
    assert_eq!(group::transition(None, &all), None);
    let broken = PolicyStatus::default();
    assert_eq!(
        transition_of(&broken, &all),
        Some((TransitionReason::GatewayFound.as_str().into(), "ga".into()))
    );
}
