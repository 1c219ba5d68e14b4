//! `egress-agent run`: load (or reuse) the datapath, then keep the maps and attachments in
//! step with the source and the node's interfaces. Event-driven: a change of the configuration
//! file, or a netlink link/address/route event (a pod's veth appearing or going), wakes the
//! reconciler at once; a slow periodic resync is only a safety net.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use egress_common::{
    config::{Config, CFG_F_GATEWAY, CFG_F_READY, VXLAN_OVERHEAD},
    endpoint::{Endpoint, NodeInfo, EP_F_SELECTED, NODE_F_ADDRESS, NODE_F_ONLINK, NODE_F_PEER},
    nat::NatKey4,
    program_names::{FROM_POD, FROM_TUNNEL, FROM_WIRE},
};
use ipnet::Ipv4Net;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    config::AgentConfig,
    datapath::{ip4, ip4_from, policy_key, Datapath},
    kube_source::{self, KubeSource},
    metrics,
    model::{self, PolicyStatus},
    nat_gc, netdev,
};

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/run/egress-gateway";
/// The policy status file in the state directory.
pub const STATUS_FILE: &str = "policies.json";

pub struct RunOptions {
    /// Settings (tunnel, NAT, map sizes, cluster CIDRs) and, for the file source, the cluster.
    pub config: Option<PathBuf>,
    /// Take nodes, namespaces, pods and policies from the Kubernetes API instead of the file.
    pub kubernetes: bool,
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

struct State {
    /// Interfaces with `egw_from_pod` attached: name -> ifindex.
    pod_links: HashMap<String, u32>,
    /// Interfaces with `egw_from_wire` attached (the underlay; a gateway's uplink): name ->
    /// ifindex.
    wire_links: BTreeMap<String, u32>,
    /// The tunnel device `egw_from_tunnel` was attached to by this process (every start
    /// attaches it again: an upgrade brings a new program).
    tunnel_link: Option<u32>,
    /// On-link peers and the MAC the datapath holds for each (neighbour events about them
    /// wake the reconciler).
    neighbours: netdev::WatchedNeighbours,
    warnings: Vec<String>,
    status: BTreeMap<String, PolicyStatus>,
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

fn load_config(opts: &RunOptions) -> Result<AgentConfig> {
    let cfg = match &opts.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::parse("{}")?,
    };
    let c = &cfg.cluster;
    if opts.kubernetes && !(c.nodes.is_empty() && c.pods.is_empty() && c.policies.is_empty()) {
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

pub async fn run(opts: RunOptions) -> Result<()> {
    if !opts.kubernetes && opts.config.is_none() {
        anyhow::bail!("give --config FILE (nodes, pods and policies), or --kubernetes");
    }
    let mut cfg = load_config(&opts)?;
    let health = Arc::new(metrics::Health::default());
    if let Some(addr) = opts.metrics_addr {
        let reg = metrics::registry(opts.pin_root.clone(), health.clone());
        metrics::serve(addr, metrics::router(reg, health.clone()))
            .await
            .with_context(|| format!("serving metrics on {addr} (--metrics-addr)"))?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let kube = if opts.kubernetes {
        let client = kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
        )?;
        let (ktx, krx) = mpsc::unbounded_channel();
        let source = KubeSource::start(client.clone(), cfg.cluster.cluster_cidrs.clone(), ktx);
        forward(krx, Trigger::Kubernetes, tx.clone());
        source.wait_synced(Duration::from_secs(60)).await?;
        info!("Kubernetes caches synced (pods, namespaces, nodes, policies)");
        Some((client, source))
    } else {
        None
    };
    let snapshot = |cfg: &AgentConfig| match &kube {
        Some((_, source)) => {
            let mut c = source.snapshot();
            // The file's cluster CIDRs, also after a reload.
            c.cluster_cidrs = cfg.cluster.cluster_cidrs.clone();
            c
        }
        None => cfg.cluster.to_model(),
    };
    let mut dp =
        Datapath::load(&cfg.map_sizes, Some(&opts.pin_root)).context("loading the datapath")?;
    info!(pin_root = %opts.pin_root.display(), "datapath loaded; maps pinned");
    let handle = netdev::connect()?;
    let mut st = State {
        pod_links: HashMap::new(),
        wire_links: BTreeMap::new(),
        tunnel_link: None,
        neighbours: Default::default(),
        warnings: Vec::new(),
        status: BTreeMap::new(),
    };
    if let Some(path) = &opts.config {
        watch_file(path.clone(), opts.file_poll, tx.clone());
    }
    let links = netdev::watch_changes(st.neighbours.clone())
        .context("subscribing to netlink link/route/neighbour events")?;
    forward(links, Trigger::Netlink, tx.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut gc = tokio::time::interval(opts.gc_interval);
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                match load_config(&opts) {
                    Ok(c) => {
                        info!("configuration reloaded");
                        cfg = c;
                    }
                    Err(e) => warn!("keeping the previous configuration: {e:#}"),
                }
            }
            let cluster = snapshot(&cfg);
            match reconcile(&mut dp, &handle, &cfg, &cluster, &opts, &mut st).await {
                Ok((changes, protected)) => {
                    metrics::observe_reconcile(started.elapsed(), true);
                    health.ready.store(true, Ordering::Relaxed);
                    health
                        .tunnel_protected
                        .store(protected.map_or(-1, i64::from), Ordering::Relaxed);
                    if let Ok(mut names) = health.policy_names.write() {
                        *names = st
                            .status
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
                        debug!(trigger = ?why, elapsed = ?started.elapsed(), "nothing to change");
                    }
                }
                Err(e) => {
                    metrics::observe_reconcile(started.elapsed(), false);
                    warn!("reconcile failed (retrying in a second): {e:#}");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = tx.send(Trigger::Resync);
                    });
                }
            }
            if let Some((client, source)) = &kube {
                write_status(client, source, &cluster, &opts.node, &st.status).await;
            }
        }
        tokio::select! {
            t = rx.recv() => trigger = t,
            _ = tokio::time::sleep(opts.resync) => trigger = Some(Trigger::Resync),
            _ = gc.tick() => match collect_nat(&mut dp, &cfg.nat.timeouts) {
                Ok((expired, live)) => {
                    health.nat_flows.store(live as i64, Ordering::Relaxed);
                    if expired > 0 {
                        info!(expired, live, "NAT entries collected");
                    }
                }
                Err(e) => warn!("NAT collection failed: {e:#}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!("stopping; the datapath stays attached and pinned (use `egress-agent cleanup` to remove it)");
    Ok(())
}

/// Writes the status of the policies this node is responsible for, where it changed.
async fn write_status(
    client: &kube::Client,
    source: &KubeSource,
    cluster: &model::Cluster,
    node: &str,
    status: &BTreeMap<String, PolicyStatus>,
) {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for obj in source.policy_objects() {
        let name = kube::ResourceExt::name_any(obj.as_ref());
        let Some(new) = status.get(&name) else {
            continue;
        };
        if !kube_source::writes_status(new, cluster, node)
            || !kube_source::status_differs(new, obj.status.as_ref())
        {
            continue;
        }
        let s = kube_source::with_transition_times(new.clone(), obj.status.as_ref(), &now);
        match kube_source::apply_status(client, &name, &s).await {
            Ok(()) => info!(policy = %name, "status written"),
            Err(e) => warn!(policy = %name, "writing status: {e}"),
        }
    }
}

/// Writes the policy status for `inspect policies` (write and rename: never half a file).
fn save_status(dir: &std::path::Path, status: &BTreeMap<String, PolicyStatus>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, dir.join(STATUS_FILE))?;
    Ok(())
}

/// Logs each policy whose status changed.
fn log_status(old: &BTreeMap<String, PolicyStatus>, new: &BTreeMap<String, PolicyStatus>) {
    for (name, s) in new {
        if old.get(name) == Some(s) {
            continue;
        }
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
        info!(
            policy = %name,
            id = s.datapath_id.unwrap_or(0),
            ready = ready.map_or("Unknown", |c| c.status.as_str()),
            reason = ready.map_or("", |c| c.reason.as_str()),
            gateway = s.gateway_node.as_deref().unwrap_or("-"),
            egress_ip = s.egress_ip.as_deref().unwrap_or("-"),
            pods = s.selected_pods,
            "policy status"
        );
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        info!(policy = %name, "policy removed");
    }
}

/// What identifies a version of the file: modification time, size and inode (a rename over
/// the file changes the inode even within one mtime tick).
fn modified(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Deletes expired NAT entries; returns how many, and how many translated flows (forward
/// entries) are left.
///
/// Listing a large table takes a while, and flows keep running meanwhile (the datapath hands
/// the ports of closed flows to new connections). So each candidate flow is judged again on
/// its current entries, and deleted, while holding the flow's claim entry, which the datapath
/// takes for every change of a reverse entry's owner: a port handed to a new flow is never cut.
pub fn collect_nat(dp: &mut Datapath, t: &nat_gc::Timeouts) -> Result<(usize, usize)> {
    let entries = dp.maps().nat_entries()?;
    let candidates = nat_gc::expired(&entries, nat_gc::monotonic_ns(), t);
    let by_key: std::collections::HashMap<_, _> = entries.iter().copied().collect();
    // One unit per flow, named by its reverse key: a forward entry and its reverse entry go
    // together; an orphan reverse entry goes alone.
    let mut flows: std::collections::HashMap<NatKey4, Vec<NatKey4>> = Default::default();
    for k in candidates {
        let Some(v) = by_key.get(&k) else { continue };
        let rkey = if v.flags & egress_common::nat::NAT_F_REVERSE != 0 {
            k
        } else {
            k.reply_to(v.addr, v.port)
        };
        flows.entry(rkey).or_default().push(k);
    }
    let mut maps = dp.maps();
    let mut dead = std::collections::HashSet::new();
    for (rkey, keys) in flows {
        if !maps.insert_nat_if_absent(rkey.claim())? {
            continue; // the datapath is changing this flow right now: next pass
        }
        let result = (|| -> Result<()> {
            let mut fresh = Vec::with_capacity(keys.len() + 1);
            for k in keys.iter().chain(std::iter::once(&rkey)) {
                if fresh.iter().any(|(f, _)| f == k) {
                    continue;
                }
                if let Some(v) = maps.nat_entry(*k)? {
                    fresh.push((*k, v));
                }
            }
            for k in nat_gc::expired(&fresh, nat_gc::monotonic_ns(), t) {
                maps.del_nat(k)?;
                dead.insert(k);
            }
            Ok(())
        })();
        maps.del_nat(rkey.claim())?;
        result?;
    }
    let live = entries
        .iter()
        .filter(|(k, v)| {
            v.flags & egress_common::nat::NAT_F_REVERSE == 0 && !k.is_claim() && !dead.contains(k)
        })
        .count();
    Ok((dead.len(), live))
}

/// The underlay: the interface the tunnel runs on (`tunnel.interface`, or the one holding the
/// node's InternalIP), its ifindex, and what the model needs to judge it.
async fn underlay(
    handle: &rtnetlink::Handle,
    cfg: &AgentConfig,
    node_ip: std::net::Ipv4Addr,
    interfaces: &BTreeMap<String, Vec<std::net::Ipv4Addr>>,
) -> Result<(u32, model::UnderlayFacts)> {
    let holder = interfaces
        .iter()
        .find(|(_, ips)| ips.contains(&node_ip))
        .map(|(n, _)| n.clone());
    let name = match (&cfg.tunnel.interface, holder) {
        (Some(want), Some(have)) if *want == have => have,
        (Some(want), _) => anyhow::bail!(
            "tunnel.interface {want} does not hold the node's InternalIP {node_ip}: peers send \
             their tunnel packets to that address, so the tunnel must run where it is"
        ),
        (None, Some(have)) => have,
        (None, None) => anyhow::bail!(
            "the node's InternalIP {node_ip} is on no interface of this node: cannot find the \
             underlay (set tunnel.interface, and check the node's address)"
        ),
    };
    let ifindex = netdev::ifindex(handle, &name)
        .await?
        .with_context(|| format!("underlay interface {name} not found"))?;
    let default_route = netdev::default_route_interface(handle).await?.as_deref() == Some(&name);
    let prefixes = netdev::ipv4_prefixes(handle, ifindex).await?;
    Ok((
        ifindex,
        model::UnderlayFacts {
            interface: name,
            default_route,
            prefixes,
        },
    ))
}

/// One reconcile pass; returns the number of changes made, and whether the tunnel is
/// protected on this node's underlay.
async fn reconcile(
    dp: &mut Datapath,
    handle: &rtnetlink::Handle,
    cfg: &AgentConfig,
    cluster: &model::Cluster,
    opts: &RunOptions,
    st: &mut State,
) -> Result<(usize, Option<bool>)> {
    let node = opts.node.as_str();
    let mut local = model::LocalFacts {
        interfaces: netdev::ipv4_addresses(handle).await?,
        underlay: None,
    };
    let this_ip = cluster
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.ip);
    let mut underlay_if = None;
    if let Some(ip) = this_ip {
        let (idx, facts) = underlay(handle, cfg, ip, &local.interfaces).await?;
        underlay_if = Some(idx);
        local.underlay = Some(facts);
    }
    let m = model::compute(cluster, node, &local);
    if m.status != st.status {
        log_status(&st.status, &m.status);
        if let Err(e) = save_status(&opts.state_dir, &m.status) {
            warn!(
                "writing {}: {e:#}",
                opts.state_dir.join(STATUS_FILE).display()
            );
        }
        st.status = m.status;
    }
    let d = m.desired;
    if d.warnings != st.warnings {
        for w in &d.warnings {
            warn!("{w}");
        }
        st.warnings = d.warnings.clone();
    }
    let node_ip = d
        .node_ip
        .with_context(|| format!("node {node} is not known to the source, or has no address"))?;
    let underlay_if = underlay_if.context("no underlay")?;
    let underlay = local.underlay.clone().context("no underlay")?;
    let protected = d.tunnel.as_ref().map(|p| p.protected);
    let mut changes = 0;

    // Devices and the node configuration.
    let tunnel_if = netdev::ensure_vxlan(
        handle,
        &netdev::VxlanSpec {
            name: cfg.tunnel.device.clone(),
            port: cfg.tunnel.port,
            mtu: cfg.tunnel.underlay_mtu,
            local: node_ip,
            link: underlay_if,
        },
    )
    .await?;
    let is_gateway = d.policies.values().any(|v| v.gateway_ip4 == ip4(node_ip));
    let uplink_name = match d.uplink.clone().or_else(|| opts.uplink.clone()) {
        Some(u) => u,
        None => netdev::default_route_interface(handle)
            .await?
            .context("no uplink: the node has no IPv4 default route; give --uplink")?,
    };
    let uplink_if = netdev::ifindex(handle, &uplink_name)
        .await?
        .with_context(|| format!("uplink {uplink_name} not found"))?;
    let want = Config {
        flags: CFG_F_READY | if is_gateway { CFG_F_GATEWAY } else { 0 },
        node_ip4: ip4(node_ip),
        tunnel_ifindex: tunnel_if,
        uplink_ifindex: uplink_if,
        tunnel_mtu: cfg.tunnel.underlay_mtu - VXLAN_OVERHEAD,
        nat_port_min: cfg.nat.port_range[0],
        nat_port_max: cfg.nat.port_range[1],
        underlay_ifindex: underlay_if,
        trust_mark: cfg.tunnel.trust_mark,
        tunnel_port: cfg.tunnel.port.to_be(),
        _pad: [0; 6],
    };
    if dp.config()? != want {
        dp.set_config(&want)?;
        info!(
            node = node,
            ip = %node_ip,
            tunnel_if,
            underlay = %underlay.interface,
            uplink = %uplink_name,
            gateway = is_gateway,
            "node configuration written"
        );
        changes += 1;
    }
    if st.tunnel_link != Some(tunnel_if) {
        dp.attach(FROM_TUNNEL, &cfg.tunnel.device)?;
        st.tunnel_link = Some(tunnel_if);
        changes += 1;
    }
    // The underlay's gate on every node; reverse NAT on a gateway's uplink.
    let mut want_wire = BTreeMap::from([(underlay.interface.clone(), underlay_if)]);
    if is_gateway {
        want_wire.insert(uplink_name.clone(), uplink_if);
    }
    for (name, idx) in &want_wire {
        if st.wire_links.get(name) != Some(idx) {
            dp.attach(FROM_WIRE, name)?;
            info!(interface = %name, "underlay gate / reverse NAT attached");
            st.wire_links.insert(name.clone(), *idx);
            changes += 1;
        }
    }
    let gone: Vec<String> = st
        .wire_links
        .keys()
        .filter(|n| !want_wire.contains_key(*n))
        .cloned()
        .collect();
    for n in gone {
        dp.detach(FROM_WIRE, &n);
        st.wire_links.remove(&n);
        info!(interface = %n, "detached from interface");
        changes += 1;
    }

    let want_nodes = node_entries(handle, &d, &underlay, underlay_if, st).await?;
    // Local pods: endpoints and attachments.
    let routes = netdev::pod_routes(handle).await?;
    let mut want_eps = BTreeMap::new();
    let mut want_links = HashMap::new();
    for pod in &d.pods {
        let Some((ifindex, ifname)) = routes.get(&pod.ip) else {
            continue;
        };
        want_eps.insert(
            ip4(pod.ip),
            Endpoint {
                ifindex: *ifindex,
                policy_id: pod.policy_id.unwrap_or(0),
                flags: if pod.policy_id.is_some() {
                    EP_F_SELECTED
                } else {
                    0
                },
                _pad: 0,
            },
        );
        want_links.insert(ifname.clone(), *ifindex);
    }
    for (ifname, ifindex) in &want_links {
        if st.pod_links.get(ifname) != Some(ifindex) {
            dp.attach(FROM_POD, ifname)?;
            info!(interface = %ifname, "attached to pod interface");
            st.pod_links.insert(ifname.clone(), *ifindex);
            changes += 1;
        }
    }
    let gone: Vec<String> = st
        .pod_links
        .keys()
        .filter(|n| !want_links.contains_key(*n))
        .cloned()
        .collect();
    for n in gone {
        dp.detach(FROM_POD, &n);
        st.pod_links.remove(&n);
        info!(interface = %n, "detached from interface");
        changes += 1;
    }

    let mut maps = dp.maps();
    // Endpoints.
    let have: BTreeMap<u32, Endpoint> = maps.endpoints()?.into_iter().collect();
    for (k, v) in &want_eps {
        if have.get(k) != Some(v) {
            maps.put_endpoint(*k, *v)?;
            info!(pod = %ip4_from(*k), policy = v.policy_id, "endpoint programmed");
            changes += 1;
        }
    }
    for k in have.keys().filter(|k| !want_eps.contains_key(k)) {
        maps.del_endpoint(*k)?;
        info!(pod = %ip4_from(*k), "endpoint removed");
        changes += 1;
    }
    // Nodes.
    let have: BTreeMap<u32, NodeInfo> = maps.nodes()?.into_iter().collect();
    for (k, v) in &want_nodes {
        if have.get(k) != Some(v) {
            maps.put_node(*k, *v)?;
            changes += 1;
        }
    }
    for k in have.keys().filter(|k| !want_nodes.contains_key(k)) {
        maps.del_node(*k)?;
        changes += 1;
    }
    // Remote endpoints.
    let want_rem: BTreeMap<u32, _> = d
        .remote_endpoints
        .iter()
        .map(|(ip, r)| (ip4(*ip), *r))
        .collect();
    let have: BTreeMap<u32, _> = maps.remote_endpoints()?.into_iter().collect();
    for (k, v) in &want_rem {
        if have.get(k) != Some(v) {
            maps.put_remote_endpoint(*k, *v)?;
            changes += 1;
        }
    }
    for k in have.keys().filter(|k| !want_rem.contains_key(k)) {
        maps.del_remote_endpoint(*k)?;
        changes += 1;
    }
    // Policies.
    let want_pol: BTreeMap<(u32, Ipv4Net), _> = d.policies.clone();
    let have: BTreeMap<(u32, Ipv4Net), _> = maps
        .policies()?
        .into_iter()
        .filter_map(|(k, v)| {
            let prefix = u8::try_from(k.prefix_len().checked_sub(32)?).ok()?;
            let data = k.data();
            let net = Ipv4Net::new(ip4_from(data.dst), prefix).ok()?;
            Some(((u32::from_be(data.policy_id_be), net), v))
        })
        .collect();
    for ((id, net), v) in &want_pol {
        if have.get(&(*id, *net)) != Some(v) {
            maps.put_policy(&policy_key(*id, net.network(), net.prefix_len()), *v)?;
            changes += 1;
        }
    }
    for (id, net) in have.keys().filter(|k| !want_pol.contains_key(k)) {
        maps.del_policy(&policy_key(*id, net.network(), net.prefix_len()))?;
        changes += 1;
    }
    Ok((changes, protected))
}

/// The node map: every node address and egress IP (pods never reach the tunnel port there),
/// and every peer (may tunnel to us), with the MAC of on-link peers from the neighbour table.
/// An on-link peer whose MAC is not known yet is resolved; the neighbour event brings it.
async fn node_entries(
    handle: &rtnetlink::Handle,
    d: &model::Desired,
    underlay: &model::UnderlayFacts,
    underlay_if: u32,
    st: &mut State,
) -> Result<BTreeMap<u32, NodeInfo>> {
    let mut want: BTreeMap<u32, NodeInfo> = d
        .node_addresses
        .iter()
        .map(|a| {
            (
                ip4(*a),
                NodeInfo {
                    flags: NODE_F_ADDRESS,
                    ..Default::default()
                },
            )
        })
        .collect();
    let on_link: Vec<std::net::Ipv4Addr> = d
        .nodes
        .iter()
        .copied()
        .filter(|p| underlay.on_link(*p))
        .collect();
    let macs = if on_link.is_empty() {
        HashMap::new()
    } else {
        netdev::neighbours(handle, underlay_if).await?
    };
    let mut watched = HashMap::new();
    for peer in &d.nodes {
        let e = want.entry(ip4(*peer)).or_default();
        e.flags |= NODE_F_PEER | NODE_F_ADDRESS;
        if underlay.on_link(*peer) {
            e.flags |= NODE_F_ONLINK;
            match macs.get(peer) {
                Some(mac) => e.mac = *mac,
                None => {
                    if let Err(err) = netdev::resolve_neighbour(handle, underlay_if, *peer).await {
                        debug!(peer = %peer, "resolving the peer's MAC: {err}");
                    }
                }
            }
            watched.insert(*peer, e.mac);
        }
    }
    *st.neighbours.lock().unwrap_or_else(|e| e.into_inner()) = watched;
    Ok(want)
}
