//! Making room in a NAT table that fills up, one whole flow at a time.
//!
//! The datapath's NAT map is a plain hash: it never evicts, so a flow never loses one of its
//! two entries while keeping the other (an LRU would, and the egress tuple of a flow whose
//! reverse entry went could be handed to a second flow, with the first one's replies then
//! reaching the second pod). A full table refuses new flows (`nat_table_full`) and keeps
//! every existing one. Before that happens the agent evicts: when the table holds more than
//! `HIGH_PERCENT` of its capacity, whole flows go until it holds `LOW_PERCENT`.
//!
//! Which flows: fairly by pod, as nf_conntrack's early drop spares assured connections.
//! Each round takes a flow of the pod that holds the most, and of that pod's flows the least
//! worth keeping: closed or reset ones first, then unanswered ones, then the longest idle. A
//! pod that floods the table loses its own flows; the flows of pods that hold few are the
//! last to go. Reverse entries whose forward entry is gone (the last packets of a flow whose
//! port went on) go before any flow.
//!
//! How: the forward entry first (the pod's next packet gets a new mapping; a forward entry
//! never outlives its reverse one), then the reverse entry under the flow's claim, after
//! reading it again (a port handed to a new flow meanwhile keeps that flow).

use std::collections::{BinaryHeap, HashMap};

use egress_common::nat::{NatEntry4, NatKey4, CT_CLOSING, CT_NEW, CT_RESET, NAT_F_REVERSE};

use super::agent_claim;
use crate::datapath::{Datapath, DatapathError};

/// Above this share of the table's capacity (entries, percent), flows are evicted...
pub const HIGH_PERCENT: u64 = 90;
/// ...until it holds this share.
pub const LOW_PERCENT: u64 = 80;

/// What to evict, in order: orphan reverse entries, then flows by their forward key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Reverse entries whose forward entry is gone.
    pub orphans: Vec<NatKey4>,
    /// Forward keys of the flows to evict (each with its reverse entry).
    pub flows: Vec<NatKey4>,
}

/// A flow as eviction sees it: how much it is worth keeping, its forward key, and whether
/// it has its reverse entry (two entries freed, else one).
type Candidate = ((u8, u64), NatKey4, bool);

/// How much a flow is worth keeping: lower goes first.
fn worth(fwd: &NatEntry4, rev: Option<&NatEntry4>) -> (u8, u64) {
    let states = [Some(fwd.state), rev.map(|r| r.state)];
    let class = if states
        .iter()
        .flatten()
        .any(|s| *s == CT_CLOSING || *s == CT_RESET)
    {
        0
    } else if states.iter().flatten().all(|s| *s == CT_NEW) {
        1
    } else {
        2
    };
    let last = rev.map_or(fwd.last_seen_ns, |r| r.last_seen_ns.max(fwd.last_seen_ns));
    (class, last)
}

/// The entries to delete so that a table of `capacity` entries holding `entries` gets back to
/// `LOW_PERCENT` (nothing while it holds no more than `HIGH_PERCENT`).
pub fn select(entries: &[(NatKey4, NatEntry4)], capacity: u32) -> Eviction {
    let capacity = u64::from(capacity);
    let held = entries.len() as u64;
    if held * 100 <= capacity * HIGH_PERCENT {
        return Eviction::default();
    }
    let mut excess = held - capacity * LOW_PERCENT / 100;
    let by_key: HashMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = Eviction::default();
    // Per pod: its flows, least worth keeping last (popped first).
    let mut pods: HashMap<u32, Vec<Candidate>> = HashMap::new();
    for (k, v) in entries {
        if k.is_claim() {
            continue;
        }
        if v.flags & NAT_F_REVERSE != 0 {
            let paired = by_key
                .get(&k.forward_of(v.addr, v.port))
                .is_some_and(|f| f.addr == k.daddr && f.port == k.dport);
            if !paired && excess > 0 {
                out.orphans.push(*k);
                excess -= 1;
            }
            continue;
        }
        let rev = by_key
            .get(&k.reply_to(v.addr, v.port))
            .copied()
            .filter(|r| r.addr == k.saddr && r.port == k.sport);
        pods.entry(k.saddr)
            .or_default()
            .push((worth(v, rev), *k, rev.is_some()));
    }
    for flows in pods.values_mut() {
        // Ties in a stable order: by the flow's remote side and port.
        let tie = |k: &NatKey4| (k.daddr, k.dport, k.sport, k.proto);
        flows.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(tie(&b.1).cmp(&tie(&a.1))));
    }
    // The pod holding the most flows first (ties: the lower address, for a stable order).
    let mut heap: BinaryHeap<(usize, std::cmp::Reverse<u32>)> = pods
        .iter()
        .map(|(pod, flows)| (flows.len(), std::cmp::Reverse(*pod)))
        .collect();
    while excess > 0 {
        let Some((n, std::cmp::Reverse(pod))) = heap.pop() else {
            break;
        };
        let Some((_, key, paired)) = pods.get_mut(&pod).and_then(Vec::pop) else {
            continue;
        };
        out.flows.push(key);
        excess = excess.saturating_sub(if paired { 2 } else { 1 });
        if n > 1 {
            heap.push((n - 1, std::cmp::Reverse(pod)));
        }
    }
    out
}

/// Forward entries whose reverse entry is missing or maps another flow: a split flow, which
/// must not go on (its egress tuple may be given to a second flow). Never expected: only an
/// entry copy that lost part of a table (a migration into a smaller one) or a bug leaves one.
pub fn split(entries: &[(NatKey4, NatEntry4)]) -> Vec<NatKey4> {
    let by_key: HashMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(k, v)| !k.is_claim() && v.flags & NAT_F_REVERSE == 0)
        .filter(|(k, v)| {
            !by_key
                .get(&k.reply_to(v.addr, v.port))
                .is_some_and(|r| r.addr == k.saddr && r.port == k.sport)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Deletes the forward entries of split flows (`split`) that are still split when read
/// again; returns them.
pub fn repair(dp: &mut Datapath, keys: &[NatKey4]) -> Result<Vec<NatKey4>, DatapathError> {
    let mut maps = dp.maps();
    let mut out = Vec::new();
    for k in keys {
        let Some(v) = maps.nat_entry(*k)? else {
            continue;
        };
        let paired = maps
            .nat_entry(k.reply_to(v.addr, v.port))?
            .is_some_and(|r| r.addr == k.saddr && r.port == k.sport);
        if !paired {
            maps.del_nat(*k)?;
            out.push(*k);
        }
    }
    Ok(out)
}

/// Deletes what `select` chose, each entry read again first; returns the flows evicted
/// (orphan reverse entries included) and the keys deleted.
pub fn apply(dp: &mut Datapath, e: &Eviction) -> Result<(usize, Vec<NatKey4>), DatapathError> {
    let mut maps = dp.maps();
    let mut n = 0;
    let mut deleted = Vec::new();
    // Forward entries first: they need no claim, and they free the room claims take.
    let mut reverse = Vec::with_capacity(e.flows.len() + e.orphans.len());
    for k in &e.flows {
        let Some(v) = maps.nat_entry(*k)? else {
            continue;
        };
        maps.del_nat(*k)?;
        deleted.push(*k);
        n += 1;
        reverse.push((k.reply_to(v.addr, v.port), Some(*k)));
    }
    reverse.extend(e.orphans.iter().map(|k| (*k, None)));
    for (rkey, fwd) in reverse {
        if !maps.insert_nat_if_absent(rkey.claim(), agent_claim())? {
            continue; // the datapath is changing this flow right now: the expiry gets it
        }
        let r = (|| -> Result<bool, DatapathError> {
            let Some(r) = maps.nat_entry(rkey)? else {
                return Ok(false);
            };
            // Still the evicted flow's (or still an orphan): its forward entry is gone.
            let owner = rkey.forward_of(r.addr, r.port);
            let mine = fwd.is_none_or(|f| f == owner);
            let forward_there = maps
                .nat_entry(owner)?
                .is_some_and(|f| f.addr == rkey.daddr && f.port == rkey.dport);
            if mine && !forward_there {
                maps.del_nat(rkey)?;
                deleted.push(rkey);
                return Ok(fwd.is_none());
            }
            Ok(false)
        })();
        maps.del_nat(rkey.claim())?;
        if r? {
            n += 1;
        }
    }
    Ok((n, deleted))
}

#[cfg(test)]
mod tests {
    use egress_common::{nat::CT_ESTABLISHED, proto::IPPROTO_TCP};

    use super::*;

    const EGRESS: u32 = 0x0a00_00fe;

    /// A flow of pod `pod` (its port `sport`) mapped to egress port `port`, both entries.
    fn flow(pod: u32, sport: u16, port: u16, state: u8, last: u64) -> [(NatKey4, NatEntry4); 2] {
        let k = NatKey4 {
            saddr: pod,
            daddr: 0x0808_0808,
            sport,
            dport: 25,
            proto: IPPROTO_TCP,
            kind: 0,
            _pad: [0; 2],
        };
        let f = NatEntry4 {
            addr: EGRESS,
            port,
            state,
            last_seen_ns: last,
            ..NatEntry4::default()
        };
        let r = NatEntry4 {
            addr: pod,
            port: sport,
            flags: NAT_F_REVERSE,
            state,
            last_seen_ns: last,
            ..NatEntry4::default()
        };
        [(k, f), (k.reply_to(EGRESS, port), r)]
    }

    #[test]
    fn nothing_goes_below_the_high_mark() {
        let t: Vec<_> = (0..45)
            .flat_map(|i| flow(1, i, 1000 + i, CT_NEW, 0))
            .collect();
        // 90 entries in a table of 100: at the mark, not above.
        assert_eq!(select(&t, 100), Eviction::default());
    }

    #[test]
    fn the_pod_that_holds_most_loses_its_flows_and_the_others_keep_theirs() {
        // A flooding pod (40 fresh flows), two quiet ones with an old, established flow each.
        let mut t: Vec<_> = (0..40)
            .flat_map(|i| flow(9, i, 1000 + i, CT_NEW, 100 + u64::from(i)))
            .collect();
        t.extend(flow(1, 7, 2000, CT_ESTABLISHED, 1));
        t.extend(flow(2, 7, 2001, CT_ESTABLISHED, 1));
        // 84 entries in a table of 92: above 90 % (82.8); down to 80 % (73): 11 entries,
        // six flows.
        let e = select(&t, 92);
        assert!(e.orphans.is_empty());
        assert_eq!(e.flows.len(), 6, "{e:?}");
        assert!(e.flows.iter().all(|k| k.saddr == 9), "{e:?}");
        // Its longest idle flows first.
        let ports: Vec<u16> = e.flows.iter().map(|k| k.sport).collect();
        assert_eq!(ports, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn closed_flows_go_before_unanswered_ones_and_those_before_answered_ones() {
        let mut t = Vec::new();
        t.extend(flow(1, 1, 1001, CT_ESTABLISHED, 0));
        t.extend(flow(1, 2, 1002, CT_NEW, 5));
        t.extend(flow(1, 3, 1003, CT_CLOSING, 9));
        t.extend(flow(1, 4, 1004, CT_ESTABLISHED, 3));
        // 8 entries in 8: down to 6, one flow: the closed one.
        assert_eq!(
            select(&t, 8)
                .flows
                .iter()
                .map(|k| k.sport)
                .collect::<Vec<_>>(),
            [3]
        );
        let e = select(&t, 6);
        // 8 in 6 -> down to 4: two flows, the closed one and the unanswered one.
        assert_eq!(e.flows.iter().map(|k| k.sport).collect::<Vec<_>>(), [3, 2]);
    }

    #[test]
    fn a_forward_entry_without_its_reverse_is_a_split_flow() {
        let mut t = Vec::new();
        t.extend(flow(1, 1, 1001, CT_ESTABLISHED, 0));
        let [alone, _] = flow(2, 2, 1002, CT_ESTABLISHED, 0);
        t.push(alone);
        // Its reverse tuple taken by another pod's flow.
        let [taken_fwd, _] = flow(3, 3, 1003, CT_ESTABLISHED, 0);
        let [_, other_rev] = flow(4, 4, 1003, CT_ESTABLISHED, 0);
        t.push(taken_fwd);
        t.push(other_rev);
        let mut s = split(&t);
        s.sort_by_key(|k| k.saddr);
        assert_eq!(s, [alone.0, taken_fwd.0]);
        assert!(split(&flow(1, 1, 1001, CT_NEW, 0)).is_empty());
    }

    #[test]
    fn orphan_reverse_entries_go_first_and_claims_never() {
        let mut t = Vec::new();
        t.extend(flow(1, 1, 1001, CT_ESTABLISHED, 0));
        let [_, orphan] = flow(2, 2, 1002, CT_ESTABLISHED, 0);
        t.push(orphan);
        let claim = t[0].0.reply_to(EGRESS, 1001).claim();
        t.push((claim, NatEntry4::default()));
        // 4 entries in 4: down to 3.
        let e = select(&t, 4);
        assert_eq!(e.orphans, [orphan.0]);
        assert!(e.flows.is_empty());
        // 4 in 2: down to 1: the orphan and the flow; the claim stays.
        let e = select(&t, 2);
        assert_eq!(e.orphans, [orphan.0]);
        assert_eq!(e.flows, [t[0].0]);
    }
}
