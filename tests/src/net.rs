//! Traffic helpers: servers and clients running inside lab namespaces (pure Rust sockets on
//! threads that entered the namespace).
//!
//! Both families: a server started on an `Ipv4Addr` has a `SocketAddrV4` as its `addr`, one
//! started on an `Ipv6Addr` a `SocketAddrV6` (and on an `IpAddr`, a `SocketAddr`); the clients
//! take any of them.

use std::{
    io::{Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
        UdpSocket,
    },
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::in_netns;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An address a server listens on: `Ipv4Addr` (its socket address a `SocketAddrV4`),
/// `Ipv6Addr` (`SocketAddrV6`) or `IpAddr` (`SocketAddr`).
pub trait ServerIp: Copy {
    /// The server's socket address.
    type Addr: Copy + Into<SocketAddr> + Send + 'static;
    fn with_port(self, port: u16) -> Self::Addr;
}

impl ServerIp for Ipv4Addr {
    type Addr = SocketAddrV4;
    fn with_port(self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self, port)
    }
}

impl ServerIp for Ipv6Addr {
    type Addr = SocketAddrV6;
    fn with_port(self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(self, port, 0, 0)
    }
}

impl ServerIp for IpAddr {
    type Addr = SocketAddr;
    fn with_port(self, port: u16) -> SocketAddr {
        SocketAddr::new(self, port)
    }
}

/// The unspecified address of `to`'s family with port 0: what a client binds to.
fn any_of(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A TCP server in a namespace that, per connection, reports the peer address and echoes
/// what it receives until the peer closes.
pub struct TcpEcho<A = SocketAddrV4> {
    pub addr: A,
    peers: mpsc::Receiver<SocketAddr>,
    _thread: JoinHandle<()>,
}

impl<A: Copy + Into<SocketAddr>> TcpEcho<A> {
    pub fn start<I: ServerIp<Addr = A>>(ns: &str, ip: I, port: u16) -> TcpEcho<A> {
        let addr = ip.with_port(port);
        let bind: SocketAddr = addr.into();
        let listener = in_netns(ns, move || {
            TcpListener::bind(bind).expect("bind tcp server")
        });
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                if let Ok(p) = s.peer_addr() {
                    let _ = tx.send(p);
                }
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TcpEcho {
            addr,
            peers: rx,
            _thread: t,
        }
    }

    /// The next connection's peer address.
    pub fn next_peer(&self) -> SocketAddr {
        self.peers
            .recv_timeout(TIMEOUT)
            .expect("no connection reached the server")
    }

    /// The peer addresses of the connections accepted so far and not yet taken.
    pub fn peers_so_far(&self) -> Vec<SocketAddr> {
        self.peers.try_iter().collect()
    }
}

/// Opens a TCP connection from `ns` with the source address and port `from` (bound before
/// connecting, as a client that picks its own port does).
pub fn tcp_connect_from(
    ns: &str,
    from: impl Into<SocketAddr>,
    to: impl Into<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let (from, to) = (from.into(), to.into());
    in_netns(ns, move || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        s.bind(&from.into())?;
        s.connect_timeout(&to.into(), TIMEOUT)?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        Ok(s)
    })
}

/// Connects from namespace `ns`, sends `msg`, and returns the echo.
pub fn tcp_roundtrip(ns: &str, to: impl Into<SocketAddr>, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let (to, msg) = (to.into(), msg.to_vec());
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(&msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    })
}

/// A UDP server in a namespace that reports each datagram's source and echoes it back.
pub struct UdpEcho<A = SocketAddrV4> {
    pub addr: A,
    peers: mpsc::Receiver<SocketAddr>,
    _thread: JoinHandle<()>,
}

impl<A: Copy + Into<SocketAddr>> UdpEcho<A> {
    pub fn start<I: ServerIp<Addr = A>>(ns: &str, ip: I, port: u16) -> UdpEcho<A> {
        let addr = ip.with_port(port);
        let bind: SocketAddr = addr.into();
        let sock = in_netns(ns, move || UdpSocket::bind(bind).expect("bind udp server"));
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, p)) = sock.recv_from(&mut buf) {
                let _ = tx.send(p);
                let _ = sock.send_to(&buf[..n], p);
            }
        });
        UdpEcho {
            addr,
            peers: rx,
            _thread: t,
        }
    }

    pub fn next_peer(&self) -> SocketAddr {
        self.peers
            .recv_timeout(TIMEOUT)
            .expect("no datagram reached the server")
    }

    /// The peer addresses of the datagrams received so far and not yet taken.
    pub fn peers_so_far(&self) -> Vec<SocketAddr> {
        self.peers.try_iter().collect()
    }

    /// The source of the next datagram, if one arrives within `wait`.
    pub fn peer_within(&self, wait: Duration) -> Option<SocketAddr> {
        self.peers.recv_timeout(wait).ok()
    }
}

/// Sends one datagram from `ns` and waits for the echo.
pub fn udp_roundtrip(ns: &str, to: impl Into<SocketAddr>, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let (to, msg) = (to.into(), msg.to_vec());
    in_netns(ns, move || {
        let s = UdpSocket::bind(any_of(to))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.connect(to)?;
        s.send(&msg)?;
        let mut buf = vec![0u8; 65536];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    })
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The byte at position `i` of a bulk transfer: a pattern that catches lost, duplicated,
/// reordered or corrupted bytes.
pub fn pattern(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i as u8)
}

fn fill(buf: &mut [u8], start: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(start + k as u64);
    }
}

/// Reads exactly `len` bytes and checks them against the pattern; returns the first bad
/// offset, if any.
fn verify_stream(s: &mut TcpStream, len: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 65536];
    let mut got = 0u64;
    while got < len {
        let want = ((len - got) as usize).min(buf.len());
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("stream ended after {got} of {len} bytes"),
            ));
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if *b != pattern(got + k as u64) {
                return Ok(Some(got + k as u64));
            }
        }
        got += n as u64;
    }
    Ok(None)
}

fn send_stream(s: &mut TcpStream, len: u64, pace: Option<Duration>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut sent = 0u64;
    while sent < len {
        let n = ((len - sent) as usize).min(buf.len());
        fill(&mut buf[..n], sent);
        s.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
    }
    Ok(())
}

/// A bulk-transfer server: each connection sends a 9-byte request `{dir, len}`: dir 0 = the
/// client uploads `len` pattern bytes (the server verifies and answers `OK` or `BAD`),
/// dir 1 = the server sends `len` pattern bytes.
pub struct BulkServer<A = SocketAddrV4> {
    pub addr: A,
    _thread: JoinHandle<()>,
}

impl<A: Copy + Into<SocketAddr>> BulkServer<A> {
    pub fn start<I: ServerIp<Addr = A>>(ns: &str, ip: I, port: u16) -> BulkServer<A> {
        let addr = ip.with_port(port);
        let bind: SocketAddr = addr.into();
        let listener = in_netns(ns, move || {
            TcpListener::bind(bind).expect("bind bulk server")
        });
        let t = std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut req = [0u8; 9];
                    if s.read_exact(&mut req).is_err() {
                        return;
                    }
                    let len = u64::from_be_bytes(req[1..9].try_into().expect("8 bytes"));
                    if req[0] == 0 {
                        let ok = matches!(verify_stream(&mut s, len), Ok(None));
                        let _ = s.write_all(if ok { b"OK!" } else { b"BAD" });
                    } else {
                        let _ = send_stream(&mut s, len, None);
                    }
                });
            }
        });
        BulkServer { addr, _thread: t }
    }
}

/// Uploads `len` bytes from `ns` (paced by `pace` per 64 KiB if given); `Ok(true)` when the
/// server received them intact.
pub fn bulk_upload(
    ns: &str,
    to: impl Into<SocketAddr>,
    len: u64,
    pace: Option<Duration>,
) -> std::io::Result<bool> {
    let to = to.into();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = [0u8; 9];
        req[1..].copy_from_slice(&len.to_be_bytes());
        s.write_all(&req)?;
        send_stream(&mut s, len, pace)?;
        let mut ans = [0u8; 3];
        s.read_exact(&mut ans)?;
        Ok(&ans == b"OK!")
    })
}

/// Downloads `len` bytes into `ns`; `Ok(None)` when they arrived intact, else the first bad
/// offset.
pub fn bulk_download(
    ns: &str,
    from: impl Into<SocketAddr>,
    len: u64,
) -> std::io::Result<Option<u64>> {
    let from = from.into();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&from, TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = [1u8; 9];
        req[1..].copy_from_slice(&len.to_be_bytes());
        s.write_all(&req)?;
        verify_stream(&mut s, len)
    })
}

/// Sends a datagram from `ns` to a port nothing listens on and returns the error the
/// connected socket reports (ECONNREFUSED when the ICMP port-unreachable came back).
pub fn udp_error(ns: &str, to: impl Into<SocketAddr>) -> Option<std::io::ErrorKind> {
    let to = to.into();
    in_netns(ns, move || {
        let s = UdpSocket::bind(any_of(to)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.connect(to).ok()?;
        s.send(b"anyone?").ok()?;
        let mut buf = [0u8; 64];
        s.recv(&mut buf).err().map(|e| e.kind())
    })
}
