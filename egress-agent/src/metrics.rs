//! Prometheus `/metrics`, `/healthz` and `/readyz`.
//!
//! Datapath numbers are read from the pinned maps at scrape time (per-policy packets and bytes,
//! drops by reason, NAT entries), so a scrape always shows the kernel's current counts and the
//! reconciler never waits on a scrape. Reconcile latency is a histogram fed by the reconciler.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, LazyLock, RwLock,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use egress_common::map_names;
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
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

type Labels = Vec<(String, String)>;

static RECONCILE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
});
static RECONCILES: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// Records one reconcile pass.
pub fn observe_reconcile(took: Duration, ok: bool) {
    RECONCILE_SECONDS.observe(took.as_secs_f64());
    let result = if ok { "ok" } else { "error" };
    RECONCILES
        .get_or_create(&vec![("result".into(), result.into())])
        .inc();
}

/// Shared between the reconciler and the HTTP server.
#[derive(Debug)]
pub struct Health {
    /// Set after the first successful reconcile.
    pub ready: AtomicBool,
    /// Policy id -> name, for labels.
    pub policy_names: RwLock<BTreeMap<u32, String>>,
    /// Translated flows counted by the last NAT collection (-1: none yet). Counting the NAT
    /// table at scrape time would cost a syscall per entry on every scrape.
    pub nat_flows: AtomicI64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ready: AtomicBool::new(false),
            policy_names: RwLock::default(),
            nat_flows: AtomicI64::new(-1),
        }
    }
}

/// Reads the pinned maps on each scrape.
#[derive(Debug)]
struct DatapathCollector {
    pin_root: PathBuf,
    health: Arc<Health>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
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
        let up = i64::from(stats.is_some() && drops.is_some() && nat_stats.is_some());
        let g = ConstGauge::new(up);
        g.encode(enc.encode_descriptor(
            "egress_datapath_up",
            "1 when the pinned maps could be read",
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
                for (dir, p, b) in [
                    ("tx", s.tx_packets, s.tx_bytes),
                    ("rx", s.rx_packets, s.rx_bytes),
                ] {
                    let l: Labels = vec![
                        ("policy_id".into(), id.to_string()),
                        ("policy".into(), name.clone()),
                        ("direction".into(), dir.into()),
                    ];
                    packets.push((l.clone(), p));
                    bytes.push((l, b));
                }
            }
            counter(
                &mut enc,
                "egress_policy_packets",
                "Packets of a policy on this node (tx: towards the internet, rx: replies)",
                &packets,
            )?;
            counter(
                &mut enc,
                "egress_policy_bytes",
                "Bytes of a policy on this node",
                &bytes,
            )?;
        }
        if let Some(drops) = drops {
            let rows: Vec<_> = drops
                .by_name()
                .iter()
                .map(|(r, n)| (vec![("reason".to_owned(), (*r).to_owned())], *n))
                .collect();
            counter(
                &mut enc,
                "egress_drops",
                "Packets dropped by the datapath, by reason",
                &rows,
            )?;
        }
        if let Some(s) = nat_stats {
            counter(
                &mut enc,
                "egress_nat_port_retries",
                "Candidate SNAT ports found taken (by a flow or a host socket), each followed by another try",
                &[(vec![], s.port_retries)],
            )?;
            counter(
                &mut enc,
                "egress_nat_allocations",
                "SNAT mappings created",
                &[(vec![], s.allocations)],
            )?;
        }
        if let Some(n) = nat {
            let g = ConstGauge::new(n);
            g.encode(enc.encode_descriptor(
                "egress_nat_entries",
                "Translated flows in the NAT table at the last collection (--gc-interval-s)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The registry: reconcile metrics and the datapath collector for `pin_root`.
pub fn registry(pin_root: PathBuf, health: Arc<Health>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "egress_reconcile_duration_seconds",
        "Time one reconcile pass took",
        RECONCILE_SECONDS.clone(),
    );
    r.register(
        "egress_reconciles",
        "Reconcile passes, by result",
        RECONCILES.clone(),
    );
    r.register_collector(Box::new(DatapathCollector { pin_root, health }));
    r
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
                if a.health.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not reconciled yet\n")
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
        let reg = registry("/nonexistent/pin/root".into(), health.clone());
        let addr = serve("127.0.0.1:0".parse().unwrap(), router(reg, health.clone()))
            .await
            .expect("bind");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(
            get(addr, "/readyz").await.0,
            503,
            "not ready before a reconcile"
        );
        observe_reconcile(Duration::from_millis(3), true);
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
    }
}
