//! The Kubernetes source: reflectors (list + watch, relist on `410 Gone`, re-watch when a watch
//! ends) for pods, namespaces, nodes and `EgressGatewayPolicy` objects, turned into the model's
//! plain `Cluster`. The status it feeds back is written by `status`.
//!
//! Everything that needs no API server (the conversions) is a plain function tested here; the
//! watch machinery is tested against an in-process fake API server (`tests/kube_source.rs`).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus},
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::ListParams,
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::model::{self, EgressGatewayPolicy};
pub use crate::status::{apply_status, FIELD_MANAGER};

#[derive(Debug, Error)]
pub enum KubeSourceError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the {0} watch never completed its first list (RBAC? is the CRD installed?)")]
    NotSynced(&'static str),
}

/// The four caches; each is complete once its first list has been read.
#[derive(Clone)]
pub struct KubeSource {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    policies: Store<EgressGatewayPolicy>,
    /// ServiceCIDR objects (networking.k8s.io/v1), where the cluster serves them.
    service_cidrs: Option<Store<ServiceCIDR>>,
    cluster_cidrs: Vec<Ipv4Net>,
}

/// Runs one reflector; every event (and every error, logged) wakes `tx`. `trim` drops what
/// the model never reads before an object enters the cache.
fn reflect<K>(
    api: Api<K>,
    what: &'static str,
    trim: fn(&mut K),
    tx: mpsc::UnboundedSender<()>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim),
    );
    tokio::spawn(drive(stream, what, tx));
    store
}

async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
    tx: mpsc::UnboundedSender<()>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            // A relist delivers its objects one by one; wake the reconciler once it is done.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(_) => {}
            Err(e) => {
                // 410 Gone and ended watches are handled by the watcher (relist / re-watch).
                warn!("{what} watch: {e} (retrying)");
                continue;
            }
        }
        debug!("{what} changed");
        if tx.send(()).is_err() {
            break;
        }
    }
}

impl KubeSource {
    /// Starts the watches. `tx` is woken on every change. The cluster's service CIDRs come
    /// from its ServiceCIDR objects where it serves them (Kubernetes 1.33 and later, or 1.31
    /// with the beta enabled), else from `cluster_cidrs` alone.
    pub async fn start(
        client: Client,
        cluster_cidrs: Vec<Ipv4Net>,
        tx: mpsc::UnboundedSender<()>,
    ) -> KubeSource {
        let service_cidrs = service_cidrs_served(&client).await.then(|| {
            reflect(
                Api::all(client.clone()),
                "servicecidr",
                trim_meta_of,
                tx.clone(),
            )
        });
        KubeSource {
            service_cidrs,
            pods: reflect(Api::all(client.clone()), "pod", trim_pod, tx.clone()),
            namespaces: reflect(
                Api::all(client.clone()),
                "namespace",
                trim_namespace,
                tx.clone(),
            ),
            nodes: reflect(Api::all(client.clone()), "node", trim_node, tx.clone()),
            policies: reflect(Api::all(client), "policy", trim_policy, tx),
            cluster_cidrs,
        }
    }

    /// Waits until every cache holds its first complete list. Until then a reconcile would
    /// delete what the datapath holds for pods not listed yet.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), KubeSourceError> {
        synced(&self.pods, "pod", timeout).await?;
        synced(&self.namespaces, "namespace", timeout).await?;
        synced(&self.nodes, "node", timeout).await?;
        synced(&self.policies, "policy", timeout).await?;
        if let Some(s) = &self.service_cidrs {
            synced(s, "servicecidr", timeout).await?;
        }
        Ok(())
    }

    /// The model's input, from the caches.
    pub fn snapshot(&self) -> model::Cluster {
        let served = self.service_cidrs.iter().flat_map(|s| s.state());
        model::Cluster {
            cluster_cidrs: self
                .cluster_cidrs
                .iter()
                .copied()
                .chain(served.flat_map(|s| service_cidrs(&s)))
                .collect(),
            cluster_cidrs6: self
                .service_cidrs
                .iter()
                .flat_map(|s| s.state())
                .flat_map(|s| service_cidrs6(&s))
                .collect(),
            nodes: self.nodes.state().iter().map(|n| node(n)).collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .map(|n| namespace(n))
                .collect(),
            pods: self.pods.state().iter().filter_map(|p| pod(p)).collect(),
            policies: self.policies.state().iter().map(|p| policy(p)).collect(),
        }
    }

    /// The policy objects as cached (for their current status).
    pub fn policy_objects(&self) -> Vec<Arc<EgressGatewayPolicy>> {
        self.policies.state()
    }
}

async fn synced<K>(
    store: &Store<K>,
    what: &'static str,
    timeout: Duration,
) -> Result<(), KubeSourceError>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match tokio::time::timeout(timeout, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(KubeSourceError::NotSynced(what)),
    }
}

/// What no object in the caches needs: server-side apply bookkeeping (often the largest part
/// of an object), annotations (`kubectl.kubernetes.io/last-applied-configuration`), owners.
fn trim_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.owner_references = None;
}

/// A pod as `pod` reads it: name, namespace, uid, labels, node, host network, phase,
/// addresses.
pub fn trim_pod(p: &mut Pod) {
    trim_meta(&mut p.metadata);
    p.spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        ..Default::default()
    });
    p.status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
}

/// A node as `node` reads it: name, labels, pod CIDRs, addresses (not its images or
/// conditions).
pub fn trim_node(n: &mut Node) {
    trim_meta(&mut n.metadata);
    n.spec = n.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..Default::default()
    });
    n.status = n.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..Default::default()
    });
}

/// An object whose metadata the model never reads (ServiceCIDR: its spec is what counts).
fn trim_meta_of<K: Resource>(o: &mut K) {
    trim_meta(o.meta_mut());
}

/// Whether the API serves ServiceCIDR objects this agent may list. Any answer but a list
/// leaves the service CIDRs to `clusterCidrs`, and says why.
async fn service_cidrs_served(client: &Client) -> bool {
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => {
            info!("service CIDRs from the cluster's ServiceCIDR objects, besides clusterCidrs");
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            info!("the cluster serves no ServiceCIDR objects: service CIDRs from clusterCidrs");
            false
        }
        Err(e) => {
            warn!(
                "ServiceCIDR objects cannot be listed ({e}): service CIDRs from clusterCidrs \
                 only (grant list and watch on servicecidrs.networking.k8s.io)"
            );
            false
        }
    }
}

/// The IPv4 CIDRs of a ServiceCIDR object.
pub fn service_cidrs(s: &ServiceCIDR) -> Vec<Ipv4Net> {
    service_cidrs_all(s)
        .filter_map(|c| match c {
            IpNet::V4(c) => Some(c),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The IPv6 CIDRs of a `ServiceCIDR` (dual-stack clusters).
pub fn service_cidrs6(s: &ServiceCIDR) -> Vec<Ipv6Net> {
    service_cidrs_all(s)
        .filter_map(|c| match c {
            IpNet::V6(c) => Some(c),
            IpNet::V4(_) => None,
        })
        .collect()
}

fn service_cidrs_all(s: &ServiceCIDR) -> impl Iterator<Item = IpNet> + '_ {
    s.spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|c| c.trunc())
}

/// A namespace as `namespace` reads it: name and labels.
pub fn trim_namespace(n: &mut Namespace) {
    trim_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

/// A policy keeps its spec and status (the status writer compares with it).
pub fn trim_policy(p: &mut EgressGatewayPolicy) {
    trim_meta(&mut p.metadata);
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// A node: InternalIP (the first IPv4 one), its other IPv4 addresses and its pod CIDRs
/// (`spec.podCIDRs`, or the older single `spec.podCIDR`), and its IPv6 addresses and pod
/// CIDRs (dual-stack clusters).
pub fn node(n: &Node) -> model::Node {
    let spec = n.spec.as_ref();
    let cidrs: Vec<IpNet> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|c| c.trunc())
        .collect();
    let pod_cidrs = cidrs
        .iter()
        .filter_map(|c| match c {
            IpNet::V4(c) => Some(*c),
            IpNet::V6(_) => None,
        })
        .collect();
    let pod_cidrs6 = cidrs
        .iter()
        .filter_map(|c| match c {
            IpNet::V6(c) => Some(*c),
            IpNet::V4(_) => None,
        })
        .collect();
    let addrs = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ip = addrs
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| ipv4(&a.address));
    let addresses = addrs
        .iter()
        .filter_map(|a| ipv4(&a.address))
        .filter(|a| Some(*a) != ip)
        .collect();
    let addresses6 = addrs
        .iter()
        .filter_map(|a| a.address.parse::<Ipv6Addr>().ok())
        .collect();
    model::Node {
        name: n.name_any(),
        labels: n.labels().clone(),
        ip,
        addresses,
        uplink: None,
        pod_cidrs,
        pod_cidrs6,
        addresses6,
    }
}

pub fn namespace(n: &Namespace) -> model::Namespace {
    model::Namespace {
        name: n.name_any(),
        labels: n.labels().clone(),
    }
}

/// A pod, unless it has finished (its address may already belong to another pod).
pub fn pod(p: &Pod) -> Option<model::Pod> {
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let ip = status.and_then(|s| {
        s.pod_ip
            .as_deref()
            .and_then(ipv4)
            .or_else(|| s.pod_ips.iter().flatten().find_map(|i| ipv4(&i.ip)))
    });
    let spec = p.spec.as_ref();
    Some(model::Pod {
        namespace: p.namespace().unwrap_or_else(|| "default".into()),
        name: p.name_any(),
        labels: p.labels().clone(),
        node: spec.and_then(|s| s.node_name.clone()),
        ip,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        uid: p.metadata.uid.clone(),
    })
}

pub fn policy(p: &EgressGatewayPolicy) -> model::Policy {
    model::Policy {
        name: p.name_any(),
        created: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        spec: p.spec.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, NodeAddress, NodeSystemInfo, PodIP},
        apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };

    use super::*;

    fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(Into::into),
            labels: Some([("app".to_owned(), "mail".to_owned())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn node_takes_the_internal_ipv4_and_keeps_the_others() {
        let addr = |t: &str, a: &str| NodeAddress {
            type_: t.into(),
            address: a.into(),
        };
        let n = Node {
            metadata: meta("gw", None),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    addr("Hostname", "gw"),
                    addr("InternalIP", "fd00::10"),
                    addr("InternalIP", "10.0.0.10"),
                    addr("ExternalIP", "5.75.247.168"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = node(&n);
        assert_eq!(m.ip, Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(m.addresses, [Ipv4Addr::new(5, 75, 247, 168)]);
        assert_eq!(m.labels["app"], "mail");
        assert!(m.pod_cidrs.is_empty());
        assert_eq!(node(&Node::default()).ip, None);
    }

    #[test]
    fn node_pod_cidrs_come_from_the_spec_ipv4_only() {
        let with = |pod_cidr: Option<&str>, pod_cidrs: Option<Vec<&str>>| {
            let mut n = Node {
                spec: Some(NodeSpec {
                    pod_cidr: pod_cidr.map(Into::into),
                    pod_cidrs: pod_cidrs.map(|v| v.into_iter().map(Into::into).collect()),
                    unschedulable: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            };
            trim_node(&mut n);
            assert_eq!(
                n.spec.as_ref().and_then(|s| s.unschedulable),
                None,
                "trimmed"
            );
            node(&n).pod_cidrs
        };
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(
            with(
                Some("10.42.1.0/24"),
                Some(vec!["10.42.1.0/24", "fd00:42:1::/64"])
            ),
            [net("10.42.1.0/24")]
        );
        assert_eq!(with(Some("10.42.2.0/24"), None), [net("10.42.2.0/24")]);
        assert_eq!(
            with(None, Some(vec!["fd00::/64", "bogus"])),
            Vec::<Ipv4Net>::new()
        );
    }

    #[test]
    fn pods_map_address_node_and_host_network_and_finished_pods_are_dropped() {
        let mut p = Pod {
            metadata: meta("postfix-0", Some("mailu")),
            spec: Some(PodSpec {
                node_name: Some("w1".into()),
                host_network: Some(false),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "fd00::5".into(),
                    },
                    PodIP {
                        ip: "10.244.1.5".into(),
                    },
                ]),
                ..Default::default()
            }),
        };
        let m = pod(&p).expect("a running pod");
        assert_eq!(m.key(), "mailu/postfix-0");
        assert_eq!(m.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(m.node.as_deref(), Some("w1"));
        assert!(!m.host_network);
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(pod(&p), None);
        let pending = Pod {
            metadata: meta("new", Some("mailu")),
            ..Default::default()
        };
        let m = pod(&pending).expect("pending pods are kept");
        assert_eq!((m.ip, m.node), (None, None));
    }

    #[test]
    fn policy_age_comes_from_the_creation_timestamp() {
        let mut p = EgressGatewayPolicy::new("mail", Default::default());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2024-01-01T00:00:00Z".parse().unwrap(),
        ));
        assert_eq!(policy(&p).created, Some(1_704_067_200));
    }

    #[test]
    fn trimmed_objects_convert_alike_and_keep_no_managed_fields() {
        let mut m = meta("postfix-0", Some("mailu"));
        m.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        m.annotations = Some([("big".to_owned(), "x".repeat(4096))].into());
        let mut p = Pod {
            metadata: m.clone(),
            spec: Some(PodSpec {
                node_name: Some("w1".into()),
                host_network: Some(true),
                containers: vec![Container {
                    name: "postfix".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.244.1.5".into()),
                ..Default::default()
            }),
        };
        let before = pod(&p);
        trim_pod(&mut p);
        assert_eq!(pod(&p), before);
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(p.metadata.annotations, None);
        assert!(p.spec.as_ref().is_some_and(|s| s.containers.is_empty()));

        let mut n = Node {
            metadata: m.clone(),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.10".into(),
                }]),
                node_info: Some(NodeSystemInfo::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let before = node(&n);
        trim_node(&mut n);
        assert_eq!(node(&n), before);
        assert_eq!(n.metadata.managed_fields, None);
        assert!(n.status.as_ref().is_some_and(|s| s.node_info.is_none()));

        let mut ns = Namespace {
            metadata: m.clone(),
            ..Default::default()
        };
        let before = namespace(&ns);
        trim_namespace(&mut ns);
        assert_eq!(namespace(&ns), before);

        let mut pol = EgressGatewayPolicy::new("mail", Default::default());
        pol.metadata.managed_fields = m.managed_fields.clone();
        pol.status = Some(Default::default());
        let before = policy(&pol);
        trim_policy(&mut pol);
        assert_eq!(policy(&pol), before);
        assert!(pol.status.is_some(), "the status writer compares with it");
        assert_eq!(pol.metadata.managed_fields, None);
    }
}
