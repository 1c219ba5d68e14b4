//! Probes of what the kernel does at run time, where the verifier does not tell: a program
//! the verifier accepts can still get an error from a helper when it runs.
//!
//! `bpf_skb_set_tunnel_key` takes the key's size and accepts only the layouts the kernel
//! knows: the programs pass the whole key (44 bytes, with `local_ipv4`, the outer source
//! pinned to the node's InternalIP), which Linux 6.0 and later accept; older kernels answer
//! `-EINVAL` for every tunnelled packet, so the datapath would load and then drop the tunnel
//! path. The probe runs a two-instruction program calling the helper with that size through
//! `BPF_PROG_TEST_RUN`.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use super::sys::Attr;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_FUNC_SKB_SET_TUNNEL_KEY: i32 = 21;
/// `sizeof(struct bpf_tunnel_key)` with `local_ipv4` (Linux 6.0): what the programs pass.
pub const TUNNEL_KEY_SIZE: i32 = 44;

/// One eBPF instruction.
fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = op;
    i[1] = (src << 4) | (dst & 0xf);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// Whether the kernel's `bpf_skb_set_tunnel_key` accepts the key the programs pass. `Err`
/// says why not (or why it could not be told).
pub fn tunnel_key() -> Result<(), String> {
    // Zero 48 bytes of stack, r2 = the key, r3 = its size, r4 = 0 (flags); call; exit with
    // the helper's answer.
    let mut prog = Vec::new();
    for k in 1..=6i16 {
        prog.extend(insn(0x7a, 10, 0, -8 * k, 0)); // *(u64 *)(r10 - 8k) = 0
    }
    prog.extend(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
    prog.extend(insn(0x07, 2, 0, 0, -48)); // r2 += -48
    prog.extend(insn(0xb7, 3, 0, 0, TUNNEL_KEY_SIZE)); // r3 = 44
    prog.extend(insn(0xb7, 4, 0, 0, 0)); // r4 = 0
    prog.extend(insn(0x85, 0, 0, 0, BPF_FUNC_SKB_SET_TUNNEL_KEY)); // call
    prog.extend(insn(0x95, 0, 0, 0, 0)); // exit
    let license = c"GPL";
    let mut a = Attr::new();
    a.put(0, &BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes())
        .put(4, &((prog.len() / 8) as u32).to_ne_bytes())
        .put(8, &(prog.as_ptr() as u64).to_ne_bytes())
        .put(16, &(license.as_ptr() as u64).to_ne_bytes())
        .put(48, b"egw_probe_tkey");
    let fd = a
        .bpf(BPF_PROG_LOAD)
        .map_err(|e| format!("loading the tunnel key probe: {e}"))?;
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let packet = [0u8; 64];
    let mut t = Attr::new();
    t.put(
        0,
        &(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes(),
    )
    .put(8, &(packet.len() as u32).to_ne_bytes())
    .put(16, &(packet.as_ptr() as u64).to_ne_bytes())
    .put(32, &1u32.to_ne_bytes());
    t.bpf(BPF_PROG_TEST_RUN)
        .map_err(|e| format!("running the tunnel key probe: {e}"))?;
    let retval = i32::from_ne_bytes(t.0[4..8].try_into().expect("4 bytes"));
    if retval == 0 {
        Ok(())
    } else {
        Err(format!(
            "bpf_skb_set_tunnel_key refuses the {TUNNEL_KEY_SIZE}-byte tunnel key with \
             local_ipv4 ({}): it needs Linux 6.0 or later",
            io::Error::from_raw_os_error(-retval)
        ))
    }
}
