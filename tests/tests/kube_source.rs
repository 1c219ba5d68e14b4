//! The Kubernetes source against the in-process fake API server (`egress_tests::fake_api`),
//! fed real k8s-openapi JSON and scripted: a watch that ends (the client re-watches from the
//! last resourceVersion), a watch that answers `410 Gone` (the client relists), and the status
//! written with server-side apply.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use egress_agent::{
    kube_source::{apply_status, KubeSource, FIELD_MANAGER},
    model::{self, EgressGatewayPolicy, EgressGatewayPolicySpec},
};
use egress_tests::fake_api::{FakeApi, Scripted};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, NodeAddress, NodeStatus, Pod, PodSpec, PodStatus},
    networking::v1::{ServiceCIDR, ServiceCIDRSpec},
};
use kube::api::ObjectMeta;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn labels(app: &str) -> Option<BTreeMap<String, String>> {
    Some([("app".to_owned(), app.to_owned())].into())
}

fn pod(name: &str, ip: &str, app: &str, rv: &str) -> Value {
    serde_json::to_value(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("mailu".into()),
            labels: labels(app),
            resource_version: Some(rv.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("w1".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            ..Default::default()
        }),
    })
    .expect("a pod serializes")
}

fn node(name: &str, ip: &str, gateway: bool) -> Value {
    serde_json::to_value(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: gateway.then(|| [("egress-gateway".to_owned(), "true".to_owned())].into()),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("a node serializes")
}

fn policy() -> Value {
    let spec: EgressGatewayPolicySpec = serde_norway::from_str(
        r#"
selectors: [{ podSelector: { matchLabels: { app: mail } } }]
destinationCIDRs: [0.0.0.0/0]
gateway: { nodeSelector: { matchLabels: { egress-gateway: "true" } } }
"#,
    )
    .expect("valid spec");
    let mut p = EgressGatewayPolicy::new("mail", spec);
    p.metadata.resource_version = Some("1".into());
    p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2024-01-01T00:00:00Z".parse().expect("a timestamp"),
    ));
    serde_json::to_value(p).expect("a policy serializes")
}

/// A fake API server with the cluster the tests see: nodes `gw` (the labelled gateway) and
/// `w1`, namespace `mailu`, the `mail` policy, and pods scripted: list (rv 100: `a`
/// unselected) -> watch from 100 adds `b` and ends -> watch from 101 answers 410 Gone ->
/// relist (rv 200: `a` relabelled onto the policy, `b`, `c`) -> watch from 200 stays open.
fn fake_api_server() -> (String, FakeApi) {
    let fake = FakeApi::new().expect("a fake API server");
    fake.put(node("gw", "192.0.2.10", true));
    fake.put(node("w1", "192.0.2.11", false));
    fake.put(
        serde_json::to_value(Namespace {
            metadata: ObjectMeta {
                name: Some("mailu".into()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("a namespace serializes"),
    );
    fake.put(policy());
    fake.script(
        "Pod",
        [
            Scripted::List {
                resource_version: "100".into(),
                items: vec![pod("a", "10.244.1.2", "other", "100")],
            },
            Scripted::EndedWatch {
                events: vec![
                    json!({"type": "ADDED", "object": pod("b", "10.244.1.3", "other", "101")}),
                ],
            },
            Scripted::Gone,
            Scripted::List {
                resource_version: "200".into(),
                items: vec![
                    pod("a", "10.244.1.2", "mail", "150"),
                    pod("b", "10.244.1.3", "other", "101"),
                    pod("c", "10.244.1.4", "mail", "160"),
                ],
            },
        ],
    );
    let url = fake.serve().expect("serve on loopback");
    (url, fake)
}

fn client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().expect("a URL"));
    kube::Client::try_from(config).expect("a client")
}

async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn watches_survive_a_closed_watch_and_relist_after_410_gone() {
    let (url, fake) = fake_api_server();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let source = KubeSource::start(client(&url), vec!["10.244.0.0/16".parse().unwrap()], tx).await;
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("every watch lists first");

    // First list: one pod, unselected; the policy is active with the labelled gateway.
    let c = source.snapshot();
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.namespaces.len(), 1);
    assert_eq!(c.policies[0].created, Some(1_704_067_200));
    let m = model::compute(&c, "w1", &model::LocalFacts::default());
    assert_eq!(m.status["mail"].gateway_node.as_deref(), Some("gw"));

    // The relist after 410 Gone brings `a` relabelled, and `c`.
    let pods = eventually(Duration::from_secs(15), || {
        let c = source.snapshot();
        let mut names: Vec<_> = c.pods.iter().map(|p| p.name.clone()).collect();
        names.sort();
        (names == ["a", "b", "c"]
            && c.pods
                .iter()
                .any(|p| p.name == "a" && p.labels["app"] == "mail"))
        .then_some(c)
    })
    .await
    .unwrap_or_else(|| panic!("no relist after 410 Gone: {:?}", fake.requests()));
    let m = model::compute(&pods, "w1", &model::LocalFacts::default());
    let selected: Vec<_> = m
        .desired
        .pods
        .iter()
        .filter(|p| p.policy_id.is_some())
        .map(|p| p.ip)
        .collect();
    assert_eq!(
        selected,
        [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 4)]
    );
    assert_eq!(m.status["mail"].selected_pods, 2);

    // The requests: list, watch from 100 (ended), watch from 101 (410), relist, watch from 200.
    // (The last watch may start a moment after the relisted state is visible.)
    let pod_reqs = || -> Vec<String> {
        fake.requests()
            .iter()
            .filter(|s| s.path == "/api/v1/pods")
            .map(|s| match s.query.get("watch") {
                Some(_) => format!("watch@{}", s.query.get("resourceVersion").map_or("", |v| v)),
                None => "list".into(),
            })
            .collect()
    };
    let _ = eventually(Duration::from_secs(5), || {
        (pod_reqs().len() >= 5).then_some(())
    })
    .await;
    let seen = fake.requests();
    let pod_reqs = pod_reqs();
    assert_eq!(
        pod_reqs,
        ["list", "watch@100", "watch@101", "list", "watch@200"],
        "{seen:#?}"
    );
    // Every change woke the reconciler.
    let mut wakes = 0;
    while rx.try_recv().is_ok() {
        wakes += 1;
    }
    assert!(wakes >= 2, "woken {wakes} times");
}

#[tokio::test]
async fn status_is_written_with_server_side_apply() {
    let (url, fake) = fake_api_server();
    let status = model::PolicyStatus {
        gateway_node: Some("gw".into()),
        egress_ip: Some("5.75.247.168".into()),
        selected_pods: 2,
        datapath_id: Some(7),
        conditions: vec![model::PolicyCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Active".into(),
            message: "gateway gw".into(),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
        }],
        ..Default::default()
    };
    apply_status(&client(&url), "mail", &status)
        .await
        .expect("status applied");
    let seen = fake.requests();
    let p = seen
        .iter()
        .find(|s| s.method == "PATCH")
        .expect("a PATCH request");
    assert_eq!(
        p.path,
        "/apis/egress-gateway.io/v1alpha1/egressgatewaypolicies/mail/status"
    );
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    assert_eq!(
        p.query.get("fieldManager").map(String::as_str),
        Some(FIELD_MANAGER)
    );
    assert_eq!(p.query.get("force").map(String::as_str), Some("true"));
    let body: Value = serde_json::from_str(&p.body).expect("a JSON body");
    assert_eq!(body["apiVersion"], "egress-gateway.io/v1alpha1");
    assert_eq!(body["kind"], "EgressGatewayPolicy");
    assert_eq!(body["status"]["selectedPods"], 2);
    assert_eq!(body["status"]["egressIP"], "5.75.247.168");
    assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
    assert!(
        body.get("spec").is_none(),
        "status apply never touches the spec"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_clear_error_not_a_hang() {
    // Nothing listens on this port once the listener is dropped.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let (tx, _rx) = mpsc::unbounded_channel();
    let source = KubeSource::start(client(&url), vec![], tx).await;
    let e = source
        .wait_synced(Duration::from_millis(500))
        .await
        .expect_err("cannot sync");
    assert!(
        e.to_string().contains("never completed its first list"),
        "{e}"
    );
}

fn service_cidr(name: &str, cidrs: &[&str]) -> Value {
    serde_json::to_value(ServiceCIDR {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
        }),
        ..Default::default()
    })
    .expect("a ServiceCIDR serializes")
}

/// k3s's service CIDR (10.43/16) comes from the cluster's ServiceCIDR objects, besides the
/// configured CIDRs, and follows them; a cluster that does not serve them (404) leaves the
/// configured CIDRs alone, and the caches still sync.
#[tokio::test]
async fn service_cidrs_come_from_servicecidr_objects_where_served() {
    let configured: ipnet::Ipv4Net = "10.42.0.0/16".parse().unwrap();
    let (url, fake) = fake_api_server();
    fake.put(service_cidr(
        "kubernetes",
        &["10.43.0.0/16", "fd00:43::/112"],
    ));
    let (tx, _rx) = mpsc::unbounded_channel();
    let source = KubeSource::start(client(&url), vec![configured], tx).await;
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced");
    assert_eq!(
        source.snapshot().cluster_cidrs,
        [configured, "10.43.0.0/16".parse().unwrap()]
    );
    fake.put(service_cidr("extra", &["10.44.0.0/24"]));
    let grown = eventually(Duration::from_secs(10), || {
        let c = source.snapshot().cluster_cidrs;
        (c.len() == 3).then_some(c)
    })
    .await
    .expect("the new ServiceCIDR is seen");
    assert!(
        grown.contains(&"10.44.0.0/24".parse().unwrap()),
        "{grown:?}"
    );

    // Not served: the configured CIDRs alone, and no watch of the missing resource.
    let (url, fake) = fake_api_server();
    fake.unserve("ServiceCIDR");
    let (tx, _rx) = mpsc::unbounded_channel();
    let source = KubeSource::start(client(&url), vec![configured], tx).await;
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced without ServiceCIDRs");
    assert_eq!(source.snapshot().cluster_cidrs, [configured]);
    let asked: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("servicecidrs"))
        .collect();
    assert_eq!(asked.len(), 1, "one probe, then nothing: {asked:?}");
}
