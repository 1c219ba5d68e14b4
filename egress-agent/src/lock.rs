//! One process at a time per pin root on a node: the agent, or `egress-agent cleanup`.
//!
//! The lock is an abstract unix socket named after the pin root, bound by the holder. Abstract
//! sockets belong to the network namespace (the host's, for the agent's and the cleanup's
//! hostNetwork pods) and vanish with the process that bound them, also when it is killed: no
//! stale lock files, nothing on disk. So a cleanup that starts while the agent is still
//! stopping (a node that stops being selected: the agent's pod terminating while the cleanup
//! DaemonSet's starts) waits until the agent is gone, and an agent started during a cleanup
//! waits until it is done, instead of attaching programs the cleanup is removing.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener},
    },
    path::Path,
    time::{Duration, Instant},
};

/// The lock's name for `pin_root` (at most 107 bytes: long paths are hashed).
fn name(pin_root: &Path) -> Vec<u8> {
    let root = pin_root.as_os_str().as_encoded_bytes();
    let mut n = b"egress-gateway-agent:".to_vec();
    if n.len() + root.len() <= 107 {
        n.extend_from_slice(root);
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in root {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        n.extend_from_slice(format!("{h:016x}").as_bytes());
    }
    n
}

/// The held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct PinRootLock {
    _socket: UnixListener,
}

/// Takes the lock of `pin_root`; `Ok(None)` while another process holds it.
pub fn try_lock(pin_root: &Path) -> io::Result<Option<PinRootLock>> {
    let addr = SocketAddr::from_abstract_name(name(pin_root))?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(Some(PinRootLock { _socket: socket })),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes the lock of `pin_root`, waiting up to `timeout` for its holder to go; `waiting` is
/// called once if it has to wait. `Ok(None)`: still held after `timeout`.
pub fn lock(
    pin_root: &Path,
    timeout: Duration,
    waiting: impl FnOnce(),
) -> io::Result<Option<PinRootLock>> {
    let start = Instant::now();
    let mut waiting = Some(waiting);
    loop {
        if let Some(l) = try_lock(pin_root)? {
            return Ok(Some(l));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        if let Some(w) = waiting.take() {
            w();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let root = Path::new("/tmp/egress-lock-test-pin-root");
        let held = try_lock(root).expect("lock").expect("free");
        assert!(try_lock(root).expect("lock").is_none(), "held");
        let mut waited = false;
        assert!(lock(root, Duration::from_millis(300), || waited = true)
            .expect("lock")
            .is_none());
        assert!(waited);
        drop(held);
        assert!(try_lock(root).expect("lock").is_some(), "released");
    }

    #[test]
    fn long_pin_roots_get_a_short_name() {
        let long = Path::new("/").join("x".repeat(300));
        assert!(name(&long).len() <= 107);
        assert_ne!(name(&long), name(&Path::new("/").join("y".repeat(300))));
    }
}
