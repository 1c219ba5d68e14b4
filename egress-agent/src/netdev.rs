//! Network devices through rtnetlink: the VXLAN tunnel device, interface lookups, and the
//! host-side veth of each pod (found from the addresses behind each veth, and the CNI's /32
//! routes).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use thiserror::Error;
use NetdevError::NotOurDevice;

#[derive(Debug, Error)]
pub enum NetdevError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} exists but is not a collect_md VXLAN device; remove it or pick another name")]
    NotOurDevice(String),
    #[error(
        "the tunnel port {port}/udp is in use by {holder}: set tunnel.port to a free port (the \
         same on every node), or free it"
    )]
    PortInUse { port: u16, holder: String },
}

/// A netlink handle with its connection driven on the tokio runtime.
pub fn connect() -> Result<Handle, NetdevError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

fn name_of(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetdevError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// ifindex of `name`, if it exists.
pub async fn ifindex(handle: &Handle, name: &str) -> Result<Option<u32>, NetdevError> {
    Ok(link_by_name(handle, name).await?.map(|l| l.header.index))
}

/// MTU of `name`, if it exists.
pub async fn mtu(handle: &Handle, name: &str) -> Result<Option<u32>, NetdevError> {
    Ok(link_by_name(handle, name).await?.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// The tunnel device the agent wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub port: u16,
    /// Device MTU: the underlay MTU (oversize packets are answered by the programs, and the
    /// kernel fragments the outer packet of non-DF ones).
    pub mtu: u32,
    /// The node's underlay address: the outer source of every tunnel packet.
    pub local: Ipv4Addr,
    /// ifindex of the underlay interface.
    pub link: u32,
}

/// The VXLAN attributes of an existing device that the spec pins: (collect_md, port,
/// local, link).
fn vxlan_facts(msg: &LinkMessage) -> (bool, Option<u16>, Option<Ipv4Addr>, Option<u32>) {
    let mut f = (false, None, None, None);
    for a in &msg.attributes {
        let LinkAttribute::LinkInfo(infos) = a else {
            continue;
        };
        for i in infos {
            let LinkInfo::Data(InfoData::Vxlan(v)) = i else {
                continue;
            };
            for x in v {
                match x {
                    InfoVxlan::CollectMetadata(c) => f.0 = *c,
                    InfoVxlan::Port(p) => f.1 = Some(*p),
                    InfoVxlan::Local(ip) => f.2 = Some(*ip),
                    InfoVxlan::Link(l) => f.3 = Some(*l),
                    _ => {}
                }
            }
        }
    }
    f
}

/// Creates the collect_md VXLAN device (`ip link add NAME type vxlan external dstport PORT
/// local LOCAL dev UNDERLAY`), IPv4 only (no IPv6 address: `addrgenmode none`, IPv6
/// disabled on it), sets it up and returns its ifindex. A device of that name with other
/// settings (an older agent's, or a changed underlay) is replaced.
pub async fn ensure_vxlan(handle: &Handle, spec: &VxlanSpec) -> Result<u32, NetdevError> {
    // Another VXLAN device on the port (a CNI's overlay) would take our tunnel packets or
    // keep ours from opening its socket: checked on every pass, it is one link dump.
    if let Some(holder) = vxlan_port_holder(handle, spec.port, &spec.name).await? {
        return Err(NetdevError::PortInUse {
            port: spec.port,
            holder,
        });
    }
    if let Some(l) = link_by_name(handle, &spec.name).await? {
        let (md, port, local, link) = vxlan_facts(&l);
        if !md {
            return Err(NotOurDevice(spec.name.clone()));
        }
        let idx = l.header.index;
        if port == Some(spec.port) && local == Some(spec.local) && link == Some(spec.link) {
            if l.header.flags.contains(LinkFlags::Up) {
                // Up: the kernel socket on the port is this device's own (a restart of the
                // agent finds it so).
                // Setting it up again would emit a link event, and link events wake the
                // reconciler.
                return Ok(idx);
            }
            check_no_socket_on(spec.port)?;
            ipv4_only(&spec.name);
            handle
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await?;
            return Ok(idx);
        }
        tracing::info!(
            device = %spec.name,
            ?port, ?local, ?link,
            "tunnel device has other settings than wanted; replacing it"
        );
        handle.link().del(idx).execute().await?;
    }
    // The kernel opens the device's socket only when it goes up, and fails then with a bare
    // EADDRINUSE: look first, and name the holder.
    check_no_socket_on(spec.port)?;
    let msg = LinkMessageBuilder::<LinkVxlan>::new(&spec.name)
        .port(spec.port)
        .collect_metadata(true)
        .learning(false)
        .local(spec.local)
        .dev(spec.link)
        .mtu(spec.mtu)
        .build();
    handle.link().add(msg).execute().await?;
    let idx = ifindex(handle, &spec.name)
        .await?
        .ok_or_else(|| NotOurDevice(spec.name.clone()))?;
    ipv4_only(&spec.name);
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await?;
    Ok(idx)
}

/// The VXLAN devices of this namespace other than `own` whose port is `port`, as text for the
/// error ("VXLAN device flannel.1"), if any.
async fn vxlan_port_holder(
    handle: &Handle,
    port: u16,
    own: &str,
) -> Result<Option<String>, NetdevError> {
    let mut devices = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links.try_next().await? {
        let (_, p, _, _) = vxlan_facts(&l);
        if let Some(p) = p {
            devices.push((name_of(&l).unwrap_or("?").to_owned(), p));
        }
    }
    Ok(vxlan_devices_on(&devices, port, own))
}

/// Of `devices` (name, VXLAN port), the ones other than `own` on `port`, as text.
fn vxlan_devices_on(devices: &[(String, u16)], port: u16, own: &str) -> Option<String> {
    let mut names: Vec<&str> = devices
        .iter()
        .filter(|(n, p)| *p == port && n != own)
        .map(|(n, _)| n.as_str())
        .collect();
    names.sort_unstable();
    match names.as_slice() {
        [] => None,
        [one] => Some(format!("VXLAN device {one}")),
        many => Some(format!("VXLAN devices {}", many.join(", "))),
    }
}

/// Fails with `PortInUse` when a UDP socket of this namespace is bound to `port` (IPv4, or
/// IPv6 which also takes the IPv4 port unless V6ONLY), naming its process when one of the
/// processes this agent sees holds it. Call it only when our own device is not up on the port:
/// its socket is a kernel socket on the port too.
fn check_no_socket_on(port: u16) -> Result<(), NetdevError> {
    let mut inodes = Vec::new();
    for (table, v6) in [("/proc/net/udp", false), ("/proc/net/udp6", true)] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(udp_inodes_on(&text, port, v6));
        }
    }
    let Some(inode) = inodes.iter().copied().max() else {
        return Ok(());
    };
    let holder = if inode == 0 {
        // Sockets the kernel opened for itself have no inode.
        "a kernel socket (a tunnel device of another kind: Geneve, FOU, WireGuard)".to_owned()
    } else {
        match socket_owner(inode) {
            Some((pid, comm)) => format!("process {pid} ({comm})"),
            None => format!(
                "a socket (inode {inode}) of a process this agent cannot see (look with \
                 `ss -uapn 'sport = :{port}'` on the node)"
            ),
        }
    };
    Err(NetdevError::PortInUse { port, holder })
}

/// The inodes of the sockets in a `/proc/net/udp` (or, `v6`, `udp6`) table bound to local
/// `port` (0: a kernel socket). Of IPv6 sockets only those on `::` count: one on a given IPv6
/// address does not take the IPv4 port.
fn udp_inodes_on(table: &str, port: u16, v6: bool) -> Vec<u64> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        // inode ...
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = f.get(1) else { continue };
        let Some((addr, hex_port)) = local.rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hex_port, 16) != Ok(port) {
            continue;
        }
        if v6 && addr.bytes().any(|b| b != b'0') {
            continue;
        }
        if let Some(inode) = f.get(9).and_then(|i| i.parse().ok()) {
            out.push(inode);
        }
    }
    out
}

/// The process holding socket `inode` (pid, command name), from `/proc/*/fd`.
fn socket_owner(inode: u64) -> Option<(u32, String)> {
    let want = format!("socket:[{inode}]");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_owned()));
            }
        }
    }
    None
}

/// Keeps IPv6 off a device before it goes up: no link-local address (`addrgenmode none`), no
/// IPv6 at all. Nothing to do on a kernel without IPv6.
fn ipv4_only(dev: &str) {
    for (knob, value) in [("addr_gen_mode", "1"), ("disable_ipv6", "1")] {
        let path = format!("/proc/sys/net/ipv6/conf/{dev}/{knob}");
        if std::path::Path::new(&path).exists() {
            if let Err(e) = std::fs::write(&path, value) {
                tracing::warn!("writing {path}: {e}");
            }
        }
    }
}

/// The IPv4 prefixes (address/prefix length) on interface `ifindex`.
pub async fn ipv4_prefixes(handle: &Handle, ifindex: u32) -> Result<Vec<Ipv4Net>, NetdevError> {
    let mut out = Vec::new();
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(a) = addrs.try_next().await? {
        if a.header.index != ifindex {
            continue;
        }
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let Some(ip) = local {
            if let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len) {
                out.push(net);
            }
        }
    }
    Ok(out)
}

/// The MAC addresses the neighbour table holds for IPv4 addresses on `ifindex` (entries
/// with a link-layer address: reachable, stale, delay, probe, permanent).
pub async fn neighbours(
    handle: &Handle,
    ifindex: u32,
) -> Result<HashMap<Ipv4Addr, [u8; 6]>, NetdevError> {
    let mut out = HashMap::new();
    let mut neigh = handle
        .neighbours()
        .get()
        .set_family(rtnetlink::IpVersion::V4)
        .execute();
    while let Some(n) = neigh.try_next().await? {
        if n.header.ifindex != ifindex {
            continue;
        }
        if let Some((ip, mac)) = neighbour_mac(&n) {
            out.insert(ip, mac);
        }
    }
    Ok(out)
}

/// An IPv4 neighbour entry's address and MAC, if it holds a usable one.
pub fn neighbour_mac(n: &NeighbourMessage) -> Option<(Ipv4Addr, [u8; 6])> {
    if matches!(
        n.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
            NeighbourAttribute::LinkLocalAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    Some((ip?, mac?))
}

/// Asks the kernel to resolve `ip` on `ifindex` (a neighbour entry with NTF_USE, as
/// `ip neigh replace IP dev DEV use` does): its MAC shows up in the table, and as a
/// neighbour event, a moment later.
pub async fn resolve_neighbour(
    handle: &Handle,
    ifindex: u32,
    ip: Ipv4Addr,
) -> Result<(), NetdevError> {
    handle
        .neighbours()
        .add(ifindex, IpAddr::V4(ip))
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await?;
    Ok(())
}

/// Deletes the device if it exists.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetdevError> {
    match ifindex(handle, name).await? {
        Some(idx) => {
            handle.clone().link().del(idx).execute().await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

async fn link_names(handle: &Handle) -> Result<HashMap<u32, String>, NetdevError> {
    let mut names = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links.try_next().await? {
        if let Some(n) = name_of(&l) {
            names.insert(l.header.index, n.to_owned());
        }
    }
    Ok(names)
}

/// On-link peers whose MAC the datapath checks, with the MAC it holds (zero: unknown), on the
/// underlay interface. A neighbour event wakes the reconciler only when it brings one of them
/// a new MAC on that interface: the neighbour table changes all the time (every entry's
/// state ages), and an entry a pod forges on its own veth (an ARP request claiming a peer's
/// address) is nothing to act on either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub ifindex: u32,
    pub macs: HashMap<Ipv4Addr, [u8; 6]>,
}

pub type WatchedNeighbours = std::sync::Arc<std::sync::Mutex<Watched>>;

/// After a link event, the receiver is woken again this long after it (the last of a burst):
/// a CNI moves the pod's end of the veth into the pod's namespace and sets it up first, and
/// gives it the pod's address afterwards (the bridge plugin runs IPAM in between), while
/// addresses in a pod's namespace raise no event here. Kubernetes itself only reports the
/// pod's IP after the CNI is done, so the pod update that brings it comes later anyway; the
/// follow-ups cover the configuration file and a slow IPAM, and the periodic resync covers
/// the rest. (Subscribing to every namespace's events, NETLINK_LISTEN_ALL_NSID, would let any
/// pod with CAP_NET_ADMIN in its own namespace drive the reconciler by flapping addresses.)
const LINK_FOLLOW_UPS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(150),
    std::time::Duration::from_millis(600),
    std::time::Duration::from_secs(3),
];

/// The interface the kernel routes a packet from `src` to `dst` out of, as `ip route get DST
/// from SRC` answers (policy routing included); `None` when it has no route.
pub async fn route_out(
    handle: &Handle,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Option<String>, NetdevError> {
    use futures::StreamExt;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::RouteNetlinkMessage;
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .source_prefix(src, 32)
        .build();
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(msg));
    // A lookup, not a dump.
    req.header.flags = NLM_F_REQUEST;
    let mut answers = handle.clone().request(req)?;
    let mut oif = None;
    while let Some(m) = answers.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
            }
            // ENETUNREACH, EHOSTUNREACH: no route.
            NetlinkPayload::Error(e) if e.code.is_some() => return Ok(None),
            _ => {}
        }
    }
    let Some(oif) = oif else { return Ok(None) };
    Ok(link_names(handle).await?.remove(&oif))
}

/// Wakes the receiver whenever a link, an IPv4 address, an IPv4 route or rule changes (the CNI
/// adding or removing a pod's veth, a /32 route, an egress address moving), again a little
/// after each burst of link events (`LINK_FOLLOW_UPS`), or when a watched neighbour's MAC
/// changes.
pub fn watch_changes(
    watched: WatchedNeighbours,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, NetdevError> {
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::AsyncSocket;
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    // Rules too: policy routing decides where an egress IP's packets leave.
    let groups = libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV4_RULE
        | libc::RTMGRP_NEIGH;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups as u32))?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Link events restart the follow-up timer: the follow-ups run after the last of a burst.
    let (links_tx, mut links_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let follow_tx = tx.clone();
    tokio::spawn(async move {
        while links_rx.recv().await.is_some() {
            let mut i = 0;
            let mut last = tokio::time::Instant::now();
            while let Some(delay) = LINK_FOLLOW_UPS.get(i) {
                tokio::select! {
                    more = links_rx.recv() => {
                        if more.is_none() {
                            return;
                        }
                        i = 0;
                        last = tokio::time::Instant::now();
                    }
                    _ = tokio::time::sleep_until(last + *delay) => {
                        if follow_tx.send(()).is_err() {
                            return;
                        }
                        i += 1;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some((msg, _)) = messages.next().await {
            let wake = match &msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    neighbour_mac(n).is_some_and(|(ip, mac)| {
                        let w = watched.lock().unwrap_or_else(|e| e.into_inner());
                        n.header.ifindex == w.ifindex
                            && w.macs.get(&ip).is_some_and(|known| *known != mac)
                    })
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::DelNeighbour(_) | RouteNetlinkMessage::GetNeighbour(_),
                ) => false,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                ) => {
                    let _ = links_tx.send(());
                    true
                }
                _ => true,
            };
            if wake && tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Interface name -> its IPv4 addresses, in the kernel's order (primary first).
pub async fn ipv4_addresses(
    handle: &Handle,
) -> Result<BTreeMap<String, Vec<Ipv4Addr>>, NetdevError> {
    let names = link_names(handle).await?;
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        let Some(name) = names.get(&a.header.index) else {
            continue;
        };
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let addr = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(addr) {
            out.entry(name.clone()).or_default().push(ip);
        }
    }
    Ok(out)
}

/// The interface of the main table's IPv4 default route (the lowest metric), if any: the
/// uplink when nothing names one.
pub async fn default_route_interface(handle: &Handle) -> Result<Option<String>, NetdevError> {
    let names = link_names(handle).await?;
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut best: Option<(u32, u32)> = None;
    while let Some(r) = routes.try_next().await? {
        if r.header.destination_prefix_length != 0 {
            continue;
        }
        let mut oif = None;
        let mut metric = 0;
        let mut table = u32::from(r.header.table);
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != u32::from(libc::RT_TABLE_MAIN) {
            continue;
        }
        if let Some(i) = oif {
            if best.is_none_or(|(m, _)| metric < m) {
                best = Some((metric, i));
            }
        }
    }
    Ok(best.and_then(|(_, i)| names.get(&i).cloned()))
}

/// Pod address -> ifindex of the interface its /32 route points at (Calico, Cilium's
/// host-routing mode and the ptp plugin install such routes to the pod's host-side veth).
async fn pod_routes(handle: &Handle) -> Result<HashMap<Ipv4Addr, u32>, NetdevError> {
    let mut out = HashMap::new();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await? {
        if r.header.destination_prefix_length != 32 {
            continue;
        }
        let mut dst = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(ip), Some(i)) = (dst, oif) {
            out.insert(ip, i);
        }
    }
    Ok(out)
}

/// What discovery needs to know of one interface of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    /// A veth (or netkit) device: one end of a pair, the other end is `peer`.
    pub paired: bool,
    /// A bridge device.
    pub bridge: bool,
    /// The other end of a pair in another namespace: (that namespace's id as this namespace
    /// knows it, the peer's ifindex there).
    pub peer: Option<(i32, u32)>,
    /// ifindex of the device this one is enslaved to (a bridge port's bridge).
    pub master: Option<u32>,
}

fn link_facts(msg: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts::default();
    let mut nsid = None;
    let mut link = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
            LinkAttribute::Link(l) => link = Some(*l),
            LinkAttribute::Controller(m) => f.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Veth) => f.paired = true,
                        LinkInfo::Kind(InfoKind::Other(k)) if k == "netkit" => f.paired = true,
                        LinkInfo::Kind(InfoKind::Bridge) => f.bridge = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if f.paired {
        f.peer = nsid.zip(link);
    }
    f
}

/// A pod's host-side interface, as discovery found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    pub ifindex: u32,
    pub name: String,
    /// The bridge the interface is a port of (flannel's, k3s's `cni0`): packets for the pod
    /// are delivered through it (see `Endpoint::deliver_ifindex`).
    pub bridge: Option<u32>,
}

/// Local pods' host interfaces by pod address, and the addresses found behind more than one
/// veth with no /32 route to tell which is right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLinks {
    pub by_ip: HashMap<Ipv4Addr, PodLink>,
    /// Address -> the veths it was found behind (names, sorted).
    pub contested: BTreeMap<Ipv4Addr, Vec<String>>,
}

/// Decides which host interface each pod address belongs to, from the addresses found on
/// the far end of each veth (`behind`: address -> host-side ifindexes), the /32 routes
/// (`routes`: address -> ifindex), the node's interfaces (`links`) and the interface each
/// address had until now (`previous`, the endpoints map: address -> ifindex):
///
/// - A /32 route to a veth decides (routed CNIs: Calico, Cilium's host routing, ptp). The
///   host's routing table is the CNI's, while a pod with CAP_NET_ADMIN in its own namespace
///   can put any address on its interface: a pod claiming a neighbour's address must not
///   take its endpoint (it could then send as that pod, and get its replies).
/// - Else the one veth whose far end holds the address (bridge CNIs, routed CNIs without
///   per-pod routes).
/// - Else, when no veth holds it, a /32 route to any interface (no veth peer to look at: an
///   older kernel without cross-namespace address dumps, a pod interface that is not a veth):
///   what the agent did before it looked behind veths.
/// - Two or more veths and no route: the address is contested (reported). The veth that had
///   it keeps it (the pod that was there first: a claimant never takes it over); if none had
///   it, no endpoint at all, and a packet with that source is dropped as spoofed on whichever
///   veth it arrives.
pub fn resolve_pod_links(
    behind: &HashMap<Ipv4Addr, Vec<u32>>,
    routes: &HashMap<Ipv4Addr, u32>,
    links: &HashMap<u32, LinkFacts>,
    previous: &HashMap<Ipv4Addr, u32>,
) -> PodLinks {
    let mut out = PodLinks::default();
    let link = |i: u32| {
        let f = links.get(&i)?;
        let bridge = f.master.filter(|m| links.get(m).is_some_and(|b| b.bridge));
        Some(PodLink {
            ifindex: i,
            name: f.name.clone(),
            bridge,
        })
    };
    let ips: std::collections::BTreeSet<Ipv4Addr> =
        behind.keys().chain(routes.keys()).copied().collect();
    for ip in ips {
        let mut holders = behind.get(&ip).cloned().unwrap_or_default();
        holders.sort_unstable();
        holders.dedup();
        let route = routes.get(&ip).copied();
        let route_to_veth = route.filter(|r| links.get(r).is_some_and(|f| f.paired));
        let chosen = match (route_to_veth, holders.as_slice()) {
            (Some(r), _) => Some(r),
            (None, [one]) => Some(*one),
            (None, []) => route,
            (None, many) => {
                let mut names: Vec<String> = many
                    .iter()
                    .map(|i| {
                        links
                            .get(i)
                            .map_or_else(|| format!("#{i}"), |f| f.name.clone())
                    })
                    .collect();
                names.sort();
                out.contested.insert(ip, names);
                previous.get(&ip).copied().filter(|p| many.contains(p))
            }
        };
        if let Some(l) = chosen.and_then(link) {
            out.by_ip.insert(ip, l);
        }
    }
    out
}

/// `IFA_TARGET_NETNSID` (linux/if_addr.h): an address dump of another namespace, by the id
/// this namespace has for it (Linux 4.20 and later; needs `NETLINK_GET_STRICT_CHK`).
const IFA_TARGET_NETNSID: u16 = 10;

/// The IPv4 addresses on interface `ifindex` of the namespace this one knows as `nsid`.
async fn addresses_in(
    handle: &Handle,
    nsid: i32,
    ifindex: u32,
) -> Result<Vec<Ipv4Addr>, NetdevError> {
    let mut req = handle.address().get();
    let m = req.message_mut();
    m.header.family = netlink_packet_route::AddressFamily::Inet;
    // With strict checking the kernel filters the dump by this index itself.
    m.header.index = ifindex;
    m.attributes.push(AddressAttribute::Other(
        netlink_packet_utils::nla::DefaultNla::new(IFA_TARGET_NETNSID, nsid.to_ne_bytes().into()),
    ));
    let mut out = Vec::new();
    let mut addrs = req.execute();
    while let Some(a) = addrs.try_next().await? {
        if a.header.index != ifindex {
            continue;
        }
        for x in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = x {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}

/// Every local pod's host interface by pod address (see `resolve_pod_links`; `previous`: the
/// interface each address had until now).
///
/// Every veth CNI has a veth (or netkit) pair per pod: the host end, and the pod's `eth0` in
/// the pod's namespace holding its addresses. The host end names the pod's namespace (its
/// id, `IFLA_LINK_NETNSID`) and the far end's ifindex there (`IFLA_LINK`); an address dump
/// with `IFA_TARGET_NETNSID` reads that interface's addresses without entering the
/// namespace. This finds the pods of bridge CNIs (flannel, k3s: ports of `cni0`, no per-pod
/// route) as well as routed ones (`cali*`, `lxc*`), with or without a /32 route. The
/// bridge's neighbour and FDB tables would only know pods that have talked lately, and a pod
/// could answer ARP for a neighbour's address; the veth's far end is there from the start.
pub async fn pod_links(
    handle: &Handle,
    previous: &HashMap<Ipv4Addr, u32>,
) -> Result<PodLinks, NetdevError> {
    let mut links = HashMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(l) = dump.try_next().await? {
        links.insert(l.header.index, link_facts(&l));
    }
    let mut behind: HashMap<Ipv4Addr, Vec<u32>> = HashMap::new();
    let peers: Vec<(u32, (i32, u32))> = links
        .iter()
        .filter_map(|(i, f)| Some((*i, f.peer?)))
        .collect();
    if !peers.is_empty() {
        use rtnetlink::sys::AsyncSocket;
        // Strict checking applies to every request on a socket: a connection of its own.
        let (mut conn, strict, _) = rtnetlink::new_connection()?;
        conn.socket_mut()
            .socket_mut()
            .set_netlink_get_strict_chk(true)?;
        let task = tokio::spawn(conn);
        for (host_if, (nsid, peer_if)) in peers {
            match addresses_in(&strict, nsid, peer_if).await {
                Ok(ips) => {
                    for ip in ips {
                        behind.entry(ip).or_default().push(host_if);
                    }
                }
                // The pod's namespace went away meanwhile, or the kernel cannot dump another
                // namespace's addresses (before 4.20): the /32 routes still count.
                Err(e) => tracing::debug!(
                    interface = links.get(&host_if).map_or("?", |f| f.name.as_str()),
                    "addresses behind the veth: {e}"
                ),
            }
        }
        drop(strict);
        task.abort();
    }
    let routes = pod_routes(handle).await?;
    Ok(resolve_pod_links(&behind, &routes, &links, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, master: Option<u32>) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            paired: true,
            peer: Some((1, 2)),
            master,
            ..LinkFacts::default()
        }
    }

    fn links() -> HashMap<u32, LinkFacts> {
        [
            (
                2,
                LinkFacts {
                    name: "eth0".into(),
                    ..LinkFacts::default()
                },
            ),
            (
                3,
                LinkFacts {
                    name: "cni0".into(),
                    bridge: true,
                    ..LinkFacts::default()
                },
            ),
            (10, veth("lxc1", None)),
            (11, veth("lxc2", None)),
            (20, veth("veth1", Some(3))),
            (21, veth("veth2", Some(3))),
        ]
        .into()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    fn found(p: &PodLinks, last: u8) -> Option<(u32, Option<u32>)> {
        p.by_ip.get(&ip(last)).map(|l| (l.ifindex, l.bridge))
    }

    #[test]
    fn a_pod_is_found_behind_its_veth_on_bridges_and_routed_veths() {
        let behind = [(ip(2), vec![10]), (ip(3), vec![20]), (ip(4), vec![11])].into();
        // lxc1 has its /32 route, lxc2 none (Cilium without per-pod routes), veth1 is a port
        // of cni0 (flannel).
        let routes = [(ip(2), 10)].into();
        let p = resolve_pod_links(&behind, &routes, &links(), &HashMap::new());
        assert_eq!(found(&p, 2), Some((10, None)));
        assert_eq!(found(&p, 3), Some((20, Some(3))), "delivered through cni0");
        assert_eq!(found(&p, 4), Some((11, None)));
        assert_eq!(p.by_ip[&ip(3)].name, "veth1");
        assert!(p.contested.is_empty());
    }

    #[test]
    fn a_route_to_a_veth_decides_over_a_pod_claiming_the_address() {
        // lxc2's pod put lxc1's pod's address on its own interface too.
        let behind = [(ip(2), vec![10, 11])].into();
        let routes = [(ip(2), 10)].into();
        let p = resolve_pod_links(&behind, &routes, &links(), &HashMap::new());
        assert_eq!(found(&p, 2), Some((10, None)));
        // Control: the route to the claimant's veth gives it the address.
        let routes = [(ip(2), 11)].into();
        let p = resolve_pod_links(&behind, &routes, &links(), &HashMap::new());
        assert_eq!(found(&p, 2), Some((11, None)));
    }

    #[test]
    fn an_address_behind_two_bridge_ports_stays_with_the_one_that_had_it() {
        // veth2's pod claims veth1's pod's address (10.244.1.2) besides its own (.3).
        let behind = [(ip(2), vec![21, 20]), (ip(3), vec![21])].into();
        let none = HashMap::new();
        let contested = [(ip(2), vec!["veth1".to_owned(), "veth2".to_owned()])].into();
        let p = resolve_pod_links(&behind, &none, &links(), &[(ip(2), 20)].into());
        assert_eq!(
            found(&p, 2),
            Some((20, Some(3))),
            "the first holder keeps it"
        );
        assert_eq!(p.contested, contested);
        // Control: the claimant keeps its own address.
        assert_eq!(found(&p, 3), Some((21, Some(3))));
        // Nobody had it before: nobody gets it.
        let p = resolve_pod_links(&behind, &none, &links(), &none);
        assert_eq!(found(&p, 2), None);
        assert_eq!(p.contested, contested);
        // What it had before counts only among the veths it is behind now.
        let p = resolve_pod_links(&behind, &none, &links(), &[(ip(2), 10)].into());
        assert_eq!(found(&p, 2), None);
        // The same veth listed twice (two addresses of one pod's) is no contest.
        let behind = [(ip(2), vec![20, 20])].into();
        let p = resolve_pod_links(&behind, &none, &links(), &none);
        assert_eq!(found(&p, 2), Some((20, Some(3))));
        assert!(p.contested.is_empty());
    }

    #[test]
    fn without_a_veth_peer_the_route_alone_counts() {
        // A /32 route to an interface that is no veth (no far end to look at), and one to a
        // veth whose far end shows no address (an old kernel): both as before.
        let routes = [(ip(2), 2), (ip(3), 10)].into();
        let p = resolve_pod_links(&HashMap::new(), &routes, &links(), &HashMap::new());
        assert_eq!(found(&p, 2), Some((2, None)));
        assert_eq!(found(&p, 3), Some((10, None)));
        // A route to an interface that does not exist (any more) finds nothing.
        let routes = [(ip(4), 99)].into();
        assert!(
            resolve_pod_links(&HashMap::new(), &routes, &links(), &HashMap::new())
                .by_ip
                .is_empty()
        );
        // A route to a non-veth loses to the veth the address is behind.
        let behind = [(ip(2), vec![20])].into();
        let routes = [(ip(2), 3)].into();
        let p = resolve_pod_links(&behind, &routes, &links(), &HashMap::new());
        assert_eq!(found(&p, 2), Some((20, Some(3))));
    }

    #[test]
    fn other_vxlan_devices_on_the_port_are_named_and_our_own_is_not() {
        let devices = [
            ("egw0".to_owned(), 4788),
            ("flannel.1".to_owned(), 8472),
            ("vxlan.calico".to_owned(), 4789),
        ];
        assert_eq!(vxlan_devices_on(&devices, 4788, "egw0"), None);
        assert_eq!(
            vxlan_devices_on(&devices, 8472, "egw0").as_deref(),
            Some("VXLAN device flannel.1")
        );
        let e = NetdevError::PortInUse {
            port: 8472,
            holder: vxlan_devices_on(&devices, 8472, "egw0").unwrap_or_default(),
        };
        assert!(
            e.to_string()
                .starts_with("the tunnel port 8472/udp is in use by VXLAN device flannel.1"),
            "{e}"
        );
    }

    #[test]
    fn udp_sockets_on_the_port_are_read_from_the_proc_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  \x20 12: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0\n\
                  \x20 13: 0100007F:2118 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4242 2 0000000000000000 0\n";
        assert_eq!(udp_inodes_on(v4, 4789, false), [0], "a kernel socket");
        assert_eq!(udp_inodes_on(v4, 8472, false), [4242]);
        assert!(udp_inodes_on(v4, 4788, false).is_empty());
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  \x20  1: 00000000000000000000000000000000:12B4 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0\n\
                  \x20  2: 000080FE00000000FF0000000100000A:12B4 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 78 2 0000000000000000 0\n";
        assert_eq!(
            udp_inodes_on(v6, 4788, true),
            [77],
            "only [::] takes the IPv4 port"
        );
    }

    #[test]
    fn a_socket_on_the_port_is_an_error_naming_its_process() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        let e = check_no_socket_on(port).expect_err("the port is taken");
        let me = std::process::id();
        assert!(
            e.to_string().contains(&format!("in use by process {me} (")),
            "{e}"
        );
        drop(s);
        // Control: free again.
        check_no_socket_on(port).expect("free");
    }
}
