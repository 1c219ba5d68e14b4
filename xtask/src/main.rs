//! Project tasks: `cargo xtask <command>`.
//!
//! Every command first checks (and installs) what it needs, so a fresh machine needs nothing
//! but `cargo xtask test` (or `cargo xtask demo`).

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod kernels;
mod previous;
mod setup;
mod stack;

#[derive(Parser)]
#[command(about = "Build, test and explore the egress gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: nightly rust-src, bpf-linker (built against
    /// the nightly toolchain's own LLVM), Debian packages. Idempotent.
    Setup,
    /// Build the eBPF object that the agent embeds.
    BuildEbpf,
    /// Build the previous release (a fixed earlier commit: its agent and eBPF object) for the
    /// upgrade test, into target/previous/<commit>/; once built, it is not built again.
    BuildPrevious,
    /// The one test command: fmt, clippy (userspace and bpf), unit, packet and lab tests,
    /// then the kernel matrix (see `kernels`).
    Test {
        /// Only run tests whose name contains this string (fmt and clippy still run; the
        /// kernel matrix does not).
        filter: Option<String>,
        /// Skip the kernel matrix.
        #[arg(long, conflicts_with = "kernels")]
        no_kernels: bool,
        /// Run the kernel matrix even with a filter (it runs by default otherwise).
        #[arg(long)]
        kernels: bool,
    },
    /// The kernel matrix alone: the packet tests and a lab smoke test on Debian's 6.1 and
    /// 6.12 kernels under QEMU (downloaded once into target/kernels/) and on the host's.
    Kernels {
        /// Only the kernel with this label (`host`, `6.1`, `6.12`) or package name.
        #[arg(long)]
        only: Option<String>,
        /// Only the lab smoke test, not the packet tests.
        #[arg(long)]
        smoke_only: bool,
    },
    /// The main job: a lab where mail pods on every node send real mail; SPF soft-fails
    /// for the workers' pods until the egress agent runs, then passes for all.
    Demo {
        /// Leave the lab, its servers and the agents up, and print how to look around.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks in the lab: ours against a kernel-only gateway and the direct path
    /// (throughput, latency, connection rate, per-program run time, agent footprint), plus
    /// the datapath micro-benchmark. Writes BENCHMARKS.md, benchmarks.svg, benchmarks.json.
    Bench {
        /// Rounds; every variant runs every measurement once per round, order rotating.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Directory for the report (default: the workspace root); created if missing and
        /// checked for writing before anything is measured.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// The datapath fuzzer, longer than the test run's: mutated packets through every
    /// program (BPF_PROG_TEST_RUN), with a random seed unless one is given.
    Fuzz(fuzz::Opts),
    /// Bring a lab up for a person to explore, tear it down, or list running labs.
    Lab {
        #[command(subcommand)]
        action: LabCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Bring up a lab (2 workers, a gateway, a pod per node, an internet host) and keep it.
    Up {
        /// Pods on a flannel-like bridge `cni0` instead of routed veths.
        #[arg(long)]
        bridge: bool,
    },
    /// Remove a lab by id, or every lab (also after a crash).
    Down { id: Option<String> },
    /// List the labs that are up.
    Status,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::all(),
        Cmd::BuildEbpf => {
            setup::ebpf_toolchain()?;
            build_ebpf()
        }
        Cmd::BuildPrevious => {
            setup::ebpf_toolchain()?;
            previous::build().map(drop)
        }
        Cmd::Test {
            filter,
            no_kernels,
            kernels,
        } => {
            let matrix = kernels || (filter.is_none() && !no_kernels);
            test(filter)?;
            if matrix {
                kernels::run(&kernels::Opts {
                    only: None,
                    smoke_only: false,
                })?;
            }
            Ok(())
        }
        Cmd::Kernels { only, smoke_only } => {
            setup::all()?;
            build_ebpf()?;
            kernels::run(&kernels::Opts { only, smoke_only })
        }
        Cmd::Demo { keep } => demo::run(keep),
        Cmd::Bench {
            rounds,
            secs,
            out_dir,
        } => bench::run(&bench::Opts {
            rounds,
            secs,
            out_dir: out_dir.unwrap_or_else(root),
        }),
        Cmd::Fuzz(opts) => fuzz::run(&opts),
        Cmd::Lab { action } => lab(action),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Child cargos must not inherit the toolchain choice of `cargo xtask`'s own cargo.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .arg(format!("+{}", setup::NIGHTLY));
    c
}

const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_RUSTFLAGS: &str = "-C debuginfo=2 -C link-arg=--btf";

/// `cargo +<pinned nightly> <subcommand>` of the eBPF crate for the bpf target, with BTF.
fn bpf_cargo(subcommand: &str) -> Command {
    let mut c = nightly_cargo();
    c.env(
        "CARGO_ENCODED_RUSTFLAGS",
        BPF_RUSTFLAGS.replace(' ', "\x1f"),
    )
    .args([subcommand, "-p", "egress-ebpf", "--target", BPF_TARGET])
    .args(["-Z", "build-std=core", "--release"]);
    c
}

fn build_ebpf() -> Result<()> {
    sh(&mut bpf_cargo("build"))?;
    let obj = root()
        .join("target")
        .join(BPF_TARGET)
        .join("release/egress");
    println!("xtask: eBPF object at {}", obj.display());
    stack::check(&obj)
}

fn test(filter: Option<String>) -> Result<()> {
    setup::all()?;
    build_ebpf()?;
    println!("xtask: cargo fmt --check");
    sh(nightly_cargo().args(["fmt", "--all", "--check"]))?;
    println!("xtask: clippy (userspace)");
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    println!("xtask: clippy (bpf target)");
    sh(bpf_cargo("clippy").args(["--", "-D", "warnings"]))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "xtask: not root: the packet and lab tests need root (CAP_BPF, CAP_NET_ADMIN) and \
             will fail. Run `sudo -E cargo xtask test`."
        );
    }
    // The upgrade test starts agents of the previous release.
    let previous = previous::build()?;
    println!("xtask: unit, packet and lab tests");
    let mut c = cargo();
    c.args(["test", "--workspace", "--exclude", "egress-ebpf"])
        .env(egress_tests::previous::DIR_ENV, previous);
    if let Some(f) = filter {
        c.args(["--", &f]);
    }
    sh(&mut c)
}

fn lab(action: LabCmd) -> Result<()> {
    use egress_tests::lab;
    match action {
        LabCmd::Up { bridge } => {
            setup::debian_packages()?;
            let l = lab::Lab::up(&lab::LabSpec {
                cni: if bridge {
                    lab::Cni::Bridge
                } else {
                    lab::Cni::Routed
                },
                ..lab::LabSpec::default()
            })?;
            print!("{}", l.describe());
            println!("\nTear it down with: cargo xtask lab down {}", l.id());
            l.keep();
        }
        LabCmd::Down { id } => {
            let removed = lab::down(id.as_deref())?;
            if removed.is_empty() {
                println!("no lab namespaces found");
            }
            for ns in removed {
                println!("removed {ns}");
            }
        }
        LabCmd::Status => print!("{}", lab::status()?),
    }
    Ok(())
}
