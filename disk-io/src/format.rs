//! The format file: a disk's identity, stored on the disk itself at
//! `.disk-io/format.json` and written atomically at format time.

use serde::{Deserialize, Serialize};

use disk_io_api::DiskError;
use disk_io_api::DiskId;

/// Path of the format file inside the system directory.
pub(crate) const FORMAT_FILE: &str = "format.json";
/// Current format version; readers refuse newer ones rather than guess.
pub const FORMAT_VERSION: u32 = 1;

/// What the format file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatFile {
    /// Layout version.
    pub version: u32,
    /// The disk's identity.
    pub disk: DiskId,
    /// Unix time (seconds) of formatting.
    pub formatted_at: u64,
}

impl FormatFile {
    /// A new format for a disk at `set_index`/`disk_index`.
    pub fn new(set_index: u32, disk_index: u32) -> FormatFile {
        FormatFile {
            version: FORMAT_VERSION,
            disk: DiskId {
                uuid: uuid::Uuid::new_v4(),
                set_index,
                disk_index,
            },
            formatted_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Parse and check a format file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<FormatFile, DiskError> {
        let f: FormatFile =
            serde_json::from_slice(bytes).map_err(|e| DiskError::CorruptFormat {
                reason: e.to_string(),
            })?;
        if f.version != FORMAT_VERSION {
            return Err(DiskError::CorruptFormat {
                reason: format!("unsupported format version {}", f.version),
            });
        }
        if f.disk.uuid.is_nil() {
            return Err(DiskError::CorruptFormat {
                reason: "nil disk uuid".into(),
            });
        }
        Ok(f)
    }

    /// Serialise.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain integers and a UUID cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = FormatFile::new(2, 5);
        assert_eq!(FormatFile::parse(&f.to_bytes()), Ok(f));
    }

    #[test]
    fn rejects_garbage_and_future_versions() {
        assert_eq!(
            FormatFile::parse(b"{not json").map_err(|e| e.kind()),
            Err("corrupt_format")
        );
        let mut f = FormatFile::new(0, 0);
        f.version = 99;
        assert!(FormatFile::parse(&f.to_bytes()).is_err());
        f.version = FORMAT_VERSION;
        f.disk.uuid = uuid::Uuid::nil();
        assert!(FormatFile::parse(&f.to_bytes()).is_err());
    }
}
