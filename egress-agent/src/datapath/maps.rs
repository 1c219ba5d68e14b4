//! Typed access to the maps the agent writes: the node configuration, and the endpoints,
//! nodes, remote endpoints, policies and NAT maps.

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError};
use egress_common::{
    config::Config,
    endpoint::{Endpoint, NodeInfo, RemoteEndpoint},
    flow::FlowEntry4,
    map_names,
    nat::{FragKey4, NatEntry4, NatKey4},
    policy::{PolicyKey4, PolicyKey6, PolicyValue, PolicyValue6},
};

use super::{map_err, Datapath, DatapathError};

impl Datapath {
    pub fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError> {
        let name = map_names::CONFIG;
        let mut m: Array<&mut MapData, Config> =
            self.map_mut(name)?.try_into().map_err(map_err(name))?;
        m.set(0, cfg, 0).map_err(map_err(name))
    }

    pub fn config(&self) -> Result<Config, DatapathError> {
        let name = map_names::CONFIG;
        let m: Array<&MapData, Config> = self.map(name)?.try_into().map_err(map_err(name))?;
        m.get(&0, 0).map_err(map_err(name))
    }

    pub fn maps(&mut self) -> Maps<'_> {
        Maps { dp: self }
    }
}

/// Typed writers for the maps the reconciler fills.
pub struct Maps<'a> {
    dp: &'a mut Datapath,
}

macro_rules! hash_map_ops {
    ($put:ident, $del:ident, $list:ident, $name:expr, $k:ty, $v:ty) => {
        pub fn $put(&mut self, key: $k, value: $v) -> Result<(), DatapathError> {
            let name = $name;
            let mut m: HashMap<&mut MapData, $k, $v> =
                self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
            m.insert(key, value, 0).map_err(map_err(name))
        }

        pub fn $del(&mut self, key: $k) -> Result<(), DatapathError> {
            let name = $name;
            let mut m: HashMap<&mut MapData, $k, $v> =
                self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
            match m.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(source) => Err(DatapathError::Map { name, source }),
            }
        }

        pub fn $list(&mut self) -> Result<Vec<($k, $v)>, DatapathError> {
            let name = $name;
            let m: HashMap<&MapData, $k, $v> =
                self.dp.map(name)?.try_into().map_err(map_err(name))?;
            m.iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err(name))
        }
    };
}

macro_rules! lpm_map_ops {
    ($put:ident, $del:ident, $list:ident, $name:expr, $k:ty, $v:ty) => {
        pub fn $put(&mut self, key: &Key<$k>, value: $v) -> Result<(), DatapathError> {
            let name = $name;
            let mut m: LpmTrie<&mut MapData, $k, $v> =
                self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
            m.insert(key, value, 0).map_err(map_err(name))
        }

        pub fn $del(&mut self, key: &Key<$k>) -> Result<(), DatapathError> {
            let name = $name;
            let mut m: LpmTrie<&mut MapData, $k, $v> =
                self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
            match m.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(source) => Err(DatapathError::Map { name, source }),
            }
        }

        pub fn $list(&mut self) -> Result<Vec<(Key<$k>, $v)>, DatapathError> {
            let name = $name;
            let m: LpmTrie<&MapData, $k, $v> =
                self.dp.map(name)?.try_into().map_err(map_err(name))?;
            m.iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err(name))
        }
    };
}

impl Maps<'_> {
    hash_map_ops!(
        put_veth_pod,
        del_veth_pod,
        veth_pods,
        map_names::VETH_PODS,
        u32,
        u32
    );
    hash_map_ops!(
        put_endpoint,
        del_endpoint,
        endpoints,
        map_names::ENDPOINTS4,
        u32,
        Endpoint
    );
    hash_map_ops!(put_node, del_node, nodes, map_names::NODES4, u32, NodeInfo);
    hash_map_ops!(
        put_remote_endpoint,
        del_remote_endpoint,
        remote_endpoints,
        map_names::REMOTE_EP4,
        u32,
        RemoteEndpoint
    );
    hash_map_ops!(
        put_flow,
        del_flow,
        flows,
        map_names::FLOWS4,
        NatKey4,
        FlowEntry4
    );
    hash_map_ops!(
        put_frag,
        del_frag,
        frags,
        map_names::FRAG4,
        FragKey4,
        NatEntry4
    );
    hash_map_ops!(
        put_nat,
        del_nat,
        nat_entries,
        map_names::NAT4,
        NatKey4,
        NatEntry4
    );

    /// Inserts `key` with `value` only if absent (`BPF_NOEXIST`); `false` if it exists, or if
    /// the table is full (no room for it now: try again later). For claim keys.
    pub fn insert_nat_if_absent(
        &mut self,
        key: NatKey4,
        value: NatEntry4,
    ) -> Result<bool, DatapathError> {
        let name = map_names::NAT4;
        let mut m: HashMap<&mut MapData, NatKey4, NatEntry4> =
            self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
        // BPF_NOEXIST from uapi/linux/bpf.h.
        const BPF_NOEXIST: u64 = 1;
        match m.insert(key, value, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e))
                if matches!(e.io_error.raw_os_error(), Some(libc::EEXIST | libc::E2BIG)) =>
            {
                Ok(false)
            }
            Err(source) => Err(DatapathError::Map { name, source }),
        }
    }

    /// The current value of one NAT entry, if it exists.
    pub fn nat_entry(&mut self, key: NatKey4) -> Result<Option<NatEntry4>, DatapathError> {
        let name = map_names::NAT4;
        let m: HashMap<&MapData, NatKey4, NatEntry4> =
            self.dp.map(name)?.try_into().map_err(map_err(name))?;
        match m.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { name, source }),
        }
    }

    lpm_map_ops!(
        put_policy,
        del_policy,
        policies,
        map_names::POLICY4,
        PolicyKey4,
        PolicyValue
    );
    lpm_map_ops!(
        put_policy6,
        del_policy6,
        policies6,
        map_names::POLICY6,
        PolicyKey6,
        PolicyValue6
    );
}
