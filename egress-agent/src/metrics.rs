//! Prometheus `/metrics`, `/healthz` and `/readyz`.
//!
//! Datapath numbers are read from the pinned maps at scrape time (per-policy packets and bytes,
//! drops by reason, NAT entries), so a scrape always shows the kernel's current counts and the
//! reconciler never waits on a scrape. Reconcile latency is a histogram fed by the reconciler
//! (`Metrics`). Every name has the prefix `egress_`; every label set is a typed struct.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use egress_common::{counters::DropReason, map_names};
use prometheus_client::{
    collector::Collector,
    encoding::{
        text::encode, DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
        LabelValueEncoder,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use tracing::info;

use crate::datapath::{open_pinned_map, read_drops, read_nat_stats, read_policy_stats};

/// The prefix of every metric name.
pub const PREFIX: &str = "egress";

/// The outcome of a reconcile pass.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    Ok,
    Error,
}

impl EncodeLabelValue for ReconcileResult {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        enc.write_str(match self {
            ReconcileResult::Ok => "ok",
            ReconcileResult::Error => "error",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub result: ReconcileResult,
}

/// Traffic direction of a policy's counters.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Towards the internet.
    Tx,
    /// Replies.
    Rx,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        enc.write_str(match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy_id: u32,
    /// The policy's name (empty when the agent does not know it).
    pub policy: String,
    pub direction: Direction,
}

/// A drop reason as a label value (its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason(pub DropReason);

impl EncodeLabelValue for Reason {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        enc.write_str(self.0.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: Reason,
}

/// The reconciler's metrics; the datapath's are read from the pinned maps at scrape time
/// (`DatapathCollector`).
#[derive(Clone, Debug)]
pub struct Metrics {
    reconcile_duration: Histogram,
    reconciles: Family<ReconcileLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            reconciles: Family::default(),
        }
    }
}

impl Metrics {
    /// Records one reconcile pass.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        let result = if ok {
            ReconcileResult::Ok
        } else {
            ReconcileResult::Error
        };
        self.reconciles
            .get_or_create(&ReconcileLabels { result })
            .inc();
    }

    /// The registry (prefix `egress`): these metrics and the datapath collector for
    /// `pin_root`.
    pub fn registry(&self, pin_root: PathBuf, health: Arc<Health>) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass took",
            self.reconcile_duration.clone(),
        );
        r.register(
            "reconciles",
            "Reconcile passes, by result",
            self.reconciles.clone(),
        );
        r.register_collector(Box::new(DatapathCollector { pin_root, health }));
        r
    }
}

/// Shared between the reconciler and the HTTP server.
#[derive(Debug)]
pub struct Health {
    /// Set after the first successful reconcile; cleared while the datapath is unavailable.
    pub ready: AtomicBool,
    /// What the datapath is missing (could not be loaded or attached): `/readyz` fails with
    /// it and `egress_datapath_up` is 0 while it is set.
    pub datapath_fault: RwLock<Option<String>>,
    /// Policy id -> name, for labels.
    pub policy_names: RwLock<BTreeMap<u32, String>>,
    /// Translated flows counted by the last NAT collection (-1: none yet). Counting the NAT
    /// table at scrape time would cost a syscall per entry on every scrape.
    pub nat_flows: AtomicI64,
    /// Claim entries left behind (an agent stopped mid-pass) that the NAT collection deleted.
    pub nat_claims_collected: AtomicU64,
    /// Flows evicted from a NAT table that filled up (whole flows, see `nat_gc::evict`).
    pub nat_evicted: AtomicU64,
    /// Forward entries of split NAT flows deleted (never expected).
    pub nat_split_repaired: AtomicU64,
    /// Entries of departed pods' flows deleted (NAT both ways, flows, fragments).
    pub departed_flushed: AtomicU64,
    /// 1 when tunnel packets on this node's underlay are protected against spoofed peers, 0
    /// when they are not (`TunnelProtected=False`), -1 before the underlay is known.
    pub tunnel_protected: AtomicI64,
}

impl Health {
    /// The datapath is unavailable (`what`): not ready.
    pub fn set_fault(&self, what: String) {
        self.ready.store(false, Ordering::Relaxed);
        if let Ok(mut f) = self.datapath_fault.write() {
            *f = Some(what);
        }
    }

    /// The datapath is there again.
    pub fn clear_fault(&self) {
        if let Ok(mut f) = self.datapath_fault.write() {
            *f = None;
        }
    }

    /// What the datapath is missing, if anything.
    pub fn fault(&self) -> Option<String> {
        self.datapath_fault.read().ok().and_then(|f| f.clone())
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ready: AtomicBool::new(false),
            datapath_fault: RwLock::default(),
            policy_names: RwLock::default(),
            nat_flows: AtomicI64::new(-1),
            nat_claims_collected: AtomicU64::new(0),
            nat_evicted: AtomicU64::new(0),
            nat_split_repaired: AtomicU64::new(0),
            departed_flushed: AtomicU64::new(0),
            tunnel_protected: AtomicI64::new(-1),
        }
    }
}

/// Reads the pinned maps on each scrape.
#[derive(Debug)]
struct DatapathCollector {
    pin_root: PathBuf,
    health: Arc<Health>,
}

/// A counter family with one row per label set.
fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn single_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for DatapathCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = open_pinned_map(&self.pin_root, map_names::POLICY_STATS)
            .ok()
            .and_then(|m| read_policy_stats(&m).ok());
        let drops = open_pinned_map(&self.pin_root, map_names::DROPS)
            .ok()
            .and_then(|m| read_drops(&m).ok());
        let nat = Some(self.health.nat_flows.load(Ordering::Relaxed)).filter(|n| *n >= 0);
        let nat_stats = open_pinned_map(&self.pin_root, map_names::NAT_STATS)
            .ok()
            .and_then(|m| read_nat_stats(&m).ok());
        let up = i64::from(
            stats.is_some()
                && drops.is_some()
                && nat_stats.is_some()
                && self.health.fault().is_none(),
        );
        let g = ConstGauge::new(up);
        g.encode(enc.encode_descriptor(
            "datapath_up",
            "1 when the datapath is loaded and attached and its pinned maps could be read",
            None,
            g.metric_type(),
        )?)?;
        if let Some(stats) = stats {
            let names = self
                .health
                .policy_names
                .read()
                .map(|n| n.clone())
                .unwrap_or_default();
            let mut packets = Vec::new();
            let mut bytes = Vec::new();
            for (id, s) in &stats {
                let name = names.get(id).cloned().unwrap_or_default();
                for (direction, p, b) in [
                    (Direction::Tx, s.tx_packets, s.tx_bytes),
                    (Direction::Rx, s.rx_packets, s.rx_bytes),
                ] {
                    let l = PolicyLabels {
                        policy_id: *id,
                        policy: name.clone(),
                        direction,
                    };
                    packets.push((l.clone(), p));
                    bytes.push((l, b));
                }
            }
            counter(
                &mut enc,
                "policy_packets",
                "Packets of a policy on this node (tx: towards the internet, rx: replies)",
                &packets,
            )?;
            counter(
                &mut enc,
                "policy_bytes",
                "Bytes of a policy on this node",
                &bytes,
            )?;
        }
        if let Some(drops) = drops {
            // By name, as before the counts were typed.
            let mut rows: Vec<_> = drops
                .iter()
                .map(|(r, n)| (DropLabels { reason: Reason(r) }, n))
                .collect();
            rows.sort_by_key(|(l, _)| l.reason.0.name());
            counter(
                &mut enc,
                "drops",
                "Packets dropped by the datapath, by reason",
                &rows,
            )?;
        }
        if let Some(s) = nat_stats {
            single_counter(
                &mut enc,
                "nat_port_retries",
                "Candidate SNAT ports found taken (by a flow or a host socket), each followed by another try",
                s.port_retries,
            )?;
            single_counter(
                &mut enc,
                "nat_allocations",
                "SNAT mappings created",
                s.allocations,
            )?;
        }
        single_counter(
            &mut enc,
            "nat_claims_collected",
            "NAT claim entries left behind (an agent stopped mid-pass) and deleted a second after they were first seen",
            self.health.nat_claims_collected.load(Ordering::Relaxed),
        )?;
        single_counter(
            &mut enc,
            "nat_evictions",
            "NAT flows evicted (both entries) because the table held more than 90 % of its capacity: the pods holding the most flows lose their least active ones first",
            self.health.nat_evicted.load(Ordering::Relaxed),
        )?;
        single_counter(
            &mut enc,
            "nat_split_flows_repaired",
            "NAT forward entries deleted because their reverse entry was gone or mapped another flow (never expected: a sign of a bug or of a migration into a smaller table)",
            self.health.nat_split_repaired.load(Ordering::Relaxed),
        )?;
        single_counter(
            &mut enc,
            "departed_pod_entries_flushed",
            "Entries of the flows of pods that are gone (NAT both ways, flow and fragment tables), deleted so that a new pod with the address never gets their answers",
            self.health.departed_flushed.load(Ordering::Relaxed),
        )?;
        let protected = self.health.tunnel_protected.load(Ordering::Relaxed);
        if protected >= 0 {
            let g = ConstGauge::new(protected);
            g.encode(enc.encode_descriptor(
                "tunnel_protected",
                "1 when tunnel packets are accepted only from a private underlay or with on-link peers' MACs, 0 when peers' addresses can be spoofed from the internet (see the TunnelProtected condition)",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(n) = nat {
            let g = ConstGauge::new(n);
            g.encode(enc.encode_descriptor(
                "nat_entries",
                "Translated flows in the NAT table at the last collection (--gc-interval-s)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

struct App {
    registry: Registry,
    health: Arc<Health>,
}

/// The HTTP routes.
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    let app = Arc::new(App { registry, health });
    Router::new()
        .route(
            "/metrics",
            get(|State(a): State<Arc<App>>| async move {
                let mut body = String::new();
                match encode(&mut body, &a.registry) {
                    Ok(()) => (
                        StatusCode::OK,
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): State<Arc<App>>| async move {
                if let Some(fault) = a.health.fault() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("datapath unavailable: {fault}\n"),
                    )
                } else if a.health.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not reconciled yet\n".to_owned(),
                    )
                }
            }),
        )
        .with_state(app)
}

/// Binds `addr` and serves the routes in the background.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(%local, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(req.as_bytes()).expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
        .await
        .expect("the client thread");
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }

    #[tokio::test]
    async fn endpoints_answer_and_metrics_are_openmetrics() {
        let health = Arc::new(Health::default());
        let metrics = Metrics::default();
        let reg = metrics.registry("/nonexistent/pin/root".into(), health.clone());
        let addr = serve("127.0.0.1:0".parse().unwrap(), router(reg, health.clone()))
            .await
            .expect("bind");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(
            get(addr, "/readyz").await.0,
            503,
            "not ready before a reconcile"
        );
        metrics.observe_reconcile(Duration::from_millis(3), true);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("egress_reconcile_duration_seconds_bucket"),
            "{body}"
        );
        assert!(
            body.contains("egress_reconciles_total{result=\"ok\"}"),
            "{body}"
        );
        assert!(
            body.contains("egress_datapath_up 0"),
            "no maps pinned there: {body}"
        );
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);

        // A datapath that is not there: not ready, whatever came before, and says why.
        health.set_fault("attaching egw_from_pod to veth1: EINVAL".into());
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("datapath unavailable: attaching egw_from_pod"),
            "{body}"
        );
        let (_, body) = get(addr, "/metrics").await;
        assert!(body.contains("egress_datapath_up 0"), "{body}");
        health.clear_fault();
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 200);
    }
}
