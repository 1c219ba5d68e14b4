//! Other programs on our hooks, as a cluster has them: a CNI's or a firewall's TCX program
//! attached after ours, and a legacy clsact filter (cls_bpf) behind the TCX chain. Each counts
//! the packets it sees, so a test can tell whether ours let them run.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::{
    lab::{exec, in_netns},
    rawbpf::{load_sched_cls, prog_run_count, Attr, BPF_LINK_CREATE},
};

const BPF_TCX_INGRESS: u32 = 46;

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
        let prog = load_sched_cls(&insns, "egw_tcxnext").expect("BPF_PROG_LOAD of the counter");
        let ifindex: u32 = exec(ns, &["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .expect("ifindex")
            .trim()
            .parse()
            .expect("ifindex");
        let pfd = prog.as_raw_fd();
        let link = in_netns(ns, move || {
            let mut a = Attr::new();
            a.u32(0, pfd as u32).u32(4, ifindex).u32(8, BPF_TCX_INGRESS);
            a.bpf_fd(BPF_LINK_CREATE)
        })
        .unwrap_or_else(|e| panic!("TCX link on {dev} in {ns}: {e}"));
        TcxCounter {
            prog,
            _link: link,
            _stats: stats,
        }
    }

    /// How many packets the program has seen.
    pub fn count(&self) -> u64 {
        prog_run_count(&self.prog)
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
