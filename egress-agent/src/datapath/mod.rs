//! The datapath as the agent sees it: loading and pinning the tc programs (`load`), attaching
//! them (`attach`), typed access to the maps the reconciler fills (`maps`), and the counters
//! (`stats`).
//!
//! Loading is split (prepare the loader; load; attach) so that tests can load the programs
//! and run them with `BPF_PROG_TEST_RUN` without attaching anything.
//!
//! Pin layout under the pin root (default `/sys/fs/bpf/egress-gateway`):
//! `maps/<MAP NAME>` for every map, `links/<program>@<interface>` for every TCX attachment.
//! A restarted agent opens the pinned maps (state survives) and atomically replaces the
//! program behind each pinned link, so traffic never stops.

mod attach;
mod load;
mod maps;
mod stats;

use std::{io, net::Ipv4Addr, path::PathBuf};

use aya::{
    maps::{Map, MapError},
    programs::{links::LinkError, ProgramError},
    Ebpf, EbpfError,
};
use thiserror::Error;

pub use self::{
    load::{ensure_bpffs, open_pinned_map, OpenPinnedError, DEFAULT_PIN_ROOT},
    maps::{policy_key, Maps},
    stats::{read_drops, read_nat_stats, read_policy_stats, DropCounts, NatStats},
};

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

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_root: Option<PathBuf>,
}

impl Datapath {
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }
}
