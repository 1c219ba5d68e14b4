//! A small in-process fake Kubernetes API server for lab tests: it serves list and watch for
//! pods, namespaces, nodes and `EgressGatewayPolicy` objects held in memory, accepts status
//! patches, and pushes a watch event to every open watch when a test changes an object. It
//! listens on 127.0.0.1 inside each lab node's network namespace, so the real agents reach it
//! with an ordinary kubeconfig.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Result;
use axum::{
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, patch},
    Router,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::lab::in_netns;

const POLICIES: &str = "/apis/egress-gateway.io/v1alpha1/egressgatewaypolicies";

#[derive(Default)]
struct Objects {
    /// Collection path -> name -> object.
    by_path: BTreeMap<String, BTreeMap<String, Value>>,
    rv: u64,
    /// Status patches received: (policy name, patch body).
    status_patches: Vec<(String, Value)>,
}

#[derive(Clone)]
struct Shared {
    objects: Arc<Mutex<Objects>>,
    events: broadcast::Sender<(String, Value)>,
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    shared: Shared,
    rt: tokio::runtime::Runtime,
}

fn list_kind(path: &str) -> (&'static str, &'static str) {
    match path {
        "/api/v1/pods" => ("v1", "PodList"),
        "/api/v1/namespaces" => ("v1", "NamespaceList"),
        "/api/v1/nodes" => ("v1", "NodeList"),
        _ => ("egress-gateway.io/v1alpha1", "EgressGatewayPolicyList"),
    }
}

fn json_response(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("a response")
}

async fn collection(s: Shared, path: String, q: BTreeMap<String, String>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
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
    let o = s.objects.lock().expect("lock");
    let items: Vec<Value> = o
        .by_path
        .get(&path)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let (api_version, kind) = list_kind(&path);
    json_response(&json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": { "resourceVersion": o.rv.to_string() },
        "items": items,
    }))
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
            rt,
        })
    }

    /// Adds or replaces an object (`kind`: `Pod`, `Namespace`, `Node` or
    /// `EgressGatewayPolicy`), and tells every open watch.
    pub fn put(&self, mut obj: Value) {
        let path = match obj["kind"].as_str() {
            Some("Pod") => "/api/v1/pods",
            Some("Namespace") => "/api/v1/namespaces",
            Some("Node") => "/api/v1/nodes",
            _ => POLICIES,
        }
        .to_owned();
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

    /// Deletes the object `kind`/`name` (pods: `namespace/name`), and tells every open watch.
    pub fn delete(&self, kind: &str, name: &str) {
        let path = match kind {
            "Pod" => "/api/v1/pods",
            "Namespace" => "/api/v1/namespaces",
            "Node" => "/api/v1/nodes",
            _ => POLICIES,
        };
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

    /// The status patches received so far: (policy name, patch).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.shared
            .objects
            .lock()
            .expect("lock")
            .status_patches
            .clone()
    }

    /// Serves on 127.0.0.1 inside network namespace `ns`; returns a kubeconfig for it,
    /// written to `dir`.
    pub fn serve_in(&self, ns: &str, dir: &Path) -> Result<PathBuf> {
        let std_listener = in_netns(ns, || std::net::TcpListener::bind("127.0.0.1:0"))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let s = self.shared.clone();
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
                    |State(s): State<Shared>, UrlPath(name): UrlPath<String>, body: String| async move {
                        let Ok(p) = serde_json::from_str::<Value>(&body) else {
                            return StatusCode::BAD_REQUEST.into_response();
                        };
                        let mut o = s.objects.lock().expect("lock");
                        o.status_patches.push((name.clone(), p.clone()));
                        o.rv += 1;
                        let rv = o.rv.to_string();
                        let Some(obj) = o.by_path.get_mut(POLICIES).and_then(|m| m.get_mut(&name)) else {
                            return StatusCode::NOT_FOUND.into_response();
                        };
                        obj["status"] = p["status"].clone();
                        obj["metadata"]["resourceVersion"] = json!(rv);
                        let obj = obj.clone();
                        let _ = s.events.send((POLICIES.to_owned(), json!({"type": "MODIFIED", "object": obj})));
                        json_response(&obj)
                    },
                ),
            )
            .with_state(s);
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let _ = axum::serve(listener, app).await;
        });
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
