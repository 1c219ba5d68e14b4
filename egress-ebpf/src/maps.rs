//! The maps. Static names equal `egress_common::map_names`; sizes are defaults that the agent
//! overrides at load time (`EbpfLoader::map_max_entries`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use egress_common::{
    config::Config,
    counters::{PolicyStats, DROP_SLOTS, NAT_STAT_COUNT},
    endpoint::{Endpoint, NodeInfo, RemoteEndpoint},
    flow::FlowEntry4,
    nat::{FragKey4, NatEntry4, NatKey4},
    policy::{PolicyKey4, PolicyKey6, PolicyValue, PolicyValue6, MAX_POLICIES},
};

#[btf_map]
pub static EGW_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static EGW_ENDPOINTS4: HashMap<u32, Endpoint, 16384> = HashMap::new();

#[btf_map]
pub static EGW_POLICY4: LpmTrie<PolicyKey4, PolicyValue, 16384> = LpmTrie::new();

/// `{policy, IPv6 prefix}` -> what to do (see `ipv6`).
#[btf_map]
pub static EGW_POLICY6: LpmTrie<PolicyKey6, PolicyValue6, 16384> = LpmTrie::new();

/// Local pod veth ifindex -> the pod's IPv4 address (its `EGW_ENDPOINTS4` key).
#[btf_map]
pub static EGW_VETH_PODS: HashMap<u32, u32, 16384> = HashMap::new();

#[btf_map]
pub static EGW_NODES4: HashMap<u32, NodeInfo, 16384> = HashMap::new();

#[btf_map]
pub static EGW_REMOTE_EP4: HashMap<u32, RemoteEndpoint, 65536> = HashMap::new();

/// Both directions of every translated flow, and claims (see `nat`). Not an LRU: only whole
/// flows may go, and the agent decides which.
#[btf_map]
pub static EGW_NAT4: HashMap<NatKey4, NatEntry4, 262144> = HashMap::new();

/// The later fragments of a translated datagram, both ways (value: the flow's entry for that
/// direction, see `frag`). Short-lived; the LRU makes room.
#[btf_map]
pub static EGW_FRAG4: LruHashMap<FragKey4, NatEntry4, 16384> = LruHashMap::new();

/// Flows local pods opened through a gateway (source node), see `flows`.
#[btf_map]
pub static EGW_FLOWS4: LruHashMap<NatKey4, FlowEntry4, 65536> = LruHashMap::new();

#[btf_map]
pub static EGW_POL_STATS: PerCpuArray<PolicyStats, { MAX_POLICIES as usize }> = PerCpuArray::new();

#[btf_map]
pub static EGW_DROPS: PerCpuArray<u64, { DROP_SLOTS as usize }> = PerCpuArray::new();

#[btf_map]
pub static EGW_NAT_STATS: PerCpuArray<u64, { NAT_STAT_COUNT as usize }> = PerCpuArray::new();

/// The node configuration, if the agent has written it.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = EGW_CONFIG.get(0)?;
    if cfg.flags & egress_common::config::CFG_F_READY == 0 {
        return None;
    }
    Some(cfg)
}

/// Copies a value out of a hash map (`get_ptr` and a read), for the plain-data values of the
/// programs' maps.
pub trait LookupCopy<K, V> {
    fn lookup_copy(&self, key: K) -> Option<V>;
}

macro_rules! impl_lookup_copy {
    ($($map:ident),*) => {
        $(
            impl<K, V: Copy, const M: usize, const F: usize> LookupCopy<K, V> for $map<K, V, M, F> {
                #[inline(always)]
                fn lookup_copy(&self, key: K) -> Option<V> {
                    // SAFETY: the pointer is valid for this program run; the value is plain
                    // data, copied out at once.
                    self.get_ptr(key).map(|e| unsafe { *e })
                }
            }
        )*
    };
}
impl_lookup_copy!(HashMap, LruHashMap);
