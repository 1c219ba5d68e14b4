//! Loading, pinning and attaching the tc programs, and typed access to their maps.
//!
//! Loading is split (prepare the loader; load; attach) so that tests can load the programs
//! and run them with `BPF_PROG_TEST_RUN` without attaching anything.
//!
//! Pin layout under the pin root (default `/sys/fs/bpf/egress-gateway`):
//! `maps/<MAP NAME>` for every map, `links/<program>@<interface>` for every TCX attachment.
//! A restarted agent opens the pinned maps (state survives) and atomically replaces the
//! program behind each pinned link, so traffic never stops.

use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use egress_common::{
    config::Config,
    counters::{DropReason, PolicyStats, NAT_STAT_ALLOCATIONS, NAT_STAT_PORT_RETRIES},
    endpoint::{Endpoint, NodeInfo, RemoteEndpoint},
    map_names,
    nat::{NatEntry4, NatKey4},
    policy::{PolicyKey4, PolicyValue, MAX_POLICIES, POLICY_ID_BITS},
    program_names,
};
use thiserror::Error;

/// The eBPF object, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress.bpf.o"));

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/egress-gateway";

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this agent was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// Wraps a map error with the map's name.
fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Map sizes (max entries) the agent may override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MapSizes {
    pub nat: u32,
    pub endpoints: u32,
    pub remote_endpoints: u32,
    pub policies: u32,
    pub nodes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            nat: 262_144,
            endpoints: 16_384,
            remote_endpoints: 65_536,
            policies: 16_384,
            nodes: 16_384,
        }
    }
}

/// Converts an address to the map representation (network byte order in a `u32`).
pub fn ip4(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Converts the map representation back to an address.
pub fn ip4_from(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Mounts a bpffs at `dir` unless one is there already (`ip netns exec` hides /sys/fs/bpf).
pub fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let err = |source| DatapathError::PinDir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let mut probe = dir.to_owned();
    // The pin root itself may be a subdirectory of a bpffs mount.
    loop {
        if is_bpffs(&probe).map_err(err)? {
            return Ok(());
        }
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: valid NUL-terminated strings; mount(2) has no other memory requirements.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_root: Option<PathBuf>,
}

impl Datapath {
    /// Prepares the loader: map sizes and, with a pin root, every map pinned (or reused)
    /// under `<pin_root>/maps/`.
    fn loader<'a>(sizes: &MapSizes, maps_dir: Option<&'a Path>) -> EbpfLoader<'a> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::NAT4, sizes.nat)
            .map_max_entries(map_names::ENDPOINTS4, sizes.endpoints)
            .map_max_entries(map_names::REMOTE_EP4, sizes.remote_endpoints)
            .map_max_entries(map_names::POLICY4, sizes.policies)
            .map_max_entries(map_names::NODES4, sizes.nodes);
        if let Some(dir) = maps_dir {
            for name in map_names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        loader
    }

    /// Loads the object and its programs into the kernel, without attaching them. With a pin
    /// root, the maps are pinned there, and maps already pinned there are reused.
    pub fn load(sizes: &MapSizes, pin_root: Option<&Path>) -> Result<Datapath, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let maps_dir = match pin_root {
            Some(root) => {
                ensure_bpffs(root)?;
                let dir = root.join("maps");
                fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir)
            }
            None => None,
        };
        let mut ebpf = Self::loader(sizes, maps_dir.as_deref()).load(OBJECT)?;
        for name in program_names::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Datapath {
            ebpf,
            pin_root: pin_root.map(Path::to_owned),
        })
    }

    /// A loaded program (for `BPF_PROG_TEST_RUN` in tests).
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }

    fn link_path(&self, program: &str, ifname: &str) -> Option<PathBuf> {
        self.pin_root
            .as_ref()
            .map(|r| r.join("links").join(format!("{program}@{ifname}")))
    }

    /// Attaches `program` to tc ingress of `ifname` with a TCX link. With a pin root the link
    /// is pinned; an existing pinned link is reused, its program atomically replaced.
    pub fn attach(&mut self, program: &'static str, ifname: &str) -> Result<(), DatapathError> {
        let path = self.link_path(program, ifname);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Program {
                name: program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: program,
                source,
            })?;
        let perr = |source| DatapathError::Program {
            name: program,
            source,
        };
        let existing = match &path {
            Some(p) if p.exists() => match PinnedLink::from_pin(p) {
                Ok(l) => Some(l),
                // A stale pin (its interface is gone): replace it.
                Err(_) => {
                    let _ = fs::remove_file(p);
                    None
                }
            },
            _ => None,
        };
        let id = match existing {
            Some(pinned) => {
                let link: SchedClassifierLink =
                    FdLink::from(pinned)
                        .try_into()
                        .map_err(|source| DatapathError::Link {
                            path: path.clone().unwrap_or_default(),
                            source,
                        })?;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    Err(_) => {
                        // The link is defunct (interface re-created): attach afresh.
                        if let Some(p) = &path {
                            let _ = fs::remove_file(p);
                        }
                        prog.attach_with_options(
                            ifname,
                            TcAttachType::Ingress,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(perr)?
                    }
                }
            }
            None => prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(perr)?,
        };
        if let Some(p) = path {
            let link = prog.take_link(id).map_err(perr)?;
            let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
                path: p.clone(),
                source,
            })?;
            if p.exists() {
                // Already pinned (replaced in place); dropping our fd keeps the pin.
                drop(fd_link);
            } else {
                let dir = p.parent().expect("link path has a parent");
                fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                    path: dir.to_owned(),
                    source,
                })?;
                fd_link
                    .pin(&p)
                    .map_err(|source| DatapathError::Pin { path: p, source })?;
            }
        }
        Ok(())
    }

    /// Detaches `program` from `ifname` (removes its pinned link).
    pub fn detach(&mut self, program: &str, ifname: &str) {
        if let Some(p) = self.link_path(program, ifname) {
            let _ = fs::remove_file(p);
        }
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }

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

    /// Drop counters summed over CPUs, by reason.
    pub fn drops(&self) -> Result<BTreeMap<&'static str, u64>, DatapathError> {
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
pub fn read_drops(map: &Map) -> Result<BTreeMap<&'static str, u64>, DatapathError> {
    let name = map_names::DROPS;
    let m: PerCpuArray<&MapData, u64> = map.try_into().map_err(map_err(name))?;
    let mut out = BTreeMap::new();
    for r in DropReason::ALL {
        let v = m.get(&r.index(), 0).map_err(map_err(name))?;
        out.insert(r.name(), v.iter().sum());
    }
    Ok(out)
}

/// NAT statistics, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Candidate SNAT ports found taken (another flow, or a host socket).
    pub port_retries: u64,
    /// SNAT mappings created.
    pub allocations: u64,
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

/// The LPM key of `{policy, prefix}`.
pub fn policy_key(policy_id: u32, dst: Ipv4Addr, prefix_len: u8) -> Key<PolicyKey4> {
    Key::new(
        POLICY_ID_BITS + u32::from(prefix_len),
        PolicyKey4 {
            policy_id_be: policy_id.to_be(),
            dst: ip4(dst),
        },
    )
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

impl Maps<'_> {
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
        put_nat,
        del_nat,
        nat_entries,
        map_names::NAT4,
        NatKey4,
        NatEntry4
    );

    /// Inserts `key` only if absent (`BPF_NOEXIST`); `false` if it exists. For claim keys.
    pub fn insert_nat_if_absent(&mut self, key: NatKey4) -> Result<bool, DatapathError> {
        let name = map_names::NAT4;
        let mut m: HashMap<&mut MapData, NatKey4, NatEntry4> =
            self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
        // BPF_NOEXIST from uapi/linux/bpf.h.
        const BPF_NOEXIST: u64 = 1;
        match m.insert(key, NatEntry4::default(), BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
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

    pub fn put_policy(
        &mut self,
        key: &Key<PolicyKey4>,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        let name = map_names::POLICY4;
        let mut m: LpmTrie<&mut MapData, PolicyKey4, PolicyValue> =
            self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
        m.insert(key, value, 0).map_err(map_err(name))
    }

    pub fn del_policy(&mut self, key: &Key<PolicyKey4>) -> Result<(), DatapathError> {
        let name = map_names::POLICY4;
        let mut m: LpmTrie<&mut MapData, PolicyKey4, PolicyValue> =
            self.dp.map_mut(name)?.try_into().map_err(map_err(name))?;
        match m.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map { name, source }),
        }
    }

    pub fn policies(&mut self) -> Result<Vec<(Key<PolicyKey4>, PolicyValue)>, DatapathError> {
        let name = map_names::POLICY4;
        let m: LpmTrie<&MapData, PolicyKey4, PolicyValue> =
            self.dp.map(name)?.try_into().map_err(map_err(name))?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(name))
    }
}
