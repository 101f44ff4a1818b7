//! Per-object metadata and the on-disk names of an object.
//!
//! Object `name` in bucket `b` lives, on each disk of its set, in the
//! directory `b/name/`:
//!
//! * `<ts>-<id>.ver`: one file per version (its [`ObjectMeta`]), written
//!   once with `write_all` and never changed; `ts` is the version's order
//!   key (16 hex digits, a hybrid clock in nanoseconds), `id` its version
//!   id (a UUIDv7, 32 hex digits);
//! * `<ts>-<id>.del`: a tombstone (an acknowledged DELETE), empty;
//! * `<id>.shards`: this disk's shard file of version `id`.
//!
//! A write stages its shard file in the temporary volume and renames it
//! into place, then writes its version file: the version files present on
//! the disks decide what a reader sees (`set::versions`). Nothing is ever
//! overwritten, so no disk can lose a committed version to a concurrent
//! or failed write; the collector removes what is proven superseded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::Geometry;
use crate::error::ErasureError;

/// File name of the metadata of format 1 (one file per object); still
/// refused as an object name component.
pub const META_FILE: &str = "object.meta";
/// Suffix of shard files.
pub const SHARD_SUFFIX: &str = ".shards";
/// Suffix of a version file.
pub const VERSION_SUFFIX: &str = ".ver";
/// Suffix of a tombstone.
pub const TOMBSTONE_SUFFIX: &str = ".del";
/// Metadata format version (2: one immutable file per version).
pub const META_FORMAT: u32 = 2;

/// The total order of an object's versions: a hybrid-clock timestamp,
/// then the version id (ties between writers that read the same clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    /// Nanoseconds since the Unix epoch, raised past every version the
    /// writer saw (so a write that starts after another was acknowledged
    /// orders after it, whatever the clocks say).
    pub ts: u64,
    /// The version id (names the shard files).
    pub id: Uuid,
}

/// What a version file stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionKind {
    /// An object version (`.ver`, holds its [`ObjectMeta`]).
    Object,
    /// A tombstone (`.del`, empty).
    Tombstone,
}

impl VersionKey {
    /// The key of a new version `id` ordered after every version whose
    /// timestamp is at most `seen`: the clock now, or one past `seen` when
    /// that is ahead (another node's clock, or a burst within one tick).
    pub fn after(seen: Option<u64>, id: Uuid) -> VersionKey {
        VersionKey {
            ts: now_ns().max(seen.map_or(0, |t| t + 1)),
            id,
        }
    }

    /// File name of this version (in the object's directory).
    pub fn file_name(&self, kind: VersionKind) -> String {
        let suffix = match kind {
            VersionKind::Object => VERSION_SUFFIX,
            VersionKind::Tombstone => TOMBSTONE_SUFFIX,
        };
        format!("{:016x}-{}{suffix}", self.ts, self.id.simple())
    }

    /// Parse a version file name; `None` for anything else.
    pub fn parse(entry: &str) -> Option<(VersionKey, VersionKind)> {
        let (stem, kind) = if let Some(s) = entry.strip_suffix(VERSION_SUFFIX) {
            (s, VersionKind::Object)
        } else if let Some(s) = entry.strip_suffix(TOMBSTONE_SUFFIX) {
            (s, VersionKind::Tombstone)
        } else {
            return None;
        };
        let (ts, id) = stem.split_once('-')?;
        if ts.len() != 16 || id.len() != 32 || !is_lower_hex(ts) || !is_lower_hex(id) {
            return None;
        }
        Some((
            VersionKey {
                ts: u64::from_str_radix(ts, 16).ok()?,
                id: Uuid::try_parse(id).ok()?,
            },
            kind,
        ))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse a shard file name (`<uuid>.shards`).
pub fn parse_shard(entry: &str) -> Option<Uuid> {
    entry
        .strip_suffix(SHARD_SUFFIX)
        .and_then(|v| Uuid::try_parse(v).ok())
}

/// When a UUIDv7 version id was minted (`None` for other UUIDs): the age
/// of a shard file no version names.
pub fn id_time(id: Uuid) -> Option<std::time::SystemTime> {
    let ts = id.get_timestamp()?;
    let (secs, nanos) = ts.to_unix();
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// A new version id: time-ordered, so an orphan shard file's age is in its
/// name.
pub fn new_version_id() -> Uuid {
    Uuid::now_v7()
}

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What every disk holding the object stores about it (identical on all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Format version of this struct.
    pub format: u32,
    /// Version id; names the shard files.
    pub version: Uuid,
    /// Object size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mod_time_ns: u64,
    /// Data shards.
    pub data: usize,
    /// Parity shards.
    pub parity: usize,
    /// Object bytes per block.
    pub block_size: u64,
    /// Checksum algorithm of the shard blocks.
    pub checksum: String,
    /// `distribution[disk position in the set]` = the shard index that disk holds.
    pub distribution: Vec<usize>,
    /// Per shard index: BLAKE3 (hex) over that shard's per-block checksums,
    /// so a whole shard file can be verified against the metadata.
    pub shard_digests: Vec<String>,
    /// What the caller stored with the object (content type, its own
    /// digest, user metadata); identical on every disk, so it is written
    /// and read with the same quorum as the rest. Absent in files written
    /// before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The shard geometry.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            data: self.data,
            parity: self.parity,
            block_size: self.block_size,
            size: self.size,
        }
    }

    /// Serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata serializes")
    }

    /// Parse and check a metadata file against the set's shape.
    pub fn from_bytes(b: &[u8], set_size: usize) -> Result<ObjectMeta, ErasureError> {
        let m: ObjectMeta = serde_json::from_slice(b).map_err(|e| ErasureError::CorruptMeta {
            reason: e.to_string(),
        })?;
        let bad = |reason: String| Err(ErasureError::CorruptMeta { reason });
        if m.format != META_FORMAT {
            return bad(format!("format {}", m.format));
        }
        if m.data == 0 || m.parity == 0 || m.data + m.parity != set_size {
            return bad(format!("{}+{} on a set of {set_size}", m.data, m.parity));
        }
        if m.block_size < 2 || m.block_size > (64 << 20) {
            return bad(format!("block size {}", m.block_size));
        }
        let mut seen = vec![false; set_size];
        if m.distribution.len() != set_size || m.shard_digests.len() != set_size {
            return bad("distribution or digests of the wrong length".into());
        }
        for &i in &m.distribution {
            if i >= set_size || std::mem::replace(&mut seen[i], true) {
                return bad("distribution is not a permutation".into());
            }
        }
        Ok(m)
    }

    /// Disk position holding shard `index`.
    pub fn disk_of(&self, index: usize) -> usize {
        self.distribution
            .iter()
            .position(|&i| i == index)
            .expect("distribution is a permutation")
    }
}

/// Shard index per disk position for an object: a rotation by the name's
/// hash, so data shards of different objects land on different disks.
pub fn distribution(name: &str, n: usize) -> Vec<usize> {
    let h = blake3::hash(name.as_bytes());
    let rot =
        (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % n as u64) as usize;
    (0..n).map(|p| (p + rot) % n).collect()
}

/// Check an object name: relative, `/`-separated, no empty, `.` or `..`
/// components, none that collide with our own file names.
pub fn check_name(name: &str) -> Result<(), ErasureError> {
    let bad = |reason| {
        Err(ErasureError::InvalidObjectName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    for c in name.split('/') {
        if c.is_empty() {
            return bad("empty component (leading, trailing or double '/')");
        }
        if c == "." || c == ".." {
            return bad("'.' or '..' component");
        }
        if c == META_FILE || c.ends_with(SHARD_SUFFIX) || VersionKey::parse(c).is_some() {
            return bad("component reserved for object files");
        }
        if c.len() > 255 {
            return bad("component longer than 255 bytes");
        }
    }
    Ok(())
}

/// Path of an object version's file.
pub fn version_path(name: &str, key: VersionKey, kind: VersionKind) -> String {
    format!("{name}/{}", key.file_name(kind))
}

/// Directory of the graveyard in the temporary volume: shard files of
/// superseded versions wait there for `superseded_grace`.
pub const GRAVEYARD: &str = "superseded";

/// Path (in the temporary volume) of a superseded shard file.
pub fn grave_path(id: Uuid) -> String {
    format!("{GRAVEYARD}/{id}{SHARD_SUFFIX}")
}

/// Path of an object version's shard file.
pub fn shard_path(name: &str, version: Uuid) -> String {
    format!("{name}/{version}{SHARD_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("a/b/c.txt").is_ok());
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            ".",
            "a/object.meta",
            "x.shards",
            "a\0b",
            "a/0000000000000001-0123456789abcdef0123456789abcdef.ver",
            "0000000000000001-0123456789abcdef0123456789abcdef.del",
        ] {
            assert!(
                matches!(check_name(bad), Err(ErasureError::InvalidObjectName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn version_names_round_trip_and_order() {
        let a = VersionKey {
            ts: 5,
            id: new_version_id(),
        };
        let b = VersionKey {
            ts: 5,
            id: new_version_id(),
        };
        for kind in [VersionKind::Object, VersionKind::Tombstone] {
            assert_eq!(VersionKey::parse(&a.file_name(kind)), Some((a, kind)));
        }
        assert!(a < b, "same clock: the later id orders after");
        assert!(VersionKey { ts: 6, ..a } > b);
        assert!(id_time(a.id).unwrap().elapsed().unwrap() < std::time::Duration::from_secs(60));
        for bad in [
            "0000000000000001-0123456789ABCDEF0123456789abcdef.ver",
            "000000000000001-0123456789abcdef0123456789abcdef.ver",
            "0000000000000001_0123456789abcdef0123456789abcdef.ver",
            "0000000000000001-0123456789abcdef0123456789abcdef.meta",
            "object.meta",
        ] {
            assert_eq!(VersionKey::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_shard(&format!("{}.shards", a.id)), Some(a.id));
    }

    #[test]
    fn distribution_is_a_permutation_and_meta_round_trips() {
        let d = distribution("obj", 8);
        let mut s = d.clone();
        s.sort();
        assert_eq!(s, (0..8).collect::<Vec<_>>());
        let m = ObjectMeta {
            format: META_FORMAT,
            version: Uuid::new_v4(),
            size: 5,
            mod_time_ns: 1,
            data: 4,
            parity: 4,
            block_size: 1 << 20,
            checksum: "blake3".into(),
            distribution: d,
            shard_digests: vec![String::new(); 8],
            user: BTreeMap::from([("etag".to_string(), "abc".to_string())]),
        };
        assert_eq!(ObjectMeta::from_bytes(&m.to_bytes(), 8).unwrap(), m);
        // Files written before `user` existed read as an empty map.
        let mut old: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        old.as_object_mut().unwrap().remove("user");
        let back = ObjectMeta::from_bytes(&serde_json::to_vec(&old).unwrap(), 8).unwrap();
        assert!(back.user.is_empty());
        assert!(ObjectMeta::from_bytes(&m.to_bytes(), 6).is_err());
        assert!(ObjectMeta::from_bytes(b"{", 8).is_err());
        let mut dup = m.clone();
        dup.distribution[0] = dup.distribution[1];
        assert!(ObjectMeta::from_bytes(&dup.to_bytes(), 8).is_err());
    }
}
