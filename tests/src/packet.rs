//! Scaffolding of the packet tests (`tests/packet/*.rs`) and the datapath micro-benchmark
//! (`benches/datapath.rs`): the node fixture, `BPF_PROG_TEST_RUN`, packet builders,
//! independent header access and checksum verification, and readers of the maps the
//! programs write.

use std::{
    net::Ipv4Addr,
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use egress_agent::datapath::{ip4, policy_key, Datapath, MapSizes};
use egress_common::{
    config::{Config, CFG_F_GATEWAY, CFG_F_READY, DEFAULT_TRUST_MARK, VXLAN_PORT},
    endpoint::{Endpoint, NodeInfo, EP_F_SELECTED, NODE_F_ADDRESS, NODE_F_PEER},
    map_names,
    nat::{NatEntry4, NatKey4},
    policy::{PolicyValue, ACTION_EXCLUDED, ACTION_VIA_GATEWAY},
};
use etherparse::{PacketBuilder, TcpOptionElement};

use crate::rawbpf::clear_map;

pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_UNSPEC` (-1), which TCX calls `TCX_NEXT`: what the programs return for packets
/// they leave alone, so that later programs and filters on the hook still run.
pub const TCX_NEXT: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const WORKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub const EGRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const POD_A_IF: u32 = 5;
pub const POD_B_IF: u32 = 6;
const TUNNEL_IF: u32 = 100;
pub const UPLINK_IF: u32 = 200;
/// The underlay: the device `skb_ctx` puts packets on (loopback, which exists everywhere).
pub const UNDERLAY_IF: u32 = 1;
pub const POLICY: u32 = 1;
pub const PORT_MIN: u16 = 61000;
pub const PORT_MAX: u16 = 65535;
pub const TUNNEL_MTU: u32 = 1450;

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("packet tests need root (CAP_BPF, CAP_NET_ADMIN): run them as root");
    }
}

/// The datapath the tests of a binary share, loaded once: loading verifies every program,
/// which takes a minute per program under the kernel matrix's emulated 6.1, so a fresh load
/// per test would not finish in time. Tests take turns on it; each finds every map empty
/// and seeded anew (see [`datapath`]).
static SHARED: Mutex<Option<Datapath>> = Mutex::new(None);

thread_local! {
    /// Whether this thread holds its turn on [`SHARED`].
    static HOLDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A test's turn on the shared datapath: the datapath, to itself until dropped.
pub struct Node {
    turn: MutexGuard<'static, Option<Datapath>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        HOLDING.set(false);
    }
}

impl Deref for Node {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        self.turn.as_ref().expect("loaded")
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Datapath {
        self.turn.as_mut().expect("loaded")
    }
}

/// The datapath with maps seeded as on a node: `this_node` decides the role. Every map is
/// emptied first, so nothing of an earlier test is left: no flow, no NAT entry, no counter.
pub fn datapath(this_node: Ipv4Addr) -> Node {
    require_root();
    // A second turn in the same thread would wait for itself forever.
    assert!(
        !HOLDING.get(),
        "this thread holds the shared datapath already: a second node at once needs a load \
         of its own (datapath_sized)"
    );
    // A test that failed during its turn poisons the lock; the maps are emptied anyway.
    let mut turn = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    HOLDING.set(true);
    if turn.is_none() {
        *turn = Some(Datapath::load(&MapSizes::default(), None).expect("load datapath"));
    }
    let dp = turn.as_mut().expect("loaded");
    for name in map_names::ALL {
        let fd = dp.map_fd(name).expect("map fd");
        clear_map(fd).unwrap_or_else(|e| panic!("empty {name}: {e}"));
    }
    seed(dp, this_node);
    Node { turn }
}

/// A datapath of its own with the given map sizes (a load of its own).
pub fn datapath_sized(sizes: &MapSizes, this_node: Ipv4Addr) -> Datapath {
    require_root();
    let mut dp = Datapath::load(sizes, None).expect("load datapath");
    seed(&mut dp, this_node);
    dp
}

/// The maps of a node: configuration, pods A (selected) and B, the two nodes, the policy.
fn seed(dp: &mut Datapath, this_node: Ipv4Addr) {
    dp.set_config(&Config {
        flags: CFG_F_READY | CFG_F_GATEWAY,
        node_ip4: ip4(this_node),
        tunnel_ifindex: TUNNEL_IF,
        uplink_ifindex: UPLINK_IF,
        tunnel_mtu: TUNNEL_MTU,
        nat_port_min: PORT_MIN,
        nat_port_max: PORT_MAX,
        underlay_ifindex: UNDERLAY_IF,
        trust_mark: DEFAULT_TRUST_MARK,
        tunnel_port: VXLAN_PORT.to_be(),
        ..Default::default()
    })
    .expect("config");
    let mut m = dp.maps();
    m.put_endpoint(
        ip4(POD_A),
        Endpoint {
            ifindex: POD_A_IF,
            policy_id: POLICY,
            flags: EP_F_SELECTED,
            deliver_ifindex: 0,
        },
    )
    .expect("endpoint");
    m.put_endpoint(
        ip4(POD_B),
        Endpoint {
            ifindex: POD_B_IF,
            ..Default::default()
        },
    )
    .expect("endpoint");
    // The pod behind each veth, as the reconciler writes it (IPv6 finds its pod by it).
    for (ifindex, pod) in [(POD_A_IF, POD_A), (POD_B_IF, POD_B)] {
        m.put_veth_pod(ifindex, ip4(pod)).expect("veth pod");
    }
    for n in [GATEWAY, WORKER] {
        m.put_node(
            ip4(n),
            NodeInfo {
                flags: NODE_F_PEER | NODE_F_ADDRESS,
                ..Default::default()
            },
        )
        .expect("node");
    }
    let via = PolicyValue {
        action: ACTION_VIA_GATEWAY,
        gateway_ip4: ip4(GATEWAY),
        egress_ip4: ip4(EGRESS),
        egress_mtu: 0,
        egress_ifindex: 0,
    };
    m.put_policy(&policy_key(POLICY, Ipv4Addr::UNSPECIFIED, 0), via)
        .expect("policy");
    m.put_policy(
        &policy_key(POLICY, Ipv4Addr::new(10, 244, 0, 0), 16),
        PolicyValue {
            action: ACTION_EXCLUDED,
            ..Default::default()
        },
    )
    .expect("policy");
}

/// The drop counter of `reason` (as `inspect` names it).
pub fn drops(dp: &Datapath, reason: &str) -> u64 {
    *dp.drops()
        .expect("drops")
        .by_name()
        .get(reason)
        .unwrap_or_else(|| panic!("no drop reason {reason}"))
}

/// The NAT entry of `key`, if the map holds one.
pub fn nat_entry(dp: &mut Datapath, key: NatKey4) -> Option<NatEntry4> {
    dp.maps()
        .nat_entries()
        .expect("nat")
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Runs `prog` on `pkt` as if it arrived on `ingress_ifindex`.
pub fn run(dp: &Datapath, prog: &'static str, pkt: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
    let r = run_repeat(dp, prog, pkt, ingress_ifindex, 1);
    (r.verdict, r.out)
}

/// The `struct __sk_buff` context of a packet arriving on `ingress_ifindex`.
pub fn skb_ctx(ingress_ifindex: u32) -> [u8; 192] {
    // struct __sk_buff: ingress_ifindex at 36, ifindex at 40 (loopback exists everywhere).
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&1u32.to_ne_bytes());
    ctx
}

/// Runs `prog` on `pkt` arriving on `ingress_ifindex` with skb mark `mark`; returns the
/// verdict, the packet and the mark as the program left them.
pub fn run_marked(
    dp: &Datapath,
    prog: &'static str,
    pkt: &[u8],
    ingress_ifindex: u32,
    mark: u32,
) -> (u32, Vec<u8>, u32) {
    let mut ctx = skb_ctx(ingress_ifindex);
    // struct __sk_buff: mark at 8.
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let (r, ctx_out) = run_ctx(dp, prog, pkt, &ctx, 1);
    let mark = u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes"));
    (r.verdict, r.out, mark)
}

/// The outcome of a `BPF_PROG_TEST_RUN`.
pub struct Run {
    /// The program's return value (of the last repetition).
    pub verdict: u32,
    /// The packet as the last repetition left it.
    pub out: Vec<u8>,
    /// The kernel's average run time per repetition (whole nanoseconds).
    pub avg: Duration,
}

/// [`run`] with the kernel repeating the program `repeat` times on one skb.
///
/// The repetitions share the skb: each one sees the packet as the previous one left it
/// (TTL one lower, addresses translated, ...), so only a packet the program leaves as it is
/// takes the same path every time.
pub fn run_repeat(
    dp: &Datapath,
    prog: &'static str,
    pkt: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Run {
    run_ctx(dp, prog, pkt, &skb_ctx(ingress_ifindex), repeat).0
}

/// `BPF_PROG_TEST_RUN` of `prog` on `pkt` with the `struct __sk_buff` context `ctx`, repeated
/// `repeat` times; returns the run and the context as the program left it.
pub fn run_ctx(
    dp: &Datapath,
    prog: &'static str,
    pkt: &[u8],
    ctx: &[u8; 192],
    repeat: u32,
) -> (Run, [u8; 192]) {
    let mut ctx_out = [0u8; 192];
    let mut out = vec![0u8; pkt.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(ctx);
    opts.ctx_out = Some(&mut ctx_out);
    opts.repeat = repeat;
    let res = dp
        .program(prog)
        .expect("program")
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    let run = Run {
        verdict: res.return_value,
        out,
        avg: res.duration,
    };
    (run, ctx_out)
}

pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, mss: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
        ])
        .expect("options");
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// The pod's initial sequence number in [`tcp_segment`]s (the internet host's is
/// [`PEER_ISN`]).
pub const POD_ISN: u32 = 7000;
pub const PEER_ISN: u32 = 9000;

/// A TCP segment of one connection between a pod and the internet host, with `flags` from
/// "SAFR": sequence and acknowledgment numbers as that connection has them right after the
/// handshake (a SYN carries the sender's initial number; everything after it, that number +
/// 1; an ACK acknowledges the other side's SYN). The direction follows `src`.
pub fn tcp_segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let (macs, isn, peer_isn) = if src == INTERNET {
        ((HOST_MAC, POD_MAC), PEER_ISN, POD_ISN)
    } else {
        ((POD_MAC, HOST_MAC), POD_ISN, PEER_ISN)
    };
    let seq = if flags.contains('S') { isn } else { isn + 1 };
    tcp_segment_at(src, dst, sport, dport, flags, seq, peer_isn + 1, macs)
}

/// [`tcp_segment`] with its sequence and acknowledgment numbers given.
#[expect(clippy::too_many_arguments, reason = "a packet builder's fields")]
pub fn tcp_segment_at(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, seq, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => panic!("flag {f}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

pub fn tcp_data(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 5000, 64240)
        .ack(1001);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

pub fn ping(src: Ipv4Addr, dst: Ipv4Addr, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC).ipv4(src.octets(), dst.octets(), 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 7)
    } else {
        b.icmpv4_echo_request(id, 7)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"abcdefgh").expect("build");
    v
}

// --- independent header access and checksum verification -------------------------------

pub const L3: usize = 14;

pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
pub fn src_ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[L3 + 12], b[L3 + 13], b[L3 + 14], b[L3 + 15])
}
pub fn dst_ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[L3 + 16], b[L3 + 17], b[L3 + 18], b[L3 + 19])
}
pub fn l4(b: &[u8]) -> usize {
    L3 + usize::from(b[L3] & 0xf) * 4
}
pub fn sport(b: &[u8]) -> u16 {
    be16(b, l4(b))
}
pub fn dport(b: &[u8]) -> u16 {
    be16(b, l4(b) + 2)
}

/// RFC 1071 sum of `data` (odd length padded), not complemented.
pub fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}
pub fn folds_to_ffff(mut s: u32) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// Asserts that the IPv4 header checksum and the TCP/UDP/ICMP checksum of `b` are valid.
pub fn assert_checksums(b: &[u8]) {
    let ihl = usize::from(b[L3] & 0xf) * 4;
    assert!(
        folds_to_ffff(sum(&b[L3..L3 + ihl])),
        "bad IPv4 header checksum"
    );
    let tot = usize::from(be16(b, L3 + 2));
    let seg = &b[L3 + ihl..L3 + tot];
    let proto = b[L3 + 9];
    match proto {
        6 | 17 => {
            if proto == 17 && be16(seg, 6) == 0 {
                return;
            }
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&b[L3 + 12..L3 + 20]);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            assert!(
                folds_to_ffff(sum(&pseudo) + sum(seg)),
                "bad L4 checksum (proto {proto})"
            );
        }
        1 => assert!(folds_to_ffff(sum(seg)), "bad ICMP checksum"),
        _ => {}
    }
}

pub fn key(s: Ipv4Addr, d: Ipv4Addr, sp: u16, dp: u16, proto: u8) -> NatKey4 {
    NatKey4 {
        saddr: ip4(s),
        daddr: ip4(d),
        sport: sp.to_be(),
        dport: dp.to_be(),
        proto,
        kind: 0,
        _pad: [0; 2],
    }
}

/// Splits an Ethernet + IPv4 (20-byte header) packet into two fragments of datagram `id` at
/// payload offset `at` (a multiple of 8), with valid header checksums.
pub fn fragment(pkt: &[u8], id: u16, at: usize) -> (Vec<u8>, Vec<u8>) {
    let (hdr, payload) = pkt.split_at(L3 + 20);
    let part = |bytes: &[u8], off: usize, more: bool| {
        let mut v = hdr.to_vec();
        v.extend_from_slice(bytes);
        v[L3 + 2..L3 + 4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        v[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        v[L3 + 6..L3 + 8].copy_from_slice(&fo.to_be_bytes());
        let ttl = v[L3 + 8];
        with_ttl(v, ttl)
    };
    (
        part(&payload[..at], 0, true),
        part(&payload[at..], at, false),
    )
}

/// Sets the TTL of `pkt` and fixes its header checksum.
pub fn with_ttl(mut pkt: Vec<u8>, ttl: u8) -> Vec<u8> {
    pkt[L3 + 8] = ttl;
    pkt[L3 + 10..L3 + 12].copy_from_slice(&[0, 0]);
    let mut s = sum(&pkt[L3..L3 + 20]);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    pkt[L3 + 10..L3 + 12].copy_from_slice(&(!(s as u16)).to_be_bytes());
    pkt
}

/// The MSS option of a TCP segment, if any.
pub fn tcp_mss(b: &[u8]) -> Option<u16> {
    let off = l4(b);
    let hlen = usize::from(b[off + 12] >> 4) * 4;
    let mut i = off + 20;
    while i < off + hlen {
        match b[i] {
            0 => return None,
            1 => i += 1,
            2 => return Some(be16(b, i + 2)),
            _ => i += usize::from(b[i + 1]),
        }
    }
    None
}
