//! Per-policy traffic counters and per-reason drop counters.

use egress_common::counters::DropReason;

use crate::maps::{EGW_DROPS, EGW_NAT_STATS, EGW_POL_STATS};

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(p) = EGW_DROPS.get_ptr_mut(reason.index()) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// Counts a NAT event (`NAT_STAT_*`).
#[inline(always)]
pub fn count_nat(stat: u32) {
    if let Some(p) = EGW_NAT_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_tx(policy_id: u32, bytes: u32) {
    if let Some(p) = EGW_POL_STATS.get_ptr_mut(policy_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*p).tx_packets += 1;
            (*p).tx_bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn count_rx(policy_id: u32, bytes: u32) {
    if let Some(p) = EGW_POL_STATS.get_ptr_mut(policy_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*p).rx_packets += 1;
            (*p).rx_bytes += u64::from(bytes);
        }
    }
}
