//! Datapath ids (the tunnel VNI and counter index, 1..=1023): a hash of the policy name,
//! probed linearly on collision in policy order (oldest first). Every node computes the same
//! id from the same inputs, a restart changes nothing, and adding a policy never moves an
//! older one.

use std::collections::{BTreeMap, BTreeSet};

use egress_common::policy::MAX_POLICIES;

/// 32-bit FNV-1a: stable across builds and platforms (unlike std's hasher).
pub(super) fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Datapath ids for `names` (in policy order, oldest first): the name's hash, probed linearly.
/// Names beyond the id space get none.
pub fn allocate_ids<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let slots = MAX_POLICIES - 1; // ids 1..=1023; 0 means "no policy"
    let mut used = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for name in names {
        if used.len() as u32 >= slots || ids.contains_key(name) {
            continue;
        }
        let mut id = fnv1a(name) % slots + 1;
        while !used.insert(id) {
            id = id % slots + 1;
        }
        ids.insert(name.to_owned(), id);
    }
    ids
}
