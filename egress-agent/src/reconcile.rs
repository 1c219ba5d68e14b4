//! The reconciler: brings the node (devices, attachments, maps) in step with what the model
//! computes for it. One pass is `reconcile`: the model first, then `sync_devices` (the tunnel
//! device, the node configuration, the tunnel and uplink programs), `sync_attachments` (the
//! pod interfaces) and `sync_maps` (endpoints, nodes, remote endpoints, policies), each writing
//! only the differences (`Diff`), and `mark_ready`.
//!
//! Every start attaches every program (the sets of attachments start empty), the tunnel's
//! included, so an upgrade's programs replace the old ones everywhere. The datapath is marked
//! ready (`CFG_F_READY`, and so `/readyz` and the policies' Ready) only by a pass that
//! attached everything; a restart keeps a ready datapath ready. After its first complete pass
//! an agent sweeps what earlier runs left behind that is no longer wanted: pinned links and
//! legacy filters of ours on interfaces that are gone or no longer ours (a pod's veth, a
//! former gateway's uplink, an old uplink or tunnel device).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{Context, Result};
use egress_common::{
    addr::{ip4, ip4_from},
    config::{Config, CFG_F_GATEWAY, CFG_F_READY, VXLAN_OVERHEAD},
    endpoint::{
        Endpoint, NodeInfo, RemoteEndpoint, EP_F_SELECTED, NODE_F_ADDRESS, NODE_F_ONLINK,
        NODE_F_PEER,
    },
    policy::{decode_policy_key, decode_policy_key6, policy_key, policy_key6},
    program_names::{FROM_POD, FROM_TUNNEL, FROM_WIRE, TO_POD, TO_WIRE},
};
use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

use crate::{
    config::AgentConfig,
    datapath::Datapath,
    model::{self, Desired, LocalPod, PolicyStatus},
    nat_gc, netdev, status,
};

/// What a map must change to hold `want`: the entries to put (missing or different) and the
/// keys to delete (not wanted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub put: Vec<(K, V)>,
    pub delete: Vec<K>,
}

impl<K: Ord + Clone, V: PartialEq + Clone> Diff<K, V> {
    /// Compares the desired contents with the current entries.
    pub fn new(want: &BTreeMap<K, V>, have: impl IntoIterator<Item = (K, V)>) -> Self {
        let have: BTreeMap<K, V> = have.into_iter().collect();
        let put = want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let delete = have.into_keys().filter(|k| !want.contains_key(k)).collect();
        Diff { put, delete }
    }

    /// The number of changes.
    pub fn len(&self) -> usize {
        self.put.len() + self.delete.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the puts, then the deletes, on `target`; returns the number of changes.
    pub fn apply<T, E>(
        self,
        target: &mut T,
        mut put: impl FnMut(&mut T, K, V) -> Result<(), E>,
        mut delete: impl FnMut(&mut T, K) -> Result<(), E>,
    ) -> Result<usize, E> {
        let n = self.len();
        for (k, v) in self.put {
            put(target, k, v)?;
        }
        for k in self.delete {
            delete(target, k)?;
        }
        Ok(n)
    }
}

/// The pods that are gone since the maps were written (raw addresses), whose flows must be
/// forgotten before a new pod gets the address: a local endpoint deleted or moved to another
/// interface (a new pod's veth), a remote endpoint deleted or moved to another node, or an
/// address whose pod (by uid, else by name) is not the one it was at the last pass.
pub fn departed(
    endpoints: (&BTreeMap<u32, Endpoint>, &BTreeMap<u32, Endpoint>),
    remote: (
        &BTreeMap<u32, RemoteEndpoint>,
        &BTreeMap<u32, RemoteEndpoint>,
    ),
    owners: (&BTreeMap<Ipv4Addr, String>, &BTreeMap<Ipv4Addr, String>),
) -> HashSet<u32> {
    let mut gone = HashSet::new();
    let (have, want) = endpoints;
    for (ip, ep) in have {
        if want.get(ip).is_none_or(|w| w.ifindex != ep.ifindex) {
            gone.insert(*ip);
        }
    }
    let (have, want) = remote;
    for (ip, r) in have {
        if want.get(ip).is_none_or(|w| w.node_ip4 != r.node_ip4) {
            gone.insert(*ip);
        }
    }
    let (was, is) = owners;
    for (ip, pod) in was {
        if is.get(ip) != Some(pod) {
            gone.insert(ip4(*ip));
        }
    }
    gone
}

/// The pod behind each address that `programmed` accepts, by `Pod::identity`: as the model
/// decides it when pods share an address (the first by namespace and name; hostNetwork pods
/// have the node's), so that the answer does not depend on the order the source lists pods in.
pub fn pod_owners(
    pods: &[model::Pod],
    programmed: impl Fn(Ipv4Addr) -> bool,
) -> BTreeMap<Ipv4Addr, String> {
    let mut sorted: Vec<&model::Pod> = pods
        .iter()
        .filter(|p| !p.host_network && p.node.is_some())
        .collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut owners = BTreeMap::new();
    for p in sorted {
        if let Some(ip) = p.ip.filter(|ip| programmed(*ip)) {
            owners.entry(ip).or_insert_with(|| p.identity());
        }
    }
    owners
}

/// The pod interfaces the programs must be attached to and the endpoints map's contents: the
/// local pods whose host interface discovery found (`netdev::pod_links`).
pub fn local_endpoints(
    pods: &[LocalPod],
    found: &HashMap<Ipv4Addr, netdev::PodLink>,
) -> (BTreeMap<u32, Endpoint>, BTreeMap<String, u32>) {
    let mut endpoints = BTreeMap::new();
    let mut links = BTreeMap::new();
    for pod in pods {
        let Some(l) = found.get(&pod.ip) else {
            continue;
        };
        endpoints.insert(
            ip4(pod.ip),
            Endpoint {
                ifindex: l.ifindex,
                policy_id: pod.policy_id.unwrap_or(0),
                flags: if pod.policy_id.is_some() {
                    EP_F_SELECTED
                } else {
                    0
                },
                deliver_ifindex: l.bridge.unwrap_or(0),
            },
        );
        links.insert(l.name.clone(), l.ifindex);
    }
    (endpoints, links)
}

/// Attaches `program` to exactly the interfaces in `want` (name -> ifindex), `have` being
/// what is attached: an interface whose index changed (re-created) is attached again, one no
/// longer wanted is detached. Returns the number of changes.
fn sync_links(
    dp: &mut Datapath,
    program: &'static str,
    have: &mut BTreeMap<String, u32>,
    want: &BTreeMap<String, u32>,
    attached: &'static str,
) -> Result<usize> {
    let diff = Diff::new(want, have.clone());
    diff.apply(
        &mut (dp, have),
        |(dp, have), name, ifindex| {
            dp.attach(program, &name)?;
            info!(interface = %name, "{attached}");
            have.insert(name, ifindex);
            Ok(())
        },
        |(dp, have), name| {
            dp.detach(program, &name);
            have.remove(&name);
            info!(interface = %name, "detached from interface");
            Ok(())
        },
    )
}

/// The reconciler of one node: the datapath, the netlink handle, and what the last pass left
/// (attachments, the status, the warnings).
pub struct Reconciler {
    dp: Datapath,
    handle: rtnetlink::Handle,
    /// This node's name.
    node: String,
    /// The uplink when the source names none (`--uplink`).
    default_uplink: Option<String>,
    /// Where the policy status file goes.
    state_dir: PathBuf,
    /// Interfaces with `egw_from_pod` attached: name -> ifindex.
    pod_links: BTreeMap<String, u32>,
    /// Interfaces with `egw_to_pod` attached (the same pod interfaces, tc egress).
    pod_out_links: BTreeMap<String, u32>,
    /// Interfaces with `egw_from_wire` attached (the underlay; a gateway's uplink): name ->
    /// ifindex.
    wire_links: BTreeMap<String, u32>,
    /// Interfaces with `egw_to_wire` attached (the underlay's egress): name -> ifindex.
    wire_out_links: BTreeMap<String, u32>,
    /// The tunnel device `egw_from_tunnel` was attached to by this process (every start
    /// attaches it again: an upgrade brings a new program).
    tunnel_link: Option<u32>,
    /// The tunnel device's name, as of that attachment.
    tunnel_device: String,
    /// Whether this process has swept what earlier runs left attached or pinned that is no
    /// longer wanted (once, after its first complete pass).
    swept: bool,
    /// On-link peers and the MAC the datapath holds for each (neighbour events about them
    /// wake the reconciler).
    neighbours: netdev::WatchedNeighbours,
    /// Whether the tunnel is protected on this node's underlay, as of the last pass.
    tunnel_protected: Option<bool>,
    warnings: Vec<String>,
    /// Local pod addresses found behind more than one veth, as of the last pass (warned
    /// about once).
    contested: BTreeMap<Ipv4Addr, Vec<String>>,
    status: BTreeMap<String, PolicyStatus>,
    /// The pod behind each address this node programs (local pods, remote endpoints), as of
    /// the last pass: `Pod::identity`.
    pod_owners: BTreeMap<Ipv4Addr, String>,
    /// Departed pods whose flows could not all be flushed yet (a claim was held).
    flush_pending: HashSet<u32>,
    /// Entries of departed pods' flows deleted so far.
    flushed: u64,
}

/// The underlay: its ifindex and what the model needs to judge it.
struct Underlay {
    ifindex: u32,
    facts: model::UnderlayFacts,
}

impl Reconciler {
    pub fn new(
        dp: Datapath,
        handle: rtnetlink::Handle,
        node: String,
        default_uplink: Option<String>,
        state_dir: PathBuf,
    ) -> Reconciler {
        Reconciler {
            dp,
            handle,
            node,
            default_uplink,
            state_dir,
            pod_links: BTreeMap::new(),
            pod_out_links: BTreeMap::new(),
            wire_links: BTreeMap::new(),
            wire_out_links: BTreeMap::new(),
            tunnel_link: None,
            tunnel_device: String::new(),
            swept: false,
            neighbours: Default::default(),
            tunnel_protected: None,
            warnings: Vec::new(),
            contested: BTreeMap::new(),
            status: BTreeMap::new(),
            pod_owners: BTreeMap::new(),
            flush_pending: HashSet::new(),
            flushed: 0,
        }
    }

    /// Every policy's status as of the last pass.
    pub fn status(&self) -> &BTreeMap<String, PolicyStatus> {
        &self.status
    }

    /// The on-link peers whose neighbour events matter (see `netdev::watch_changes`).
    pub fn watched_neighbours(&self) -> netdev::WatchedNeighbours {
        self.neighbours.clone()
    }

    /// Whether the tunnel is protected on this node's underlay (`None`: not known yet).
    pub fn tunnel_protected(&self) -> Option<bool> {
        self.tunnel_protected
    }

    /// Entries of departed pods' flows deleted since the start.
    pub fn departed_flushed(&self) -> u64 {
        self.flushed
    }

    /// The datapath (NAT expiry works on it between passes).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// One reconcile pass; returns the number of changes made. The policy status is recorded
    /// after the pass: when the datapath failed (an attachment, a map write), no policy is
    /// Ready (`DatapathUnavailable`).
    pub async fn reconcile(
        &mut self,
        cfg: &AgentConfig,
        cluster: &model::Cluster,
    ) -> Result<usize> {
        let mut computed = None;
        let pass = self.pass(cfg, cluster, &mut computed).await;
        if let Some(mut new) = computed {
            if let Some(fault) = pass
                .as_ref()
                .err()
                .and_then(|e| status::DatapathFault::of(e, &self.node))
            {
                status::datapath_unavailable(&mut new, &fault);
            }
            if new != self.status {
                status::record_local(&self.state_dir, &self.status, &new);
                self.status = new;
            }
        }
        pass
    }

    async fn pass(
        &mut self,
        cfg: &AgentConfig,
        cluster: &model::Cluster,
        computed: &mut Option<BTreeMap<String, PolicyStatus>>,
    ) -> Result<usize> {
        let mut local = model::LocalFacts {
            interfaces: netdev::ipv4_addresses(&self.handle).await?,
            host_ports: model::ports::read_host_ports(
                std::path::Path::new(model::ports::PROC_SYS_NET_IPV4),
                cfg.nat.port_range,
            ),
            ..Default::default()
        };
        local.routes = self.egress_routes(cluster, &local.interfaces).await?;
        let this_ip = cluster
            .nodes
            .iter()
            .find(|n| n.name == self.node)
            .and_then(|n| n.ip);
        let mut underlay_if = None;
        if let Some(ip) = this_ip {
            let u = self.underlay(cfg, ip, &local.interfaces).await?;
            underlay_if = Some(u.ifindex);
            local.underlay = Some(u.facts);
        }
        let m = model::compute(cluster, &self.node, &local);
        *computed = Some(m.status);
        let mut d = m.desired;
        if d.warnings != self.warnings {
            for w in &d.warnings {
                warn!("{w}");
            }
            self.warnings = d.warnings.clone();
        }
        let node_ip = d.node_ip.with_context(|| {
            format!(
                "node {} is not known to the source, or has no address",
                self.node
            )
        })?;
        let underlay = Underlay {
            ifindex: underlay_if.context("no underlay")?,
            facts: local.underlay.context("no underlay")?,
        };
        self.tunnel_protected = d.tunnel.as_ref().map(|p| p.protected);
        let (mut changes, egress_ifs) = self
            .sync_devices(cfg, &d, node_ip, &underlay, &local.interfaces)
            .await?;
        // Translated packets leave through the interface their egress IP is on.
        for v in d.policies.values_mut() {
            if v.gateway_ip4 == ip4(node_ip) {
                if let Some(&(ifindex, mtu)) = egress_ifs.get(&v.egress_ip4) {
                    v.egress_ifindex = ifindex;
                    v.egress_mtu = mtu;
                }
            }
        }
        let previous = self
            .dp
            .maps()
            .endpoints()?
            .into_iter()
            .map(|(ip, ep)| (ip4_from(ip), ep.ifindex))
            .collect();
        let found = netdev::pod_links(&self.handle, &previous).await?;
        let contested: BTreeMap<Ipv4Addr, Vec<String>> = found
            .contested
            .into_iter()
            .filter(|(ip, _)| d.pods.iter().any(|p| p.ip == *ip))
            .collect();
        if contested != self.contested {
            for (ip, names) in &contested {
                let owner = found.by_ip.get(ip).map_or("none", |l| l.name.as_str());
                warn!(
                    pod = %ip,
                    veths = %names.join(", "),
                    owner,
                    "a pod's address is behind more than one veth, and no /32 route says whose \
                     it is: it stays with the veth that had it (none: not programmed)"
                );
            }
            self.contested = contested;
        }
        let (endpoints, links) = local_endpoints(&d.pods, &found.by_ip);
        changes += self.sync_attachments(&links)?;
        crate::fault::step("pods");
        let nodes = self.node_entries(&d, &underlay).await?;
        let local: HashSet<Ipv4Addr> = d.pods.iter().map(|p| p.ip).collect();
        let owners = pod_owners(&cluster.pods, |ip| {
            local.contains(&ip) || d.remote_endpoints.contains_key(&ip)
        });
        self.flush_departed(&d, &endpoints, owners)?;
        changes += self.sync_maps(&d, &endpoints, &nodes)?;
        changes += self.mark_ready()?;
        Ok(changes)
    }

    /// The underlay: the interface the tunnel runs on (`tunnel.interface`, or the one holding
    /// the node's InternalIP), its ifindex, and what the model needs to judge it.
    async fn underlay(
        &self,
        cfg: &AgentConfig,
        node_ip: Ipv4Addr,
        interfaces: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> Result<Underlay> {
        let holder = interfaces
            .iter()
            .find(|(_, ips)| ips.contains(&node_ip))
            .map(|(n, _)| n.clone());
        let name = match (&cfg.tunnel.interface, holder) {
            (Some(want), Some(have)) if *want == have => have,
            (Some(want), _) => anyhow::bail!(
                "tunnel.interface {want} does not hold the node's InternalIP {node_ip}: peers \
                 send their tunnel packets to that address, so the tunnel must run where it is"
            ),
            (None, Some(have)) => have,
            (None, None) => anyhow::bail!(
                "the node's InternalIP {node_ip} is on no interface of this node: cannot find \
                 the underlay (set tunnel.interface, and check the node's address)"
            ),
        };
        let ifindex = netdev::ifindex(&self.handle, &name)
            .await?
            .with_context(|| format!("underlay interface {name} not found"))?;
        let default_route = netdev::default_route_interface(&self.handle)
            .await?
            .as_deref()
            == Some(&name);
        let prefixes = netdev::ipv4_prefixes(&self.handle, ifindex).await?;
        Ok(Underlay {
            ifindex,
            facts: model::UnderlayFacts {
                interface: name,
                default_route,
                prefixes,
            },
        })
    }

    /// The kernel's routes from each local address a policy names as its egress IP (or by
    /// its interface) to each of the policy's destinations (see `model::LocalFacts::routes`).
    async fn egress_routes(
        &self,
        cluster: &model::Cluster,
        interfaces: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> Result<BTreeMap<(Ipv4Addr, Ipv4Addr), Option<String>>> {
        let local: BTreeSet<Ipv4Addr> = interfaces.values().flatten().copied().collect();
        let mut routes = BTreeMap::new();
        for p in &cluster.policies {
            let g = &p.spec.gateway;
            let egress: Vec<Ipv4Addr> = match (&g.egress_ip, &g.interface) {
                (Some(ip), _) => ip.parse().into_iter().collect(),
                (None, Some(ifname)) => interfaces
                    .get(ifname)
                    .into_iter()
                    .flatten()
                    .take(1)
                    .copied()
                    .collect(),
                (None, None) => Vec::new(),
            };
            for ip in egress.into_iter().filter(|ip| local.contains(ip)) {
                for d in p
                    .spec
                    .destination_cidrs
                    .iter()
                    .filter_map(|c| c.parse().ok())
                {
                    let probe = model::route_probe(d);
                    if let std::collections::btree_map::Entry::Vacant(e) = routes.entry((ip, probe))
                    {
                        e.insert(netdev::route_out(&self.handle, ip, probe).await?);
                    }
                }
            }
        }
        Ok(routes)
    }

    /// The tunnel device (bound to the underlay), the node configuration, the tunnel program
    /// (attached again by every start), and `egw_from_wire` on the underlay (every node), on
    /// the uplink and on every other interface holding an egress IP of a policy this node is
    /// the gateway of. Returns the changes and those other interfaces: egress IP -> (ifindex,
    /// MTU).
    async fn sync_devices(
        &mut self,
        cfg: &AgentConfig,
        d: &Desired,
        node_ip: Ipv4Addr,
        underlay: &Underlay,
        interfaces: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> Result<(usize, BTreeMap<u32, (u32, u16)>)> {
        let mut changes = 0;
        let tunnel_if = netdev::ensure_vxlan(
            &self.handle,
            &netdev::VxlanSpec {
                name: cfg.tunnel.device.clone(),
                port: cfg.tunnel.port,
                mtu: cfg.tunnel.underlay_mtu,
                local: node_ip,
                link: underlay.ifindex,
            },
        )
        .await?;
        let is_gateway = d.policies.values().any(|v| v.gateway_ip4 == ip4(node_ip));
        let uplink_name = match d.uplink.clone().or_else(|| self.default_uplink.clone()) {
            Some(u) => u,
            None => netdev::default_route_interface(&self.handle)
                .await?
                .context("no uplink: the node has no IPv4 default route; give --uplink")?,
        };
        let uplink_if = netdev::ifindex(&self.handle, &uplink_name)
            .await?
            .with_context(|| format!("uplink {uplink_name} not found"))?;
        let uplink_mtu = netdev::mtu(&self.handle, &uplink_name)
            .await?
            .and_then(|m| u16::try_from(m).ok())
            .unwrap_or(0);
        // Ready stays as it is: a restarted agent keeps the running datapath ready (its
        // flows go on); a first start marks it ready only once every attachment of the pass
        // is in place (`mark_ready`).
        let have = self.dp.config()?;
        let want = Config {
            flags: (have.flags & CFG_F_READY) | if is_gateway { CFG_F_GATEWAY } else { 0 },
            node_ip4: ip4(node_ip),
            tunnel_ifindex: tunnel_if,
            uplink_ifindex: uplink_if,
            tunnel_mtu: cfg.tunnel.underlay_mtu - VXLAN_OVERHEAD,
            nat_port_min: cfg.nat.port_range[0],
            nat_port_max: cfg.nat.port_range[1],
            underlay_ifindex: underlay.ifindex,
            trust_mark: cfg.tunnel.trust_mark,
            tunnel_port: cfg.tunnel.port.to_be(),
            uplink_mtu,
            _pad: [0; 4],
        };
        if have != want {
            self.dp.set_config(&want)?;
            info!(
                node = %self.node,
                ip = %node_ip,
                tunnel_if,
                underlay = %underlay.facts.interface,
                uplink = %uplink_name,
                uplink_mtu,
                gateway = is_gateway,
                "node configuration written"
            );
            changes += 1;
        }
        crate::fault::step("config");
        // Every start attaches the tunnel program afresh (`tunnel_link` starts empty): an
        // upgrade's new program replaces the old one, and a start killed before this point
        // left the device without one.
        if self.tunnel_link != Some(tunnel_if) {
            self.dp.attach(FROM_TUNNEL, &cfg.tunnel.device)?;
            info!(interface = %cfg.tunnel.device, "tunnel program attached");
            self.tunnel_link = Some(tunnel_if);
            self.tunnel_device = cfg.tunnel.device.clone();
            changes += 1;
        }
        crate::fault::step("tunnel");
        // The underlay's gate on every node; reverse NAT on a gateway's uplink.
        let mut want_wire = BTreeMap::from([(underlay.facts.interface.clone(), underlay.ifindex)]);
        let mut egress_ifs = BTreeMap::new();
        if is_gateway {
            // An egress IP on another interface than the uplink (a second NIC): its packets
            // leave there and its replies arrive there.
            let egress_ips: BTreeSet<u32> = d
                .policies
                .values()
                .filter(|v| v.gateway_ip4 == ip4(node_ip) && v.egress_ip4 != 0)
                .map(|v| v.egress_ip4)
                .collect();
            for (name, ips) in interfaces.iter().filter(|(n, _)| **n != uplink_name) {
                let held: Vec<u32> = ips
                    .iter()
                    .map(|ip| ip4(*ip))
                    .filter(|ip| egress_ips.contains(ip))
                    .collect();
                if held.is_empty() {
                    continue;
                }
                let Some(ifindex) = netdev::ifindex(&self.handle, name).await? else {
                    continue;
                };
                let mtu = netdev::mtu(&self.handle, name)
                    .await?
                    .and_then(|m| u16::try_from(m).ok())
                    .unwrap_or(0);
                want_wire.insert(name.clone(), ifindex);
                egress_ifs.extend(held.into_iter().map(|ip| (ip, (ifindex, mtu))));
            }
            want_wire.insert(uplink_name, uplink_if);
        }
        changes += sync_links(
            &mut self.dp,
            FROM_WIRE,
            &mut self.wire_links,
            &want_wire,
            "underlay gate / reverse NAT attached",
        )?;
        // Only our own tunnel packets leave the underlay for a tunnel port.
        let want_out = BTreeMap::from([(underlay.facts.interface.clone(), underlay.ifindex)]);
        changes += sync_links(
            &mut self.dp,
            TO_WIRE,
            &mut self.wire_out_links,
            &want_out,
            "underlay egress check attached",
        )?;
        crate::fault::step("wire");
        Ok((changes, egress_ifs))
    }

    /// Marks the datapath ready (`CFG_F_READY`: until then every program passes traffic
    /// untouched) once a pass has attached everything and filled the maps; then, once per
    /// start, sweeps what earlier runs left that is no longer wanted (`Datapath::sweep`).
    fn mark_ready(&mut self) -> Result<usize> {
        let mut changes = 0;
        let mut cfg = self.dp.config()?;
        if cfg.flags & CFG_F_READY == 0 {
            cfg.flags |= CFG_F_READY;
            self.dp.set_config(&cfg)?;
            info!("datapath marked ready: every program attached");
            changes += 1;
        }
        crate::fault::step("ready");
        if !self.swept {
            let mut wanted: BTreeSet<(&'static str, String)> = BTreeSet::new();
            for (program, links) in [
                (FROM_POD, &self.pod_links),
                (TO_POD, &self.pod_out_links),
                (FROM_WIRE, &self.wire_links),
                (TO_WIRE, &self.wire_out_links),
            ] {
                wanted.extend(links.keys().map(|name| (program, name.clone())));
            }
            if self.tunnel_link.is_some() {
                wanted.insert((FROM_TUNNEL, self.tunnel_device.clone()));
            }
            for (program, ifname, what) in self.dp.sweep(&wanted) {
                info!(interface = %ifname, %program, "swept: {what} no longer wanted");
                changes += 1;
            }
            self.swept = true;
            crate::fault::step("swept");
        }
        Ok(changes)
    }

    /// The node map: every node address and egress IP (pods never reach the tunnel port
    /// there), and every peer (may tunnel to us), with the MAC of on-link peers from the
    /// neighbour table. An on-link peer whose MAC is not known yet is resolved; the neighbour
    /// event brings it.
    async fn node_entries(
        &mut self,
        d: &Desired,
        underlay: &Underlay,
    ) -> Result<BTreeMap<u32, NodeInfo>> {
        let mut want: BTreeMap<u32, NodeInfo> = d
            .node_addresses
            .iter()
            .map(|a| {
                let info = NodeInfo {
                    flags: NODE_F_ADDRESS,
                    ..Default::default()
                };
                (ip4(*a), info)
            })
            .collect();
        let on_link = d.nodes.iter().any(|p| underlay.facts.on_link(*p));
        let macs = if on_link {
            netdev::neighbours(&self.handle, underlay.ifindex).await?
        } else {
            HashMap::new()
        };
        let mut watched = HashMap::new();
        for peer in &d.nodes {
            let e = want.entry(ip4(*peer)).or_default();
            e.flags |= NODE_F_PEER | NODE_F_ADDRESS;
            if !underlay.facts.on_link(*peer) {
                continue;
            }
            e.flags |= NODE_F_ONLINK;
            match macs.get(peer) {
                Some(mac) => e.mac = *mac,
                None => {
                    let r = netdev::resolve_neighbour(&self.handle, underlay.ifindex, *peer).await;
                    if let Err(err) = r {
                        debug!(peer = %peer, "resolving the peer's MAC: {err}");
                    }
                }
            }
            watched.insert(*peer, e.mac);
        }
        *self.neighbours.lock().unwrap_or_else(|e| e.into_inner()) = netdev::Watched {
            ifindex: underlay.ifindex,
            macs: watched,
        };
        Ok(want)
    }

    /// `egw_from_pod` (tc ingress) and `egw_to_pod` (tc egress) on exactly the interfaces in
    /// `want` (name -> ifindex); an interface whose index changed (re-created) is attached
    /// again.
    fn sync_attachments(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
        Ok(sync_links(
            &mut self.dp,
            FROM_POD,
            &mut self.pod_links,
            want,
            "attached to pod interface",
        )? + sync_links(
            &mut self.dp,
            TO_POD,
            &mut self.pod_out_links,
            want,
            "attached to pod interface (egress)",
        )?)
    }

    /// Forgets the flows of pods that are gone (see `departed`), before the endpoint maps
    /// change: a new pod on the same address is not programmed yet, so none of its flows is
    /// cut.
    fn flush_departed(
        &mut self,
        d: &Desired,
        endpoints: &BTreeMap<u32, Endpoint>,
        owners: BTreeMap<Ipv4Addr, String>,
    ) -> Result<()> {
        let have_eps: BTreeMap<_, _> = self.dp.maps().endpoints()?.into_iter().collect();
        let have_remote: BTreeMap<_, _> = self.dp.maps().remote_endpoints()?.into_iter().collect();
        let want_remote: BTreeMap<u32, _> = d
            .remote_endpoints
            .iter()
            .map(|(ip, r)| (ip4(*ip), *r))
            .collect();
        let mut gone = departed(
            (&have_eps, endpoints),
            (&have_remote, &want_remote),
            (&self.pod_owners, &owners),
        );
        self.pod_owners = owners;
        gone.extend(self.flush_pending.drain());
        if gone.is_empty() {
            return Ok(());
        }
        let (done, retry) = nat_gc::flush_pods(&mut self.dp, &gone)?;
        self.flushed += (done.nat + done.flows + done.frags) as u64;
        let mut pods: Vec<_> = gone.iter().map(|ip| ip4_from(*ip)).collect();
        pods.sort();
        let pods = pods
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if done != nat_gc::Flushed::default() {
            info!(
                %pods,
                nat = done.nat,
                flows = done.flows,
                fragments = done.frags,
                "flows of departed pods flushed"
            );
        } else {
            debug!(%pods, "departed pods had no flows");
        }
        self.flush_pending = retry;
        Ok(())
    }

    /// The endpoints, nodes, remote endpoints and policies maps.
    fn sync_maps(
        &mut self,
        d: &Desired,
        endpoints: &BTreeMap<u32, Endpoint>,
        nodes: &BTreeMap<u32, NodeInfo>,
    ) -> Result<usize> {
        let mut maps = self.dp.maps();
        let mut changes = Diff::new(endpoints, maps.endpoints()?).apply(
            &mut maps,
            |m, k, v| {
                m.put_endpoint(k, v)?;
                info!(pod = %ip4_from(k), policy = v.policy_id, "endpoint programmed");
                Ok::<_, anyhow::Error>(())
            },
            |m, k| {
                m.del_endpoint(k)?;
                info!(pod = %ip4_from(k), "endpoint removed");
                Ok(())
            },
        )?;
        changes += Diff::new(nodes, maps.nodes()?).apply(
            &mut maps,
            |m, k, v| m.put_node(k, v),
            |m, k| m.del_node(k),
        )?;
        let remote: BTreeMap<u32, _> = d
            .remote_endpoints
            .iter()
            .map(|(ip, r)| (ip4(*ip), *r))
            .collect();
        changes += Diff::new(&remote, maps.remote_endpoints()?).apply(
            &mut maps,
            |m, k, v| m.put_remote_endpoint(k, v),
            |m, k| m.del_remote_endpoint(k),
        )?;
        let have = maps.policies()?.into_iter().filter_map(|(k, v)| {
            let (id, dst, prefix) = decode_policy_key(&k)?;
            Some(((id, Ipv4Net::new(dst, prefix).ok()?), v))
        });
        changes += Diff::new(&d.policies, have).apply(
            &mut maps,
            |m, (id, net), v| m.put_policy(&policy_key(id, net.network(), net.prefix_len()), v),
            |m, (id, net)| m.del_policy(&policy_key(id, net.network(), net.prefix_len())),
        )?;
        let have6 = maps.policies6()?.into_iter().filter_map(|(k, v)| {
            let (id, dst, prefix) = decode_policy_key6(&k)?;
            Some(((id, Ipv6Net::new(dst, prefix).ok()?), v))
        });
        changes += Diff::new(&d.policies6, have6).apply(
            &mut maps,
            |m, (id, net), v| m.put_policy6(&policy_key6(id, net.network(), net.prefix_len()), v),
            |m, (id, net)| m.del_policy6(&policy_key6(id, net.network(), net.prefix_len())),
        )?;
        // The pod behind each local veth (IPv6 finds its pod's endpoint by it).
        let veths: BTreeMap<u32, u32> = endpoints
            .iter()
            .filter(|(_, e)| e.ifindex != 0)
            .map(|(ip, e)| (e.ifindex, *ip))
            .collect();
        changes += Diff::new(&veths, maps.veth_pods()?).apply(
            &mut maps,
            |m, k, v| m.put_veth_pod(k, v),
            |m, k| m.del_veth_pod(k),
        )?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_puts_what_is_missing_or_different_and_deletes_what_is_not_wanted() {
        let want: BTreeMap<u32, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let have = [(2, "b"), (3, "old"), (4, "d"), (5, "e")];
        let diff = Diff::new(&want, have);
        assert_eq!(diff.put, [(1, "a"), (3, "c")]);
        assert_eq!(diff.delete, [4, 5]);
        assert_eq!(diff.len(), 4);

        let mut map: BTreeMap<u32, &str> = have.into();
        let n = diff
            .apply(
                &mut map,
                |m, k, v| {
                    m.insert(k, v);
                    Ok::<_, ()>(())
                },
                |m, k| {
                    m.remove(&k);
                    Ok(())
                },
            )
            .expect("no error");
        assert_eq!(n, 4, "each put and delete counts once");
        assert_eq!(map, want);
        assert!(Diff::new(&want, map).is_empty(), "nothing left to change");
    }

    #[test]
    fn a_failed_put_stops_the_diff() {
        let want: BTreeMap<u32, u32> = [(1, 1), (2, 2)].into();
        let mut calls = 0;
        let r = Diff::new(&want, []).apply(
            &mut calls,
            |c, _, _| {
                *c += 1;
                Err("full")
            },
            |_, _| Ok(()),
        );
        assert_eq!(r, Err("full"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_pod_is_gone_when_its_endpoint_goes_or_its_address_gets_another_pod() {
        let ep = |ifindex, policy_id| Endpoint {
            ifindex,
            policy_id,
            flags: EP_F_SELECTED,
            deliver_ifindex: 0,
        };
        let rep = |node_ip4, policy_id| RemoteEndpoint {
            node_ip4,
            policy_id,
        };
        let a = Ipv4Addr::new(10, 244, 1, 2);
        let b = Ipv4Addr::new(10, 244, 1, 3);
        let owners = |v: &[(Ipv4Addr, &str)]| -> BTreeMap<Ipv4Addr, String> {
            v.iter().map(|(ip, o)| (*ip, o.to_string())).collect()
        };
        let none = BTreeMap::new();
        let nobody = BTreeMap::new();
        let (ia, ib) = (ip4(a), ip4(b));

        // Control: nothing changed, or only the policy: nobody is gone.
        let have: BTreeMap<u32, Endpoint> = [(ia, ep(7, 1)), (ib, ep(8, 1))].into();
        let was = owners(&[(a, "ns/a/u1"), (b, "ns/b/u2")]);
        assert!(departed((&have, &have), (&none, &none), (&was, &was)).is_empty());
        let repolicied: BTreeMap<u32, Endpoint> = [(ia, ep(7, 2)), (ib, ep(8, 1))].into();
        assert!(departed((&have, &repolicied), (&none, &none), (&was, &was)).is_empty());
        // A new pod is nobody's departure.
        let more: BTreeMap<u32, Endpoint> = [(ia, ep(7, 1)), (ib, ep(8, 1)), (9, ep(9, 1))].into();
        assert!(departed((&have, &more), (&none, &none), (&was, &was)).is_empty());

        // Local: deleted, or the address behind another veth (a new pod).
        let want: BTreeMap<u32, Endpoint> = [(ib, ep(9, 1))].into();
        assert_eq!(
            departed((&have, &want), (&none, &none), (&nobody, &nobody)),
            HashSet::from([ia, ib])
        );

        // Remote (the gateway): deleted, or the address on another node.
        let rhave: BTreeMap<u32, RemoteEndpoint> = [(ia, rep(11, 1)), (ib, rep(12, 1))].into();
        let rwant: BTreeMap<u32, RemoteEndpoint> = [(ib, rep(13, 1))].into();
        let eps = BTreeMap::new();
        assert_eq!(
            departed((&eps, &eps), (&rhave, &rwant), (&nobody, &nobody)),
            HashSet::from([ia, ib])
        );
        let rsame: BTreeMap<u32, RemoteEndpoint> = [(ia, rep(11, 2)), (ib, rep(12, 1))].into();
        assert!(departed((&eps, &eps), (&rhave, &rsame), (&nobody, &nobody)).is_empty());

        // The same address and map entries, but another pod (deleted and created again
        // between two passes; the gateway's remote endpoint looks the same).
        let is = owners(&[(a, "ns/a/u3"), (b, "ns/b/u2")]);
        assert_eq!(
            departed((&eps, &eps), (&rhave, &rhave), (&was, &is)),
            HashSet::from([ia])
        );
    }

    #[test]
    fn a_shared_address_has_the_models_owner_in_any_listing_order() {
        let pod = |name: &str, uid: &str, ip: [u8; 4]| model::Pod {
            namespace: "ns".into(),
            name: name.into(),
            node: Some("w1".into()),
            ip: Some(Ipv4Addr::from(ip)),
            uid: Some(uid.into()),
            ..Default::default()
        };
        // The old pod's object lingers while a new one has its address.
        let mut pods = vec![
            pod("b-new", "2", [10, 244, 1, 2]),
            pod("a-old", "1", [10, 244, 1, 2]),
            pod("c", "3", [10, 244, 1, 3]),
        ];
        let all = |_| true;
        let first = pod_owners(&pods, all);
        pods.reverse();
        assert_eq!(
            pod_owners(&pods, all),
            first,
            "the same owners in any order"
        );
        assert_eq!(
            first[&Ipv4Addr::new(10, 244, 1, 2)],
            "ns/a-old/1",
            "the model's choice"
        );
        // Only addresses this node programs.
        let only = pod_owners(&pods, |ip| ip == Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn only_pods_with_a_host_interface_become_endpoints() {
        let pod = |ip: [u8; 4], policy_id| LocalPod {
            name: "ns/p".into(),
            ip: Ipv4Addr::from(ip),
            policy_id,
        };
        let link = |ifindex, name: &str, bridge| netdev::PodLink {
            ifindex,
            name: name.to_owned(),
            bridge,
        };
        let found: HashMap<Ipv4Addr, netdev::PodLink> = [
            (Ipv4Addr::new(10, 244, 1, 2), link(7, "veth7", None)),
            (Ipv4Addr::new(10, 244, 1, 3), link(8, "veth8", Some(4))),
        ]
        .into();
        let (eps, links) = local_endpoints(
            &[
                pod([10, 244, 1, 2], Some(3)),
                pod([10, 244, 1, 3], None),
                pod([10, 244, 1, 9], None),
            ],
            &found,
        );
        assert_eq!(
            eps,
            [
                (
                    ip4(Ipv4Addr::new(10, 244, 1, 2)),
                    Endpoint {
                        ifindex: 7,
                        policy_id: 3,
                        flags: EP_F_SELECTED,
                        deliver_ifindex: 0,
                    }
                ),
                (
                    ip4(Ipv4Addr::new(10, 244, 1, 3)),
                    Endpoint {
                        ifindex: 8,
                        policy_id: 0,
                        flags: 0,
                        deliver_ifindex: 4,
                    }
                )
            ]
            .into(),
            "a bridge port's pod is delivered through its bridge; 10.244.1.9 has no interface"
        );
        assert_eq!(
            links,
            [("veth7".to_owned(), 7), ("veth8".to_owned(), 8)].into()
        );
    }
}
