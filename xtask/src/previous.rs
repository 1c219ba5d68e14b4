//! `cargo xtask build-previous`: the previous release (`egress_tests::previous::COMMIT`, and
//! why that commit) built for the upgrade test, into `<target>/previous/<commit>/`: its agent
//! binary, with its own eBPF object embedded, and that object.
//!
//! The commit's tree is taken with `git archive` into `<target>/previous/<commit>/src` (a
//! plain copy: no worktree registered in the repository, nothing for other checkouts to see)
//! and built in the *same* target directory as the current tree, with the same profiles and
//! flags, so whatever both trees share and is built already is reused: the registry crates of
//! the agent and `core` for the bpf target. Only the old tree's own crates compile. Two things
//! keep them apart from the current ones, and nothing else in the old tree is touched:
//!
//! - Cargo names a workspace crate's artifacts after its name, version and path *relative to
//!   the workspace root*, the same in both trees: the old `egress-common` would take (and
//!   with the archive's older mtimes, be taken for) the current one. So the old workspace's
//!   version becomes `0.1.0+<commit>` (its manifest and its lock file).
//! - Cargo copies a binary to `<target>/<profile>/<name>`: the old manifests name theirs
//!   `egress-previous` and `egress-agent-previous`, so `target/debug/egress-agent` and
//!   `target/bpfel-unknown-none/release/egress` stay the current build's.
//!
//! Cached by commit: once the agent and the object are in the directory, a second call
//! returns at once.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use egress_tests::previous::{dir_in, AGENT_FILE, COMMIT, OBJECT_FILE};

use crate::{bpf_cargo, cargo, root, BPF_TARGET};

const OLD_EBPF_BIN: &str = "egress-previous";
const OLD_AGENT_BIN: &str = "egress-agent-previous";
/// The old workspace's packages (all of version 0.1.0 there).
const WORKSPACE_PACKAGES: [&str; 5] = [
    "egress-agent",
    "egress-common",
    "egress-ebpf",
    "egress-tests",
    "xtask",
];

/// The target directory cargo builds into: `CARGO_TARGET_DIR` (relative to the workspace
/// root, as the child cargos run there), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// Builds the previous release unless it is there; returns its directory.
pub fn build() -> Result<PathBuf> {
    let target = target_dir();
    let dir = dir_in(&target);
    let short = &COMMIT[..7];
    if dir.join(AGENT_FILE).exists() && dir.join(OBJECT_FILE).exists() {
        println!(
            "xtask: previous release {short} already built in {}",
            dir.display()
        );
        return Ok(dir);
    }
    let start = Instant::now();
    let src = dir.join("src");
    extract(&src)?;
    distinguish(&src)?;

    println!("xtask: previous release {short}: eBPF object");
    let mut ebpf = bpf_cargo("build");
    ebpf.env("CARGO_TARGET_DIR", &target);
    run_in(&src, &mut ebpf)?;
    let object = target.join(BPF_TARGET).join("release").join(OLD_EBPF_BIN);

    println!("xtask: previous release {short}: agent");
    let mut agent = cargo();
    agent
        .args([
            "build",
            "--locked",
            "-p",
            "egress-agent",
            "--bin",
            OLD_AGENT_BIN,
        ])
        .env("CARGO_TARGET_DIR", &target)
        // The old build script embeds this object instead of `<target>/.../egress`.
        .env("EGRESS_EBPF_OBJECT", &object);
    run_in(&src, &mut agent)?;

    // The object first: the agent's presence says both are there.
    copy(&object, &dir.join(OBJECT_FILE))?;
    copy(
        &target.join("debug").join(OLD_AGENT_BIN),
        &dir.join(AGENT_FILE),
    )?;
    println!(
        "xtask: previous release {short} built in {:.0} s: {}",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// `git archive` of the commit, unpacked into `src` (replacing what an interrupted run left).
fn extract(src: &Path) -> Result<()> {
    let known = Command::new("git")
        .args(["cat-file", "-e", &format!("{COMMIT}^{{commit}}")])
        .current_dir(root())
        .stderr(Stdio::null())
        .status()
        .context("running git")?;
    if !known.success() {
        bail!(
            "commit {COMMIT} (the previous release) is not in this clone (a shallow one?): \
             `git fetch --unshallow` or fetch that commit, then run again"
        );
    }
    if src.exists() {
        fs::remove_dir_all(src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(src).with_context(|| format!("creating {}", src.display()))?;
    let mut git = Command::new("git")
        .args(["archive", "--format=tar", COMMIT])
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(src)
        .stdin(git.stdout.take().expect("piped"))
        .status()
        .context("running tar")?;
    let git = git.wait().context("git archive")?;
    if !git.success() || !tar.success() {
        bail!("git archive {COMMIT} | tar -x -C {}: failed", src.display());
    }
    Ok(())
}

/// Gives the old tree's packages a version of their own and renames its two binaries (see
/// the module documentation).
fn distinguish(src: &Path) -> Result<()> {
    let version = format!("0.1.0+{}", &COMMIT[..7]);
    edit(&src.join("Cargo.toml"), |t| {
        let from = "\n[workspace.package]\n";
        let at = t.find(from)? + from.len();
        let line = "version = \"0.1.0\"\n";
        let v = at + t[at..].find(line)?;
        Some(format!(
            "{}version = \"{version}\"\n{}",
            &t[..v],
            &t[v + line.len()..]
        ))
    })?;
    edit(&src.join("Cargo.lock"), |t| {
        let mut t = t.to_owned();
        for name in WORKSPACE_PACKAGES {
            let from = format!("name = \"{name}\"\nversion = \"0.1.0\"\n");
            if !t.contains(&from) {
                return None;
            }
            t = t.replacen(
                &from,
                &format!("name = \"{name}\"\nversion = \"{version}\"\n"),
                1,
            );
        }
        Some(t)
    })?;
    edit(&src.join("egress-ebpf/Cargo.toml"), |t| {
        let from = "[[bin]]\nname = \"egress\"\n";
        t.contains(from)
            .then(|| t.replacen(from, &format!("[[bin]]\nname = \"{OLD_EBPF_BIN}\"\n"), 1))
    })?;
    edit(&src.join("egress-agent/Cargo.toml"), |t| {
        (t.starts_with("[package]\n") && !t.contains("[[bin]]")).then(|| {
            t.replacen("[package]\n", "[package]\nautobins = false\n", 1)
                + &format!("\n[[bin]]\nname = \"{OLD_AGENT_BIN}\"\npath = \"src/main.rs\"\n")
        })
    })
}

/// Rewrites `path` with `f` (`None`: the file does not have the shape `f` expects).
fn edit(path: &Path, f: impl FnOnce(&str) -> Option<String>) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(new) = f(&text) else {
        bail!("{}: not the manifest this task expects", path.display());
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn run_in(dir: &Path, cmd: &mut Command) -> Result<()> {
    cmd.current_dir(dir);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} in {} failed ({status})", dir.display());
    }
    Ok(())
}

/// Copies `from` to `to` through a temporary file (never a half-written `to`).
fn copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))
}
