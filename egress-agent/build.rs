//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! A userspace-only build (or clippy) without the object still succeeds, with a warning that
//! says what to run; the agent then refuses to load and says the same.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let object = env::var_os("EGRESS_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("../target"));
            target.join("bpfel-unknown-none/release/egress")
        });
    println!("cargo:rerun-if-env-changed=EGRESS_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let dest = out.join("egress.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&dest, bytes).expect("write embedded object"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: this agent cannot load its datapath. \
                 Run `cargo xtask build-ebpf` (after `cargo xtask setup`), then rebuild.",
                object.display()
            );
            fs::write(&dest, b"").expect("write empty object");
        }
    }
}
