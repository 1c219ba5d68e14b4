//! Expiry of NAT/conntrack entries by protocol and state: the timeouts, the decision
//! (`expired`, pure) and its application to the datapath's NAT map (`collect_nat`); claim
//! entries left behind (`ClaimWatch`, `NatGc`); room made in a table that fills up
//! (`evict`).
//!
//! Claims (`NAT_KEY_CLAIM`) are taken with `BPF_NOEXIST` and must be deleted by whoever took
//! them. The datapath holds one for a few map operations inside one program run; the agent
//! for a few syscalls per flow of a collection pass. One that outlives that was left behind:
//! an agent killed (OOM, SIGKILL, node pressure) between taking and releasing it, or a
//! delete that failed. Left alone it blocks its flow for good: no collection pass can take
//! it (the flow's entries never expire) and the datapath can never hand the port over. So a
//! claim that is still there, unchanged, a second after it was first seen is deleted.
//! "Unchanged": the agent stamps its claims with the time it took them (`last_seen_ns`,
//! CLOCK_MONOTONIC), which also lets a restarted agent recognise its predecessor's at once;
//! the datapath's claims are all-zero and live for microseconds, so seeing one at two
//! lookups a second apart means nobody released it. Deleting it is safe: while it exists no
//! one else can take that claim (`BPF_NOEXIST`), so the entry deleted is the one judged
//! stale (its value is read again right before the delete). The table is not an LRU: no
//! entry goes that nobody deleted.

use std::collections::{HashMap, HashSet};

use egress_common::{
    nat::{NatEntry4, NatKey4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_REVERSE},
    proto::{IPPROTO_ICMP, IPPROTO_TCP},
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::datapath::{Datapath, DatapathError};

pub mod evict;

/// Idle timeouts, seconds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub tcp_syn: u64,
    pub tcp_established: u64,
    /// Both directions closed (FIN each way), or reset.
    pub tcp_closing: u64,
    /// One direction closed by a FIN, the other still open (nf_conntrack's FIN_WAIT /
    /// CLOSE_WAIT): the open side may still send for a while, as a server answering a
    /// request whose sender shut its side does.
    pub tcp_half_closed: u64,
    pub udp: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 6 * 3600,
            tcp_closing: 10,
            tcp_half_closed: 120,
            udp: 60,
            icmp: 30,
        }
    }
}

impl Timeouts {
    /// Idle timeout of a flow whose forward entry is in `fwd` and reverse entry (when it has
    /// one) in `rev`: each direction's FIN is its own (a half-closed flow lives on).
    pub fn for_pair(&self, proto: u8, fwd: u8, rev: Option<u8>) -> u64 {
        let Some(rev) = rev else {
            return self.for_flow(proto, fwd);
        };
        if proto == IPPROTO_TCP && fwd != CT_RESET && rev != CT_RESET {
            match (fwd == CT_CLOSING, rev == CT_CLOSING) {
                (true, true) => return self.tcp_closing,
                (true, false) | (false, true) => return self.tcp_half_closed,
                (false, false) => {}
            }
        }
        self.for_flow(proto, fwd.max(rev))
    }

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
/// and reverse entries whose forward entry is gone (a port handed on, a flow evicted) once
/// they are idle too.
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
        let last = rev.map_or(v.last_seen_ns, |r| r.last_seen_ns.max(v.last_seen_ns));
        if idle(last) > t.for_pair(k.proto, v.state, rev.map(|r| r.state)) {
            out.push(*k);
            if rev.is_some() {
                out.push(rkey);
            }
        }
    }
    out
}

/// How long a claim entry may exist before it counts as left behind (see the module
/// documentation): a thousand times longer than any holder keeps one.
pub const CLAIM_STALE_NS: u64 = 1_000_000_000;

/// The claim entries earlier passes saw: key -> (value, when first seen with that value).
#[derive(Clone, Debug, Default)]
pub struct ClaimWatch {
    seen: HashMap<NatKey4, (NatEntry4, u64)>,
}

impl ClaimWatch {
    /// Given every claim entry present at `now_ns`, the ones left behind: stamped by an agent
    /// more than `CLAIM_STALE_NS` ago, or seen with the same value at least that long ago.
    /// Remembers the rest (and forgets claims that are gone).
    pub fn stale(&mut self, claims: &[(NatKey4, NatEntry4)], now_ns: u64) -> Vec<NatKey4> {
        let mut seen = HashMap::with_capacity(claims.len());
        let mut out = Vec::new();
        for (k, v) in claims.iter().filter(|(k, _)| k.is_claim()) {
            let first = match self.seen.get(k) {
                Some((was, first)) if was == v => *first,
                _ => now_ns,
            };
            let stamped =
                v.last_seen_ns != 0 && now_ns.saturating_sub(v.last_seen_ns) >= CLAIM_STALE_NS;
            if stamped || now_ns.saturating_sub(first) >= CLAIM_STALE_NS {
                out.push(*k);
            }
            seen.insert(*k, (*v, first));
        }
        self.seen = seen;
        out
    }

    /// Whether claims are being watched (then `NatGc::collect_claims` should run about a
    /// second later).
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The value a claim had when it was seen.
    fn value(&self, k: &NatKey4) -> Option<NatEntry4> {
        self.seen.get(k).map(|(v, _)| *v)
    }

    fn forget(&mut self, k: &NatKey4) {
        self.seen.remove(k);
    }
}

/// The value of a claim the agent takes: stamped with the time it was taken.
pub fn agent_claim() -> NatEntry4 {
    NatEntry4 {
        last_seen_ns: monotonic_ns(),
        ..Default::default()
    }
}

/// The agent's NAT collector: expiry of idle flows, and of claims left behind, across passes.
#[derive(Debug, Default)]
pub struct NatGc {
    pub claims: ClaimWatch,
}

impl NatGc {
    /// One collection pass (see `collect_nat`) over a table of `capacity` entries; claims
    /// left behind are deleted first, so the flows they blocked are judged in the same pass;
    /// then split flows are repaired and, in a table that fills up, flows evicted (`evict`).
    pub fn collect(
        &mut self,
        dp: &mut Datapath,
        t: &Timeouts,
        capacity: u32,
    ) -> Result<NatCollected, DatapathError> {
        let mut entries = dp.maps().nat_entries()?;
        let claims: Vec<_> = entries
            .iter()
            .filter(|(k, _)| k.is_claim())
            .copied()
            .collect();
        let stale = self.claims.stale(&claims, monotonic_ns());
        let claims_deleted = self.delete_stale(dp, &stale)?;
        if claims_deleted > 0 {
            entries.retain(|(k, _)| !(k.is_claim() && stale.contains(k)));
        }
        let split = evict::repair(dp, &evict::split(&entries))?;
        for k in &split {
            warn!(
                flow = %fmt_key(k),
                "deleted the forward entry of a split NAT flow (its reverse entry was gone or mapped another flow)"
            );
        }
        if !split.is_empty() {
            entries.retain(|(k, _)| !split.contains(k));
        }
        let mut evicted = 0;
        let choice = evict::select(&entries, capacity);
        if choice != evict::Eviction::default() {
            let (n, deleted) = evict::apply(dp, &choice)?;
            evicted = n;
            let deleted: HashSet<NatKey4> = deleted.into_iter().collect();
            entries.retain(|(k, _)| !deleted.contains(k));
        }
        let (expired, live) = collect_entries(dp, entries, t)?;
        Ok(NatCollected {
            expired,
            live,
            claims_deleted,
            evicted,
            split_repaired: split.len(),
        })
    }

    /// Looks again at the claims an earlier pass saw (point lookups, no listing) and deletes
    /// those left behind; returns how many.
    pub fn collect_claims(&mut self, dp: &mut Datapath) -> Result<usize, DatapathError> {
        let keys: Vec<NatKey4> = self.claims.seen.keys().copied().collect();
        let mut maps = dp.maps();
        let mut present = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = maps.nat_entry(k)? {
                present.push((k, v));
            }
        }
        let stale = self.claims.stale(&present, monotonic_ns());
        self.delete_stale(dp, &stale)
    }

    /// Deletes the stale claims whose value is still the one judged.
    fn delete_stale(
        &mut self,
        dp: &mut Datapath,
        stale: &[NatKey4],
    ) -> Result<usize, DatapathError> {
        let mut maps = dp.maps();
        let mut n = 0;
        for k in stale {
            let judged = self.claims.value(k);
            if judged.is_some() && maps.nat_entry(*k)? == judged {
                maps.del_nat(*k)?;
                warn!(
                    claim = %fmt_key(k),
                    "deleted a NAT claim entry left behind (an agent stopped mid-pass?)"
                );
                n += 1;
            }
            self.claims.forget(k);
        }
        Ok(n)
    }
}

/// What one collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatCollected {
    /// NAT entries deleted (idle flows, both directions).
    pub expired: usize,
    /// Translated flows (forward entries) left.
    pub live: usize,
    /// Claim entries left behind, deleted.
    pub claims_deleted: usize,
    /// Flows evicted to make room (`evict`), orphan reverse entries included.
    pub evicted: usize,
    /// Forward entries of split flows deleted (`evict::split`; never expected).
    pub split_repaired: usize,
}

fn fmt_key(k: &NatKey4) -> String {
    use egress_common::addr::ip4_from;
    format!(
        "{}:{} -> {}:{} proto {}",
        ip4_from(k.saddr),
        u16::from_be(k.sport),
        ip4_from(k.daddr),
        u16::from_be(k.dport),
        k.proto
    )
}

/// Deletes expired NAT entries; returns how many, and how many translated flows (forward
/// entries) are left. Claims left behind are judged by `NatGc`, which keeps what it saw
/// across passes; this one-off pass deletes only those an agent stamped over a second ago.
///
/// Listing a large table takes a while, and flows keep running meanwhile (the datapath hands
/// the ports of closed flows to new connections). So each candidate flow is judged again on
/// its current entries, and deleted, while holding the flow's claim entry, which the datapath
/// takes for every change of a reverse entry's owner: a port handed to a new flow is never cut.
pub fn collect_nat(dp: &mut Datapath, t: &Timeouts) -> Result<(usize, usize), DatapathError> {
    let c = NatGc::default().collect(dp, t, u32::MAX)?;
    Ok((c.expired, c.live))
}

/// `collect_nat` on a listing of the table.
fn collect_entries(
    dp: &mut Datapath,
    entries: Vec<(NatKey4, NatEntry4)>,
    t: &Timeouts,
) -> Result<(usize, usize), DatapathError> {
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
        if !maps.insert_nat_if_absent(rkey.claim(), agent_claim())? {
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

/// The NAT entries whose pod side is one of `pods` (raw addresses): forward entries keyed by
/// the pod's address, reverse entries that map to it. Claims are not flows.
pub fn pod_entries(entries: &[(NatKey4, NatEntry4)], pods: &HashSet<u32>) -> Vec<NatKey4> {
    entries
        .iter()
        .filter(|(k, v)| {
            !k.is_claim()
                && if v.flags & NAT_F_REVERSE != 0 {
                    pods.contains(&v.addr)
                } else {
                    pods.contains(&k.saddr)
                }
        })
        .map(|(k, _)| *k)
        .collect()
}

/// What `flush_pods` deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// NAT entries (gateway), both directions.
    pub nat: usize,
    /// Flows the pods opened or were sent (`EGW_FLOWS4`, source node).
    pub flows: usize,
    /// Fragment entries of their datagrams (`EGW_FRAG4`).
    pub frags: usize,
}

/// Forgets every flow of pods that are gone (raw addresses): their NAT entries both ways,
/// their entries in the flow table and the fragment table. A new pod that gets one of these
/// addresses then never receives an answer meant for the old one, and its first packet to
/// the same destination starts a flow of its own. Returns what was deleted, and the pods
/// whose reverse entries could not all be judged (their claim was held: try again).
///
/// A reverse entry changes owner only under its claim (the datapath hands a closed flow's
/// port to a new flow), so it is deleted under the claim too, after reading it again: a port
/// that went to another pod's flow meanwhile keeps that flow.
pub fn flush_pods(
    dp: &mut Datapath,
    pods: &HashSet<u32>,
) -> Result<(Flushed, HashSet<u32>), DatapathError> {
    let mut done = Flushed::default();
    let mut retry = HashSet::new();
    if pods.is_empty() {
        return Ok((done, retry));
    }
    let mut maps = dp.maps();
    let nat = maps.nat_entries()?;
    let by_key: HashMap<NatKey4, NatEntry4> = nat.iter().copied().collect();
    for k in pod_entries(&nat, pods) {
        let Some(v) = by_key.get(&k) else { continue };
        if v.flags & NAT_F_REVERSE == 0 {
            maps.del_nat(k)?;
            done.nat += 1;
            continue;
        }
        if !maps.insert_nat_if_absent(k.claim(), agent_claim())? {
            retry.insert(v.addr);
            continue;
        }
        let r = (|| -> Result<(), DatapathError> {
            if let Some(now) = maps.nat_entry(k)? {
                if now.flags & NAT_F_REVERSE != 0 && pods.contains(&now.addr) {
                    maps.del_nat(k)?;
                    done.nat += 1;
                }
            }
            Ok(())
        })();
        maps.del_nat(k.claim())?;
        r?;
    }
    for (k, _) in maps.flows()? {
        if pods.contains(&k.saddr) {
            maps.del_flow(k)?;
            done.flows += 1;
        }
    }
    for (k, v) in maps.frags()? {
        let pod = if v.flags & NAT_F_REVERSE != 0 {
            v.addr
        } else {
            k.saddr
        };
        if pods.contains(&pod) {
            maps.del_frag(k)?;
            done.frags += 1;
        }
    }
    Ok((done, retry))
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
        let closed = flow(
            IPPROTO_TCP,
            CT_CLOSING,
            CT_CLOSING,
            now - 11 * S,
            now - 20 * S,
        );
        assert_eq!(expired(&closed, now, &t).len(), 2, "both directions go");
        let reset = flow(IPPROTO_TCP, CT_NEW, CT_RESET, now - 11 * S, now - 11 * S);
        assert_eq!(expired(&reset, now, &t).len(), 2);
    }

    /// A FIN closes one direction only: the other may still send (a server answering a
    /// request whose client shut its side), so the flow is not cut after 10 idle seconds.
    #[test]
    fn a_half_closed_flow_lives_on_for_its_open_side() {
        let t = Timeouts::default();
        let now = 1000 * S;
        for (f, r) in [(CT_CLOSING, CT_ESTABLISHED), (CT_NEW, CT_CLOSING)] {
            let half = flow(IPPROTO_TCP, f, r, now - 60 * S, now - 60 * S);
            assert!(expired(&half, now, &t).is_empty(), "{f} {r}: lives on");
            let idle = flow(IPPROTO_TCP, f, r, now - 121 * S, now - 121 * S);
            assert_eq!(expired(&idle, now, &t).len(), 2, "{f} {r}: FIN_WAIT over");
        }
        // Control: closed both ways, 10 s.
        let closed = flow(
            IPPROTO_TCP,
            CT_CLOSING,
            CT_CLOSING,
            now - 11 * S,
            now - 11 * S,
        );
        assert_eq!(expired(&closed, now, &t).len(), 2);
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

    fn claim(last_seen_ns: u64) -> (NatKey4, NatEntry4) {
        let k = NatKey4 {
            saddr: 2,
            daddr: 3,
            sport: 20,
            dport: 30,
            proto: IPPROTO_TCP,
            ..Default::default()
        };
        let v = NatEntry4 {
            last_seen_ns,
            ..Default::default()
        };
        (k.claim(), v)
    }

    #[test]
    fn a_claim_still_there_unchanged_a_second_later_is_left_behind() {
        let mut w = ClaimWatch::default();
        let c = claim(0); // the datapath's claims carry no stamp
        let t0 = 1000 * S;
        assert!(w.stale(&[c], t0).is_empty(), "first sighting");
        assert!(w.stale(&[c], t0 + S / 2).is_empty(), "half a second on");
        assert_eq!(w.stale(&[c], t0 + S), vec![c.0], "a second on");
    }

    #[test]
    fn a_claim_released_and_taken_again_is_not_left_behind() {
        let mut w = ClaimWatch::default();
        let t0 = 1000 * S;
        // Agent claims are stamped: a new claim of the same key is a new value.
        assert!(w.stale(&[claim(t0)], t0).is_empty());
        assert!(
            w.stale(&[claim(t0 + S - 1)], t0 + S).is_empty(),
            "taken again just now: a new claim"
        );
        // Gone at one look: forgotten, the clock starts again when it is back.
        let c = claim(0);
        assert!(w.stale(&[c], t0).is_empty());
        assert!(w.stale(&[], t0 + S / 2).is_empty());
        assert!(
            w.stale(&[c], t0 + S).is_empty(),
            "back: first sighting again"
        );
        assert!(!w.is_empty(), "watched");
    }

    #[test]
    fn an_agent_claim_stamped_over_a_second_ago_is_left_behind_at_once() {
        let mut w = ClaimWatch::default();
        let now = 1000 * S;
        // What a restarted agent finds of its predecessor, killed mid-pass.
        let old = claim(now - S - 1);
        assert_eq!(w.stale(&[old], now), vec![old.0]);
        // Control: one taken a moment ago (another agent's pass, now) is not.
        let mut w = ClaimWatch::default();
        assert!(w.stale(&[claim(now - S / 10)], now).is_empty());
    }

    #[test]
    fn a_gone_pods_entries_are_both_directions_of_its_flows_and_nothing_else() {
        let now = 1000 * S;
        // Pod 1's flow (forward key from 1, reverse entry maps to 1) and pod 7's.
        let mine = flow(IPPROTO_TCP, CT_ESTABLISHED, CT_ESTABLISHED, now, now);
        let mut other = flow(IPPROTO_UDP, CT_NEW, CT_NEW, now, now);
        other[0].0.saddr = 7;
        other[1].0 = other[0].0.reply_to(3, 31);
        other[1].1.addr = 7;
        let mut all = mine.clone();
        all.extend(other.iter().copied());
        all.push(claim(0)); // the claim of a reverse key whose source is 2, not a flow
        let gone = pod_entries(&all, &HashSet::from([1]));
        assert_eq!(gone, vec![mine[0].0, mine[1].0], "pod 1's flow, both ways");
        assert_eq!(
            pod_entries(&all, &HashSet::from([7])),
            vec![other[0].0, other[1].0]
        );
        assert!(
            pod_entries(&all, &HashSet::from([2, 3])).is_empty(),
            "the remote and the egress address are nobody's pod side"
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
