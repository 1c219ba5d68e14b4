//! The VXLAN tunnel between nodes (a collect_md device: one device reaches every node) and the
//! redirects.

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use egress_common::{config::Config, counters::DropReason};

const TUNNEL_TTL: u8 = 64;

/// Outer source address (network byte order) and VNI of a packet received on the tunnel.
#[inline(always)]
pub fn tunnel_source(ctx: &TcContext) -> Result<(u32, u32), DropReason> {
    // SAFETY: zeroed is a valid bpf_tunnel_key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the helper writes at most `size` bytes into `key`.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret < 0 {
        return Err(DropReason::TunnelKey);
    }
    // SAFETY: IPv4 tunnel, the ipv4 arm is set (host byte order).
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    Ok((remote.to_be(), key.tunnel_id))
}

/// Sends the packet through the tunnel device to `remote` (network byte order) with `vni`,
/// from this node's underlay address (the outer source is pinned to it, whatever the routing
/// would pick).
#[inline(always)]
pub fn redirect_to_tunnel(
    ctx: &TcContext,
    cfg: &Config,
    remote: u32,
    vni: u32,
) -> Result<i32, DropReason> {
    // SAFETY: zeroed is a valid bpf_tunnel_key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(remote);
    key.__bindgen_anon_3.local_ipv4 = u32::from_be(cfg.node_ip4);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: the helper reads `size` bytes from `key`.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret < 0 {
        return Err(DropReason::TunnelKey);
    }
    // Ours: the underlay's egress lets the encapsulated packet out on this mark (and clears
    // it), see `trust::check_outgoing`.
    // SAFETY: tc programs may write the mark of their own skb.
    unsafe { (*ctx.skb.skb).mark |= cfg.trust_mark };
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect(cfg.tunnel_ifindex, 0) };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Redirect);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Sends the packet out of `ifindex`, filling in the L2 header from the kernel's FIB and
/// neighbour tables (next hop towards the internet, or a pod behind its veth).
///
/// For a pod on a bridge CNI `ifindex` is the bridge (`Endpoint::delivery_ifindex`), not the
/// pod's veth: redirected to the veth, the kernel would resolve the pod's MAC on the veth, but
/// the pod's ARP reply arriving on a bridge port is handed to the bridge, so the veth's entry
/// never leaves INCOMPLETE and every packet is dropped (the bridge shape of the lab tests shows
/// it). Sent to the bridge, the route lookup finds the pod CIDR on it, the neighbour entry is
/// the one the host uses for the pod anyway, and the bridge forwards the frame out of the pod's
/// port by its FDB, as it would for the host's own packet.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: plain helper call, no parameters.
    let ret = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Redirect);
    }
    Ok(TC_ACT_REDIRECT)
}
