//! Expiry of NAT/conntrack entries by protocol and state: the timeouts, the decision
//! (`expired`, pure) and its application to the datapath's NAT map (`collect_nat`).

use std::collections::{HashMap, HashSet};

use egress_common::{
    nat::{NatEntry4, NatKey4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_REVERSE},
    proto::{IPPROTO_ICMP, IPPROTO_TCP},
};
use serde::{Deserialize, Serialize};

use crate::datapath::{Datapath, DatapathError};

/// Idle timeouts, seconds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub tcp_syn: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 6 * 3600,
            tcp_closing: 10,
            udp: 60,
            icmp: 30,
        }
    }
}

impl Timeouts {
    /// Idle timeout of a flow in `state` (merged over both directions).
    pub fn for_flow(&self, proto: u8, state: u8) -> u64 {
        match (proto, state) {
            (IPPROTO_TCP, CT_NEW) => self.tcp_syn,
            (IPPROTO_TCP, CT_ESTABLISHED) => self.tcp_established,
            (IPPROTO_TCP, CT_CLOSING | CT_RESET) => self.tcp_closing,
            (IPPROTO_TCP, _) => self.tcp_syn,
            (IPPROTO_ICMP, _) => self.icmp,
            _ => self.udp,
        }
    }
}

/// The keys to delete: every flow (forward + reverse entry) idle longer than its timeout,
/// and reverse entries whose forward entry is gone (LRU eviction) once they are idle too.
pub fn expired(entries: &[(NatKey4, NatEntry4)], now_ns: u64, t: &Timeouts) -> Vec<NatKey4> {
    let by_key: HashMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, v)| (*k, v)).collect();
    let idle = |last: u64| now_ns.saturating_sub(last) / 1_000_000_000;
    let mut out = Vec::new();
    for (k, v) in entries {
        if k.is_claim() {
            continue;
        }
        if v.flags & NAT_F_REVERSE != 0 {
            // Orphans only; paired reverse entries go with their forward entry. A forward
            // entry that maps to another port is not this one's pair (the port went to a
            // new flow, see the datapath's take-over of closed flows).
            let fwd = k.forward_of(v.addr, v.port);
            let paired = by_key
                .get(&fwd)
                .is_some_and(|f| f.addr == k.daddr && f.port == k.dport);
            if !paired && idle(v.last_seen_ns) > t.for_flow(k.proto, v.state) {
                out.push(*k);
            }
            continue;
        }
        let rkey = k.reply_to(v.addr, v.port);
        let rev = by_key
            .get(&rkey)
            .filter(|r| r.addr == k.saddr && r.port == k.sport);
        let state = rev.map_or(v.state, |r| r.state.max(v.state));
        let last = rev.map_or(v.last_seen_ns, |r| r.last_seen_ns.max(v.last_seen_ns));
        if idle(last) > t.for_flow(k.proto, state) {
            out.push(*k);
            if rev.is_some() {
                out.push(rkey);
            }
        }
    }
    out
}

/// Deletes expired NAT entries; returns how many, and how many translated flows (forward
/// entries) are left.
///
/// Listing a large table takes a while, and flows keep running meanwhile (the datapath hands
/// the ports of closed flows to new connections). So each candidate flow is judged again on
/// its current entries, and deleted, while holding the flow's claim entry, which the datapath
/// takes for every change of a reverse entry's owner: a port handed to a new flow is never cut.
pub fn collect_nat(dp: &mut Datapath, t: &Timeouts) -> Result<(usize, usize), DatapathError> {
    let entries = dp.maps().nat_entries()?;
    let candidates = expired(&entries, monotonic_ns(), t);
    let by_key: HashMap<_, _> = entries.iter().copied().collect();
    // One unit per flow, named by its reverse key: a forward entry and its reverse entry go
    // together; an orphan reverse entry goes alone.
    let mut flows: HashMap<NatKey4, Vec<NatKey4>> = HashMap::new();
    for k in candidates {
        let Some(v) = by_key.get(&k) else { continue };
        let rkey = if v.flags & NAT_F_REVERSE != 0 {
            k
        } else {
            k.reply_to(v.addr, v.port)
        };
        flows.entry(rkey).or_default().push(k);
    }
    let mut maps = dp.maps();
    let mut dead = HashSet::new();
    for (rkey, keys) in flows {
        if !maps.insert_nat_if_absent(rkey.claim())? {
            continue; // the datapath is changing this flow right now: next pass
        }
        let result = (|| -> Result<(), DatapathError> {
            let mut fresh = Vec::with_capacity(keys.len() + 1);
            for k in keys.iter().chain(std::iter::once(&rkey)) {
                if fresh.iter().any(|(f, _)| f == k) {
                    continue;
                }
                if let Some(v) = maps.nat_entry(*k)? {
                    fresh.push((*k, v));
                }
            }
            for k in expired(&fresh, monotonic_ns(), t) {
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
        .filter(|(k, v)| v.flags & NAT_F_REVERSE == 0 && !k.is_claim() && !dead.contains(k))
        .count();
    Ok((dead.len(), live))
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use egress_common::proto::IPPROTO_UDP;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn flow(
        proto: u8,
        fstate: u8,
        rstate: u8,
        flast: u64,
        rlast: u64,
    ) -> Vec<(NatKey4, NatEntry4)> {
        let k = NatKey4 {
            saddr: 1,
            daddr: 2,
            sport: 10,
            dport: 20,
            proto,
            kind: 0,
            _pad: [0; 2],
        };
        let f = NatEntry4 {
            addr: 3,
            port: 30,
            state: fstate,
            last_seen_ns: flast,
            ..Default::default()
        };
        let r = NatEntry4 {
            addr: 1,
            port: 10,
            flags: NAT_F_REVERSE,
            state: rstate,
            last_seen_ns: rlast,
            ..Default::default()
        };
        vec![(k, f), (k.reply_to(3, 30), r)]
    }

    #[test]
    fn established_tcp_lives_long_closing_tcp_does_not() {
        let t = Timeouts::default();
        let now = 1000 * S;
        let est = flow(
            IPPROTO_TCP,
            CT_NEW,
            CT_ESTABLISHED,
            now - 900 * S,
            now - 900 * S,
        );
        assert!(expired(&est, now, &t).is_empty());
        let closing = flow(
            IPPROTO_TCP,
            CT_CLOSING,
            CT_ESTABLISHED,
            now - 11 * S,
            now - 20 * S,
        );
        assert_eq!(expired(&closing, now, &t).len(), 2, "both directions go");
    }

    #[test]
    fn unanswered_syn_expires_after_a_minute() {
        let t = Timeouts::default();
        let now = 1000 * S;
        assert!(expired(
            &flow(IPPROTO_TCP, CT_NEW, CT_NEW, now - 59 * S, now - 59 * S),
            now,
            &t
        )
        .is_empty());
        assert_eq!(
            expired(
                &flow(IPPROTO_TCP, CT_NEW, CT_NEW, now - 61 * S, now - 61 * S),
                now,
                &t
            )
            .len(),
            2
        );
    }

    #[test]
    fn the_fresher_direction_keeps_a_flow_alive() {
        let t = Timeouts::default();
        let now = 1000 * S;
        let f = flow(
            IPPROTO_UDP,
            CT_NEW,
            CT_ESTABLISHED,
            now - 500 * S,
            now - 5 * S,
        );
        assert!(expired(&f, now, &t).is_empty());
        let f = flow(
            IPPROTO_ICMP,
            CT_NEW,
            CT_ESTABLISHED,
            now - 500 * S,
            now - 31 * S,
        );
        assert_eq!(expired(&f, now, &t).len(), 2);
    }

    #[test]
    fn orphaned_reverse_entry_expires_alone() {
        let t = Timeouts::default();
        let now = 1000 * S;
        let mut f = flow(IPPROTO_UDP, CT_NEW, CT_ESTABLISHED, now, now - 61 * S);
        f.remove(0);
        assert_eq!(expired(&f, now, &t), vec![f[0].0]);
    }

    #[test]
    fn a_port_handed_to_a_new_flow_keeps_its_reverse_entry() {
        let t = Timeouts::default();
        let now = 1000 * S;
        // The old flow, reset long ago; its reverse entry now maps the port to a new pod
        // (address 7, port 70) that is busy.
        let mut f = flow(IPPROTO_TCP, CT_RESET, CT_RESET, now - 60 * S, now - 60 * S);
        f[1].1.addr = 7;
        f[1].1.port = 70;
        f[1].1.state = CT_ESTABLISHED;
        f[1].1.last_seen_ns = now;
        assert_eq!(
            expired(&f, now, &t),
            vec![f[0].0],
            "only the old forward entry goes"
        );
    }

    #[test]
    fn claim_entries_are_not_flows() {
        let t = Timeouts::default();
        let k = NatKey4 {
            kind: egress_common::nat::NAT_KEY_CLAIM,
            ..Default::default()
        };
        let entries = vec![(k, NatEntry4::default())];
        assert!(expired(&entries, 1000 * S, &t).is_empty());
    }
}
