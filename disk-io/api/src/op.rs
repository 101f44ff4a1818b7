//! [`OpClass`]: the name of every public operation, used for default
//! deadlines, metrics labels, spans and errors.

use std::fmt;

/// Every operation the [`Disk`](crate::Disk) trait offers, plus the internal
/// health probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OpClass {
    /// Opening the disk (its root directory).
    Open,
    /// Writing the format file.
    Format,
    /// `get_disk_id`.
    DiskId,
    /// `disk_info`.
    DiskInfo,
    /// `make_vol`.
    MakeVol,
    /// `list_vols`.
    ListVols,
    /// `stat_vol`.
    StatVol,
    /// `delete_vol`.
    DeleteVol,
    /// `read_all`.
    ReadAll,
    /// `write_all`.
    WriteAll,
    /// `create_file`.
    CreateFile,
    /// `ShardWriter::append`.
    Append,
    /// `ShardWriter::finish`.
    Finish,
    /// `read_file_at`.
    ReadFileAt,
    /// `stat_file`.
    StatFile,
    /// `rename_file`.
    RenameFile,
    /// `delete`.
    Delete,
    /// `list_dir`.
    ListDir,
    /// The health machine's active probe (write, read, delete a small file).
    Probe,
    /// A positional read through the driver's raw API (benchmarks).
    RawRead,
    /// A positional write through the raw driver API.
    RawWrite,
    /// A lease on a node's locker: acquire, refresh or release.
    Lock,
    /// A notification to a peer (a hint that something changed).
    Notify,
    /// An operator's request to a node (users, cluster status).
    Admin,
}

impl OpClass {
    /// All classes, for metric registration and tests.
    pub const ALL: [OpClass; 24] = [
        OpClass::Open,
        OpClass::Format,
        OpClass::DiskId,
        OpClass::DiskInfo,
        OpClass::MakeVol,
        OpClass::ListVols,
        OpClass::StatVol,
        OpClass::DeleteVol,
        OpClass::ReadAll,
        OpClass::WriteAll,
        OpClass::CreateFile,
        OpClass::Append,
        OpClass::Finish,
        OpClass::ReadFileAt,
        OpClass::StatFile,
        OpClass::RenameFile,
        OpClass::Delete,
        OpClass::ListDir,
        OpClass::Probe,
        OpClass::RawRead,
        OpClass::RawWrite,
        // Appended: a class's position is its code on the wire.
        OpClass::Lock,
        OpClass::Notify,
        OpClass::Admin,
    ];

    /// Stable snake_case name (metrics label, span field, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            OpClass::Open => "open",
            OpClass::Format => "format",
            OpClass::DiskId => "get_disk_id",
            OpClass::DiskInfo => "disk_info",
            OpClass::MakeVol => "make_vol",
            OpClass::ListVols => "list_vols",
            OpClass::StatVol => "stat_vol",
            OpClass::DeleteVol => "delete_vol",
            OpClass::ReadAll => "read_all",
            OpClass::WriteAll => "write_all",
            OpClass::CreateFile => "create_file",
            OpClass::Append => "append",
            OpClass::Finish => "finish",
            OpClass::ReadFileAt => "read_file_at",
            OpClass::StatFile => "stat_file",
            OpClass::RenameFile => "rename_file",
            OpClass::Delete => "delete",
            OpClass::ListDir => "list_dir",
            OpClass::Probe => "probe",
            OpClass::RawRead => "raw_read",
            OpClass::RawWrite => "raw_write",
            OpClass::Lock => "lock",
            OpClass::Notify => "notify",
            OpClass::Admin => "admin",
        }
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
