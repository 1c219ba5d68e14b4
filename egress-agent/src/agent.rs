//! `egress-agent run`: load (or reuse) the datapath, then keep the maps and attachments in
//! step with the source and the node's interfaces. Event-driven: a change of the configuration
//! file, or a netlink link/address/route event (a pod's veth appearing or going), wakes the
//! reconciler at once; a slow periodic resync is only a safety net.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::{
    config::AgentConfig,
    datapath::{kernel_release, Datapath},
    kube_source::KubeSource,
    lock, metrics,
    model::{self, PolicyStatus},
    nat_gc::{NatGc, CLAIM_STALE_NS},
    netdev,
    reconcile::Reconciler,
    status,
};
pub use crate::{nat_gc::collect_nat, status::STATUS_FILE};

/// How soon claims a collection pass saw are looked at again: just past the age that makes
/// one stale.
const CLAIM_CHECK: Duration = Duration::from_nanos(CLAIM_STALE_NS + 50_000_000);

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/run/egress-gateway";

/// Where the cluster (nodes, namespaces, pods, policies) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The configuration file, which also holds the settings (tunnel, NAT, map sizes,
    /// cluster CIDRs).
    File(PathBuf),
    /// The Kubernetes API; the optional file holds only the settings.
    Kubernetes { settings: Option<PathBuf> },
}

impl Source {
    /// The configuration file, if any.
    pub fn config_file(&self) -> Option<&Path> {
        match self {
            Source::File(path) => Some(path),
            Source::Kubernetes { settings } => settings.as_deref(),
        }
    }
}

pub struct RunOptions {
    pub source: Source,
    /// Uplink interface when the source names none (Kubernetes); without it, the interface
    /// of the default route.
    pub uplink: Option<String>,
    pub node: String,
    pub pin_root: PathBuf,
    /// Where the policy status file goes.
    pub state_dir: PathBuf,
    /// How often to look at the configuration file's modification time.
    pub file_poll: Duration,
    /// Full reconcile even without a trigger (a safety net: triggers are the normal path).
    pub resync: Duration,
    pub gc_interval: Duration,
    /// Where to serve `/metrics`, `/healthz`, `/readyz` (`None`: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// What woke the reconciler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trigger {
    Start,
    Config,
    Kubernetes,
    Netlink,
    Resync,
}

/// The running source: the file needs nothing more than the configuration; Kubernetes has
/// its caches and the client that writes status.
enum Feed {
    File,
    Kubernetes {
        client: kube::Client,
        cache: KubeSource,
    },
}

impl Feed {
    /// The model's input.
    fn snapshot(&self, cfg: &AgentConfig) -> model::Cluster {
        match self {
            Feed::Kubernetes { cache, .. } => {
                let mut c = cache.snapshot();
                // The file's cluster CIDRs, also after a reload.
                c.cluster_cidrs = cfg.cluster.cluster_cidrs.clone();
                c
            }
            Feed::File => cfg.cluster.to_model(),
        }
    }
}

/// Watches the file's modification time, size and inode: robust against editors that replace
/// the file and against ConfigMap volumes (symlink swaps), where inotify on the path misses
/// edits.
fn watch_file(path: PathBuf, every: Duration, tx: mpsc::UnboundedSender<Trigger>) {
    tokio::spawn(async move {
        let mut last = modified(&path);
        loop {
            tokio::time::sleep(every).await;
            let now = modified(&path);
            if now != last {
                last = now;
                if tx.send(Trigger::Config).is_err() {
                    break;
                }
            }
        }
    });
}

fn load_config(source: &Source) -> Result<AgentConfig> {
    let cfg = match source.config_file() {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::parse("{}")?,
    };
    let c = &cfg.cluster;
    if matches!(source, Source::Kubernetes { .. })
        && !(c.nodes.is_empty() && c.pods.is_empty() && c.policies.is_empty())
    {
        anyhow::bail!(
            "with --kubernetes the cluster comes from the API: remove nodes, pods and policies \
             from the configuration file (keep tunnel, nat, mapSizes, clusterCidrs)"
        );
    }
    Ok(cfg)
}

/// Sends `Trigger`s for every message of `rx`.
fn forward(mut rx: mpsc::UnboundedReceiver<()>, t: Trigger, tx: mpsc::UnboundedSender<Trigger>) {
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if tx.send(t).is_err() {
                break;
            }
        }
    });
}

/// Starts the source's watches and waits for their first lists.
async fn start_feed(
    source: &Source,
    cluster_cidrs: Vec<Ipv4Net>,
    tx: &mpsc::UnboundedSender<Trigger>,
) -> Result<Feed> {
    match source {
        Source::File(_) => Ok(Feed::File),
        Source::Kubernetes { .. } => {
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
            )?;
            let (ktx, krx) = mpsc::unbounded_channel();
            let cache = KubeSource::start(client.clone(), cluster_cidrs, ktx).await;
            forward(krx, Trigger::Kubernetes, tx.clone());
            cache.wait_synced(Duration::from_secs(60)).await?;
            info!("Kubernetes caches synced (pods, namespaces, nodes, policies, service CIDRs)");
            Ok(Feed::Kubernetes { client, cache })
        }
    }
}

/// The datapath, or why it is not there.
enum Node {
    /// Loaded: the reconciler owns it.
    Up(Box<Reconciler>),
    /// Could not be loaded: the agent keeps running to say so (policy status, `/readyz`,
    /// metrics) and tries again at every resync. `status` is the last status recorded.
    Down {
        fault: status::DatapathFault,
        status: BTreeMap<String, PolicyStatus>,
    },
}

/// Loads the datapath and starts what needs it (the netlink watch); a failure is a
/// `DatapathFault`.
fn bring_up(
    opts: &RunOptions,
    cfg: &AgentConfig,
    handle: &rtnetlink::Handle,
    tx: &mpsc::UnboundedSender<Trigger>,
) -> Result<Reconciler, status::DatapathFault> {
    let fault = |what: String| status::DatapathFault {
        node: opts.node.clone(),
        what,
        kernel: kernel_release(),
    };
    let dp = Datapath::load(&cfg.map_sizes, Some(&opts.pin_root)).map_err(|e| {
        fault(format!(
            "loading the datapath: {:#}",
            anyhow::Error::from(e)
        ))
    })?;
    info!(
        pin_root = %opts.pin_root.display(),
        kernel = %kernel_release(),
        tc = %dp.tc_mode().as_str(),
        why = dp.tc_probe(),
        "datapath loaded; maps pinned"
    );
    let rec = Reconciler::new(
        dp,
        handle.clone(),
        opts.node.clone(),
        opts.uplink.clone(),
        opts.state_dir.clone(),
    );
    let links = netdev::watch_changes(rec.watched_neighbours())
        .map_err(|e| fault(format!("subscribing to netlink events: {e:#}")))?;
    forward(links, Trigger::Netlink, tx.clone());
    Ok(rec)
}

/// Says, once per distinct fault, that the datapath is not there.
fn report_fault(health: &metrics::Health, fault: &status::DatapathFault, retry: Duration) {
    if health.fault().as_deref() != Some(fault.what.as_str()) {
        error!(
            node = %fault.node,
            kernel = %fault.kernel,
            "datapath unavailable: {}; every policy is Ready=False (DatapathUnavailable) and \
             /readyz fails until it works (trying again every {retry:?})",
            fault.what
        );
    }
    health.set_fault(fault.what.clone());
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut cfg = load_config(&opts.source)?;
    let health = Arc::new(metrics::Health::default());
    let meters = metrics::Metrics::default();
    if let Some(addr) = opts.metrics_addr {
        let reg = meters.registry(opts.pin_root.clone(), health.clone());
        metrics::serve(addr, metrics::router(reg, health.clone()))
            .await
            .with_context(|| format!("serving metrics on {addr} (--metrics-addr)"))?;
    }
    // One agent per pin root, and never beside a running `cleanup` (see `lock`).
    let mut said = false;
    let _lock = loop {
        match lock::try_lock(&opts.pin_root)
            .with_context(|| format!("locking {}", opts.pin_root.display()))?
        {
            Some(l) => break l,
            None if !said => {
                warn!(
                    pin_root = %opts.pin_root.display(),
                    "another agent or a cleanup works on this pin root: waiting until it is done"
                );
                said = true;
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let feed = start_feed(&opts.source, cfg.cluster.cluster_cidrs.clone(), &tx).await?;
    let handle = netdev::connect()?;
    // Never exits for a datapath that cannot load: it says so (status, /readyz, metrics, the
    // log) and tries again at every resync.
    let mut node = match bring_up(&opts, &cfg, &handle, &tx) {
        Ok(rec) => Node::Up(Box::new(rec)),
        Err(fault) => {
            report_fault(&health, &fault, opts.resync);
            Node::Down {
                fault,
                status: BTreeMap::new(),
            }
        }
    };
    if let Some(path) = opts.source.config_file() {
        watch_file(path.to_owned(), opts.file_poll, tx.clone());
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut gc = tokio::time::interval(opts.gc_interval);
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nat_gc = NatGc::default();
    // After an eviction pass: the next one a second later (a flood fills the table fast).
    const NAT_PRESSURE_RECHECK: Duration = Duration::from_secs(1);
    // When claims were seen: look at them again a second later (see `nat_gc`).
    let mut claim_check: Option<tokio::time::Instant> = None;
    let mut trigger = Some(Trigger::Start);
    loop {
        if let Some(mut why) = trigger.take() {
            // Coalesce a burst (a CNI adding a veth, its addresses and routes) into one pass.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut reload = why == Trigger::Config;
            while let Ok(t) = rx.try_recv() {
                reload |= t == Trigger::Config;
                why = why.min(t);
            }
            let started = Instant::now();
            if reload {
                match load_config(&opts.source) {
                    Ok(c) => {
                        info!("configuration reloaded");
                        if c.map_sizes != cfg.map_sizes {
                            // Never silently ignored: maps are sized when they are loaded.
                            warn!(
                                old = ?cfg.map_sizes,
                                new = ?c.map_sizes,
                                "mapSizes changed: it takes effect when the agent restarts \
                                 (the maps are then migrated, entries kept where they fit)"
                            );
                        }
                        cfg = c;
                    }
                    Err(e) => warn!("keeping the previous configuration: {e:#}"),
                }
            }
            let cluster = feed.snapshot(&cfg);
            if matches!(node, Node::Down { .. }) && why == Trigger::Resync {
                match bring_up(&opts, &cfg, &handle, &tx) {
                    Ok(rec) => node = Node::Up(Box::new(rec)),
                    Err(fault) => {
                        report_fault(&health, &fault, opts.resync);
                        if let Node::Down { fault: f, .. } = &mut node {
                            *f = fault;
                        }
                    }
                }
            }
            match &mut node {
                Node::Up(rec) => {
                    let pass = rec
                        .reconcile(&cfg, &cluster)
                        .instrument(info_span!("reconcile", trigger = ?why));
                    match pass.await {
                        Ok(changes) => {
                            meters.observe_reconcile(started.elapsed(), true);
                            if health.fault().is_some() {
                                info!("datapath available again");
                            }
                            health.clear_fault();
                            health.ready.store(true, Ordering::Relaxed);
                            health
                                .departed_flushed
                                .store(rec.departed_flushed(), Ordering::Relaxed);
                            health.tunnel_protected.store(
                                rec.tunnel_protected().map_or(-1, i64::from),
                                Ordering::Relaxed,
                            );
                            if let Ok(mut names) = health.policy_names.write() {
                                *names = rec
                                    .status()
                                    .iter()
                                    .filter_map(|(n, s)| Some((s.datapath_id?, n.clone())))
                                    .collect();
                            }
                            if changes > 0 || reload {
                                info!(
                                    trigger = ?why,
                                    changes,
                                    elapsed = ?started.elapsed(),
                                    "reconciled"
                                );
                            } else {
                                debug!(
                                    trigger = ?why,
                                    elapsed = ?started.elapsed(),
                                    "nothing to change"
                                );
                            }
                        }
                        Err(e) => {
                            meters.observe_reconcile(started.elapsed(), false);
                            match status::DatapathFault::of(&e, &opts.node) {
                                // An attachment or a map write failed: not ready.
                                Some(fault) => {
                                    report_fault(&health, &fault, Duration::from_secs(1))
                                }
                                None => warn!("reconcile failed (retrying in a second): {e:#}"),
                            }
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                let _ = tx.send(Trigger::Resync);
                            });
                        }
                    }
                }
                Node::Down { fault, status } => {
                    // The policies' status all the same: what the model makes of them, none
                    // of them Ready here.
                    let local = model::LocalFacts {
                        interfaces: netdev::ipv4_addresses(&handle).await.unwrap_or_default(),
                        host_ports: model::ports::read_host_ports(
                            Path::new(model::ports::PROC_SYS_NET_IPV4),
                            cfg.nat.port_range,
                        ),
                        ..Default::default()
                    };
                    let mut new = model::compute(&cluster, &opts.node, &local).status;
                    status::datapath_unavailable(&mut new, fault);
                    if new != *status {
                        status::record_local(&opts.state_dir, status, &new);
                        *status = new;
                    }
                }
            }
            if let Feed::Kubernetes { client, cache } = &feed {
                let st = match &node {
                    Node::Up(rec) => rec.status(),
                    Node::Down { status, .. } => status,
                };
                status::write_kube(client, cache, &cluster, &opts.node, st).await;
            }
        }
        tokio::select! {
            t = rx.recv() => trigger = t,
            _ = tokio::time::sleep(opts.resync) => trigger = Some(Trigger::Resync),
            _ = gc.tick() => if let Node::Up(rec) = &mut node {
                match nat_gc.collect(rec.datapath(), &cfg.nat.timeouts, cfg.map_sizes.nat) {
                    Ok(c) => {
                        health.nat_flows.store(c.live as i64, Ordering::Relaxed);
                        health
                            .nat_claims_collected
                            .fetch_add(c.claims_deleted as u64, Ordering::Relaxed);
                        health.nat_evicted.fetch_add(c.evicted as u64, Ordering::Relaxed);
                        health
                            .nat_split_repaired
                            .fetch_add(c.split_repaired as u64, Ordering::Relaxed);
                        if c.expired > 0 || c.claims_deleted > 0 || c.evicted > 0 {
                            info!(
                                expired = c.expired,
                                evicted = c.evicted,
                                live = c.live,
                                claims = c.claims_deleted,
                                "NAT entries collected"
                            );
                        }
                        if c.evicted > 0 {
                            // The table is filling up: look again soon, not in a full interval.
                            gc.reset_after(NAT_PRESSURE_RECHECK);
                        }
                    }
                    Err(e) => warn!("NAT collection failed: {:#}", anyhow::Error::from(e)),
                }
                // A second after the first sighting, not pushed back by every pass.
                claim_check = if nat_gc.claims.is_empty() {
                    None
                } else {
                    claim_check.or_else(|| Some(tokio::time::Instant::now() + CLAIM_CHECK))
                };
            },
            _ = async {
                match claim_check {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                claim_check = None;
                if let Node::Up(rec) = &mut node {
                    match nat_gc.collect_claims(rec.datapath()) {
                        Ok(n) => {
                            health
                                .nat_claims_collected
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            warn!("NAT claim collection failed: {:#}", anyhow::Error::from(e))
                        }
                    }
                    claim_check = (!nat_gc.claims.is_empty())
                        .then(|| tokio::time::Instant::now() + CLAIM_CHECK);
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!("stopping; the datapath stays attached and pinned (use `egress-agent cleanup` to remove it)");
    Ok(())
}

/// What identifies a version of the file: modification time, size and inode (a rename over
/// the file changes the inode even within one mtime tick).
fn modified(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}
