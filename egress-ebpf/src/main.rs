//! tc programs of the egress gateway. Entry points only; the work is in the modules.
//!
//! - `egw_from_pod`    tc ingress on each pod's host-side veth (source node).
//! - `egw_from_tunnel` tc ingress on the VXLAN device (gateway: SNAT; source node: replies).
//! - `egw_from_wire`   tc ingress on the underlay (the tunnel's gate) and the uplink
//!   (gateway: reverse NAT of replies).
//! - `egw_to_wire`     tc egress on the underlay (only our tunnel packets leave for a tunnel
//!   port).
//! - `egw_to_pod`      tc egress on each pod's host-side veth (flows opened towards the pod).
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod csum;
mod flows;
mod frag;
mod from_pod;
mod from_tunnel;
mod from_wire;
mod gateway;
mod icmp;
mod ipv6;
mod l3;
mod maps;
mod nat;
mod parse;
mod policy;
mod quote;
mod tcp;
mod to_pod;
mod to_wire;
mod trust;
mod tunnel;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use egress_common::counters::DropReason;

use crate::counters::count_drop;

/// The verdict for a packet the programs leave alone (`TC_ACT_UNSPEC`, which TCX calls
/// `TCX_NEXT`): whatever runs after us on the same hook still sees it: later TCX programs,
/// legacy clsact filters (a CNI's programs, the bandwidth plugin, a host firewall), then the
/// stack. `TC_ACT_OK` would end the chain for all of them.
pub const NEXT: i32 = TC_ACT_UNSPEC;

/// Counts an `Err` by its reason and turns it into an explicit drop.
#[inline(always)]
fn verdict(r: Result<i32, DropReason>) -> i32 {
    match r {
        Ok(v) => v,
        Err(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn egw_from_pod(ctx: TcContext) -> i32 {
    verdict(from_pod::try_from_pod(&ctx))
}

#[classifier]
pub fn egw_from_tunnel(ctx: TcContext) -> i32 {
    verdict(from_tunnel::try_from_tunnel(&ctx))
}

#[classifier]
pub fn egw_from_wire(ctx: TcContext) -> i32 {
    verdict(from_wire::try_from_wire(&ctx))
}

#[classifier]
pub fn egw_to_wire(ctx: TcContext) -> i32 {
    verdict(to_wire::try_to_wire(&ctx))
}

#[classifier]
pub fn egw_to_pod(ctx: TcContext) -> i32 {
    to_pod::try_to_pod(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
