//! What may come out of a program for a packet, judged from the packet, the maps and the
//! model, not from the datapath's code paths:
//!
//! - the verdict is one the program gives (`TCX_NEXT`, `TC_ACT_SHOT`, `TC_ACT_REDIRECT`; the
//!   tunnel device's program drops everything in a test run, which has no tunnel metadata);
//! - a packet left to the stack (`TCX_NEXT`) is byte-identical;
//! - a packet that matches no policy or flow is left alone: `TCX_NEXT`, byte-identical, and
//!   the NAT entry at its tuple (a forward entry of a pod's flow, say) unchanged;
//! - a redirected packet is exactly one of: a pod's packet translated to the egress IP and a
//!   port in the range, whose NAT entries (both) are what it was translated by; a reply
//!   reverse-translated to the pod the model knows for its reverse key (seeded, or created
//!   by a translation this run judged legitimate: pod A from its own interface); an ICMP error
//!   reverse-translated, quote included, the same way; a later fragment translated as its
//!   first fragment was, in the same direction; a worker's packet sent on to the tunnel; an
//!   ICMP error the node built (time exceeded, fragmentation needed). Every byte outside the
//!   fields the translation changes is unchanged, and every checksum that was valid is valid.

use std::ops::Range;

use aya::maps::{HashMap, MapData, MapError};
use egress_common::{
    nat::{FragKey4, NatEntry4, NatKey4, NAT_F_REVERSE},
    program_names::{FROM_POD, FROM_TUNNEL, FROM_WIRE, TO_POD, TO_WIRE},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use egress_tests::packet::{
    EGRESS, GATEWAY, POD_A, POD_A_IF, TCX_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT, WORKER,
};

use crate::{
    wire::{
        be16, diff_outside, ip_csum_ok, l4_csum_ok, mss_at, parse, quote, raw, Parse, Parsed,
        ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IP_DF, L3, TCP_SYN,
    },
    world::{Cfg, Model, Role, TUNNEL_PORT},
};

/// The maps the oracle reads (point lookups on descriptors of their own).
pub struct Maps {
    pub nat: HashMap<MapData, NatKey4, NatEntry4>,
    pub frag: HashMap<MapData, FragKey4, NatEntry4>,
}

impl Maps {
    pub fn nat(&self, k: &NatKey4) -> Option<NatEntry4> {
        match self.nat.get(k, 0) {
            Ok(v) => Some(v),
            Err(MapError::KeyNotFound) => None,
            Err(e) => panic!("NAT lookup: {e}"),
        }
    }

    pub fn frag(&self, k: &FragKey4) -> Option<NatEntry4> {
        match self.frag.get(k, 0) {
            Ok(v) => Some(v),
            Err(MapError::KeyNotFound) => None,
            Err(e) => panic!("fragment lookup: {e}"),
        }
    }
}

/// What the oracle expects before the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Matches no policy or flow: `TCX_NEXT`, byte-identical, NAT entry at its tuple
    /// unchanged.
    Untouched,
    /// Dropped (and counted).
    Shot,
    /// The program decides; the outcome is judged after the run.
    Any,
}

/// The oracle's expectation of `prog` on `pkt`, before the run.
pub fn expect(prog: &str, cfg: &Cfg, pkt: &[u8], ingress: u32, maps: &Maps) -> Expect {
    let p = match parse(pkt) {
        Parse::NotIpv4 if prog == FROM_TUNNEL => return Expect::Shot,
        Parse::NotIpv4 if prog == FROM_POD => return expect_from_pod6(pkt),
        Parse::NotIpv4 => return Expect::Untouched,
        // `egw_to_pod` never drops; the others drop what they cannot parse.
        Parse::Malformed if prog == TO_POD => return Expect::Untouched,
        Parse::Malformed => return Expect::Shot,
        Parse::Ok(p) => p,
    };
    match prog {
        TO_POD => Expect::Untouched,
        // Untrusted, or trusted but without tunnel metadata (a test run has none).
        FROM_TUNNEL => Expect::Shot,
        // The node's own sockets may send to a tunnel port (and a test run's skb has a
        // socket), so the underlay's egress passes everything it can parse.
        TO_WIRE => Expect::Untouched,
        FROM_POD => expect_from_pod(&p, ingress),
        _ => expect_from_wire(cfg, pkt, &p, maps),
    }
}

fn node_address(a: std::net::Ipv4Addr) -> bool {
    a == GATEWAY || a == WORKER
}

fn expect_from_pod(p: &Parsed, ingress: u32) -> Expect {
    if p.proto == IPPROTO_UDP
        && !p.later_fragment()
        && p.dport == TUNNEL_PORT
        && node_address(p.daddr)
    {
        return Expect::Shot; // tunnel_from_pod
    }
    let Some(if_of) = [(POD_A, POD_A_IF), (egress_tests::packet::POD_B, 6)]
        .iter()
        .find(|(a, _)| *a == p.saddr)
        .map(|(_, i)| *i)
    else {
        return Expect::Shot; // spoofed: no endpoint
    };
    if if_of != ingress {
        return Expect::Shot; // spoofed: another pod's interface
    }
    if p.saddr != POD_A {
        return Expect::Untouched; // not selected
    }
    if p.daddr.octets()[..2] == [10, 244] {
        return Expect::Untouched; // excluded by the policy
    }
    Expect::Any
}

/// A pod's frame that is not IPv4 (`egw_from_pod`'s IPv6 path): a broken IPv6 header, or an
/// ICMPv6 message without its type, is dropped; the rest keeps its path, as no policy of the
/// seeded maps refuses IPv6 (`EGW_POLICY6` is empty) and link-local, multicast, unspecified
/// sources and neighbour discovery are never touched anyway.
fn expect_from_pod6(pkt: &[u8]) -> Expect {
    const V6: usize = L3;
    if pkt.len() < V6 + 40 || pkt[12..14] != [0x86, 0xdd] {
        return Expect::Untouched;
    }
    if pkt[V6] >> 4 != 6 {
        return Expect::Shot;
    }
    let link_local = |a: &[u8]| a[0] == 0xfe && a[1] & 0xc0 == 0x80;
    let (src, dst) = (&pkt[V6 + 8..V6 + 24], &pkt[V6 + 24..V6 + 40]);
    if dst[0] == 0xff || link_local(dst) || link_local(src) || src.iter().all(|b| *b == 0) {
        return Expect::Untouched;
    }
    if pkt[V6 + 6] == 58 && pkt.len() == V6 + 40 {
        return Expect::Shot; // no ICMPv6 type to read
    }
    Expect::Untouched
}

fn expect_from_wire(cfg: &Cfg, pkt: &[u8], p: &Parsed, maps: &Maps) -> Expect {
    // The underlay's gate: a tunnel packet to this node (a later fragment of one included).
    if p.proto == IPPROTO_UDP
        && p.daddr == cfg.node
        && (p.later_fragment() || p.dport == TUNNEL_PORT)
    {
        if node_address(p.saddr) {
            return Expect::Untouched; // marked, left as it is
        }
        if !p.later_fragment() {
            return Expect::Shot; // unknown_node
        }
    }
    if p.icmp_error() {
        let q = match quote(pkt, p) {
            Err(()) => return Expect::Shot,
            Ok(None) => return Expect::Untouched,
            Ok(Some(q)) => q,
        };
        if q.saddr != p.daddr {
            return Expect::Untouched;
        }
        return match maps.nat(&q.reverse_key()) {
            Some(e) if e.flags & NAT_F_REVERSE != 0 => Expect::Any,
            _ => Expect::Untouched,
        };
    }
    if p.later_fragment() {
        return match maps.frag(&p.frag_key()) {
            Some(_) => Expect::Any,
            None => Expect::Untouched,
        };
    }
    if p.proto == IPPROTO_ICMP && p.dport == 0 {
        return Expect::Untouched;
    }
    match maps.nat(&p.key()) {
        Some(e) if e.flags & NAT_F_REVERSE != 0 => Expect::Any,
        _ => Expect::Untouched,
    }
}

/// The verdicts a program may give in a test run.
pub fn verdict_ok(prog: &str, v: u32) -> bool {
    match prog {
        TO_POD => v == TCX_NEXT,
        FROM_TUNNEL => v == TC_ACT_SHOT,
        TO_WIRE => v == TCX_NEXT || v == TC_ACT_SHOT,
        _ => v == TCX_NEXT || v == TC_ACT_SHOT || v == TC_ACT_REDIRECT,
    }
}

/// A violation: what is wrong (its kind groups failures), and the details.
pub struct Violation {
    pub kind: String,
    pub detail: String,
    /// A hole known and open: the ignored packet test that reproduces it.
    pub hole: Option<&'static str>,
}

impl Violation {
    pub fn new(kind: impl Into<String>, detail: String) -> Violation {
        Violation {
            kind: kind.into(),
            detail,
            hole: None,
        }
    }

    #[expect(
        dead_code,
        reason = "no hole is open today; the next one found in files a fix cannot touch at once \
                  is tagged with its ignored packet test's name"
    )]
    pub fn hole_of(mut self, test: &'static str) -> Violation {
        self.hole = Some(test);
        self
    }
}

fn fail(kind: &str, detail: String) -> Result<(), Violation> {
    Err(Violation::new(kind, detail))
}

/// The byte ranges of an IPv4 header field.
fn ip_field(off: usize, width: usize) -> Range<usize> {
    L3 + off..L3 + off + width
}

/// Checksums that were valid before must be valid after (the IPv4 header, the L4 checksum
/// of a whole packet); a UDP checksum that was zero stays zero, and one that was not never
/// becomes zero.
fn check_checksums(prog: &str, input: &[u8], p: &Parsed, out: &[u8]) -> Result<(), Violation> {
    let Parse::Ok(o) = parse(out) else {
        return fail(
            &format!("{prog}: a redirected packet does not parse"),
            String::new(),
        );
    };
    if ip_csum_ok(input, L3) == Some(true) && ip_csum_ok(out, L3) != Some(true) {
        return fail(
            &format!("{prog}: IPv4 header checksum broken by the translation"),
            String::new(),
        );
    }
    if l4_csum_ok(input, p) == Some(true) && l4_csum_ok(out, &o) == Some(false) {
        return fail(
            &format!("{prog}: L4 checksum (proto {}) broken", p.proto),
            String::new(),
        );
    }
    if p.proto == IPPROTO_UDP && !p.later_fragment() && input.len() >= p.l4 + 8 {
        let (a, b) = (be16(input, p.l4 + 6), be16(out, o.l4 + 6));
        if (a == 0) != (b == 0) {
            return fail(
                &format!("{prog}: UDP checksum {a:#06x} became {b:#06x} (zero means none)"),
                String::new(),
            );
        }
    }
    Ok(())
}

/// The MSS option may be lowered to `max` (a SYN's, when the path clamps) and nothing else.
fn mss_range(
    input: &[u8],
    p: &Parsed,
    out: &[u8],
    max: Option<u16>,
) -> Result<Option<Range<usize>>, Violation> {
    let Some(at) = (p.proto == IPPROTO_TCP && p.tcp_flags & TCP_SYN != 0)
        .then(|| mss_at(input, p))
        .flatten()
    else {
        return Ok(None);
    };
    let (old, new) = (be16(input, at), be16(out, at));
    if old == new {
        return Ok(None);
    }
    match max {
        Some(m) if old > m && new == m => Ok(Some(at..at + 2)),
        _ => fail(
            "MSS changed other than clamped to the path's",
            format!("MSS {old} became {new} (clamp to {max:?})"),
        )
        .map(|()| None),
    }
}

/// Judges a redirected packet and learns the flows it shows the run creating.
#[expect(clippy::too_many_arguments, reason = "the run's whole context")]
pub fn check_redirect(
    prog: &str,
    role: Role,
    cfg: &Cfg,
    input: &[u8],
    ingress: u32,
    out: &[u8],
    maps: &Maps,
    model: &mut Model,
) -> Result<(), Violation> {
    let Parse::Ok(p) = parse(input) else {
        return fail(
            &format!("{prog}: redirected a packet it cannot parse"),
            String::new(),
        );
    };
    match prog {
        FROM_POD => check_from_pod(role, cfg, input, &p, ingress, out, maps, model),
        FROM_WIRE => check_from_wire(cfg, input, &p, out, maps, model),
        _ => fail(&format!("{prog}: redirected"), String::new()),
    }
}

/// An ICMP error the node built about `input` (time exceeded, fragmentation needed): from
/// the node to the sender, Ethernet addresses swapped, the input's IPv4 header and 8 bytes
/// quoted, checksums valid.
fn generated_icmp(
    cfg: &Cfg,
    input: &[u8],
    p: &Parsed,
    out: &[u8],
) -> Option<Result<(), Violation>> {
    let Parse::Ok(o) = parse(out) else {
        return None;
    };
    if o.proto != IPPROTO_ICMP || o.saddr != cfg.node || o.daddr != p.saddr {
        return None;
    }
    if !matches!(o.icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) || out.len() != L3 + 56 {
        return None;
    }
    let why = if o.icmp_type == ICMP_TIME_EXCEEDED {
        p.ttl <= 1
    } else {
        o.icmp_code == 4 && p.frag & IP_DF != 0 && p.tot_len as u32 > cfg.tunnel_mtu
    };
    let check = || -> Result<(), Violation> {
        if !why {
            return fail(
                "from_pod: an ICMP error the packet did not call for",
                format!("type {} code {}", o.icmp_type, o.icmp_code),
            );
        }
        if out[..6] != input[6..12] || out[6..12] != input[..6] {
            return fail(
                "from_pod: built ICMP error: Ethernet addresses",
                String::new(),
            );
        }
        if out[L3 + 28..] != input[L3..L3 + 28] {
            return fail("from_pod: built ICMP error: quote", String::new());
        }
        if ip_csum_ok(out, L3) != Some(true) || l4_csum_ok(out, &o) != Some(true) {
            return fail("from_pod: built ICMP error: checksums", String::new());
        }
        Ok(())
    };
    Some(check())
}

#[expect(clippy::too_many_arguments, reason = "the run's whole context")]
fn check_from_pod(
    role: Role,
    cfg: &Cfg,
    input: &[u8],
    p: &Parsed,
    ingress: u32,
    out: &[u8],
    maps: &Maps,
    model: &mut Model,
) -> Result<(), Violation> {
    if let Some(r) = generated_icmp(cfg, input, p, out) {
        return r;
    }
    if p.saddr != POD_A || ingress != POD_A_IF {
        return fail(
            "from_pod: redirected a packet of no selected pod on its own interface",
            String::new(),
        );
    }
    if out.len() != input.len() {
        return fail(
            "from_pod: the length changed",
            format!("{} -> {}", input.len(), out.len()),
        );
    }
    if out[L3 + 8] != p.ttl.wrapping_sub(1) {
        return fail("from_pod: TTL not one lower", String::new());
    }
    let mut allowed = vec![ip_field(8, 1), ip_field(10, 2)];
    if role == Role::Worker {
        // On to the gateway through the tunnel, the MSS clamped to what it carries.
        allowed.extend(mss_range(
            input,
            p,
            out,
            Some((cfg.tunnel_mtu - 40) as u16),
        )?);
        if let Some(c) = p.l4_csum_at().filter(|_| p.proto == IPPROTO_TCP) {
            allowed.push(c..c + 2);
        }
        if let Some(at) = diff_outside(input, out, &allowed) {
            return fail(
                "from_pod (worker): a byte changed outside TTL, checksums and MSS",
                format!("offset {at}"),
            );
        }
        return check_checksums(FROM_POD, input, p, out);
    }
    // The gateway: translated to the egress IP.
    let Parse::Ok(o) = parse(out) else {
        return fail("from_pod: translated packet does not parse", String::new());
    };
    if o.saddr != EGRESS {
        return fail(
            "from_pod: translated to another address than the egress IP",
            format!("{}", o.saddr),
        );
    }
    allowed.push(ip_field(12, 4));
    if p.later_fragment() {
        match model.frag_out.get(&p.frag_key()) {
            Some(a) if *a == o.saddr => {}
            other => {
                return fail(
                    "from_pod: a later fragment translated without its first fragment",
                    format!("model: {other:?}"),
                )
            }
        }
        if let Some(at) = diff_outside(input, out, &allowed) {
            return fail(
                "from_pod: later fragment: a byte changed outside address, TTL, checksum",
                format!("offset {at}"),
            );
        }
        return check_checksums(FROM_POD, input, p, out);
    }
    if p.proto == IPPROTO_ICMP && !p.echo_request() {
        return fail(
            "from_pod: translated an ICMP message that is no echo request",
            String::new(),
        );
    }
    let port_at = p.port_at(true).ok_or_else(|| {
        Violation::new(
            format!("from_pod: translated protocol {}", p.proto),
            String::new(),
        )
    })?;
    let port = be16(out, port_at);
    if !(cfg.ports.0..=cfg.ports.1).contains(&port) {
        return fail("from_pod: NAT port outside the range", format!("{port}"));
    }
    allowed.push(port_at..port_at + 2);
    if let Some(c) = p.l4_csum_at() {
        allowed.push(c..c + 2);
    }
    if let Some(at) = diff_outside(input, out, &allowed) {
        return fail(
            "from_pod: a byte changed outside address, port, TTL and checksums",
            format!("offset {at}"),
        );
    }
    check_checksums(FROM_POD, input, p, out)?;
    // The flow's entries are what the packet was translated by.
    let key = p.key();
    let rkey = key.reply_to(raw(EGRESS), port.to_be());
    match maps.nat(&key) {
        Some(f)
            if f.addr == raw(EGRESS) && f.port == port.to_be() && f.flags & NAT_F_REVERSE == 0 => {}
        other => {
            return fail(
                "from_pod: translated, but the forward entry says otherwise",
                format!("{other:?}"),
            )
        }
    }
    match maps.nat(&rkey) {
        Some(r)
            if r.flags & NAT_F_REVERSE != 0
                && r.addr == raw(p.saddr)
                && r.port == p.sport.to_be() => {}
        other => {
            return fail(
                "from_pod: translated, but the reverse entry does not lead back",
                format!("{other:?}"),
            )
        }
    }
    model.reverse.insert(rkey, (p.saddr, p.sport));
    if p.fragment() {
        model.frag_out.insert(p.frag_key(), o.saddr);
    }
    Ok(())
}

fn check_from_wire(
    cfg: &Cfg,
    input: &[u8],
    p: &Parsed,
    out: &[u8],
    maps: &Maps,
    model: &mut Model,
) -> Result<(), Violation> {
    if out.len() != input.len() {
        return fail(
            "from_wire: the length changed",
            format!("{} -> {}", input.len(), out.len()),
        );
    }
    let Parse::Ok(o) = parse(out) else {
        return fail("from_wire: translated packet does not parse", String::new());
    };
    if p.icmp_error() {
        return check_icmp_error(input, p, out, &o, model);
    }
    if out[L3 + 8] != p.ttl.wrapping_sub(1) {
        return fail("from_wire: TTL not one lower", String::new());
    }
    let mut allowed = vec![ip_field(8, 1), ip_field(10, 2), ip_field(16, 4)];
    if p.later_fragment() {
        match model.frag_in.get(&p.frag_key()) {
            Some(a) if *a == o.daddr => {}
            other => {
                return fail(
                    "from_wire: a later fragment translated to what no reply's first fragment \
                     was",
                    format!(
                        "to {}, model: {other:?}, fragment entry: {:?}",
                        o.daddr,
                        maps.frag(&p.frag_key())
                    ),
                )
            }
        }
        if let Some(at) = diff_outside(input, out, &allowed) {
            return fail(
                "from_wire: later fragment: a byte changed outside address, TTL, checksum",
                format!("offset {at}"),
            );
        }
        return check_checksums(FROM_WIRE, input, p, out);
    }
    let Some(port_at) = p.port_at(false) else {
        return fail(
            &format!("from_wire: translated protocol {}", p.proto),
            String::new(),
        );
    };
    let port = be16(out, port_at);
    match model.reverse.get(&p.key()) {
        Some((pod, pod_port)) if *pod == o.daddr && *pod_port == port => {}
        other => {
            return fail(
                "from_wire: a reply translated to what no legitimate flow says",
                format!(
                    "to {}:{port}, model: {other:?}, entry: {:?}",
                    o.daddr,
                    maps.nat(&p.key())
                ),
            )
        }
    }
    allowed.push(port_at..port_at + 2);
    if let Some(c) = p.l4_csum_at() {
        allowed.push(c..c + 2);
    }
    // Towards another node the tunnel's MSS applies (the uplink's is unknown here).
    let via_tunnel = maps
        .nat(&p.key())
        .is_some_and(|e| e.node_ip4 != raw(cfg.node));
    let clamp = (via_tunnel && !p.fragment()).then_some((cfg.tunnel_mtu - 40) as u16);
    allowed.extend(mss_range(input, p, out, clamp)?);
    if let Some(at) = diff_outside(input, out, &allowed) {
        return fail(
            "from_wire: a byte changed outside address, port, TTL, checksums and MSS",
            format!("offset {at}"),
        );
    }
    check_checksums(FROM_WIRE, input, p, out)?;
    if p.fragment() {
        model.frag_in.insert(p.frag_key(), o.daddr);
    }
    Ok(())
}

/// An ICMP error reverse-translated: outer destination, quoted source and port (and the
/// checksums that cover them) become the pod's; nothing else changes, TTL included.
fn check_icmp_error(
    input: &[u8],
    p: &Parsed,
    out: &[u8],
    o: &Parsed,
    model: &Model,
) -> Result<(), Violation> {
    let Ok(Some(q)) = quote(input, p) else {
        return fail(
            "from_wire: translated an ICMP error whose quote is no flow's",
            String::new(),
        );
    };
    let Some((pod, pod_port)) = model.reverse.get(&q.reverse_key()) else {
        return fail(
            "from_wire: an ICMP error translated for a flow the model does not know",
            format!("quote {}:{} -> {}:{}", q.saddr, q.sport, q.daddr, q.dport),
        );
    };
    let qsrc = crate::wire::addr(out, q.ip + 12);
    let qport = be16(out, q.port_at);
    if o.daddr != *pod || qsrc != *pod || qport != *pod_port {
        return fail(
            "from_wire: an ICMP error translated to another pod than its flow's",
            format!(
                "to {} quoting {qsrc}:{qport}, flow's pod {pod}:{pod_port}",
                o.daddr
            ),
        );
    }
    let ql4_csum = match q.proto {
        IPPROTO_TCP => q.l4 + 16,
        IPPROTO_UDP => q.l4 + 6,
        _ => q.l4 + 2,
    };
    let allowed = [
        ip_field(10, 2),
        ip_field(16, 4),
        p.l4 + 2..p.l4 + 4,
        q.ip + 10..q.ip + 12,
        q.ip + 12..q.ip + 16,
        q.port_at..q.port_at + 2,
        ql4_csum..ql4_csum + 2,
    ];
    if let Some(at) = diff_outside(input, out, &allowed) {
        return fail(
            "from_wire: ICMP error: a byte changed outside the fields the translation covers",
            format!("offset {at}"),
        );
    }
    if ip_csum_ok(input, q.ip) == Some(true) && ip_csum_ok(out, q.ip) != Some(true) {
        return fail(
            "from_wire: ICMP error: quoted IPv4 checksum broken",
            String::new(),
        );
    }
    check_checksums(FROM_WIRE, input, p, out)
}

/// The NAT entries a packet that matches no flow must leave as they are: the one at its own
/// tuple (a pod's forward entry, when it claims to be one), for an ICMP error the one its
/// quote names.
pub fn untouched_keys(pkt: &[u8]) -> Vec<NatKey4> {
    let Parse::Ok(p) = parse(pkt) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    if !p.later_fragment() {
        v.push(p.key());
    }
    if p.icmp_error() {
        if let Ok(Some(q)) = quote(pkt, &p) {
            v.push(q.reverse_key());
        }
    }
    v
}

/// The verdict's name.
pub fn verdict_name(v: u32) -> String {
    match v {
        TCX_NEXT => "TCX_NEXT".into(),
        TC_ACT_SHOT => "TC_ACT_SHOT".into(),
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT".into(),
        v => format!("{v}"),
    }
}

pub const ALL_PROGRAMS: [&str; 5] = [FROM_POD, FROM_TUNNEL, FROM_WIRE, TO_WIRE, TO_POD];
