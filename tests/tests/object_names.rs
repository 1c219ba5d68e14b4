//! Every map and program name the agent uses is in the eBPF object it embeds. aya applies
//! map sizes and pin paths by name and silently skips a name the object lacks, so a map
//! renamed on one side only would otherwise go unnoticed until it mattered.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{env, path::PathBuf};

use aya_obj::Object;
use egress_common::{map_names, program_names};

/// The object the agent embeds, found where its build script finds it.
fn object() -> Object {
    let path = env::var_os("EGRESS_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("bpfel-unknown-none/release/egress")
        });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the eBPF object {}: {e}; run `cargo xtask build-ebpf` first",
            path.display()
        )
    });
    Object::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_map_name_is_a_map_in_the_object() {
    let obj = object();
    let mut have: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
    have.sort_unstable();
    for name in map_names::ALL {
        assert!(
            obj.maps.contains_key(name),
            "map {name} is not in the object (it has {have:?})"
        );
    }
}

#[test]
fn every_program_name_is_a_program_in_the_object() {
    let obj = object();
    let mut have: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    have.sort_unstable();
    for name in program_names::ALL {
        assert!(
            obj.programs.contains_key(name),
            "program {name} is not in the object (it has {have:?})"
        );
    }
}
