//! An attacker's tools for lab tests: forged VXLAN datagrams, raw IPv4 packets with any
//! source address, and packet captures that count what really arrived.
//!
//! Everything is sent inside the lab's own namespaces, to the lab's own addresses.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::{command_in, in_netns};

/// Source MAC of forged inner frames.
pub const FORGED_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x01];

/// What a forged inner packet carries.
#[derive(Clone, Copy, Debug)]
pub enum Inner {
    /// UDP with a short payload.
    Udp,
    /// A TCP SYN.
    TcpSyn,
}

/// An inner IPv4 packet (no Ethernet header) from `src` to `dst`.
pub fn inner_ipv4(inner: Inner, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64);
    let mut out = Vec::new();
    match inner {
        Inner::Udp => b
            .udp(src.port(), dst.port())
            .write(&mut out, b"forged?")
            .expect("build udp"),
        Inner::TcpSyn => b
            .tcp(src.port(), dst.port(), 0x1234_5678, 64_240)
            .syn()
            .write(&mut out, &[])
            .expect("build tcp"),
    }
    out
}

/// A VXLAN payload (what goes into the outer UDP datagram): the VXLAN header with `vni`, an
/// inner Ethernet frame to `dst_mac` with `ethertype`, carrying `l3`.
pub fn vxlan_payload(vni: u32, dst_mac: [u8; 6], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08, 0, 0, 0];
    out.extend_from_slice(&(vni << 8).to_be_bytes());
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&FORGED_MAC);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

/// A VXLAN payload carrying an IPv4 packet.
pub fn vxlan_ipv4(
    vni: u32,
    dst_mac: [u8; 6],
    inner: Inner,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> Vec<u8> {
    vxlan_payload(vni, dst_mac, 0x0800, &inner_ipv4(inner, src, dst))
}

/// Sends `payload` from an ordinary, unprivileged UDP socket in namespace `ns` (a pod, say)
/// to `to`. The outer source is whatever the namespace's routing picks.
pub fn send_udp(ns: &str, to: SocketAddrV4, payload: &[u8]) {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(payload, to).expect("send udp");
    });
}

/// Sends a UDP datagram with any outer source address (a raw socket, IP_HDRINCL), from
/// namespace `ns`: what an attacker on the internet who spoofs a node's address does.
pub fn send_spoofed_udp(ns: &str, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port())
        .write(&mut pkt, payload)
        .expect("build outer packet");
    send_raw_ipv4(ns, *dst.ip(), &pkt);
}

/// Sends a whole IPv4 packet as it is (a raw socket, IP_HDRINCL) from namespace `ns`.
pub fn send_raw_ipv4(ns: &str, dst: Ipv4Addr, packet: &[u8]) {
    in_netns(ns, || {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        s.set_header_included_v4(true).expect("IP_HDRINCL");
        s.send_to(packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
            .expect("send raw");
    });
}

/// A packet capture (tcpdump) on one device of one namespace. `count` stops it and returns
/// how many packets matched its filter.
pub struct Capture {
    child: Child,
    file: PathBuf,
    what: String,
}

impl Capture {
    /// Starts capturing on `dev` in `ns` with a pcap `filter`, and returns once tcpdump
    /// listens.
    pub fn start(ns: &str, dev: &str, filter: &str) -> Capture {
        static N: AtomicU32 = AtomicU32::new(0);
        let file = std::env::temp_dir().join(format!(
            "egw-capture-{}-{}.pcap",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = command_in(ns, "tcpdump")
            .expect("namespace")
            // Immediate mode: without it libpcap (TPACKET_V3) hands packets over a block at
            // a time, after up to a second, and whatever is still in the ring when tcpdump
            // is stopped is lost: a capture stopped soon after the packets saw nothing.
            .args(["-n", "-U", "--immediate-mode", "-i", dev, "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump (is it installed? `cargo xtask setup`)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("tcpdump on {dev} in {ns} did not start"));
        Capture {
            child,
            file,
            what: format!("{dev} in {ns} ({filter})"),
        }
    }

    /// Waits `settle` for packets in flight, stops the capture and returns the packets it
    /// saw, one summary line each.
    pub fn stop(mut self, settle: Duration) -> Vec<String> {
        std::thread::sleep(settle);
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .output()
            .unwrap_or_else(|e| panic!("read capture of {}: {e}", self.what));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.file);
    }
}

/// The MAC address of `dev` in namespace `ns` (what a forged frame is addressed to).
pub fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = crate::lab::exec(ns, &["cat", &format!("/sys/class/net/{dev}/address")])
        .unwrap_or_else(|e| panic!("MAC of {dev} in {ns}: {e}"));
    let v: Vec<u8> = out
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

/// A UDP socket in namespace `ns` (a pod, say) bound to `port`, whose reads give up after
/// `wait`: the victim of an injection, or the control that receives the real answer.
pub fn bound_udp(ns: &str, port: u16, wait: Duration) -> UdpSocket {
    in_netns(ns, || {
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind in namespace");
        s.set_read_timeout(Some(wait)).expect("timeout");
        s
    })
}

/// The next datagram `s` receives within its read timeout, if any.
pub fn recv_any(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}
