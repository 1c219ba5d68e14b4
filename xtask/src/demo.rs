//! `cargo xtask demo`: the problem and its fix, in a lab, with real mail and real SPF.
//!
//! Sets up what it needs (toolchain, Debian packages), builds the eBPF object and the agent,
//! then runs `egress_tests::demo::run` (the same flow `tests/tests/demo.rs` asserts on).

use std::io::Write as _;

use anyhow::{bail, Result};

use crate::{build_ebpf, cargo, setup, sh};

pub fn run(keep: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo builds network namespaces and loads eBPF programs: run it as root \
             (sudo -E cargo xtask demo)"
        );
    }
    setup::all()?;
    build_ebpf()?;
    println!("xtask: building egress-agent");
    sh(cargo().args(["build", "-p", "egress-agent"]))?;
    println!();
    let mut out = std::io::stdout().lock();
    let outcome = egress_tests::demo::run(&mut out, keep)?;
    out.flush()?;
    let fixed = outcome.rows.iter().all(|r| {
        if r.mail {
            r.after.spf == "pass"
        } else {
            r.after.from_ip == r.node_ip
        }
    });
    if !fixed || !outcome.spf_check_ok {
        bail!("the demo did not show the fix (see above)");
    }
    Ok(())
}
