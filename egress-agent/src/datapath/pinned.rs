//! Pinned maps checked before the loader reuses them (issue 14 point 4).
//!
//! aya reuses a map pinned at a `map_pin_path` by its path alone, whatever its shape: a
//! pinned map of an older build whose value has grown would be handed to programs and to the
//! agent's typed accessors that assume the new size (the kernel copies `value_size` bytes, the
//! reader expects another number), and a `mapSizes` change would be silently ignored. So
//! before loading, every pinned map's shape (type, key size, value size, max entries, flags:
//! `BPF_OBJ_GET_INFO_BY_FD`) is compared with what this object and `MapSizes` create:
//!
//! - the same shape: reused (state survives the restart);
//! - only `max_entries` differs (a `mapSizes` change, a counter array grown by a new drop
//!   reason), or a hash became an LRU hash or the other way round: **migrated**: the pin moves to `<name>@old` (pinned there, then unlinked: bpffs
//!   has no rename and refuses names with a dot), the loader creates and pins the new map,
//!   the entries are copied (as many as fit: a table shrunk below its contents loses the
//!   rest, counted in the log line), and the `@old` pin is removed;
//! - anything else (type, key or value size, flags): **replaced**: the pin is removed and the
//!   loader creates a new, empty map. Its entries are lost (flows in it are reset); the log
//!   line names the map and what changed.
//!
//! Crash safety: a start killed after moving the pin finds `<name>@old` without `<name>` and
//! moves it back (one killed between pinning and unlinking finds both, the same map, and
//! drops the second pin); one killed after loading finds both, different maps, and copies
//! again (never overwriting an entry the new map has, `BPF_NOEXIST`) before removing `@old`.
//!
//! Old programs keep using the old maps until each attachment is replaced with the new
//! program, moments later: entries they write in between are not copied.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt, fs, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use egress_common::map_names;
use tracing::{info, warn};

use super::{sys::Attr, DatapathError, MapSizes};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;

/// What a map is, as the kernel reports it (`struct bpf_map_info`) and as the object and the
/// map sizes would create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    fn is_array(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY
        )
    }

    fn is_per_cpu(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_LRU_PERCPU_HASH
        )
    }

    /// Whether entries can be copied from a map of this shape into one of `new` by the
    /// generic copy (`copy_entries`): the same type, or a hash that became an LRU one or the
    /// other way round (the NAT table stopped being an LRU once).
    fn copyable_to(&self, new: &MapShape) -> bool {
        let hashes = [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH];
        let same_kind = self.map_type == new.map_type
            || (hashes.contains(&self.map_type) && hashes.contains(&new.map_type));
        same_kind
            && self.key_size == new.key_size
            && self.value_size == new.value_size
            && self.flags == new.flags
            && matches!(
                self.map_type,
                BPF_MAP_TYPE_HASH
                    | BPF_MAP_TYPE_ARRAY
                    | BPF_MAP_TYPE_PERCPU_HASH
                    | BPF_MAP_TYPE_PERCPU_ARRAY
                    | BPF_MAP_TYPE_LRU_HASH
                    | BPF_MAP_TYPE_LRU_PERCPU_HASH
                    | BPF_MAP_TYPE_LPM_TRIE
            )
    }
}

/// What differs between a pinned map (`old`) and what this build creates (`new`), field by
/// field, as `field old -> new`.
fn changes(old: &MapShape, new: &MapShape) -> Vec<String> {
    let mut c = Vec::new();
    let mut field = |name: &str, a: u32, b: u32| {
        if a != b {
            c.push(format!("{name} {a} -> {b}"));
        }
    };
    field("type", old.map_type, new.map_type);
    field("key size", old.key_size, new.key_size);
    field("value size", old.value_size, new.value_size);
    field("max_entries", old.max_entries, new.max_entries);
    field("flags", old.flags, new.flags);
    c
}

/// What to do with a pinned map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same shape: reused as it is.
    Reuse,
    /// Only the size changed: entries copied into a new map (what changed).
    Migrate(String),
    /// Incompatible: a new, empty map (what changed).
    Replace(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Reuse => f.write_str("reused"),
            Verdict::Migrate(why) => write!(f, "migrated ({why})"),
            Verdict::Replace(why) => write!(f, "replaced ({why})"),
        }
    }
}

/// The verdict on a pinned map of shape `old` where this build creates `new`.
pub fn judge(old: &MapShape, new: &MapShape) -> Verdict {
    let what = changes(old, new);
    if what.is_empty() {
        Verdict::Reuse
    } else if old.copyable_to(new) {
        Verdict::Migrate(what.join(", "))
    } else {
        Verdict::Replace(what.join(", "))
    }
}

/// The shape of every map this object creates with `sizes` (what the loader will create), by
/// name.
pub fn expected_shapes(
    object: &[u8],
    sizes: &MapSizes,
) -> Result<BTreeMap<&'static str, MapShape>, DatapathError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DatapathError::Object(e.to_string()))?;
    let mut out = BTreeMap::new();
    for name in map_names::ALL {
        let m = obj.maps.get(name).ok_or(DatapathError::MissingMap(name))?;
        let max_entries = sizes.of_map(name).unwrap_or_else(|| m.max_entries());
        out.insert(
            name,
            MapShape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries,
                flags: m.map_flags(),
            },
        );
    }
    Ok(out)
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = Attr::new().u64(0, c.as_ptr() as u64).bpf(BPF_OBJ_GET)?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Pins the object `fd` at `path` (`BPF_OBJ_PIN`).
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Attr::new()
        .u64(0, c.as_ptr() as u64)
        .u32(8, fd.as_raw_fd() as u32)
        .bpf(BPF_OBJ_PIN)?;
    Ok(())
}

/// Moves the pin of `fd` from `from` to `to`: bpffs has no rename, so pinned again at `to`,
/// then unlinked at `from` (a crash in between leaves both, which `prepare` handles).
fn move_pin(fd: BorrowedFd<'_>, from: &Path, to: &Path) -> Result<(), DatapathError> {
    obj_pin(fd, to).map_err(pin_err(to))?;
    fs::remove_file(from).map_err(pin_err(from))
}

/// `struct bpf_map_info` of `fd`, as bytes.
fn map_info(fd: BorrowedFd<'_>) -> io::Result<[u8; 88]> {
    let mut info = [0u8; 88];
    Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .bpf(BPF_OBJ_GET_INFO_BY_FD)?;
    Ok(info)
}

/// The kernel's id of the map `fd`.
fn map_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let info = map_info(fd)?;
    Ok(u32::from_ne_bytes(info[4..8].try_into().expect("4 bytes")))
}

/// The shape of the map `fd` (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn map_shape(fd: BorrowedFd<'_>) -> io::Result<MapShape> {
    let info = map_info(fd)?;
    let field = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().expect("4 bytes"));
    Ok(MapShape {
        map_type: field(0),
        key_size: field(8),
        value_size: field(12),
        max_entries: field(16),
        flags: field(20),
    })
}

/// The shape of the map pinned at `path`, with its fd; `None` if nothing is pinned there.
pub fn pinned_shape(path: &Path) -> io::Result<Option<(OwnedFd, MapShape)>> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let shape = map_shape(fd.as_fd())?;
    Ok(Some((fd, shape)))
}

/// What `copy_entries` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries written into the new map.
    pub copied: u64,
    /// Entries that did not fit (a table shrunk below its contents), or already there.
    pub skipped: u64,
}

/// Copies the entries of `old` into `new` (same type, key and value size; any max entries):
/// arrays index by index up to the smaller size, hash maps and tries key by key, never
/// overwriting a key `new` already has (`BPF_NOEXIST`).
pub fn copy_entries(
    old: BorrowedFd<'_>,
    old_shape: &MapShape,
    new: BorrowedFd<'_>,
    new_shape: &MapShape,
) -> io::Result<Copied> {
    let cpus = if old_shape.is_per_cpu() {
        aya::util::nr_cpus().map_err(|(_, e)| e)?
    } else {
        1
    };
    // A per-CPU value is one 8-byte aligned slot per possible CPU.
    let slot = if old_shape.is_per_cpu() {
        (old_shape.value_size as usize).next_multiple_of(8)
    } else {
        old_shape.value_size as usize
    };
    let mut value = vec![0u8; slot * cpus];
    let mut key = vec![0u8; old_shape.key_size as usize];
    let mut next = vec![0u8; old_shape.key_size as usize];
    let (old, new) = (old.as_raw_fd() as u32, new.as_raw_fd() as u32);
    let lookup = |key: &[u8], value: &mut [u8]| {
        Attr::new()
            .u32(0, old)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_mut_ptr() as u64)
            .bpf(BPF_MAP_LOOKUP_ELEM)
    };
    let update = |key: &[u8], value: &[u8], flags: u64| {
        Attr::new()
            .u32(0, new)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .u64(24, flags)
            .bpf(BPF_MAP_UPDATE_ELEM)
    };
    let mut done = Copied::default();
    if old_shape.is_array() {
        for i in 0..old_shape.max_entries {
            if i >= new_shape.max_entries {
                done.skipped += 1;
                continue;
            }
            key.copy_from_slice(&i.to_ne_bytes());
            lookup(&key, &mut value)?;
            update(&key, &value, BPF_ANY)?;
            done.copied += 1;
        }
        return Ok(done);
    }
    let mut first = true;
    loop {
        let r = Attr::new()
            .u32(0, old)
            .u64(8, if first { 0 } else { key.as_ptr() as u64 })
            .u64(16, next.as_mut_ptr() as u64)
            .bpf(BPF_MAP_GET_NEXT_KEY);
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(done),
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        match lookup(&key, &mut value) {
            Ok(_) => {}
            // Gone in between (an LRU eviction, an expiry).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        match update(&key, &value, BPF_NOEXIST) {
            Ok(_) => done.copied += 1,
            // Already there (a start that was killed after copying), or the new map is full.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::E2BIG)) => {
                done.skipped += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// A map whose entries go into the new map once it is loaded.
pub struct Migration {
    pub name: &'static str,
    /// The old map (its pin moved to `<name>@old`).
    old: OwnedFd,
    old_shape: MapShape,
    old_pin: PathBuf,
    /// What changed.
    why: String,
}

fn old_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}@old"))
}

fn pin_err(path: &Path) -> impl Fn(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::PinDir {
        path: path.to_owned(),
        source,
    }
}

/// Checks every map pinned in `dir` against `expected` before the loader reuses the pins (see
/// the module's documentation): compatible maps stay, changed ones are moved aside for
/// migration or removed, with a log line each. Returns the migrations to finish after the
/// load (`finish`).
pub fn prepare(
    dir: &Path,
    expected: &BTreeMap<&'static str, MapShape>,
) -> Result<Vec<Migration>, DatapathError> {
    let mut out = Vec::new();
    for (&name, new) in expected {
        let path = dir.join(name);
        let old = old_pin(dir, name);
        // A migration a killed start left behind.
        let mut migrating = false;
        if let Some((old_fd, old_shape)) = pinned_shape(&old).map_err(pin_err(&old))? {
            let current = pinned_shape(&path).map_err(pin_err(&path))?;
            let same = match &current {
                Some((fd, _)) => {
                    map_id(fd.as_fd()).map_err(pin_err(&path))?
                        == map_id(old_fd.as_fd()).map_err(pin_err(&old))?
                }
                None => false,
            };
            if current.is_none() {
                // Killed after moving the pin away, before loading: moved back, judged below.
                move_pin(old_fd.as_fd(), &old, &path)?;
            } else if same {
                // Killed between the two halves of a move: one map, pinned twice.
                fs::remove_file(&old).map_err(pin_err(&old))?;
            } else if old_shape.copyable_to(new) {
                info!(
                    map = name,
                    "finishing the migration an earlier start began (copying from {})",
                    old.display()
                );
                out.push(Migration {
                    name,
                    old: old_fd,
                    old_shape,
                    old_pin: old.clone(),
                    why: changes(&old_shape, new).join(", "),
                });
                migrating = true;
            } else {
                fs::remove_file(&old).map_err(pin_err(&old))?;
            }
        }
        let Some((fd, shape)) = pinned_shape(&path).map_err(pin_err(&path))? else {
            continue;
        };
        if migrating {
            // The new map of the interrupted start: kept if it has this build's shape.
            if judge(&shape, new) != Verdict::Reuse {
                fs::remove_file(&path).map_err(pin_err(&path))?;
            }
            continue;
        }
        match judge(&shape, new) {
            Verdict::Reuse => {}
            Verdict::Migrate(why) => {
                move_pin(fd.as_fd(), &path, &old)?;
                out.push(Migration {
                    name,
                    old: fd,
                    old_shape: shape,
                    old_pin: old,
                    why,
                });
            }
            Verdict::Replace(why) => {
                warn!(
                    map = name,
                    changed = %why,
                    "pinned map {name} does not fit this build ({why}): replaced by a new, empty \
                     map; its entries are lost (flows it held are reset)"
                );
                fs::remove_file(&path).map_err(pin_err(&path))?;
            }
        }
    }
    crate::fault::step("migrate-moved");
    Ok(out)
}

/// Copies each migration's entries into the loaded map (`new_fd` gives its fd and shape),
/// then removes the old pin. One log line per map: what changed, how many entries came
/// along.
pub fn finish(
    migrations: Vec<Migration>,
    mut new_fd: impl FnMut(&'static str) -> Result<(OwnedFd, MapShape), DatapathError>,
) -> Result<(), DatapathError> {
    let mut pins = Vec::new();
    for m in migrations {
        let (fd, shape) = new_fd(m.name)?;
        let done =
            copy_entries(m.old.as_fd(), &m.old_shape, fd.as_fd(), &shape).map_err(|source| {
                DatapathError::Migrate {
                    name: m.name,
                    source,
                }
            })?;
        if done.skipped > 0 {
            warn!(
                map = m.name,
                changed = %m.why,
                copied = done.copied,
                lost = done.skipped,
                "pinned map {} migrated ({}): {} entries copied, {} did not fit (or were there)",
                m.name,
                m.why,
                done.copied,
                done.skipped
            );
        } else {
            info!(
                map = m.name,
                changed = %m.why,
                copied = done.copied,
                "pinned map {} migrated ({}): {} entries copied",
                m.name,
                m.why,
                done.copied
            );
        }
        pins.push(m.old_pin);
    }
    crate::fault::step("migrated");
    for p in pins {
        fs::remove_file(&p).map_err(pin_err(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(map_type: u32, value_size: u32, max_entries: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: 4,
            value_size,
            max_entries,
            flags: 0,
        }
    }

    #[test]
    fn the_same_shape_is_reused() {
        let s = shape(BPF_MAP_TYPE_LRU_HASH, 40, 1024);
        assert_eq!(judge(&s, &s), Verdict::Reuse);
    }

    #[test]
    fn a_resized_map_is_migrated_and_says_how() {
        assert_eq!(
            judge(
                &shape(BPF_MAP_TYPE_LRU_HASH, 40, 1024),
                &shape(BPF_MAP_TYPE_LRU_HASH, 40, 4096)
            ),
            Verdict::Migrate("max_entries 1024 -> 4096".into())
        );
        // The drop counters grew from 13 to 14 reasons once.
        assert_eq!(
            judge(
                &shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 13),
                &shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 14)
            ),
            Verdict::Migrate("max_entries 13 -> 14".into())
        );
        // The NAT table stopped being an LRU: its flows are copied.
        assert_eq!(
            judge(
                &shape(BPF_MAP_TYPE_LRU_HASH, 32, 262144),
                &shape(BPF_MAP_TYPE_HASH, 32, 262144)
            ),
            Verdict::Migrate("type 9 -> 1".into())
        );
    }

    #[test]
    fn a_changed_layout_is_replaced_and_says_what_changed() {
        assert_eq!(
            judge(
                &shape(BPF_MAP_TYPE_LRU_HASH, 40, 1024),
                &shape(BPF_MAP_TYPE_LRU_HASH, 48, 2048)
            ),
            Verdict::Replace("value size 40 -> 48, max_entries 1024 -> 2048".into())
        );
        assert_eq!(
            judge(
                &shape(BPF_MAP_TYPE_ARRAY, 40, 1024),
                &shape(BPF_MAP_TYPE_HASH, 40, 1024)
            ),
            Verdict::Replace("type 2 -> 1".into())
        );
        let mut flagged = shape(BPF_MAP_TYPE_LPM_TRIE, 8, 16);
        flagged.flags = 1;
        assert!(matches!(
            judge(&shape(BPF_MAP_TYPE_LPM_TRIE, 8, 16), &flagged),
            Verdict::Replace(_)
        ));
    }
}
