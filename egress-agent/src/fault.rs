//! Fault injection for tests: `EGRESS_TEST_CRASH_AFTER=<step>` makes the agent kill itself
//! (SIGKILL: no clean-up of any kind, as in a crash or an OOM kill) right after the start-up
//! step `<step>`, so a test can check that the next start repairs whatever that step left
//! half-done. Unset (as in every deployment), `step` costs one environment lookup per start.
//!
//! The steps, in start-up order (see `STEPS`):
//! - `migrate-moved`: pinned maps that change shape moved to `<name>@old`, nothing loaded;
//! - `loaded`: the object loaded and its maps pinned, entries not yet copied into migrated
//!   maps, nothing attached;
//! - `migrated`: entries copied, the old maps' pins not yet removed;
//! - `config`: the node configuration written (not yet marked ready);
//! - `tunnel`: `egw_from_tunnel` attached to the tunnel device;
//! - `wire`: `egw_from_wire`/`egw_to_wire` attached to the underlay and uplink;
//! - `pods`: the pod interfaces attached;
//! - `ready`: the configuration marked ready (`CFG_F_READY`);
//! - `swept`: attachments and pins of ours that are no longer wanted removed.

use std::sync::OnceLock;

/// The environment variable naming the step after which the agent kills itself.
pub const CRASH_AFTER_ENV: &str = "EGRESS_TEST_CRASH_AFTER";

/// Every step, in the order a first start passes them.
pub const STEPS: [&str; 9] = [
    "migrate-moved",
    "loaded",
    "migrated",
    "config",
    "tunnel",
    "wire",
    "pods",
    "ready",
    "swept",
];

/// Marks the end of start-up step `name`: with `EGRESS_TEST_CRASH_AFTER=<name>`, the process
/// dies here by SIGKILL.
pub fn step(name: &'static str) {
    debug_assert!(STEPS.contains(&name), "unknown step {name}");
    static WANT: OnceLock<Option<String>> = OnceLock::new();
    let want = WANT.get_or_init(|| std::env::var(CRASH_AFTER_ENV).ok());
    if want.as_deref() == Some(name) {
        eprintln!("{CRASH_AFTER_ENV}={name}: killing myself after step {name}");
        // SAFETY: plain syscalls; SIGKILL cannot be caught, so nothing runs after it.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
