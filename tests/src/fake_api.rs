//! A small in-process fake Kubernetes API server: it serves list and watch for pods,
//! namespaces, nodes and `EgressGatewayPolicy` objects held in memory, accepts status patches,
//! pushes a watch event to every open watch when a test changes an object, and records every
//! request it sees.
//!
//! A test can script the next answers for a collection ([`FakeApi::script`]): a list at a
//! given resourceVersion, a watch that ends, a watch that answers `410 Gone`. Scripted answers
//! come first, in order; then the live objects are served.
//!
//! It listens on 127.0.0.1: in the current network namespace ([`FakeApi::serve`], for the
//! Kubernetes-source tests) or inside each lab node's ([`FakeApi::serve_in`], so the real
//! agents reach it with an ordinary kubeconfig).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Result;
use axum::{
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch},
    Router,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::lab::in_netns;

const POLICIES: &str = "/apis/egress-gateway.io/v1alpha1/egressgatewaypolicies";
const SERVICE_CIDRS: &str = "/apis/networking.k8s.io/v1/servicecidrs";

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    /// The URL path, e.g. `/api/v1/pods`.
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: String,
}

impl Request {
    /// A watch (`?watch=true`), not a list.
    pub fn is_watch(&self) -> bool {
        is_watch(&self.query)
    }
}

/// A scripted answer to a list or a watch of one collection.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// The next list: `items` at `resource_version`.
    List {
        resource_version: String,
        items: Vec<Value>,
    },
    /// The next watch: `events` (`{"type": .., "object": ..}`), then the server ends it.
    EndedWatch { events: Vec<Value> },
    /// The next watch answers `410 Gone` (an `ERROR` event: the resourceVersion the client
    /// asked for is too old) and ends: the client must list again.
    Gone,
}

#[derive(Default)]
struct Objects {
    /// Collection path -> name -> object.
    by_path: BTreeMap<String, BTreeMap<String, Value>>,
    rv: u64,
    /// Status patches received: (policy name, patch body).
    status_patches: Vec<(String, Value)>,
    /// Every request, in order.
    requests: Vec<Request>,
    /// Collection path -> scripted answers still to give.
    scripts: BTreeMap<String, VecDeque<Scripted>>,
    /// Collection paths answered with 404 (a resource this cluster does not serve).
    unserved: BTreeSet<String>,
}

#[derive(Clone)]
struct Shared {
    objects: Arc<Mutex<Objects>>,
    events: broadcast::Sender<(String, Value)>,
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    shared: Shared,
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
}

/// The collection path of objects of `kind` (`Pod`, `Namespace`, `Node`, anything else:
/// `EgressGatewayPolicy`).
fn collection_path(kind: &str) -> &'static str {
    match kind {
        "Pod" => "/api/v1/pods",
        "Namespace" => "/api/v1/namespaces",
        "Node" => "/api/v1/nodes",
        "ServiceCIDR" => SERVICE_CIDRS,
        _ => POLICIES,
    }
}

fn list_kind(path: &str) -> (&'static str, &'static str) {
    match path {
        "/api/v1/pods" => ("v1", "PodList"),
        "/api/v1/namespaces" => ("v1", "NamespaceList"),
        "/api/v1/nodes" => ("v1", "NodeList"),
        SERVICE_CIDRS => ("networking.k8s.io/v1", "ServiceCIDRList"),
        _ => ("egress-gateway.io/v1alpha1", "EgressGatewayPolicyList"),
    }
}

fn is_watch(q: &BTreeMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

fn json_response(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("a response")
}

fn list_response(path: &str, rv: &str, items: Vec<Value>) -> Response {
    let (api_version, kind) = list_kind(path);
    json_response(&json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": { "resourceVersion": rv },
        "items": items,
    }))
}

/// A watch that sends `events`, one JSON object per line, and ends.
fn ended_watch(events: Vec<Value>) -> Response {
    let lines = futures::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(Bytes::from(format!("{e}\n")))),
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .expect("a response")
}

async fn collection(s: Shared, path: String, q: BTreeMap<String, String>) -> Response {
    let watching = is_watch(&q);
    let mut o = s.objects.lock().expect("lock");
    o.requests.push(Request {
        method: "GET",
        path: path.clone(),
        query: q.clone(),
        content_type: String::new(),
        body: String::new(),
    });
    if o.unserved.contains(&path) {
        return Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": "the server could not find the requested resource",
                    "reason": "NotFound", "code": 404})
                .to_string(),
            ))
            .expect("a response");
    }
    let script = o.scripts.get_mut(&path);
    let scripted = match script.as_ref().and_then(|s| s.front()) {
        Some(Scripted::List { .. }) => !watching,
        Some(Scripted::EndedWatch { .. } | Scripted::Gone) => watching,
        None => false,
    };
    if scripted {
        let step = script
            .and_then(VecDeque::pop_front)
            .expect("a scripted answer");
        return match step {
            Scripted::List {
                resource_version,
                items,
            } => list_response(&path, &resource_version, items),
            Scripted::EndedWatch { events } => ended_watch(events),
            Scripted::Gone => {
                let asked = q.get("resourceVersion").map_or("", String::as_str);
                ended_watch(vec![json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {asked} ({})", o.rv),
                    "reason": "Expired", "code": 410
                }})])
            }
        };
    }
    if watching {
        drop(o);
        let rx = s.events.subscribe();
        let stream = tokio_stream(rx).filter_map(move |(p, ev)| {
            let keep = p == path;
            async move { keep.then(|| Ok::<_, std::io::Error>(Bytes::from(format!("{ev}\n")))) }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .expect("a response");
    }
    let items: Vec<Value> = o
        .by_path
        .get(&path)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    list_response(&path, &o.rv.to_string(), items)
}

async fn status_patch(
    s: Shared,
    name: String,
    q: BTreeMap<String, String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut o = s.objects.lock().expect("lock");
    o.requests.push(Request {
        method: "PATCH",
        path: format!("{POLICIES}/{name}/status"),
        query: q,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        body: body.clone(),
    });
    let Ok(p) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    o.status_patches.push((name.clone(), p.clone()));
    o.rv += 1;
    let rv = o.rv.to_string();
    let Some(obj) = o.by_path.get_mut(POLICIES).and_then(|m| m.get_mut(&name)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    obj["status"] = p["status"].clone();
    obj["metadata"]["resourceVersion"] = json!(rv);
    let obj = obj.clone();
    let _ = s.events.send((
        POLICIES.to_owned(),
        json!({"type": "MODIFIED", "object": obj}),
    ));
    json_response(&obj)
}

fn tokio_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

impl FakeApi {
    pub fn new() -> Result<FakeApi> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (events, _) = broadcast::channel(1024);
        Ok(FakeApi {
            shared: Shared {
                objects: Arc::default(),
                events,
            },
            rt: Some(rt),
        })
    }

    /// Adds or replaces an object (`kind`: `Pod`, `Namespace`, `Node` or
    /// `EgressGatewayPolicy`), and tells every open watch.
    pub fn put(&self, mut obj: Value) {
        let path = collection_path(obj["kind"].as_str().unwrap_or_default()).to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut o = self.shared.objects.lock().expect("lock");
        o.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(o.rv.to_string());
        let m = o.by_path.entry(path.clone()).or_default();
        let kind = if m.insert(name, obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let _ = self
            .shared
            .events
            .send((path, json!({"type": kind, "object": obj})));
    }

    /// Answers every request for objects of `kind` with 404, as a cluster that does not serve
    /// them (ServiceCIDR before Kubernetes 1.31).
    pub fn unserve(&self, kind: &str) {
        let mut o = self.shared.objects.lock().expect("lock");
        o.unserved.insert(collection_path(kind).to_owned());
    }

    /// Deletes the object `kind`/`name` (pods: `namespace/name`), and tells every open watch.
    pub fn delete(&self, kind: &str, name: &str) {
        let path = collection_path(kind);
        let mut o = self.shared.objects.lock().expect("lock");
        o.rv += 1;
        let rv = o.rv.to_string();
        let key = name.rsplit('/').next().unwrap_or(name).to_owned();
        let Some(mut obj) = o.by_path.get_mut(path).and_then(|m| m.remove(&key)) else {
            return;
        };
        obj["metadata"]["resourceVersion"] = json!(rv);
        let _ = self
            .shared
            .events
            .send((path.to_owned(), json!({"type": "DELETED", "object": obj})));
    }

    /// Queues scripted answers for the collection of `kind` (as in [`FakeApi::put`]). The
    /// first queued answer is given to the next request it fits (a list to a list, a watch
    /// to a watch); a request that the first answer does not fit, and every request once the
    /// script is used up, gets the live objects.
    pub fn script(&self, kind: &str, steps: impl IntoIterator<Item = Scripted>) {
        let mut o = self.shared.objects.lock().expect("lock");
        o.scripts
            .entry(collection_path(kind).to_owned())
            .or_default()
            .extend(steps);
    }

    /// The status patches received so far: (policy name, patch).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.shared
            .objects
            .lock()
            .expect("lock")
            .status_patches
            .clone()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.objects.lock().expect("lock").requests.clone()
    }

    /// Serves on 127.0.0.1 in this process's network namespace; returns the server's URL.
    pub fn serve(&self) -> Result<String> {
        let port = self.serve_on(std::net::TcpListener::bind("127.0.0.1:0")?)?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Serves on 127.0.0.1 inside network namespace `ns`; returns a kubeconfig for it,
    /// written to `dir`.
    pub fn serve_in(&self, ns: &str, dir: &Path) -> Result<PathBuf> {
        let port = self.serve_on(in_netns(ns, || std::net::TcpListener::bind("127.0.0.1:0"))?)?;
        let path = dir.join(format!("kubeconfig-{ns}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n"
            ),
        )?;
        Ok(path)
    }

    /// Serves the API on `std_listener`; returns its port.
    fn serve_on(&self, std_listener: std::net::TcpListener) -> Result<u16> {
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let app = Router::new()
            .route(
                "/api/v1/{what}",
                get(
                    |State(s): State<Shared>,
                     UrlPath(what): UrlPath<String>,
                     Query(q): Query<BTreeMap<String, String>>| async move {
                        collection(s, format!("/api/v1/{what}"), q).await
                    },
                ),
            )
            .route(
                SERVICE_CIDRS,
                get(
                    |State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>| async move {
                        collection(s, SERVICE_CIDRS.to_owned(), q).await
                    },
                ),
            )
            .route(
                POLICIES,
                get(
                    |State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>| async move {
                        collection(s, POLICIES.to_owned(), q).await
                    },
                ),
            )
            .route(
                &format!("{POLICIES}/{{name}}/status"),
                patch(
                    |State(s): State<Shared>,
                     UrlPath(name): UrlPath<String>,
                     Query(q): Query<BTreeMap<String, String>>,
                     headers: HeaderMap,
                     body: String| async move {
                        status_patch(s, name, q, headers, body).await
                    },
                ),
            )
            .with_state(self.shared.clone());
        self.rt.as_ref().expect("running").spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let _ = axum::serve(listener, app).await;
        });
        Ok(port)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // Without waiting: a test may drop the server inside its own runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A pod object.
pub fn pod(ns: &str, name: &str, ip: std::net::Ipv4Addr, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": app } },
        "spec": { "nodeName": node, "containers": [] },
        "status": { "phase": "Running", "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] },
    })
}

/// A node object with its InternalIP.
pub fn node(name: &str, ip: std::net::Ipv4Addr, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": labels },
        "status": { "addresses": [{ "type": "InternalIP", "address": ip.to_string() }] },
    })
}

/// A namespace object.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
    })
}

/// An `EgressGatewayPolicy` object with `spec`.
pub fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "egress-gateway.io/v1alpha1", "kind": "EgressGatewayPolicy",
        "metadata": { "name": name, "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": spec,
    })
}
