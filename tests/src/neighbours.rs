//! Other programs on our hooks, as a cluster has them: a CNI's or a firewall's TCX program
//! attached after ours, and a legacy clsact filter (cls_bpf) behind the TCX chain. Each counts
//! the packets it sees, so a test can tell whether ours let them run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::lab::{exec, in_netns};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// `struct bpf_prog_info`: `run_cnt` offset (UAPI, stable).
const INFO_RUN_CNT: usize = 200;

/// `union bpf_attr`, as bytes (every command's fields start at offset 0).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bpf(&mut self, cmd: libc::c_long) -> std::io::Result<RawFd> {
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
            Ok(rc as RawFd)
        }
    }
}

/// A TCX ingress program that only says "next" (`r0 = -1; exit`), appended after whatever is
/// attached to the device; the kernel's run statistics count the packets it sees.
pub struct TcxCounter {
    prog: OwnedFd,
    _link: OwnedFd,
    _stats: OwnedFd,
}

impl TcxCounter {
    /// Loads the program and attaches it last on `dev`'s TCX ingress in namespace `ns`.
    pub fn attach(ns: &str, dev: &str) -> TcxCounter {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        // r0 = -1 (BPF_ALU64 | BPF_MOV | BPF_K, imm -1); exit.
        let insns: [u8; 16] = [
            0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0,
        ];
        let license = c"GPL";
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, 2)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        a.0[48..59].copy_from_slice(b"egw_tcxnext");
        let prog = a.bpf(BPF_PROG_LOAD).expect("BPF_PROG_LOAD of the counter");
        // SAFETY: a new fd that nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let ifindex: u32 = exec(ns, &["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .expect("ifindex")
            .trim()
            .parse()
            .expect("ifindex");
        let pfd = prog.as_raw_fd();
        let link = in_netns(ns, move || {
            let mut a = Attr::new();
            a.u32(0, pfd as u32).u32(4, ifindex).u32(8, BPF_TCX_INGRESS);
            a.bpf(BPF_LINK_CREATE)
        })
        .unwrap_or_else(|e| panic!("TCX link on {dev} in {ns}: {e}"));
        TcxCounter {
            prog,
            // SAFETY: a new fd that nothing else owns.
            _link: unsafe { OwnedFd::from_raw_fd(link) },
            _stats: stats,
        }
    }

    /// How many packets the program has seen.
    pub fn count(&self) -> u64 {
        let mut info = [0u64; 64];
        let mut a = Attr::new();
        a.u32(0, self.prog.as_raw_fd() as u32)
            .u32(4, size_of_val(&info) as u32)
            .u64(8, info.as_mut_ptr() as u64);
        a.bpf(BPF_OBJ_GET_INFO_BY_FD)
            .expect("BPF_OBJ_GET_INFO_BY_FD");
        info[INFO_RUN_CNT / 8]
    }
}

/// A legacy clsact ingress filter on `dev` in `ns`: classic BPF that matches everything
/// (cls_bpf), with an action that mirrors each packet to a spare veth and counts it, as a
/// CNI's or the bandwidth plugin's filters sit behind the TCX chain.
pub struct LegacyFilter {
    ns: String,
    dev: String,
}

impl LegacyFilter {
    pub fn add(ns: &str, dev: &str, spare: &str) -> LegacyFilter {
        let peer = format!("{spare}p");
        for args in [
            vec![
                "ip", "link", "add", spare, "type", "veth", "peer", "name", &peer,
            ],
            vec!["ip", "link", "set", spare, "up"],
            vec!["ip", "link", "set", &peer, "up"],
        ] {
            exec(ns, &args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // The qdisc may exist already (another filter, an older run): fine.
        let _ = exec(ns, &["tc", "qdisc", "add", "dev", dev, "clsact"]);
        let args = [
            "tc",
            "filter",
            "add",
            "dev",
            dev,
            "ingress",
            "prio",
            "7",
            "protocol",
            "all",
            "bpf",
            "bytecode",
            "1,6 0 0 4294967295,",
            "action",
            "mirred",
            "egress",
            "mirror",
            "dev",
            spare,
        ];
        exec(ns, &args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        LegacyFilter {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
        }
    }

    /// Packets the filter's action has seen.
    pub fn count(&self) -> u64 {
        let out = exec(
            &self.ns,
            &[
                "tc", "-s", "-j", "filter", "show", "dev", &self.dev, "ingress",
            ],
        )
        .expect("tc filter show");
        let v: serde_json::Value = serde_json::from_str(&out).expect("tc json");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["options"]["actions"].as_array())
            .flatten()
            .filter_map(|a| a["stats"]["packets"].as_u64())
            .sum()
    }
}
