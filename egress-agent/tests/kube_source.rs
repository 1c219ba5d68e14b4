//! The Kubernetes source against an in-process fake API server that speaks list and watch with
//! real k8s-openapi JSON: a watch that ends (the client re-watches from the last
//! resourceVersion), a watch that answers `410 Gone` (the client relists), and the status
//! written with server-side apply.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch},
    Router,
};
use egress_agent::{
    kube_source::{apply_status, KubeSource, FIELD_MANAGER},
    model::{self, EgressGatewayPolicy, EgressGatewayPolicySpec},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress, NodeStatus, Pod, PodSpec, PodStatus,
};
use kube::api::ObjectMeta;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One request the fake server saw.
#[derive(Clone, Debug)]
struct Seen {
    method: &'static str,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: String,
}

#[derive(Default)]
struct Fake {
    seen: Vec<Seen>,
    pod_lists: usize,
}

type Shared = Arc<Mutex<Fake>>;

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

fn json_response(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("a response")
}

fn list(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> Response {
    json_response(&json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": { "resourceVersion": rv },
        "items": items,
    }))
}

/// A watch response: `events`, one JSON object per line, then the stream either ends (the
/// server closed the watch) or stays open.
fn watch(events: Vec<Value>, then_end: bool) -> Response {
    let lines = futures::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(Bytes::from(format!("{e}\n")))),
    );
    let body = if then_end {
        Body::from_stream(lines)
    } else {
        Body::from_stream(lines.chain(futures::stream::pending()))
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("a response")
}

fn record(s: &Shared, method: &'static str, path: String, q: &BTreeMap<String, String>) {
    s.lock().unwrap().seen.push(Seen {
        method,
        path,
        query: q.clone(),
        content_type: String::new(),
        body: String::new(),
    });
}

/// Pods: list (rv 100: `a` unselected) -> watch from 100 adds `b` and ends -> watch from 101
/// answers 410 Gone -> relist (rv 200: `a` relabelled onto the policy, `b`, `c`) -> watch
/// from 200 stays open.
async fn pods(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    record(&s, "GET", "/api/v1/pods".into(), &q);
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let n = {
            let mut f = s.lock().unwrap();
            f.pod_lists += 1;
            f.pod_lists
        };
        return if n == 1 {
            list(
                "v1",
                "PodList",
                "100",
                vec![pod("a", "10.244.1.2", "other", "100")],
            )
        } else {
            list(
                "v1",
                "PodList",
                "200",
                vec![
                    pod("a", "10.244.1.2", "mail", "150"),
                    pod("b", "10.244.1.3", "other", "101"),
                    pod("c", "10.244.1.4", "mail", "160"),
                ],
            )
        };
    }
    match q.get("resourceVersion").map(String::as_str) {
        Some("100") => watch(
            vec![json!({"type": "ADDED", "object": pod("b", "10.244.1.3", "other", "101")})],
            true,
        ),
        Some("101") => watch(
            vec![json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 101 (180)", "reason": "Expired", "code": 410
            }})],
            true,
        ),
        _ => watch(vec![], false),
    }
}

async fn simple(
    State(s): State<Shared>,
    Path(what): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    record(&s, "GET", format!("/api/v1/{what}"), &q);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(vec![], false);
    }
    match what.as_str() {
        "nodes" => list(
            "v1",
            "NodeList",
            "1",
            vec![
                node("gw", "192.0.2.10", true),
                node("w1", "192.0.2.11", false),
            ],
        ),
        "namespaces" => list(
            "v1",
            "NamespaceList",
            "1",
            vec![serde_json::to_value(Namespace {
                metadata: ObjectMeta {
                    name: Some("mailu".into()),
                    resource_version: Some("1".into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .unwrap()],
        ),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn policies(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    record(&s, "GET", "/policies".into(), &q);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(vec![], false);
    }
    list(
        "egress-gateway.io/v1alpha1",
        "EgressGatewayPolicyList",
        "1",
        vec![policy()],
    )
}

async fn status(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    s.lock().unwrap().seen.push(Seen {
        method: "PATCH",
        path: format!("/policies/{name}/status"),
        query: q,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        body: body.clone(),
    });
    let mut obj = policy();
    let patch: Value = serde_json::from_str(&body).unwrap_or_default();
    obj["status"] = patch["status"].clone();
    json_response(&obj)
}

async fn fake_api_server() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/{what}", get(simple))
        .route(
            "/apis/egress-gateway.io/v1alpha1/egressgatewaypolicies",
            get(policies),
        )
        .route(
            "/apis/egress-gateway.io/v1alpha1/egressgatewaypolicies/{name}/status",
            patch(status),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), shared)
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
    let (url, fake) = fake_api_server().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let source = KubeSource::start(client(&url), vec!["10.244.0.0/16".parse().unwrap()], tx);
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
    .unwrap_or_else(|| panic!("no relist after 410 Gone: {:?}", fake.lock().unwrap().seen));
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
        let seen = fake.lock().unwrap().seen.clone();
        seen.iter()
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
    let seen = fake.lock().unwrap().seen.clone();
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
    let (url, fake) = fake_api_server().await;
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
    };
    apply_status(&client(&url), "mail", &status)
        .await
        .expect("status applied");
    let seen = fake.lock().unwrap().seen.clone();
    let p = seen
        .iter()
        .find(|s| s.method == "PATCH")
        .expect("a PATCH request");
    assert_eq!(p.path, "/policies/mail/status");
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
    let source = KubeSource::start(client(&url), vec![], tx);
    let e = source
        .wait_synced(Duration::from_millis(500))
        .await
        .expect_err("cannot sync");
    assert!(
        e.to_string().contains("never completed its first list"),
        "{e}"
    );
}
