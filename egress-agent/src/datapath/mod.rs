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
//! program behind each pinned link (TCX) or of each of its filters (legacy tc, below 6.6:
//! see `attach`), so traffic never stops.

mod attach;
mod load;
mod maps;
pub mod pinned;
mod probe;
mod stats;
mod sys;

use std::{io, path::PathBuf};

use aya::{
    maps::{Map, MapError},
    programs::{links::LinkError, ProgramError},
    Ebpf, EbpfError,
};
// Address conversion, the policy key and the map sizes live in egress-common (the model and
// the configuration use them without the loader); re-exported here for the datapath's users.
pub use egress_common::{
    addr::{ip4, ip4_from},
    map_sizes::MapSizes,
    policy::policy_key,
};
use thiserror::Error;

pub use self::{
    attach::{
        direction, legacy_handle, remove_all_legacy_filters, remove_legacy_filter, TcMode, TcProbe,
        FORCE_LEGACY_ENV, LEGACY_PRIORITY,
    },
    load::{
        ensure_bpffs, kernel_release, open_pinned_map, OpenPinnedError, DEFAULT_PIN_ROOT,
        OBJECT_FILE_ENV,
    },
    maps::Maps,
    stats::{read_drops, read_nat_stats, read_policy_stats, DropCounts, NatStats},
};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this agent was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild"
    )]
    NoObject,
    #[error("reading the eBPF object {path} (EGRESS_EBPF_OBJECT_FILE): {source}")]
    ObjectFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to {ifname} with {mode}: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        mode: TcMode,
        #[source]
        source: ProgramError,
    },
    #[error("this kernel lacks what the programs need: {0}")]
    Kernel(String),
    #[error("parsing the eBPF object's maps: {0}")]
    Object(String),
    #[error(
        "migrating the pinned map {name} (its old pin stays, the next start tries again): {source}"
    )]
    Migrate {
        name: &'static str,
        #[source]
        source: io::Error,
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

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_root: Option<PathBuf>,
    /// How programs are attached here (probed once, at load).
    tc_mode: TcMode,
    /// Why that mode (for the log).
    tc_probe: String,
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
