//! Attaching the programs to tc and detaching them, in one of two modes chosen at load time
//! by probing the kernel (`TcMode::detect`), never by its version number:
//!
//! - **TCX** (kernel >= 6.6): a TCX link per program and interface, pinned under
//!   `<pin_root>/links/<program>@<interface>`; a restarted agent atomically replaces the
//!   program behind the pinned link.
//! - **Legacy** (below 6.6, or `EGRESS_FORCE_LEGACY_TC=1`): the `clsact` qdisc and a cls_bpf
//!   filter in direct-action mode, at our own fixed priority (`LEGACY_PRIORITY`) and a fixed
//!   handle per program (`legacy_handle`). A filter is no bpf link and cannot be pinned: it
//!   outlives the agent on its own, and a restarted agent replaces the program of the filter
//!   at that priority and handle in place (RTM_NEWTFILTER without NLM_F_CREATE), so a restart
//!   never stacks a second copy and never touches other filters.
//!
//! In both modes what our programs leave alone returns `TC_ACT_UNSPEC`: TCX_NEXT for TCX
//! links, "continue with the next filter" for cls_bpf in direct-action mode, so the programs
//! and filters of others on the same hook still see it.

use std::{
    fmt, fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
};
use egress_common::program_names;

use super::{Datapath, DatapathError};

/// The test and debug knob that makes the agent attach with legacy tc filters even where the
/// kernel has TCX (`EGRESS_FORCE_LEGACY_TC=1`).
pub const FORCE_LEGACY_ENV: &str = "EGRESS_FORCE_LEGACY_TC";

/// The priority of our cls_bpf filters (lower runs first). 1: the first of the hook, as a
/// TCX link runs before every legacy filter, so the two modes see the same traffic.
pub const LEGACY_PRIORITY: u16 = 1;

/// The major half of our filters' handles: it marks them as ours in `tc filter show`.
const LEGACY_HANDLE_MAJOR: u16 = 0xe9e9;

/// How the programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// TCX links (kernel >= 6.6).
    Tcx,
    /// The clsact qdisc and cls_bpf filters in direct-action mode (netlink).
    Legacy,
}

impl TcMode {
    /// A short name for logs and metrics: `tcx` or `legacy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Legacy => "legacy",
        }
    }
}

impl fmt::Display for TcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcMode::Tcx => "TCX links",
            TcMode::Legacy => "legacy clsact/cls_bpf filters",
        })
    }
}

/// Why a mode was chosen (for the log).
#[derive(Debug)]
pub struct TcProbe {
    pub mode: TcMode,
    pub why: String,
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;

impl TcMode {
    /// Probes the kernel for TCX with the loaded tc program `prog`: BPF_LINK_CREATE for
    /// BPF_TCX_INGRESS on interface index 0, which no interface has. A kernel with TCX looks
    /// for the device and answers ENODEV; one without it does not know the attach type and
    /// answers EINVAL. Nothing is attached either way. `EGRESS_FORCE_LEGACY_TC=1` forces
    /// the legacy mode.
    pub fn detect(prog: &SchedClassifier) -> TcProbe {
        if std::env::var(FORCE_LEGACY_ENV).is_ok_and(|v| v == "1") {
            return TcProbe {
                mode: TcMode::Legacy,
                why: format!("forced by {FORCE_LEGACY_ENV}=1"),
            };
        }
        let fd = match prog.fd() {
            Ok(fd) => fd.as_fd().as_raw_fd(),
            Err(e) => {
                return TcProbe {
                    mode: TcMode::Legacy,
                    why: format!("no program to probe TCX with ({e})"),
                }
            }
        };
        // `union bpf_attr` for BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type, flags.
        let mut attr = [0u32; 16];
        attr[0] = fd as u32;
        attr[1] = 0;
        attr[2] = BPF_TCX_INGRESS;
        // SAFETY: the attribute buffer is valid for its size and holds no pointers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                attr.as_mut_ptr(),
                size_of_val(&attr) as libc::c_uint,
            )
        };
        let err = io::Error::last_os_error();
        if rc >= 0 {
            // Cannot happen (no interface 0); never leak a link.
            // SAFETY: a new fd that nothing else owns.
            unsafe { libc::close(rc as i32) };
            return TcProbe {
                mode: TcMode::Tcx,
                why: "BPF_LINK_CREATE for BPF_TCX_INGRESS succeeded".into(),
            };
        }
        match err.raw_os_error() {
            Some(libc::ENODEV) => TcProbe {
                mode: TcMode::Tcx,
                why: "the kernel knows BPF_TCX_INGRESS links".into(),
            },
            Some(libc::EINVAL) => TcProbe {
                mode: TcMode::Legacy,
                why: "the kernel has no TCX links (BPF_LINK_CREATE for BPF_TCX_INGRESS: EINVAL)"
                    .into(),
            },
            _ => TcProbe {
                mode: TcMode::Legacy,
                why: format!("probing TCX links failed ({err}); trying legacy tc filters"),
            },
        }
    }
}

/// The tc hook of `program`: tc egress or ingress. The one place that maps a program to its
/// direction (the programs themselves are listed in `egress_common::program_names`).
pub fn direction(program: &str) -> TcAttachType {
    if program_names::is_egress(program) {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

/// The handle of `program`'s legacy filter: `0xe9e9:<FNV-1a of its name, folded to 16
/// bits>`. Derived from the name alone, so an upgrade that adds or reorders programs keeps
/// every handle, and a restart finds its filters again.
pub fn legacy_handle(program: &str) -> TcHandle {
    let mut h: u32 = 0x811c_9dc5;
    for b in program.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    TcHandle::new(LEGACY_HANDLE_MAJOR, ((h >> 16) ^ h) as u16)
}

/// True when `e` is a netlink error with errno `code`.
fn netlink_errno(e: &ProgramError, code: i32) -> bool {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) => n.raw_os_error() == Some(code),
        ProgramError::NetlinkError(n) => n.raw_os_error() == Some(code),
        _ => false,
    }
}

impl Datapath {
    /// How the programs are attached on this kernel.
    pub fn tc_mode(&self) -> TcMode {
        self.tc_mode
    }

    fn link_path(&self, program: &str, ifname: &str) -> Option<PathBuf> {
        self.pin_root
            .as_ref()
            .map(|r| r.join("links").join(format!("{program}@{ifname}")))
    }

    fn classifier(&mut self, program: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(program)
            .ok_or(DatapathError::Program {
                name: program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: program,
                source,
            })
    }

    /// Attaches `program` to its tc hook (`direction`) on `ifname`, in this kernel's mode.
    /// Attaching again replaces the program in place (an upgrade); there is never more than
    /// one attachment of a program on an interface, also across a change of mode.
    pub fn attach(&mut self, program: &'static str, ifname: &str) -> Result<(), DatapathError> {
        match self.tc_mode {
            TcMode::Tcx => {
                // A legacy filter of ours from a run in legacy mode would run the program twice.
                remove_legacy_filter(program, ifname);
                self.attach_tcx(program, ifname)
            }
            TcMode::Legacy => {
                // Likewise a TCX link from a run in TCX mode: unpinning releases it.
                if let Some(p) = self.link_path(program, ifname) {
                    let _ = fs::remove_file(p);
                }
                self.attach_legacy(program, ifname)
            }
        }
    }

    /// The legacy attach: the clsact qdisc (kept when it is there), then our filter at
    /// `LEGACY_PRIORITY` and `legacy_handle(program)`: replaced in place when it exists,
    /// created otherwise.
    fn attach_legacy(&mut self, program: &'static str, ifname: &str) -> Result<(), DatapathError> {
        let direction = direction(program);
        let err = |source| DatapathError::Attach {
            program,
            ifname: ifname.to_owned(),
            mode: TcMode::Legacy,
            source,
        };
        match qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(err(e.into())),
        }
        let handle = legacy_handle(program);
        let ours = SchedClassifierLink::attached(ifname, direction, LEGACY_PRIORITY, handle, None)
            .map_err(|e| err(TcError::IoError(e).into()))?;
        let prog = self.classifier(program)?;
        let id = match prog.attach_to_link(ours) {
            Ok(id) => id,
            // No filter of ours there yet (ENOENT: no such priority, or no such handle).
            Err(e) if netlink_errno(&e, libc::ENOENT) => prog
                .attach_with_options(
                    ifname,
                    direction,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: LEGACY_PRIORITY,
                        handle,
                        classid: None,
                    }),
                )
                .map_err(err)?,
            Err(e) => return Err(err(e)),
        };
        // The filter outlives this process (as a pinned link does): aya would delete it when
        // the link is dropped, so the link is forgotten. It holds no file descriptor.
        let link = prog.take_link(id).map_err(err)?;
        std::mem::forget(link);
        Ok(())
    }

    /// The TCX attach: with a pin root the link is pinned; an existing pinned link is reused,
    /// its program atomically replaced.
    fn attach_tcx(&mut self, program: &'static str, ifname: &str) -> Result<(), DatapathError> {
        let path = self.link_path(program, ifname);
        let direction = direction(program);
        let perr = |source| DatapathError::Attach {
            program,
            ifname: ifname.to_owned(),
            mode: TcMode::Tcx,
            source,
        };
        let prog = self.classifier(program)?;
        let existing = match &path {
            Some(p) if p.exists() => match PinnedLink::from_pin(p) {
                Ok(l) => Some(l),
                // A stale pin (its interface is gone): replace it.
                Err(_) => {
                    let _ = fs::remove_file(p);
                    None
                }
            },
            _ => None,
        };
        let id = match existing {
            Some(pinned) => {
                let link: SchedClassifierLink =
                    FdLink::from(pinned)
                        .try_into()
                        .map_err(|source| DatapathError::Link {
                            path: path.clone().unwrap_or_default(),
                            source,
                        })?;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    Err(_) => {
                        // The link is defunct (interface re-created): attach afresh.
                        if let Some(p) = &path {
                            let _ = fs::remove_file(p);
                        }
                        prog.attach_with_options(
                            ifname,
                            direction,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(perr)?
                    }
                }
            }
            None => prog
                .attach_with_options(
                    ifname,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(perr)?,
        };
        if let Some(p) = path {
            let link = prog.take_link(id).map_err(perr)?;
            let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
                path: p.clone(),
                source,
            })?;
            if p.exists() {
                // Already pinned (replaced in place); dropping our fd keeps the pin.
                drop(fd_link);
            } else {
                let dir = p.parent().expect("link path has a parent");
                fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                    path: dir.to_owned(),
                    source,
                })?;
                fd_link
                    .pin(&p)
                    .map_err(|source| DatapathError::Pin { path: p, source })?;
            }
        }
        Ok(())
    }

    /// Removes every attachment of ours that is not in `wanted` (program, interface): pinned
    /// TCX links under `<pin_root>/links/` (an interface that is gone, or no longer ours),
    /// and legacy filters of ours (our priority, a program's handle) on every interface of
    /// this network namespace. Returns (program, interface, what) of each one removed.
    pub fn sweep(
        &mut self,
        wanted: &std::collections::BTreeSet<(&'static str, String)>,
    ) -> Vec<(String, String, &'static str)> {
        let mut removed = Vec::new();
        let is_wanted =
            |program: &str, ifname: &str| wanted.iter().any(|(p, i)| *p == program && i == ifname);
        if let Some(dir) = self.pin_root.as_ref().map(|r| r.join("links")) {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                // Also a program an older build had and this one lacks.
                let Some((program, ifname)) = file.split_once('@') else {
                    continue;
                };
                if !is_wanted(program, ifname) && fs::remove_file(entry.path()).is_ok() {
                    removed.push((program.to_owned(), ifname.to_owned(), "pinned link"));
                }
            }
        }
        for ifname in interface_names() {
            for program in program_names::ALL {
                if !is_wanted(program, &ifname) && remove_legacy_filter(program, &ifname) {
                    removed.push((program.to_owned(), ifname.clone(), "legacy filter"));
                }
            }
        }
        removed
    }

    /// Detaches `program` from `ifname`: removes its pinned TCX link and its legacy filter
    /// (ours only: our priority and handle), whichever is there.
    pub fn detach(&mut self, program: &str, ifname: &str) {
        if let Some(p) = self.link_path(program, ifname) {
            let _ = fs::remove_file(p);
        }
        remove_legacy_filter(program, ifname);
    }
}

/// Deletes our legacy filter of `program` on `ifname` (by our priority and its handle: never
/// another filter). Returns whether one was there.
pub fn remove_legacy_filter(program: &str, ifname: &str) -> bool {
    let Ok(link) = SchedClassifierLink::attached(
        ifname,
        direction(program),
        LEGACY_PRIORITY,
        legacy_handle(program),
        None,
    ) else {
        return false;
    };
    use aya::programs::links::Link as _;
    link.detach().is_ok()
}

/// The names of this network namespace's interfaces.
fn interface_names() -> Vec<String> {
    // SAFETY: if_nameindex returns a heap array ending with a zero entry, or null.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Vec::new();
    }
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: within the array, up to and including its zero entry.
        let e = unsafe { &*list.add(i) };
        if e.if_index == 0 || e.if_name.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated name owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(e.if_name) };
        names.push(name.to_string_lossy().into_owned());
        i += 1;
    }
    // SAFETY: the array if_nameindex returned, freed once.
    unsafe { libc::if_freenameindex(list) };
    names
}

/// Deletes every legacy filter of ours (our priority and a program's handle) on every
/// interface of this network namespace (`egress-agent cleanup`: pinned TCX links go with the
/// pin root, filters do not). Returns `(interface, program)` of each one removed.
pub fn remove_all_legacy_filters() -> Vec<(String, &'static str)> {
    let mut removed = Vec::new();
    for ifname in interface_names() {
        for program in program_names::ALL {
            if remove_legacy_filter(program, &ifname) {
                removed.push((ifname.clone(), program));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_has_its_own_legacy_handle_stable_across_versions() {
        let handles: std::collections::BTreeSet<u32> = program_names::ALL
            .iter()
            .map(|p| u32::from(legacy_handle(p)))
            .collect();
        assert_eq!(handles.len(), program_names::ALL.len(), "{handles:x?}");
        assert!(handles.iter().all(|h| h >> 16 == 0xe9e9));
        // The handle is part of the node's state across upgrades (a restarted agent finds its
        // filters by it): it must never change.
        assert_eq!(u32::from(legacy_handle("egw_from_pod")), 0xe9e9_7f1e);
        assert_eq!(u32::from(legacy_handle("egw_from_tunnel")), 0xe9e9_179f);
        assert_eq!(u32::from(legacy_handle("egw_from_wire")), 0xe9e9_63de);
        assert_eq!(u32::from(legacy_handle("egw_to_wire")), 0xe9e9_7f84);
    }

    #[test]
    fn directions() {
        assert_eq!(direction(program_names::TO_WIRE), TcAttachType::Egress);
        assert_eq!(direction(program_names::FROM_POD), TcAttachType::Ingress);
    }
}
