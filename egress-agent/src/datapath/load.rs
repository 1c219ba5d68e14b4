//! Loading the object (map sizes, pinned maps reused) and opening pinned maps from outside
//! the agent (`inspect`, metrics, `spf`).

use std::{
    fs, io,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, MapError},
    programs::{ProgramError, SchedClassifier},
    EbpfLoader,
};
use egress_common::{map_names, program_names};
use thiserror::Error;

use super::{pinned, Datapath, DatapathError, MapSizes, TcMode};

/// The eBPF object, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress.bpf.o"));

/// A test and debug knob: the agent loads the eBPF object from this file instead of the one
/// embedded at build time (a test forces a load failure with it).
pub const OBJECT_FILE_ENV: &str = "EGRESS_EBPF_OBJECT_FILE";

/// The running kernel's release (`uname -r`), for log lines about what it lacks.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/egress-gateway";

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A pinned map that could not be opened.
#[derive(Debug, Error)]
#[error("opening {} (is the agent running with this --pin-root?)", path.display())]
pub struct OpenPinnedError {
    pub path: PathBuf,
    #[source]
    pub source: MapError,
}

/// Opens the map `name` pinned under `pin_root` (`<pin_root>/maps/<name>`).
pub fn open_pinned_map(pin_root: &Path, name: &str) -> Result<Map, OpenPinnedError> {
    let path = pin_root.join("maps").join(name);
    match MapData::from_pin(&path).and_then(Map::from_map_data) {
        Ok(map) => Ok(map),
        Err(source) => Err(OpenPinnedError { path, source }),
    }
}

/// Mounts a bpffs at `dir` unless one is there already (`ip netns exec` hides /sys/fs/bpf).
pub fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let err = |source| DatapathError::PinDir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let mut probe = dir.to_owned();
    // The pin root itself may be a subdirectory of a bpffs mount.
    loop {
        if is_bpffs(&probe).map_err(err)? {
            return Ok(());
        }
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: valid NUL-terminated strings; mount(2) has no other memory requirements.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

impl Datapath {
    /// Prepares the loader: map sizes and, with a pin root, every map pinned (or reused)
    /// under `<pin_root>/maps/`.
    fn loader<'a>(sizes: &MapSizes, maps_dir: Option<&'a Path>) -> EbpfLoader<'a> {
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            if let Some(n) = sizes.of_map(name) {
                loader.map_max_entries(name, n);
            }
        }
        if let Some(dir) = maps_dir {
            for name in map_names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        loader
    }

    /// Loads the object and its programs into the kernel, without attaching them. With a pin
    /// root, the maps are pinned there, and maps already pinned there are reused.
    pub fn load(sizes: &MapSizes, pin_root: Option<&Path>) -> Result<Datapath, DatapathError> {
        let from_file = match std::env::var_os(OBJECT_FILE_ENV) {
            Some(path) => {
                let path = PathBuf::from(path);
                Some(fs::read(&path).map_err(|source| DatapathError::ObjectFile { path, source })?)
            }
            None => None,
        };
        let object = from_file.as_deref().unwrap_or(OBJECT);
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let maps_dir = match pin_root {
            Some(root) => {
                ensure_bpffs(root)?;
                let dir = root.join("maps");
                fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir)
            }
            None => None,
        };
        // Pinned maps of another shape are migrated or replaced, never reused as they are.
        let migrations = match &maps_dir {
            Some(dir) => pinned::prepare(dir, &pinned::expected_shapes(object, sizes)?)?,
            None => Vec::new(),
        };
        let mut ebpf = Self::loader(sizes, maps_dir.as_deref()).load(object)?;
        for name in program_names::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        // What the verifier does not check: the tunnel key's size is accepted at run time.
        super::probe::tunnel_key().map_err(DatapathError::Kernel)?;
        crate::fault::step("loaded");
        if let Some(dir) = &maps_dir {
            pinned::finish(migrations, |name| {
                let path = dir.join(name);
                pinned::pinned_shape(&path)
                    .map_err(|source| DatapathError::PinDir {
                        path: path.clone(),
                        source,
                    })?
                    .ok_or(DatapathError::MissingMap(name))
            })?;
        }
        let probe = {
            let name = program_names::ALL[0];
            let prog: &SchedClassifier = ebpf
                .program(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            TcMode::detect(prog)
        };
        Ok(Datapath {
            ebpf,
            pin_root: pin_root.map(Path::to_owned),
            tc_mode: probe.mode,
            tc_probe: probe.why,
        })
    }

    /// Why the attach mode was chosen (for the log).
    pub fn tc_probe(&self) -> &str {
        &self.tc_probe
    }

    /// The file descriptor of the map `name` (for tools and tests that work on maps as
    /// bytes: the packet tests empty every map between tests that share one load).
    pub fn map_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, DatapathError> {
        let data = match self.map(name)? {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::LpmTrie(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d)
            | Map::PerCpuLruHashMap(d) => d,
            _ => return Err(DatapathError::MissingMap(name)),
        };
        Ok(data.fd().as_fd())
    }

    /// A loaded program (for `BPF_PROG_TEST_RUN` in tests).
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }
}
