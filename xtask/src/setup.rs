//! `cargo xtask setup`: installs what building and testing need, skipping what is there.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::sh;

/// Debian packages used by the tests, the lab, the demo and the benchmarks.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "bpftool",
    "tcpdump",
    "iperf3",
    "sockperf",
    "conntrack",
    "dnsmasq-base",
    "swaks",
    "python3-aiosmtpd",
    "iputils-ping",
    "curl",
];

/// The toolchain that builds the eBPF programs, pinned by date: bpf-linker is built against
/// its own LLVM, and `-Z build-std` and the BPF target change under a nightly that moves (a
/// fresh machine would otherwise get whatever nightly is newest that day). rustc 1.97.0-nightly
/// (e50aa6fba 2026-05-19), LLVM 22.
pub const NIGHTLY: &str = "nightly-2026-05-20";

/// bpf-linker release line that works with aya 0.14 and the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "^0.13";

pub fn all() -> Result<()> {
    ebpf_toolchain()?;
    debian_packages()?;
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// The pinned nightly (`NIGHTLY`) with rust-src, rustfmt and clippy, and bpf-linker linked
/// against the nightly's LLVM.
pub fn ebpf_toolchain() -> Result<()> {
    let toolchains = output(rustup().args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        println!("xtask setup: installing the {NIGHTLY} toolchain");
        sh(rustup().args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src,rustfmt,clippy",
        ]))?;
    }
    let installed =
        output(rustup().args(["component", "list", "--toolchain", NIGHTLY, "--installed"]))?;
    for comp in ["rust-src", "rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(comp)) {
            println!("xtask setup: adding {comp} to {NIGHTLY}");
            sh(rustup().args(["component", "add", comp, "--toolchain", NIGHTLY]))?;
        }
    }
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = PathBuf::from(output(
        Command::new("rustc").env_remove("RUSTUP_TOOLCHAIN").args([
            &format!("+{NIGHTLY}"),
            "--print",
            "sysroot",
        ]),
    )?);
    let lib = sysroot.join("lib");
    // bpf-linker's build looks for libLLVM.so; the nightly ships libLLVM.so.<ver>-rust-...
    let versioned = fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = versioned
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(&versioned, &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    println!(
        "xtask setup: building bpf-linker against the nightly's LLVM {major} (about a minute)"
    );
    sh(Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("LLVM_PREFIX", &sysroot)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]))?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Debian packages of the kernel matrix (`cargo xtask kernels`): QEMU, a static busybox for
/// the guest's init, depmod (the kernel packages ship no modules.dep) and xz for their
/// modules, objcopy to strip the test binaries.
pub const KERNEL_MATRIX_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "binutils",
];

/// Installs the Debian packages that are missing.
pub fn debian_packages() -> Result<()> {
    install_debian(DEBIAN_PACKAGES)
}

/// Installs those of `packages` that are missing (apt-get update first).
pub fn install_debian(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    apt_update()?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter());
    sh(&mut apt(&args))
}

/// `apt-get <args>`, through sudo when not root.
pub fn apt(args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions.
    let sudo: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &[]
    } else {
        &["sudo"]
    };
    let mut all: Vec<&str> = sudo.to_vec();
    all.push("apt-get");
    all.extend_from_slice(args);
    let mut c = Command::new(all[0]);
    c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Refreshes the package lists (apt-cache finds nothing, or an old list, without it).
pub fn apt_update() -> Result<()> {
    sh(&mut apt(&["update", "-q"]))
}
