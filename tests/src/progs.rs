//! What runs where, read from the kernel (`bpf(2)`), for the lifecycle tests: the TCX programs
//! on every hook of a node (`BPF_PROG_QUERY`), a program's name and maps, whether a program or
//! a map still exists, pinned maps' shapes, and maps created by hand (a pinned map "of an older
//! build").

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use crate::{
    lab::{exec, in_netns},
    rawbpf::{Attr, BPF_OBJ_GET_INFO_BY_FD},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// One program on a hook: its id and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prog {
    pub id: u32,
    pub name: String,
}

/// The interfaces of namespace `ns`: name -> ifindex.
pub fn interfaces(ns: &str) -> BTreeMap<String, u32> {
    let out = exec(ns, &["ip", "-j", "link", "show"]).expect("ip link show");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["ifname"].as_str()?.to_owned(),
                l["ifindex"].as_u64()? as u32,
            ))
        })
        .collect()
}

/// The TCX programs on `ifindex`'s ingress or egress, in the current network namespace.
fn tcx_query(ifindex: u32, egress: bool) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut a = Attr::new();
    a.u32(0, ifindex)
        .u32(
            4,
            if egress {
                BPF_TCX_EGRESS
            } else {
                BPF_TCX_INGRESS
            },
        )
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    match a.bpf(BPF_PROG_QUERY) {
        Ok(_) => ids[..a.get_u32(24) as usize].to_vec(),
        Err(e) => panic!("BPF_PROG_QUERY on ifindex {ifindex}: {e}"),
    }
}

/// Every TCX program on every interface of namespace `ns`: `<interface>/<ingress|egress>` ->
/// programs (hooks without programs left out).
pub fn tcx_programs(ns: &str) -> BTreeMap<String, Vec<Prog>> {
    let ifs = interfaces(ns);
    let ids: Vec<(String, Vec<u32>)> = in_netns(ns, || {
        let mut out = Vec::new();
        for (name, idx) in &ifs {
            for (dir, egress) in [("ingress", false), ("egress", true)] {
                out.push((format!("{name}/{dir}"), tcx_query(*idx, egress)));
            }
        }
        out
    });
    ids.into_iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(hook, ids)| {
            let progs = ids
                .into_iter()
                .map(|id| Prog {
                    id,
                    name: prog_name(id).unwrap_or_default(),
                })
                .collect();
            (hook, progs)
        })
        .collect()
}

fn by_id(cmd: libc::c_long, id: u32) -> std::io::Result<OwnedFd> {
    Attr::new().u32(0, id).bpf_fd(cmd)
}

/// Whether the program `id` still exists (something holds it: a link, a filter, an fd).
pub fn prog_alive(id: u32) -> bool {
    by_id(BPF_PROG_GET_FD_BY_ID, id).is_ok()
}

/// Whether the map `id` still exists.
pub fn map_alive(id: u32) -> bool {
    by_id(BPF_MAP_GET_FD_BY_ID, id).is_ok()
}

/// `struct bpf_prog_info` of `fd`: its name and map ids.
fn prog_info(fd: &OwnedFd) -> (String, Vec<u32>) {
    let mut maps = [0u32; 32];
    let mut info = [0u8; 256];
    info[52..56].copy_from_slice(&(maps.len() as u32).to_ne_bytes());
    info[56..64].copy_from_slice(&(maps.as_mut_ptr() as u64).to_ne_bytes());
    Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .bpf(BPF_OBJ_GET_INFO_BY_FD)
        .expect("BPF_OBJ_GET_INFO_BY_FD");
    let name = String::from_utf8_lossy(&info[64..80])
        .trim_end_matches('\0')
        .to_owned();
    let n = u32::from_ne_bytes(info[52..56].try_into().expect("4 bytes")) as usize;
    (name, maps[..n.min(maps.len())].to_vec())
}

/// The name of program `id` (`None`: gone).
pub fn prog_name(id: u32) -> Option<String> {
    let fd = by_id(BPF_PROG_GET_FD_BY_ID, id).ok()?;
    Some(prog_info(&fd).0)
}

/// The ids of the maps program `id` uses.
pub fn prog_map_ids(id: u32) -> Vec<u32> {
    let fd = by_id(BPF_PROG_GET_FD_BY_ID, id).expect("program exists");
    prog_info(&fd).1
}

/// The shape of a map as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

fn map_info(fd: &OwnedFd) -> MapInfo {
    let mut info = [0u8; 88];
    Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .bpf(BPF_OBJ_GET_INFO_BY_FD)
        .expect("BPF_OBJ_GET_INFO_BY_FD");
    let f = |off: usize| u32::from_ne_bytes(info[off..off + 4].try_into().expect("4 bytes"));
    MapInfo {
        map_type: f(0),
        id: f(4),
        key_size: f(8),
        value_size: f(12),
        max_entries: f(16),
    }
}

fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    Attr::new().u64(0, c.as_ptr() as u64).bpf_fd(BPF_OBJ_GET)
}

/// The map pinned at `path`, if any.
pub fn pinned_map(path: &Path) -> Option<MapInfo> {
    obj_get(path).ok().map(|fd| map_info(&fd))
}

/// `BPF_MAP_TYPE_*` used by the tests.
pub const HASH: u32 = 1;
pub const PERCPU_ARRAY: u32 = 6;
pub const LRU_HASH: u32 = 9;

/// Creates a map and pins it at `path` (as an older build would have left it).
pub fn create_pinned_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> OwnedFd {
    let fd = Attr::new()
        .u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .bpf_fd(BPF_MAP_CREATE)
        .unwrap_or_else(|e| panic!("BPF_MAP_CREATE for {}: {e}", path.display()));
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    Attr::new()
        .u64(0, c.as_ptr() as u64)
        .u32(8, fd.as_raw_fd() as u32)
        .bpf(BPF_OBJ_PIN)
        .unwrap_or_else(|e| panic!("BPF_OBJ_PIN {}: {e}", path.display()));
    fd
}

/// Writes `value` under `key` in the map `fd` (for per-CPU maps `value` holds every CPU's).
pub fn map_put(fd: &OwnedFd, key: &[u8], value: &[u8]) {
    Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64)
        .bpf(BPF_MAP_UPDATE_ELEM)
        .expect("BPF_MAP_UPDATE_ELEM");
}

/// Reads `key` from the map pinned at `path` into a buffer of `len` bytes.
pub fn pinned_get(path: &Path, key: &[u8], len: usize) -> Option<Vec<u8>> {
    let fd = obj_get(path).ok()?;
    let mut value = vec![0u8; len];
    Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_mut_ptr() as u64)
        .bpf(BPF_MAP_LOOKUP_ELEM)
        .ok()?;
    Some(value)
}

/// The number of possible CPUs (per-CPU map values hold one slot each).
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().expect("possible CPUs")
}

/// Mounts a bpffs at `dir` (created), as the agent would.
pub fn mount_bpffs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("pin root");
    let st = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir)
        .status()
        .expect("mount");
    assert!(st.success(), "mount -t bpf {}", dir.display());
}

/// The hooks of lab node `node` that carry one program of ours each, `<interface>/<direction>`
/// -> program name: the underlay's two, the tunnel's, and two per pod veth of the node.
/// `uplink_reply`: the gateway's uplink, when it is not the underlay, carries `egw_from_wire`.
pub fn expected_hooks(
    lab: &crate::lab::Lab,
    node: &str,
    uplink_reply: bool,
) -> BTreeMap<String, &'static str> {
    let n = lab.node(node);
    let mut want = BTreeMap::from([
        (format!("{}/ingress", n.underlay_dev), "egw_from_wire"),
        (format!("{}/egress", n.underlay_dev), "egw_to_wire"),
        ("egw0/ingress".to_owned(), "egw_from_tunnel"),
    ]);
    if uplink_reply {
        want.insert(format!("{}/ingress", n.uplink), "egw_from_wire");
    }
    for p in lab.pods().iter().filter(|p| p.node == node) {
        want.insert(format!("{}/ingress", p.host_veth), "egw_from_pod");
        want.insert(format!("{}/egress", p.host_veth), "egw_to_pod");
    }
    want
}

/// The TCX programs on `node`'s hooks, if they are exactly [`expected_hooks`]: one per hook,
/// nothing on any other hook, and every hook of a program showing the same one (one load);
/// else what is wrong.
pub fn programs_if_complete(
    lab: &crate::lab::Lab,
    node: &str,
    uplink_reply: bool,
) -> Result<BTreeMap<String, Prog>, String> {
    let have = tcx_programs(&lab.node(node).ns);
    let want = expected_hooks(lab, node, uplink_reply);
    let mut out = BTreeMap::new();
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    for (hook, progs) in &have {
        let Some(program) = want.get(hook) else {
            return Err(format!("{node}: unexpected programs on {hook}: {progs:?}"));
        };
        if progs.len() != 1 || progs[0].name != *program {
            return Err(format!(
                "{node}: {hook} carries {progs:?}, not one {program}"
            ));
        }
        if *ids.entry(program).or_insert(progs[0].id) != progs[0].id {
            return Err(format!("{node}: {program} of two loads: {have:?}"));
        }
        out.insert(hook.clone(), progs[0].clone());
    }
    if let Some(missing) = want.keys().find(|h| !have.contains_key(*h)) {
        return Err(format!("{node}: no program on {missing}; have {have:?}"));
    }
    Ok(out)
}
