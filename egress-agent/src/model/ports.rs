//! The gateway host's own ports against the NAT's, when the egress IP is one of the host's
//! addresses (pure; the agent reads the sysctls, `read_host_ports`).
//!
//! A translated flow holds `{remote, egress IP, remote port, NAT port}` in the NAT table, and
//! `egw_from_wire` hands every packet that matches it to the pod before the host's stack sees
//! it. The datapath never gives a new flow a port a host socket owns (it looks the tuple up),
//! but a host socket created later is not checked against the NAT: when the kernel picks the
//! source port of one of the host's own connections from the egress IP inside the NAT range,
//! and a pod's flow to the same remote holds it, the answers reach the pod. The kernel picks
//! ephemeral ports from `net.ipv4.ip_local_port_range`, minus
//! `net.ipv4.ip_local_reserved_ports`; so the NAT range must lie outside the first or inside
//! the second.
//!
//! ICMP echo identifiers are not covered by either sysctl: the kernel's ping sockets take the
//! next free identifier of a counter over 1-65535 (`ping_get_port`; in recent kernels one
//! counter per network namespace, starting at a random value), raw-socket pingers choose
//! their own (iputils: the process id), and no BPF helper looks up a ping socket. So no range
//! keeps the NAT's echo identifiers (taken from the NAT range) apart from the host's: only a
//! dedicated egress IP does (the host's pings leave from its own address, and a NAT entry
//! matches only answers to the egress IP).

use std::{fmt::Write, net::Ipv4Addr, path::Path};

/// An inclusive port range.
pub type PortRange = [u16; 2];

/// What the gateway host says about its own ports, and the NAT range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral: PortRange,
    /// `net.ipv4.ip_local_reserved_ports`.
    pub reserved: Vec<PortRange>,
    /// The NAT's source ports (`nat.portRange`).
    pub nat: PortRange,
}

/// Parses `net.ipv4.ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(s: &str) -> Option<PortRange> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (it.next().is_none() && lo <= hi).then_some([lo, hi])
}

/// Parses `net.ipv4.ip_local_reserved_ports` ("" or "8080,9000-9100").
pub fn parse_reserved(s: &str) -> Option<Vec<PortRange>> {
    s.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let p = p.trim();
            match p.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                    (a <= b).then_some([a, b])
                }
                None => p.parse().ok().map(|a| [a, a]),
            }
        })
        .collect()
}

/// Where the sysctls are.
pub const PROC_SYS_NET_IPV4: &str = "/proc/sys/net/ipv4";

/// Reads both sysctls of the agent's network namespace (the host's: the agent runs with the
/// host network) from `proc_sys_net_ipv4` (`/proc/sys/net/ipv4`).
pub fn read_host_ports(proc_sys_net_ipv4: &Path, nat: PortRange) -> Option<HostPorts> {
    let read = |f: &str| std::fs::read_to_string(proc_sys_net_ipv4.join(f)).ok();
    Some(HostPorts {
        ephemeral: parse_port_range(&read("ip_local_port_range")?)?,
        reserved: parse_reserved(&read("ip_local_reserved_ports")?)?,
        nat,
    })
}

impl HostPorts {
    /// The NAT ports the host may also give its own connections: those in its ephemeral
    /// range that are not reserved. Sorted, disjoint.
    pub fn shared(&self) -> Vec<PortRange> {
        let lo = self.nat[0].max(self.ephemeral[0]);
        let hi = self.nat[1].min(self.ephemeral[1]);
        if lo > hi {
            return Vec::new();
        }
        let mut reserved = self.reserved.clone();
        reserved.sort();
        let mut out = Vec::new();
        let mut next = u32::from(lo);
        for [a, b] in reserved {
            let (a, b) = (u32::from(a), u32::from(b));
            if b < next || a > u32::from(hi) {
                continue;
            }
            if a > next {
                out.push([next as u16, (a - 1) as u16]);
            }
            next = next.max(b + 1);
        }
        if next <= u32::from(hi) {
            out.push([next as u16, hi]);
        }
        out
    }

    /// What to change so that the host's ephemeral ports and the NAT's are apart (`None`:
    /// they are). `egress_ip` is the shared address.
    pub fn advice(&self, egress_ip: Ipv4Addr) -> Option<String> {
        let shared = self.shared();
        if shared.is_empty() {
            return None;
        }
        let [elo, ehi] = self.ephemeral;
        let [nlo, nhi] = self.nat;
        let mut m = format!(
            "the host's ephemeral ports (net.ipv4.ip_local_port_range {elo}-{ehi}) include NAT \
             ports ({}) that net.ipv4.ip_local_reserved_ports does not reserve: a connection \
             of the host's own from {egress_ip} can get a port a translated flow holds, and its \
             answers then reach a pod. Either reserve the NAT range \
             (net.ipv4.ip_local_reserved_ports=\"{}\")",
            fmt_ranges(&shared),
            fmt_ranges(&merged(&self.reserved, self.nat)),
        );
        // Shrinking the host's range: keep its larger side of the NAT range.
        let below = (elo < nlo).then(|| [elo, nlo - 1]);
        let above = (ehi > nhi).then(|| [nhi + 1, ehi]);
        let keep = match (below, above) {
            (Some(b), Some(a)) => Some(if b[1] - b[0] >= a[1] - a[0] { b } else { a }),
            (b, a) => b.or(a),
        };
        if let Some([a, b]) = keep {
            let _ = write!(
                m,
                ", or narrow the host's range (net.ipv4.ip_local_port_range=\"{a} {b}\")"
            );
        }
        m.push_str(
            ", or move nat.portRange outside it (sysctl -w, and a file in /etc/sysctl.d to keep \
             it); a dedicated egress IP avoids the sharing altogether",
        );
        Some(m)
    }
}

/// `reserved` with `nat` added, merged, sorted.
fn merged(reserved: &[PortRange], nat: PortRange) -> Vec<PortRange> {
    let mut all: Vec<PortRange> = reserved.iter().copied().chain([nat]).collect();
    all.sort();
    let mut out: Vec<PortRange> = Vec::new();
    for r in all {
        match out.last_mut() {
            Some(last) if u32::from(r[0]) <= u32::from(last[1]) + 1 => last[1] = last[1].max(r[1]),
            _ => out.push(r),
        }
    }
    out
}

fn fmt_ranges(r: &[PortRange]) -> String {
    r.iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    fn host(ephemeral: PortRange, reserved: &[PortRange]) -> HostPorts {
        HostPorts {
            ephemeral,
            reserved: reserved.to_vec(),
            nat: [61000, 65535],
        }
    }

    #[test]
    fn the_sysctls_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some([32768, 60999]));
        assert_eq!(parse_port_range("1024 65535"), Some([1024, 65535]));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("8080,61000-65535\n"),
            Some(vec![[8080, 8080], [61000, 65535]])
        );
        assert_eq!(parse_reserved("9-8"), None);
        assert_eq!(parse_reserved("x"), None);
    }

    #[test]
    fn linuxs_default_range_stays_below_the_default_nat_range() {
        let h = host([32768, 60999], &[]);
        assert!(h.shared().is_empty());
        assert_eq!(h.advice(IP), None);
        // The edge: one port in common.
        assert_eq!(host([32768, 61000], &[]).shared(), vec![[61000, 61000]]);
    }

    #[test]
    fn a_widened_host_range_shares_the_nat_ports_and_the_advice_says_what_to_set() {
        let h = host([1024, 65535], &[[8080, 8080]]);
        assert_eq!(h.shared(), vec![[61000, 65535]]);
        let a = h.advice(IP).expect("advice");
        assert!(a.contains("61000-65535"), "{a}");
        assert!(
            a.contains("ip_local_reserved_ports=\"8080,61000-65535\""),
            "keeps what is reserved and adds the NAT range: {a}"
        );
        assert!(a.contains("ip_local_port_range=\"1024 60999\""), "{a}");
        assert!(a.contains("192.0.2.10"), "{a}");
    }

    #[test]
    fn reserved_ports_take_their_part_out_of_the_shared_ports() {
        // Reserved: the whole NAT range (the fix), or part of it.
        assert!(host([1024, 65535], &[[61000, 65535]]).shared().is_empty());
        assert!(host([1024, 65535], &[[60000, 62000], [62001, 65535]])
            .shared()
            .is_empty());
        assert_eq!(
            host([1024, 65535], &[[62000, 62999], [64000, 64000]]).shared(),
            vec![[61000, 61999], [63000, 63999], [64001, 65535]]
        );
        // A host range above the NAT range's start: the advice keeps the larger side.
        let h = HostPorts {
            ephemeral: [40000, 65535],
            reserved: vec![],
            nat: [41000, 42000],
        };
        assert_eq!(h.shared(), vec![[41000, 42000]]);
        let a = h.advice(IP).expect("advice");
        assert!(a.contains("ip_local_port_range=\"42001 65535\""), "{a}");
    }
}
