//! The previous release, for the upgrade test (`tests/upgrade.rs`): a fixed, earlier commit of
//! this repository whose agent binary (its own eBPF object embedded) and eBPF object
//! `cargo xtask build-previous` builds into `<target>/previous/<commit>/`.
//!
//! Why [`COMMIT`]: it is main as it stood right before the NAT entry grew (`NatEntry4`: 24
//! bytes there, 32 since the TCP window tracking, db59103), so an upgrade from it changes
//! programs (the window tracking, the flow flush, ...) and one map's value size (`EGW_NAT4`,
//! and `EGW_FRAG4`, which holds the same entry), while every other map keeps its layout. Its
//! command line and configuration file are the ones the lab writes today, and the lab itself
//! (`lab.rs`) has not changed since, so the old agent runs in today's lab as it ran in its own.
//! 2304647, the first candidate, is older still and has the same layouts; nothing newer on
//! main has 24-byte entries.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{programs::SchedClassifier, EbpfLoader};

use crate::agent::agent_binary;

/// The commit of the previous release (main before the NAT entry grew).
pub const COMMIT: &str = "03cb9d883e7526efa9e15eaf130b33e63d8628c7";

/// Overrides where the tests look for the previous build (`cargo xtask test` sets it).
pub const DIR_ENV: &str = "EGRESS_PREVIOUS_DIR";

/// What builds it.
pub const BUILD_COMMAND: &str = "cargo xtask build-previous";

/// The agent binary's and the object's file names inside the directory.
pub const AGENT_FILE: &str = "egress-agent";
pub const OBJECT_FILE: &str = "egress.bpf.o";

/// Where `cargo xtask build-previous` leaves the previous build in target directory
/// `target`.
pub fn dir_in(target: &Path) -> PathBuf {
    target.join("previous").join(COMMIT)
}

/// The previous build's files.
#[derive(Clone, Debug)]
pub struct Previous {
    /// Its agent binary (the old object embedded).
    pub agent: PathBuf,
    /// Its eBPF object.
    pub object: PathBuf,
}

/// The previous build: in `EGRESS_PREVIOUS_DIR`, else next to this build's agent binary
/// (`<target>/previous/<commit>/`). Panics saying how to build it when it is not there: an
/// upgrade test that skipped would hide that it never ran.
pub fn find() -> Previous {
    let dir = match std::env::var_os(DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let bin = agent_binary();
            let target = bin
                .parent()
                .and_then(Path::parent)
                .expect("the agent binary sits in <target>/<profile>/");
            dir_in(target)
        }
    };
    let p = Previous {
        agent: dir.join(AGENT_FILE),
        object: dir.join(OBJECT_FILE),
    };
    for f in [&p.agent, &p.object] {
        assert!(
            f.exists(),
            "the previous release's build ({COMMIT}) is not there: {} is missing. Build it \
             with `{BUILD_COMMAND}` (`cargo xtask test` does), or point {DIR_ENV} at a \
             directory holding {AGENT_FILE} and {OBJECT_FILE}",
            f.display()
        );
    }
    p
}

/// The tags (`bpf_prog_info.tag`: a hash of the instructions as loaded, map references
/// masked, so the same for every load of one object) of the tc programs of the eBPF object
/// `object`, by program name: loaded here, never attached.
pub fn object_tags(object: &Path) -> BTreeMap<String, u64> {
    let bytes =
        std::fs::read(object).unwrap_or_else(|e| panic!("reading {}: {e}", object.display()));
    let mut ebpf = EbpfLoader::new()
        .load(&bytes)
        .unwrap_or_else(|e| panic!("loading {}: {e}", object.display()));
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    names
        .into_iter()
        .map(|name| {
            let p: &mut SchedClassifier = ebpf
                .program_mut(&name)
                .expect("listed")
                .try_into()
                .unwrap_or_else(|e| panic!("{name} of {}: {e}", object.display()));
            p.load()
                .unwrap_or_else(|e| panic!("loading {name} of {}: {e}", object.display()));
            let tag = p.info().expect("program info").tag();
            (name, tag)
        })
        .collect()
}

/// The tag of the loaded program `id` (`None`: gone).
pub fn prog_tag(id: u32) -> Option<u64> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| p.tag())
}

/// This build's eBPF object (what its agent embeds), where `cargo xtask build-ebpf` leaves it
/// next to the agent binary: `<target>/bpfel-unknown-none/release/egress`.
pub fn current_object() -> PathBuf {
    let bin = agent_binary();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the agent binary sits in <target>/<profile>/");
    let obj = target.join("bpfel-unknown-none/release/egress");
    assert!(
        obj.exists(),
        "{}: run `cargo xtask build-ebpf` first",
        obj.display()
    );
    obj
}
