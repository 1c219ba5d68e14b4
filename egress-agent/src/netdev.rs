//! Network devices through rtnetlink: the VXLAN tunnel device, interface lookups, and the
//! host-side veth of each pod (found from the CNI's /32 route to the pod).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetdevError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} exists but is not a collect_md VXLAN device; remove it or pick another name")]
    NotOurDevice(String),
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

fn is_collect_md_vxlan(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => v
                .iter()
                .any(|x| matches!(x, InfoVxlan::CollectMetadata(true))),
            _ => false,
        }),
        _ => false,
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

/// Creates the collect_md VXLAN device (`ip link add NAME type vxlan external dstport PORT`)
/// unless it exists, sets it up, and returns its ifindex. The device MTU is the underlay
/// MTU: oversize packets are answered by the programs, and the kernel fragments the outer
/// packet of non-DF ones.
pub async fn ensure_vxlan(
    handle: &Handle,
    name: &str,
    port: u16,
    mtu: u32,
) -> Result<u32, NetdevError> {
    if let Some(l) = link_by_name(handle, name).await? {
        if !is_collect_md_vxlan(&l) {
            return Err(NetdevError::NotOurDevice(name.to_owned()));
        }
        let idx = l.header.index;
        if l.header.flags.contains(LinkFlags::Up) {
            // Setting it up again would emit a link event, and link events wake the reconciler.
            return Ok(idx);
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await?;
        return Ok(idx);
    }
    let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
        .port(port)
        .collect_metadata(true)
        .learning(false)
        .mtu(mtu)
        .up()
        .build();
    handle.link().add(msg).execute().await?;
    ifindex(handle, name)
        .await?
        .ok_or_else(|| NetdevError::NotOurDevice(name.to_owned()))
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

/// Wakes the receiver whenever a link, an IPv4 address or an IPv4 route changes (the CNI
/// adding or removing a pod's veth and /32 route, an egress address moving).
pub fn watch_changes() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, NetdevError> {
    use rtnetlink::sys::AsyncSocket;
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups as u32))?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt;
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
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

/// Pod address -> (ifindex, name) of the interface its /32 route points at (Calico, Cilium
/// and the ptp plugin install such routes to the pod's host-side veth).
pub async fn pod_routes(handle: &Handle) -> Result<HashMap<Ipv4Addr, (u32, String)>, NetdevError> {
    let names = link_names(handle).await?;
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
            if let Some(n) = names.get(&i) {
                out.insert(ip, (i, n.clone()));
            }
        }
    }
    Ok(out)
}
