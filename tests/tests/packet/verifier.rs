//! The verifier's budget: Debian 6.1's verifier explores more states than this kernel's for
//! the same program and stops at a million instructions (E2BIG). `egw_from_pod` verified in
//! 603k instructions here passed there (session 6); in session 7 it failed there at 656k
//! here, and also at 614k and 535k (so the count here is not the whole story: see the
//! session 7 note), which the kernel matrix shows only after a 20-minute timeout. This
//! checks the count on the host kernel in a second: a program past 640k here is certainly
//! too much for 6.1.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names;
use egress_tests::packet::*;

/// Verified instructions on a 6.6+ kernel above which 6.1 is known to refuse a program.
const LIMIT: u32 = 640_000;

/// The kernel the counts were taken on (6.18) or a newer one: older verifiers count
/// differently (6.12's counts are higher), and the matrix's own load is the test there.
fn counts_comparable() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 18)
}

#[test]
fn every_program_verifies_with_room_for_debian_6_1() {
    if !counts_comparable() {
        eprintln!("verifier counts taken on 6.18: not compared on this kernel");
        return;
    }
    let dp = datapath(GATEWAY);
    for name in program_names::ALL {
        let info = dp.program(name).expect("program").info().expect("info");
        // Kernels before 5.16 do not report the count: nothing to check there.
        let Some(n) = info.verified_instruction_count() else {
            continue;
        };
        assert!(
            n <= LIMIT,
            "{name}: {n} verified instructions here; Debian 6.1's verifier gives up on \
             programs above {LIMIT} here (its limit is 1,000,000 of its own, less pruned)"
        );
    }
}
