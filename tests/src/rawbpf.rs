//! Raw `bpf(2)` for the few programs the tests and the micro-benchmark need that are not in
//! the eBPF object (aya loads ELF objects only): a program of a couple of instructions, its
//! run statistics, a TCX link to it; and emptying a map between tests that share a load.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
pub const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `struct bpf_prog_info`: `run_time_ns` and `run_cnt` offsets (UAPI, stable).
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;

/// `struct bpf_map_info`: type, key_size and value_size, max_entries (UAPI, stable).
const MAP_INFO_TYPE: usize = 0;
const MAP_INFO_KEY_SIZE: usize = 8;
const MAP_INFO_VALUE_SIZE: usize = 12;
const MAP_INFO_MAX_ENTRIES: usize = 16;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// `union bpf_attr`'s batch fields: in_batch, out_batch, keys, values (u64 each), count,
/// map_fd (u32), elem_flags.
const BATCH_IN: usize = 0;
const BATCH_OUT: usize = 8;
const BATCH_KEYS: usize = 16;
const BATCH_VALUES: usize = 24;
const BATCH_COUNT: usize = 32;
const BATCH_FD: usize = 36;
const BATCH_ELEM_FLAGS: usize = 40;

/// Writes `count` entries (`keys` and `values` laid out back to back) into the map `fd` in
/// one `BPF_MAP_UPDATE_BATCH` (kernel 5.6+); returns how many were written, and the error that
/// stopped it (a full hash map: `E2BIG`). `elem_flags` takes only `BPF_F_LOCK`.
pub fn update_batch(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
    elem_flags: u64,
) -> (u32, std::io::Result<()>) {
    let mut a = Attr::new();
    a.u64(BATCH_KEYS, keys.as_ptr() as u64)
        .u64(BATCH_VALUES, values.as_ptr() as u64)
        .u32(BATCH_COUNT, count)
        .u32(BATCH_FD, fd.as_raw_fd() as u32)
        .u64(BATCH_ELEM_FLAGS, elem_flags);
    let r = a.bpf(BPF_MAP_UPDATE_BATCH).map(|_| ());
    (a.get_u32(BATCH_COUNT), r)
}

/// Empties a (non per-CPU) hash map with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, a bucket run per
/// call: a full NAT table (262144 entries) in a few dozen syscalls, where deleting the first
/// key again and again walks every empty bucket each time.
fn clear_hash_batched(fd: u32, key_size: usize, value_size: usize) -> std::io::Result<()> {
    const CHUNK: u32 = 4096;
    let mut keys = vec![0u8; key_size * CHUNK as usize];
    let mut values = vec![0u8; value_size * CHUNK as usize];
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut a = Attr::new();
        a.u64(
            BATCH_IN,
            if first {
                0
            } else {
                &mut token_in as *mut u32 as u64
            },
        )
        .u64(BATCH_OUT, &mut token_out as *mut u32 as u64)
        .u64(BATCH_KEYS, keys.as_mut_ptr() as u64)
        .u64(BATCH_VALUES, values.as_mut_ptr() as u64)
        .u32(BATCH_COUNT, CHUNK)
        .u32(BATCH_FD, fd);
        match a.bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
}

/// `union bpf_attr`, as bytes (every command's fields start at offset 0).
#[repr(C, align(8))]
pub struct Attr(pub [u8; 128]);

impl Default for Attr {
    fn default() -> Attr {
        Attr::new()
    }
}

impl Attr {
    pub fn new() -> Attr {
        Attr([0; 128])
    }
    pub fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    /// Runs the `bpf(2)` command `cmd` with this attribute.
    pub fn bpf(&mut self, cmd: libc::c_long) -> std::io::Result<i64> {
        // SAFETY: the attribute buffer is valid for its size; pointers in it point at live
        // buffers of the caller for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    /// Runs `cmd`, which returns a new file descriptor.
    pub fn bpf_fd(&mut self, cmd: libc::c_long) -> std::io::Result<OwnedFd> {
        let fd = self.bpf(cmd)?;
        // SAFETY: a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Loads a tc (sched_cls) program of raw instructions `insns` named `name` (at most 15
/// bytes), licensed GPL.
pub fn load_sched_cls(insns: &[u8], name: &str) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_SCHED_CLS)
        .u32(4, (insns.len() / 8) as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64);
    let name = name.as_bytes();
    let n = name.len().min(15);
    a.0[48..48 + n].copy_from_slice(&name[..n]);
    a.bpf_fd(BPF_PROG_LOAD)
}

/// (run_time_ns, run_cnt) of a program (counted while BPF statistics are enabled).
pub fn prog_stats(fd: RawFd) -> (u64, u64) {
    let mut info = [0u64; 64];
    let mut a = Attr::new();
    a.u32(0, fd as u32)
        .u32(4, size_of_val(&info) as u32)
        .u64(8, info.as_mut_ptr() as u64);
    a.bpf(BPF_OBJ_GET_INFO_BY_FD)
        .expect("BPF_OBJ_GET_INFO_BY_FD");
    (info[INFO_RUN_TIME_NS / 8], info[INFO_RUN_CNT / 8])
}

/// `prog_stats` of an owned program fd.
pub fn prog_run_count(fd: &OwnedFd) -> u64 {
    prog_stats(fd.as_raw_fd()).1
}

/// Empties the map `fd` as a fresh load would leave it: every key of a hash, LRU or LPM map
/// deleted, every element of an array (per CPU: of every possible CPU) zeroed.
pub fn clear_map(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let fd = fd.as_raw_fd() as u32;
    let mut info = [0u8; 128];
    let mut a = Attr::new();
    a.u32(0, fd)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    a.bpf(BPF_OBJ_GET_INFO_BY_FD)?;
    let field = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().expect("4 bytes"));
    let (kind, key_size, value_size, max_entries) = (
        field(MAP_INFO_TYPE),
        field(MAP_INFO_KEY_SIZE) as usize,
        field(MAP_INFO_VALUE_SIZE) as usize,
        field(MAP_INFO_MAX_ENTRIES),
    );
    if kind == BPF_MAP_TYPE_HASH || kind == BPF_MAP_TYPE_LRU_HASH {
        return clear_hash_batched(fd, key_size, value_size);
    }
    let mut key = vec![0u8; key_size];
    if kind == BPF_MAP_TYPE_ARRAY || kind == BPF_MAP_TYPE_PERCPU_ARRAY {
        let cpus = if kind == BPF_MAP_TYPE_PERCPU_ARRAY {
            aya::util::nr_cpus().map_err(|(_, e)| e)?
        } else {
            1
        };
        // Per-CPU values are laid out 8-byte aligned, one per possible CPU.
        let value = vec![0u8; value_size.next_multiple_of(8) * cpus];
        for i in 0..max_entries {
            key.copy_from_slice(&i.to_ne_bytes()[..key_size]);
            Attr::new()
                .u32(0, fd)
                .u64(8, key.as_ptr() as u64)
                .u64(16, value.as_ptr() as u64)
                .bpf(BPF_MAP_UPDATE_ELEM)?;
        }
        return Ok(());
    }
    // The first key, deleted, until there is none (ENOENT).
    loop {
        let next = Attr::new()
            .u32(0, fd)
            .u64(8, 0)
            .u64(16, key.as_mut_ptr() as u64)
            .bpf(BPF_MAP_GET_NEXT_KEY);
        match next {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        Attr::new()
            .u32(0, fd)
            .u64(8, key.as_ptr() as u64)
            .bpf(BPF_MAP_DELETE_ELEM)?;
    }
}
