//! Traffic helpers: servers and clients running inside lab namespaces (pure Rust sockets on
//! threads that entered the namespace).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::in_netns;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP server in a namespace that, per connection, reports the peer address and echoes
/// what it receives until the peer closes.
pub struct TcpEcho {
    pub addr: SocketAddrV4,
    peers: mpsc::Receiver<SocketAddr>,
    _thread: JoinHandle<()>,
}

impl TcpEcho {
    pub fn start(ns: &str, ip: Ipv4Addr, port: u16) -> TcpEcho {
        let addr = SocketAddrV4::new(ip, port);
        let listener = in_netns(ns, move || {
            TcpListener::bind(addr).expect("bind tcp server")
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
}

/// Connects from namespace `ns`, sends `msg`, and returns the echo.
pub fn tcp_roundtrip(ns: &str, to: SocketAddrV4, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(&msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    })
}

/// A UDP server in a namespace that reports each datagram's source and echoes it back.
pub struct UdpEcho {
    pub addr: SocketAddrV4,
    peers: mpsc::Receiver<SocketAddr>,
    _thread: JoinHandle<()>,
}

impl UdpEcho {
    pub fn start(ns: &str, ip: Ipv4Addr, port: u16) -> UdpEcho {
        let addr = SocketAddrV4::new(ip, port);
        let sock = in_netns(ns, move || UdpSocket::bind(addr).expect("bind udp server"));
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
}

/// Sends one datagram from `ns` and waits for the echo.
pub fn udp_roundtrip(ns: &str, to: SocketAddrV4, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
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
