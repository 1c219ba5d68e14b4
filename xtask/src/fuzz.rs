//! `cargo xtask fuzz`: the datapath fuzzer (`tests/tests/fuzz/`) for longer than the test run
//! runs it (100,000 packets per program, a fixed seed), with a random seed or a given one.
//! A failure prints the seed and each failing packet; run the same seed again to reproduce
//! it (the packets depend only on the seed).

use std::io::Read as _;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{build_ebpf, cargo, setup, sh};

#[derive(Args)]
pub struct Opts {
    /// The seed (decimal or 0x hex); random when not given.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Packets per program.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Fail on the known holes too (each an ignored packet test in tests/packet/fuzz_found.rs).
    #[arg(long)]
    strict: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

fn random_seed() -> Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for a seed")?;
    Ok(u64::from_ne_bytes(b))
}

pub fn run(o: &Opts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzzer loads eBPF programs: run it as root (sudo -E cargo xtask fuzz)");
    }
    let seed = match o.seed {
        Some(s) => s,
        None => random_seed()?,
    };
    setup::ebpf_toolchain()?;
    build_ebpf()?;
    println!(
        "xtask: fuzz with seed {seed:#x}, {} packets per program (again: cargo xtask fuzz \
         --seed {seed:#x} --packets {})",
        o.packets, o.packets
    );
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "egress-tests",
        "--test",
        "fuzz",
        "--",
        "--nocapture",
    ])
    .env("EGRESS_FUZZ_SEED", format!("{seed:#x}"))
    .env("EGRESS_FUZZ_PACKETS", o.packets.to_string());
    if o.strict {
        c.env("EGRESS_FUZZ_STRICT", "1");
    }
    sh(&mut c)
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("x").is_err());
    }
}
