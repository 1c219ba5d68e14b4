//! The NAT table's invariants, checked over a listing of `EGW_NAT4` (`egress-agent inspect nat
//! --check`, the lab tests after their flows, the fuzzer after its run). Pure: entries in,
//! problems out; reading the map, and looking again at what looks wrong, is the caller's.
//!
//! What must hold (see `egress_common::nat` for the entries):
//! - every forward entry has its reverse entry (`key.reply_to(addr, port)`, flagged
//!   `NAT_F_REVERSE`) and that maps back to it: the forward key's source address and port,
//!   with the same node and policy. Without it replies cannot reach the pod, and the egress
//!   tuple is free for another flow to take;
//! - every reverse entry belongs to a forward entry. One exception, which is not a problem: a
//!   pod that reopens the tuple of a flow it closed a moment ago gets a fresh port, and the old
//!   reverse entry stays for the old flow's last packets until it is idle (a "leftover": its
//!   forward key exists and maps elsewhere);
//! - no two forward entries map to the same egress tuple (the replies of one would reach the
//!   other's pod);
//! - NAT ports (and ICMP echo identifiers) lie inside the node's range (`nat_port_min..=max`);
//! - states are `CT_*` values, and FIN/RST states only on TCP flows;
//! - claim entries live microseconds (the datapath's) or one collection pass (the agent's,
//!   stamped): a stamped one older than the stale limit was left behind, and so was an
//!   unstamped one that a second look, a stale limit later, still finds.
//!
//! A flow is written in two steps (reverse entry, then forward entry), and a listing is not a
//! snapshot: an entry may look broken in the microseconds between them. A caller that reads a
//! live map looks again at the entries of each problem ([`Problem::keys`]) after a short pause
//! and reports only what [`persisting`] keeps.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use egress_common::{
    addr::ip4_from,
    nat::{
        NatEntry4, NatKey4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_REVERSE,
        NAT_KEY_CLAIM,
    },
    proto::{IPPROTO_ICMP, IPPROTO_TCP},
};
use serde::Serialize;

/// What a check needs besides the entries.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The node's NAT port range (host byte order, inclusive); `None` when the node has none
    /// configured (not ready, or no gateway role): ports are then not checked.
    pub ports: Option<(u16, u16)>,
    /// CLOCK_MONOTONIC now (the clock of the entries' stamps).
    pub now_ns: u64,
    /// How old a stamped claim may be (`nat_gc::CLAIM_STALE_NS`).
    pub claim_stale_ns: u64,
}

/// One thing wrong with the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A forward entry without a reverse entry at its egress tuple.
    NoReverse { key: NatKey4, fwd: NatEntry4 },
    /// A forward entry whose reverse entry maps to another pod or port (and no other forward
    /// entry shares its egress tuple).
    ReverseElsewhere {
        key: NatKey4,
        fwd: NatEntry4,
        rev: NatEntry4,
    },
    /// The two entries of a flow disagree on the pod's node or the policy.
    PairMismatch {
        key: NatKey4,
        fwd: NatEntry4,
        rev: NatEntry4,
    },
    /// A reverse entry whose forward entry is gone.
    Orphan { rkey: NatKey4, rev: NatEntry4 },
    /// Several forward entries map to one egress tuple (`rkey`).
    SharedEgress { rkey: NatKey4, keys: Vec<NatKey4> },
    /// A NAT port (forward value, or reverse key) outside the configured range.
    PortOutOfRange {
        key: NatKey4,
        port: u16,
        range: (u16, u16),
    },
    /// A state that is no `CT_*` value, or a FIN/RST state of a flow that is not TCP.
    BadState { key: NatKey4, entry: NatEntry4 },
    /// A claim stamped by an agent longer ago than the stale limit.
    StaleClaim { key: NatKey4, age_ns: u64 },
    /// An unstamped claim (the datapath's): a problem when a second look, a stale limit later,
    /// still finds it (see [`persisting`]); after a fuzzing run (nothing running) at once.
    UnstampedClaim { key: NatKey4 },
    /// A key kind that is neither a flow nor a claim.
    UnknownKind { key: NatKey4 },
}

/// The whole table at a glance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub entries: usize,
    /// Forward entries.
    pub flows: usize,
    pub claims: usize,
    /// Reverse entries of closed flows whose tuple the pod opened again (see the module
    /// documentation): not a problem, collected when idle.
    pub leftovers: usize,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub summary: Summary,
    pub problems: Vec<Problem>,
}

/// Checks a listing of the NAT map.
pub fn check(entries: &[(NatKey4, NatEntry4)], limits: &Limits) -> Report {
    // A listing restarts from the first bucket when the key it stands on is deleted under it
    // (`BPF_MAP_GET_NEXT_KEY`): it may hold an entry twice. Its first sighting counts.
    let mut seen = HashSet::with_capacity(entries.len());
    let entries: Vec<&(NatKey4, NatEntry4)> =
        entries.iter().filter(|(k, _)| seen.insert(*k)).collect();
    let by_key: HashMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, v)| (*k, v)).collect();
    let mut r = Report::default();
    r.summary.entries = entries.len();
    // Forward entries by egress tuple (their reverse key); BTreeMap for a stable order.
    let mut by_egress: BTreeMap<[u8; 16], Vec<NatKey4>> = BTreeMap::new();
    for (k, v) in entries {
        match k.kind {
            0 => {}
            NAT_KEY_CLAIM => {
                r.summary.claims += 1;
                check_claim(k, v, limits, &mut r.problems);
                continue;
            }
            _ => {
                r.problems.push(Problem::UnknownKind { key: *k });
                continue;
            }
        }
        if !state_ok(k.proto, v.state) {
            r.problems.push(Problem::BadState { key: *k, entry: *v });
        }
        if v.flags & NAT_F_REVERSE == 0 {
            r.summary.flows += 1;
            by_egress
                .entry(key_bytes(&k.reply_to(v.addr, v.port)))
                .or_default()
                .push(*k);
            check_port(k, v.port, limits, &mut r.problems);
            continue;
        }
        check_port(k, k.dport, limits, &mut r.problems);
        let fkey = k.forward_of(v.addr, v.port);
        match by_key.get(&fkey) {
            Some(f) if f.flags & NAT_F_REVERSE == 0 => {
                if f.addr != k.daddr || f.port != k.dport {
                    r.summary.leftovers += 1;
                }
                // Else the pair is judged from the forward side.
            }
            _ => r.problems.push(Problem::Orphan { rkey: *k, rev: *v }),
        }
    }
    for keys in by_egress.values() {
        let (k, v) = (keys[0], by_key[&keys[0]]);
        let rkey = k.reply_to(v.addr, v.port);
        if keys.len() > 1 {
            r.problems.push(Problem::SharedEgress {
                rkey,
                keys: keys.clone(),
            });
            continue;
        }
        let rev = by_key
            .get(&rkey)
            .filter(|r| r.flags & NAT_F_REVERSE != 0)
            .copied();
        match rev {
            None => r.problems.push(Problem::NoReverse { key: k, fwd: *v }),
            Some(rev) if rev.addr != k.saddr || rev.port != k.sport => {
                r.problems.push(Problem::ReverseElsewhere {
                    key: k,
                    fwd: *v,
                    rev: *rev,
                })
            }
            Some(rev) if rev.node_ip4 != v.node_ip4 || rev.policy_id != v.policy_id => {
                r.problems.push(Problem::PairMismatch {
                    key: k,
                    fwd: *v,
                    rev: *rev,
                })
            }
            Some(_) => {}
        }
    }
    r
}

/// The problems of a second look (`again`: the check of the listing with every entry of
/// `first`'s problems read again after a pause) that the first look had too: what is really
/// wrong, not a flow caught between its two writes or a claim about to be released.
pub fn persisting(first: &[Problem], again: Vec<Problem>) -> Vec<Problem> {
    again
        .into_iter()
        .filter(|p| first.iter().any(|f| f.subject() == p.subject()))
        .collect()
}

/// Whether any problem is an unstamped claim (whose second look must come a stale limit
/// later).
pub fn has_unstamped_claims(problems: &[Problem]) -> bool {
    problems
        .iter()
        .any(|p| matches!(p, Problem::UnstampedClaim { .. }))
}

fn check_claim(k: &NatKey4, v: &NatEntry4, limits: &Limits, out: &mut Vec<Problem>) {
    if v.last_seen_ns == 0 {
        out.push(Problem::UnstampedClaim { key: *k });
        return;
    }
    let age_ns = limits.now_ns.saturating_sub(v.last_seen_ns);
    if age_ns >= limits.claim_stale_ns {
        out.push(Problem::StaleClaim { key: *k, age_ns });
    }
}

fn check_port(k: &NatKey4, port_be: u16, limits: &Limits, out: &mut Vec<Problem>) {
    let Some((min, max)) = limits.ports else {
        return;
    };
    let port = u16::from_be(port_be);
    if !(min..=max).contains(&port) {
        out.push(Problem::PortOutOfRange {
            key: *k,
            port,
            range: (min, max),
        });
    }
}

/// A state the datapath can give a flow of `proto`: FIN and RST are TCP's.
fn state_ok(proto: u8, state: u8) -> bool {
    match state {
        CT_NEW | CT_ESTABLISHED => true,
        CT_CLOSING | CT_RESET => proto == IPPROTO_TCP,
        _ => false,
    }
}

/// A key's bytes as they sit in the map (what `bpftool map ... key hex` takes).
pub fn key_bytes(k: &NatKey4) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&k.saddr.to_ne_bytes());
    b[4..8].copy_from_slice(&k.daddr.to_ne_bytes());
    b[8..10].copy_from_slice(&k.sport.to_ne_bytes());
    b[10..12].copy_from_slice(&k.dport.to_ne_bytes());
    b[12] = k.proto;
    b[13] = k.kind;
    b[14..16].copy_from_slice(&k._pad);
    b
}

/// `key hex 0a f4 ...`, for `bpftool map lookup|delete pinned <map> key hex ...`.
fn hex(k: &NatKey4) -> String {
    key_bytes(k)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn proto_name(p: u8) -> String {
    egress_common::proto::name(p).map_or_else(|| format!("proto {p}"), str::to_owned)
}

/// `addr:port`, or for ICMP echo `addr id N` (the identifier is the pod-side "port").
fn end(proto: u8, addr: u32, port_be: u16) -> String {
    let port = u16::from_be(port_be);
    if proto == IPPROTO_ICMP {
        if port == 0 {
            ip4_from(addr).to_string()
        } else {
            format!("{} id {port}", ip4_from(addr))
        }
    } else {
        format!("{}:{port}", ip4_from(addr))
    }
}

/// A key as it travels: `tcp 10.244.1.2:40000 -> 198.51.100.10:25`.
fn tuple(k: &NatKey4) -> String {
    format!(
        "{} {} -> {}",
        proto_name(k.proto),
        end(k.proto, k.saddr, k.sport),
        end(k.proto, k.daddr, k.dport)
    )
}

/// A flow from its forward entry: `tcp 10.244.1.2:40000 -> 198.51.100.10:25 as 192.0.2.10:61000`.
fn flow(k: &NatKey4, v: &NatEntry4) -> String {
    format!("{} as {}", tuple(k), end(k.proto, v.addr, v.port))
}

fn state_name(s: u8) -> String {
    match s {
        CT_NEW => "new".into(),
        CT_ESTABLISHED => "established".into(),
        CT_CLOSING => "closing".into(),
        CT_RESET => "reset".into(),
        _ => format!("unknown ({s})"),
    }
}

impl Problem {
    /// A short name of the kind of problem (JSON output, tests).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NoReverse { .. } => "no_reverse",
            Problem::ReverseElsewhere { .. } => "reverse_elsewhere",
            Problem::PairMismatch { .. } => "pair_mismatch",
            Problem::Orphan { .. } => "orphan",
            Problem::SharedEgress { .. } => "shared_egress",
            Problem::PortOutOfRange { .. } => "port_out_of_range",
            Problem::BadState { .. } => "bad_state",
            Problem::StaleClaim { .. } => "stale_claim",
            Problem::UnstampedClaim { .. } => "unstamped_claim",
            Problem::UnknownKind { .. } => "unknown_kind",
        }
    }

    /// The kind and the entry a problem is about, to match it across two looks.
    fn subject(&self) -> (&'static str, NatKey4) {
        let key = match self {
            Problem::NoReverse { key, .. }
            | Problem::ReverseElsewhere { key, .. }
            | Problem::PairMismatch { key, .. }
            | Problem::PortOutOfRange { key, .. }
            | Problem::BadState { key, .. }
            | Problem::StaleClaim { key, .. }
            | Problem::UnstampedClaim { key }
            | Problem::UnknownKind { key } => *key,
            Problem::Orphan { rkey, .. } | Problem::SharedEgress { rkey, .. } => *rkey,
        };
        // A stamped claim and an unstamped one are both "a claim left behind".
        let kind = match self {
            Problem::UnstampedClaim { .. } => "stale_claim",
            p => p.kind(),
        };
        (kind, key)
    }

    /// The keys to read again before believing this problem: the entries it is about and the
    /// ones whose absence it claims.
    pub fn keys(&self) -> Vec<NatKey4> {
        match self {
            Problem::NoReverse { key, fwd }
            | Problem::ReverseElsewhere { key, fwd, .. }
            | Problem::PairMismatch { key, fwd, .. } => {
                vec![*key, key.reply_to(fwd.addr, fwd.port)]
            }
            Problem::Orphan { rkey, rev } => vec![*rkey, rkey.forward_of(rev.addr, rev.port)],
            Problem::SharedEgress { rkey, keys } => {
                let mut v = keys.clone();
                v.push(*rkey);
                v
            }
            Problem::PortOutOfRange { key, .. }
            | Problem::BadState { key, .. }
            | Problem::StaleClaim { key, .. }
            | Problem::UnstampedClaim { key }
            | Problem::UnknownKind { key } => vec![*key],
        }
    }
}

/// One line per problem: what is wrong, what it does, what to do. Keys are given in hex for
/// `bpftool map lookup|delete pinned <pin root>/maps/EGW_NAT4 key hex ...`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BUG: &str = "a datapath or agent bug: report it with `bpftool map dump` of EGW_NAT4";
        match self {
            Problem::NoReverse { key, fwd } => write!(
                f,
                "flow {} has no reverse entry ({}): its replies cannot reach the pod and \
                 another flow may be given its egress port; delete the forward entry (key hex \
                 {}) so that the pod's next packet gets a new mapping; {BUG}",
                flow(key, fwd),
                tuple(&key.reply_to(fwd.addr, fwd.port)),
                hex(key)
            ),
            Problem::ReverseElsewhere { key, fwd, rev } => write!(
                f,
                "flow {} : its reverse entry ({}) sends replies to {} instead: this flow's pod \
                 gets no replies; delete the forward entry (key hex {}) so that its next packet \
                 gets a port of its own; {BUG}",
                flow(key, fwd),
                tuple(&key.reply_to(fwd.addr, fwd.port)),
                end(key.proto, rev.addr, rev.port),
                hex(key)
            ),
            Problem::PairMismatch { key, fwd, rev } => write!(
                f,
                "flow {}: forward and reverse entries disagree (node {} / {}, policy {} / {}): \
                 replies go to the reverse entry's node and count for its policy; delete both \
                 (keys hex {} and {}); {BUG}",
                flow(key, fwd),
                ip4_from(fwd.node_ip4),
                ip4_from(rev.node_ip4),
                fwd.policy_id,
                rev.policy_id,
                hex(key),
                hex(&key.reply_to(fwd.addr, fwd.port))
            ),
            Problem::Orphan { rkey, rev } => write!(
                f,
                "reverse entry {} (to pod {}, {}) has no forward entry: replies still reach the \
                 pod, but its next packet gets a new egress port; the collector removes it once \
                 idle, or delete it (key hex {}); {BUG}",
                tuple(rkey),
                end(rkey.proto, rev.addr, rev.port),
                state_name(rev.state),
                hex(rkey)
            ),
            Problem::SharedEgress { rkey, keys } => {
                let flows: Vec<String> = keys.iter().map(tuple).collect();
                write!(
                    f,
                    "{} flows share the egress tuple {}: {}; replies reach only one of their \
                     pods; delete the forward entries (keys hex {}) so that each gets a port of \
                     its own; {BUG}",
                    keys.len(),
                    tuple(rkey),
                    flows.join(", "),
                    keys.iter().map(hex).collect::<Vec<_>>().join(" / ")
                )
            }
            Problem::PortOutOfRange { key, port, range } => write!(
                f,
                "entry {} uses NAT port {port}, outside the range {}-{}: if nat.portRange \
                 changed, flows opened before keep their ports until they end; otherwise {BUG}",
                tuple(key),
                range.0,
                range.1
            ),
            Problem::BadState { key, entry } => write!(
                f,
                "entry {} has state {}, which a {} flow cannot have: the collector's timeout \
                 for it is wrong; delete it (key hex {}); {BUG}",
                tuple(key),
                state_name(entry.state),
                proto_name(key.proto),
                hex(key)
            ),
            Problem::StaleClaim { key, age_ns } => write!(
                f,
                "claim entry {} was taken {:.1} s ago and never released: its flow can neither \
                 expire nor hand its port on; a running agent deletes it at its next collection \
                 (start the agent), or delete it (key hex {})",
                tuple(key),
                *age_ns as f64 / 1e9,
                hex(key)
            ),
            Problem::UnstampedClaim { key } => write!(
                f,
                "claim entry {} (the datapath's) was never released: its flow can neither \
                 expire nor hand its port on; a running agent deletes it at its next collection \
                 (start the agent), or delete it (key hex {}); {BUG}",
                tuple(key),
                hex(key)
            ),
            Problem::UnknownKind { key } => write!(
                f,
                "entry {} has key kind {}, neither a flow nor a claim: an agent or datapath of \
                 another version wrote it? delete it (key hex {})",
                tuple(key),
                key.kind,
                hex(key)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use egress_common::proto::IPPROTO_UDP;

    use super::*;

    const S: u64 = 1_000_000_000;
    const POD: u32 = u32::from_ne_bytes([10, 244, 1, 2]);
    const POD2: u32 = u32::from_ne_bytes([10, 244, 1, 3]);
    const POD9: u32 = u32::from_ne_bytes([10, 244, 1, 9]);
    const REMOTE: u32 = u32::from_ne_bytes([198, 51, 100, 10]);
    const EGRESS: u32 = u32::from_ne_bytes([192, 0, 2, 10]);
    const NODE: u32 = u32::from_ne_bytes([192, 0, 2, 11]);

    fn limits() -> Limits {
        Limits {
            ports: Some((61000, 65535)),
            now_ns: 1000 * S,
            claim_stale_ns: S,
        }
    }

    fn key(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8) -> NatKey4 {
        NatKey4 {
            saddr,
            daddr,
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            ..Default::default()
        }
    }

    /// Both entries of a flow from `pod`:`sport` to the remote's port 25, as port `nat`.
    fn flow(pod: u32, sport: u16, nat: u16, proto: u8) -> Vec<(NatKey4, NatEntry4)> {
        let k = key(pod, sport, REMOTE, 25, proto);
        let f = NatEntry4 {
            addr: EGRESS,
            port: nat.to_be(),
            node_ip4: NODE,
            policy_id: 1,
            last_seen_ns: 999 * S,
            ..Default::default()
        };
        let r = NatEntry4 {
            addr: pod,
            port: sport.to_be(),
            flags: NAT_F_REVERSE,
            state: CT_ESTABLISHED,
            ..f
        };
        vec![(k, f), (k.reply_to(EGRESS, nat.to_be()), r)]
    }

    /// A good table: two TCP flows and a UDP one, two pods.
    fn good() -> Vec<(NatKey4, NatEntry4)> {
        let mut t = flow(POD, 40000, 61000, IPPROTO_TCP);
        t.extend(flow(POD2, 40000, 61001, IPPROTO_TCP));
        t.extend(flow(POD, 53000, 62000, IPPROTO_UDP));
        t
    }

    fn kinds(t: &[(NatKey4, NatEntry4)]) -> Vec<&'static str> {
        check(t, &limits())
            .problems
            .iter()
            .map(Problem::kind)
            .collect()
    }

    #[test]
    fn a_good_table_passes_with_its_summary() {
        let r = check(&good(), &limits());
        assert_eq!(r.problems, vec![]);
        assert_eq!(
            r.summary,
            Summary {
                entries: 6,
                flows: 3,
                claims: 0,
                leftovers: 0
            }
        );
        assert!(check(&[], &limits()).problems.is_empty(), "an empty table");
    }

    #[test]
    fn an_entry_a_listing_saw_twice_is_one_entry() {
        // The map changed under the listing, which started over.
        let mut t = good();
        t.extend(good());
        let r = check(&t, &limits());
        assert_eq!(r.problems, vec![], "no flow shares its own egress tuple");
        assert_eq!(r.summary.entries, 6);
    }

    #[test]
    fn a_forward_entry_without_its_reverse_is_reported() {
        let mut t = good();
        t.remove(1);
        assert_eq!(kinds(&t), ["no_reverse"]);
        // The entry at the egress tuple is a forward entry of some other flow: no reverse.
        let mut t = good();
        t[1].1.flags = 0;
        assert!(kinds(&t).contains(&"no_reverse"), "{:?}", kinds(&t));
    }

    #[test]
    fn a_reverse_entry_that_maps_elsewhere_is_reported() {
        let mut t = good();
        // To another port of the pod, which has no flow from there: an orphan too.
        t[1].1.port = 40001u16.to_be();
        assert_eq!(kinds(&t), ["orphan", "reverse_elsewhere"]);
        let mut t = good();
        t[1].1.addr = POD9;
        // Pod 9 has no flow to that remote port: the reverse entry is an orphan too.
        assert_eq!(kinds(&t), ["orphan", "reverse_elsewhere"]);
    }

    #[test]
    fn entries_of_one_flow_that_disagree_on_node_or_policy_are_reported() {
        let mut t = good();
        t[1].1.node_ip4 = EGRESS;
        assert_eq!(kinds(&t), ["pair_mismatch"]);
        let mut t = good();
        t[0].1.policy_id = 2;
        assert_eq!(kinds(&t), ["pair_mismatch"]);
    }

    #[test]
    fn a_reverse_entry_without_a_forward_entry_is_an_orphan_but_a_reopened_tuples_is_not() {
        let mut t = good();
        t.remove(0);
        assert_eq!(kinds(&t), ["orphan"]);
        // The pod reopened the tuple and got a fresh port: the old reverse entry stays for
        // the old flow's last packets (a leftover, counted, not a problem).
        let mut t = good();
        let (k, old) = t[1];
        t[0].1.port = 61005u16.to_be();
        t.push((t[0].0.reply_to(EGRESS, 61005u16.to_be()), old));
        let r = check(&t, &limits());
        assert_eq!(r.problems, vec![]);
        assert_eq!(r.summary.leftovers, 1);
        assert!(
            t.iter().any(|(x, _)| *x == k),
            "the old reverse entry is kept"
        );
    }

    #[test]
    fn two_forward_entries_with_one_egress_tuple_are_reported() {
        let mut t = good();
        // Pod 2's flow to the same remote port, given pod 1's egress port.
        let mut f2 = flow(POD2, 40000, 61000, IPPROTO_TCP);
        f2.truncate(1);
        t[2] = f2[0];
        t.remove(3); // pod 2's own reverse entry (61001) is gone
        let r = check(&t, &limits());
        assert_eq!(
            r.problems.iter().map(Problem::kind).collect::<Vec<_>>(),
            ["shared_egress"]
        );
        let Problem::SharedEgress { keys, .. } = &r.problems[0] else {
            unreachable!()
        };
        assert_eq!(keys.len(), 2);
        assert!(r.problems[0].to_string().contains("2 flows share"));
    }

    #[test]
    fn ports_outside_the_range_are_reported_and_unchecked_without_one() {
        let t = flow(POD, 40000, 60999, IPPROTO_TCP);
        assert_eq!(kinds(&t), ["port_out_of_range", "port_out_of_range"]);
        let r = check(
            &t,
            &Limits {
                ports: None,
                ..limits()
            },
        );
        assert!(r.problems.is_empty());
    }

    #[test]
    fn states_are_ct_values_and_fin_rst_states_tcp_only() {
        let mut t = good();
        t[0].1.state = 7;
        assert_eq!(kinds(&t), ["bad_state"]);
        let mut t = good();
        t[5].1.state = CT_RESET; // the UDP flow's reverse entry
        assert_eq!(kinds(&t), ["bad_state"]);
        // Control: a TCP flow reset by the pod, closing from the peer.
        let mut t = good();
        t[0].1.state = CT_RESET;
        t[1].1.state = CT_CLOSING;
        assert_eq!(kinds(&t), Vec::<&str>::new());
    }

    #[test]
    fn claims_older_than_the_limit_are_reported() {
        let mut t = good();
        let ckey = t[1].0.claim();
        let stamped = |ns| NatEntry4 {
            last_seen_ns: ns,
            ..Default::default()
        };
        t.push((ckey, stamped(1000 * S - S / 10)));
        let r = check(&t, &limits());
        assert!(r.problems.is_empty(), "a claim taken 100 ms ago");
        assert_eq!(r.summary.claims, 1);
        t.last_mut().expect("claim").1 = stamped(998 * S);
        assert_eq!(kinds(&t), ["stale_claim"]);
        // The datapath's claims carry no stamp: a problem only if a second look finds it.
        t.last_mut().expect("claim").1 = NatEntry4::default();
        let first = check(&t, &limits()).problems;
        assert_eq!(
            first.iter().map(Problem::kind).collect::<Vec<_>>(),
            ["unstamped_claim"]
        );
        assert!(has_unstamped_claims(&first));
        t.pop();
        assert!(persisting(&first, check(&t, &limits()).problems).is_empty());
    }

    #[test]
    fn an_unknown_key_kind_is_reported() {
        let mut t = good();
        let mut k = t[0].0;
        k.kind = 9;
        t.push((k, NatEntry4::default()));
        assert_eq!(kinds(&t), ["unknown_kind"]);
    }

    #[test]
    fn a_flow_caught_between_its_two_writes_does_not_persist() {
        // The reverse entry is written first: a listing may see it alone, or (iterated
        // before it was there) the forward entry alone.
        let full = good();
        let mut half = full.clone();
        half.remove(0);
        let first = check(&half, &limits()).problems;
        assert_eq!(first.len(), 1);
        assert!(persisting(&first, check(&full, &limits()).problems).is_empty());
        // A real orphan stays.
        let again = check(&half, &limits()).problems;
        assert_eq!(persisting(&first, again), first);
        // Every key of a problem is read again, the missing ones included.
        assert!(first[0].keys().contains(&full[0].0));
    }

    #[test]
    fn each_line_names_the_flow_and_the_key_to_delete() {
        let mut t = good();
        t.remove(1);
        let p = &check(&t, &limits()).problems[0];
        let line = p.to_string();
        assert!(
            line.contains("tcp 10.244.1.2:40000 -> 198.51.100.10:25 as 192.0.2.10:61000"),
            "{line}"
        );
        assert!(line.contains("key hex 0a f4 01 02 c6 33 64 0a 9c 40 00 19 06 00 00 00"));
        assert!(!line.contains('\n'));
        // ICMP echo: the identifier.
        let k = key(POD, 7, REMOTE, 0, IPPROTO_ICMP);
        assert_eq!(tuple(&k), "icmp 10.244.1.2 id 7 -> 198.51.100.10");
    }
}
