//! [`OpTimeouts`]: the default budget of every operation class, in one
//! place, for local and remote disks alike.

use std::time::Duration;

use crate::deadline::Deadline;
use crate::op::OpClass;

/// Default budgets per operation class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpTimeouts {
    /// `get_disk_id`, `disk_info`, `open`: the checks quorum and set
    /// initialisation depend on, so short.
    pub disk_state: Duration,
    /// Volume and metadata operations: stat, list, rename, delete,
    /// read_all, write_all, format.
    pub metadata: Duration,
    /// Shard data: create_file, append, finish, read_file_at.
    pub data: Duration,
    /// The health machine's active probe.
    pub probe: Duration,
    /// Background purge of a tree moved to the trash by a recursive delete.
    pub trash_purge: Duration,
}

impl Default for OpTimeouts {
    fn default() -> Self {
        OpTimeouts {
            disk_state: Duration::from_secs(2),
            metadata: Duration::from_secs(5),
            data: Duration::from_secs(10),
            probe: Duration::from_secs(2),
            trash_purge: Duration::from_secs(60),
        }
    }
}

impl OpTimeouts {
    /// The default budget for an operation class.
    pub fn for_class(&self, op: OpClass) -> Duration {
        match op {
            // A lock attempt is as short as a disk-state check: a quorum
            // lock retries within its caller's deadline instead.
            OpClass::Open
            | OpClass::DiskId
            | OpClass::DiskInfo
            | OpClass::Lock
            | OpClass::Notify => self.disk_state,
            OpClass::CreateFile
            | OpClass::Append
            | OpClass::Finish
            | OpClass::ReadFileAt
            | OpClass::RawRead
            | OpClass::RawWrite => self.data,
            OpClass::Probe => self.probe,
            OpClass::Format
            | OpClass::MakeVol
            | OpClass::ListVols
            | OpClass::StatVol
            | OpClass::DeleteVol
            | OpClass::ReadAll
            | OpClass::WriteAll
            | OpClass::StatFile
            | OpClass::RenameFile
            | OpClass::Delete
            | OpClass::ListDir
            | OpClass::Admin => self.metadata,
        }
    }

    /// A deadline for `op` from its default budget, starting now.
    pub fn deadline(&self, op: OpClass) -> Deadline {
        Deadline::after(self.for_class(op))
    }

    /// Why these budgets cannot work, if they cannot (a zero budget makes
    /// every call of its class fail before it starts).
    pub fn check(&self) -> Result<(), String> {
        for (name, d) in [
            ("disk_state", self.disk_state),
            ("metadata", self.metadata),
            ("data", self.data),
            ("probe", self.probe),
            ("trash_purge", self.trash_purge),
        ] {
            if d.is_zero() {
                return Err(format!("timeouts.{name} must be > 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_a_budget() {
        let t = OpTimeouts::default();
        assert!(t.check().is_ok());
        for op in OpClass::ALL {
            assert!(!t.for_class(op).is_zero(), "{op}");
        }
    }

    #[test]
    fn zero_budget_is_refused() {
        let t = OpTimeouts {
            metadata: Duration::ZERO,
            ..OpTimeouts::default()
        };
        assert!(t.check().unwrap_err().contains("metadata"));
    }
}
