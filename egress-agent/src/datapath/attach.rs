//! Attaching the programs to tc ingress (TCX links, pinned under `<pin_root>/links/`) and
//! detaching them.

use std::{fs, path::PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
};
use egress_common::program_names;

use super::{Datapath, DatapathError};

impl Datapath {
    fn link_path(&self, program: &str, ifname: &str) -> Option<PathBuf> {
        self.pin_root
            .as_ref()
            .map(|r| r.join("links").join(format!("{program}@{ifname}")))
    }

    /// Attaches `program` to tc ingress of `ifname` (`egw_to_wire`, `egw_to_pod`: egress) with a TCX link.
    /// With a pin root the link is pinned; an existing pinned link is reused, its program
    /// atomically replaced.
    pub fn attach(&mut self, program: &'static str, ifname: &str) -> Result<(), DatapathError> {
        let path = self.link_path(program, ifname);
        let direction = if program_names::is_egress(program) {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Program {
                name: program,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: program,
                source,
            })?;
        let perr = |source| DatapathError::Program {
            name: program,
            source,
        };
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

    /// Detaches `program` from `ifname` (removes its pinned link).
    pub fn detach(&mut self, program: &str, ifname: &str) {
        if let Some(p) = self.link_path(program, ifname) {
            let _ = fs::remove_file(p);
        }
    }
}
