//! Raw `bpf(2)` for what aya does not offer here: the run-time probes (`probe`) and the shape
//! checks of pinned maps (`pinned`).

use std::io;

/// `union bpf_attr` as bytes (every command's fields start at offset 0).
#[repr(C, align(8))]
pub(super) struct Attr(pub(super) [u8; 128]);

impl Attr {
    pub(super) fn new() -> Attr {
        Attr([0; 128])
    }

    pub(super) fn put(&mut self, off: usize, v: &[u8]) -> &mut Attr {
        self.0[off..off + v.len()].copy_from_slice(v);
        self
    }

    pub(super) fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.put(off, &v.to_ne_bytes())
    }

    pub(super) fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.put(off, &v.to_ne_bytes())
    }

    /// Runs the `bpf(2)` command `cmd` with this attribute.
    pub(super) fn bpf(&mut self, cmd: libc::c_long) -> io::Result<i64> {
        // SAFETY: the buffer is valid for its size; the pointers in it point at buffers of the
        // caller that live (and are large enough, see the callers) for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}
