//! The datapath's counters, summed over CPUs: drops by reason, NAT statistics, per-policy
//! traffic. The readers take a `Map`, so that the loaded datapath and a pinned map (opened
//! by `inspect` or the metrics) read them alike.

use std::collections::BTreeMap;

use aya::maps::{Map, MapData, PerCpuArray};
use egress_common::{
    counters::{
        DropReason, PolicyStats, DROP_REASON_COUNT, NAT_STAT_ALLOCATIONS, NAT_STAT_PORT_RETRIES,
    },
    map_names,
    policy::MAX_POLICIES,
};

use super::{map_err, Datapath, DatapathError};

/// Packets dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DROP_REASON_COUNT as usize]);

impl DropCounts {
    /// Packets dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index() as usize]
    }

    /// Every reason with its count, in reason order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// Counts by the reasons' names, sorted by name (as `inspect` shows them).
    pub fn by_name(&self) -> BTreeMap<&'static str, u64> {
        self.iter().map(|(r, n)| (r.name(), n)).collect()
    }
}

/// NAT statistics, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Candidate SNAT ports found taken (another flow, or a host socket).
    pub port_retries: u64,
    /// SNAT mappings created.
    pub allocations: u64,
}

impl Datapath {
    /// Drop counters summed over CPUs, by reason.
    pub fn drops(&self) -> Result<DropCounts, DatapathError> {
        read_drops(self.map(map_names::DROPS)?)
    }

    /// NAT statistics summed over CPUs.
    pub fn nat_stats(&self) -> Result<NatStats, DatapathError> {
        read_nat_stats(self.map(map_names::NAT_STATS)?)
    }

    /// Per-policy counters summed over CPUs (policies with any traffic).
    pub fn policy_stats(&self) -> Result<BTreeMap<u32, PolicyStats>, DatapathError> {
        read_policy_stats(self.map(map_names::POLICY_STATS)?)
    }
}

/// Sums per-CPU drop counters of a drop map.
pub fn read_drops(map: &Map) -> Result<DropCounts, DatapathError> {
    let name = map_names::DROPS;
    let m: PerCpuArray<&MapData, u64> = map.try_into().map_err(map_err(name))?;
    let mut out = DropCounts::default();
    for r in DropReason::ALL {
        let v = m.get(&r.index(), 0).map_err(map_err(name))?;
        out.0[r.index() as usize] = v.iter().sum();
    }
    Ok(out)
}

/// Reads the NAT statistics map.
pub fn read_nat_stats(map: &Map) -> Result<NatStats, DatapathError> {
    let name = map_names::NAT_STATS;
    let m: PerCpuArray<&MapData, u64> = map.try_into().map_err(map_err(name))?;
    let sum = |i: u32| -> Result<u64, DatapathError> {
        Ok(m.get(&i, 0).map_err(map_err(name))?.iter().sum())
    };
    Ok(NatStats {
        port_retries: sum(NAT_STAT_PORT_RETRIES)?,
        allocations: sum(NAT_STAT_ALLOCATIONS)?,
    })
}

/// Sums per-CPU policy counters of a stats map.
pub fn read_policy_stats(map: &Map) -> Result<BTreeMap<u32, PolicyStats>, DatapathError> {
    let name = map_names::POLICY_STATS;
    let m: PerCpuArray<&MapData, PolicyStats> = map.try_into().map_err(map_err(name))?;
    let mut out = BTreeMap::new();
    for id in 0..MAX_POLICIES {
        let v = m.get(&id, 0).map_err(map_err(name))?;
        let mut s = PolicyStats::default();
        for c in v.iter() {
            s.tx_packets += c.tx_packets;
            s.tx_bytes += c.tx_bytes;
            s.rx_packets += c.rx_packets;
            s.rx_bytes += c.rx_bytes;
        }
        if s != PolicyStats::default() {
            out.insert(id, s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counts_are_kept_per_reason_and_shown_by_name() {
        let mut d = DropCounts::default();
        d.0[DropReason::Spoofed.index() as usize] = 3;
        assert_eq!(d.get(DropReason::Spoofed), 3);
        assert_eq!(d.get(DropReason::Malformed), 0);
        assert_eq!(d.iter().count(), DropReason::ALL.len());
        let names = d.by_name();
        assert_eq!(names["spoofed"], 3);
        assert_eq!(names.keys().next(), Some(&"frag_needed"), "sorted by name");
    }
}
