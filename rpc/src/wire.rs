//! Conversions between the API's types and the proto messages, and between
//! [`DiskError`] and a gRPC [`Status`] (whose details carry a [`WireError`]).
//!
//! Every conversion is total: a field the peer filled badly decodes to a
//! typed error (`Rejected` on the client), never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disk_io_api::{
    DiskError, DiskId, DiskInfo, Errno, FileInfo, HealthState, OpClass, PathRule, VolInfo,
    WrongType,
};
use prost::Message;
use tonic::{Code, Status};

use crate::proto::{self, WireError};

/// How deep a `NotDurable` cause chain may nest on the wire.
const MAX_CAUSE_DEPTH: usize = 4;

/// Every path rule, in wire order (the index is the wire value).
const PATH_RULES: [PathRule; PathRule::ALL.len()] = PathRule::ALL;

fn op_to_wire(op: OpClass) -> u32 {
    OpClass::ALL
        .iter()
        .position(|o| *o == op)
        .map_or(u32::MAX, |i| i as u32)
}

fn op_from_wire(v: u32) -> OpClass {
    // An op this build does not know is reported as the nearest generic one.
    OpClass::ALL
        .get(v as usize)
        .copied()
        .unwrap_or(OpClass::RawRead)
}

fn rule_to_wire(rule: PathRule) -> u32 {
    PATH_RULES
        .iter()
        .position(|r| *r == rule)
        .map_or(u32::MAX, |i| i as u32)
}

fn rule_from_wire(v: u32) -> PathRule {
    // Unknown rule: the strictest reading.
    PATH_RULES
        .get(v as usize)
        .copied()
        .unwrap_or(PathRule::Escapes)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A [`DiskError`] as a [`WireError`].
pub fn error_to_wire(e: &DiskError) -> WireError {
    let mut w = WireError {
        kind: e.kind().to_string(),
        ..WireError::default()
    };
    match e {
        DiskError::DeadlineExceeded { op, waited } => {
            w.op = op_to_wire(*op);
            w.waited_us = micros(*waited);
        }
        DiskError::Faulty { reason }
        | DiskError::Unreachable { reason }
        | DiskError::Busy { reason }
        | DiskError::Rejected { reason }
        | DiskError::DiskNotFound { reason }
        | DiskError::InvalidArgument { reason }
        | DiskError::InUse { reason }
        | DiskError::CorruptFormat { reason } => w.text = reason.clone(),
        DiskError::CircuitOpen { peer } => w.text = peer.clone(),
        DiskError::DeviceGone { op, errno }
        | DiskError::MediaError { op, errno }
        | DiskError::Io { op, errno } => {
            w.op = op_to_wire(*op);
            w.errno = errno.0;
        }
        DiskError::InvalidPath { path, rule } => {
            w.text = path.clone();
            w.rule = rule_to_wire(*rule);
        }
        DiskError::WrongFileType(t) => {
            w.wrong_type = match t {
                WrongType::IsDirectory => 0,
                WrongType::NotDirectory => 1,
            }
        }
        DiskError::ReadOnly { op } => w.op = op_to_wire(*op),
        DiskError::TooLarge { size, limit } => {
            w.a = *size;
            w.b = *limit;
        }
        DiskError::UnexpectedEof { wanted, got } => {
            w.a = *wanted;
            w.b = *got;
        }
        DiskError::NotDurable { op, cause } => {
            w.op = op_to_wire(*op);
            w.cause = error_to_wire(cause).encode_to_vec();
        }
        DiskError::ShutDown
        | DiskError::VolumeNotFound
        | DiskError::VolumeExists
        | DiskError::VolumeNotEmpty
        | DiskError::FileNotFound
        | DiskError::FileExists
        | DiskError::DirectoryNotEmpty
        | DiskError::NoSpace
        | DiskError::PermissionDenied
        | DiskError::Unformatted
        | DiskError::AlreadyFormatted => {}
        // `DiskError` is non_exhaustive: a variant added after this build
        // travels by its kind and text and decodes as an invalid argument.
        other => w.text = other.to_string(),
    }
    w
}

/// A [`WireError`] back as the [`DiskError`] it stands for. An unknown kind
/// (a newer peer) is `Rejected`, naming it.
pub fn error_from_wire(w: WireError) -> DiskError {
    error_from_wire_at(w, 0)
}

fn error_from_wire_at(w: WireError, depth: usize) -> DiskError {
    let op = op_from_wire(w.op);
    let errno = Errno(w.errno);
    let text = w.text;
    match w.kind.as_str() {
        "deadline_exceeded" => DiskError::DeadlineExceeded {
            op,
            waited: Duration::from_micros(w.waited_us),
        },
        "faulty" => DiskError::Faulty { reason: text },
        "unreachable" => DiskError::Unreachable { reason: text },
        "circuit_open" => DiskError::CircuitOpen { peer: text },
        "busy" => DiskError::Busy { reason: text },
        "rejected" => DiskError::Rejected { reason: text },
        "disk_not_found" => DiskError::DiskNotFound { reason: text },
        "device_gone" => DiskError::DeviceGone { op, errno },
        "shut_down" => DiskError::ShutDown,
        "invalid_path" => DiskError::InvalidPath {
            path: text,
            rule: rule_from_wire(w.rule),
        },
        "invalid_argument" => DiskError::InvalidArgument { reason: text },
        "volume_not_found" => DiskError::VolumeNotFound,
        "volume_exists" => DiskError::VolumeExists,
        "volume_not_empty" => DiskError::VolumeNotEmpty,
        "not_found" => DiskError::FileNotFound,
        "exists" => DiskError::FileExists,
        "wrong_file_type" => DiskError::WrongFileType(if w.wrong_type == 0 {
            WrongType::IsDirectory
        } else {
            WrongType::NotDirectory
        }),
        "directory_not_empty" => DiskError::DirectoryNotEmpty,
        "no_space" => DiskError::NoSpace,
        "permission_denied" => DiskError::PermissionDenied,
        "read_only" => DiskError::ReadOnly { op },
        "in_use" => DiskError::InUse { reason: text },
        "unformatted" => DiskError::Unformatted,
        "already_formatted" => DiskError::AlreadyFormatted,
        "corrupt_format" => DiskError::CorruptFormat { reason: text },
        "too_large" => DiskError::TooLarge {
            size: w.a,
            limit: w.b,
        },
        "unexpected_eof" => DiskError::UnexpectedEof {
            wanted: w.a,
            got: w.b,
        },
        "media_error" => DiskError::MediaError { op, errno },
        "not_durable" => {
            let cause = if depth >= MAX_CAUSE_DEPTH {
                DiskError::Rejected {
                    reason: "not_durable cause nested too deep".into(),
                }
            } else {
                match WireError::decode(w.cause.as_slice()) {
                    Ok(c) => error_from_wire_at(c, depth + 1),
                    Err(e) => DiskError::Rejected {
                        reason: format!("undecodable not_durable cause: {e}"),
                    },
                }
            };
            DiskError::NotDurable {
                op,
                cause: Box::new(cause),
            }
        }
        "io" => DiskError::Io { op, errno },
        other => DiskError::Rejected {
            reason: format!("peer sent unknown error kind {other:?}: {text}"),
        },
    }
}

/// The gRPC status a server answers a failed op with. The code is only a
/// hint for generic tools; the client reads the details.
pub fn error_to_status(e: &DiskError) -> Status {
    let code = match e {
        DiskError::Busy { .. } => Code::ResourceExhausted,
        DiskError::Rejected { .. } => Code::Unauthenticated,
        DiskError::FileNotFound | DiskError::VolumeNotFound => Code::NotFound,
        DiskError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        _ if e.is_unavailable() => Code::Unavailable,
        _ => Code::FailedPrecondition,
    };
    Status::with_details(code, e.to_string(), error_to_wire(e).encode_to_vec().into())
}

/// The error a client reports for a failed call of `op`: the server's own
/// error when the status carries one, else the transport's failure mapped
/// to an unavailable variant (a request the server refused before decoding
/// it, such as an oversized one, is `Rejected`).
pub fn status_to_error(op: OpClass, waited: Duration, s: &Status) -> DiskError {
    if !s.details().is_empty() {
        return match WireError::decode(s.details()) {
            Ok(w) => error_from_wire(w),
            Err(e) => DiskError::Rejected {
                reason: format!("undecodable error details: {e}"),
            },
        };
    }
    let reason = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::DeadlineExceeded | Code::Cancelled => DiskError::DeadlineExceeded { op, waited },
        Code::ResourceExhausted
        | Code::OutOfRange
        | Code::InvalidArgument
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => DiskError::Rejected { reason },
        Code::Ok
        | Code::Unknown
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::Unavailable => DiskError::Unreachable { reason },
    }
}

// ---- values ----------------------------------------------------------------

/// A time on the wire.
pub fn time_to_wire(t: SystemTime) -> proto::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => proto::Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            proto::Timestamp {
                secs: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            }
        }
    }
}

/// A time from the wire (a missing or absurd one is the epoch).
pub fn time_from_wire(t: Option<proto::Timestamp>) -> SystemTime {
    let Some(t) = t else { return UNIX_EPOCH };
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    let secs = Duration::from_secs(t.secs.unsigned_abs());
    let span = secs.checked_add(nanos).unwrap_or(secs);
    let at = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    };
    at.unwrap_or(UNIX_EPOCH)
}

/// A disk id on the wire.
pub fn id_to_wire(id: &DiskId) -> proto::DiskIdMsg {
    proto::DiskIdMsg {
        uuid: id.uuid.as_bytes().to_vec(),
        set_index: id.set_index,
        disk_index: id.disk_index,
    }
}

/// A disk id from the wire.
pub fn id_from_wire(m: proto::DiskIdMsg) -> Result<DiskId, DiskError> {
    let uuid = uuid::Uuid::from_slice(&m.uuid).map_err(|e| DiskError::Rejected {
        reason: format!("bad disk uuid from peer: {e}"),
    })?;
    Ok(DiskId {
        uuid,
        set_index: m.set_index,
        disk_index: m.disk_index,
    })
}

/// A disk info on the wire.
pub fn info_to_wire(i: &DiskInfo) -> proto::DiskInfoMsg {
    proto::DiskInfoMsg {
        id: i.id.as_ref().map(id_to_wire),
        total: i.total,
        free: i.free,
        used: i.used,
        files: i.files,
        files_free: i.files_free,
        state: i.state as u32,
        in_flight: i.in_flight as u64,
        zombies: i.zombies as u64,
    }
}

/// A disk info from the wire (an unknown state reads as Faulty).
pub fn info_from_wire(m: proto::DiskInfoMsg) -> Result<DiskInfo, DiskError> {
    Ok(DiskInfo {
        id: m.id.map(id_from_wire).transpose()?,
        total: m.total,
        free: m.free,
        used: m.used,
        files: m.files,
        files_free: m.files_free,
        state: u8::try_from(m.state)
            .ok()
            .and_then(HealthState::from_u8)
            .unwrap_or(HealthState::Faulty),
        in_flight: usize::try_from(m.in_flight).unwrap_or(usize::MAX),
        zombies: usize::try_from(m.zombies).unwrap_or(usize::MAX),
    })
}

/// A volume on the wire.
pub fn vol_to_wire(v: &VolInfo) -> proto::VolInfoMsg {
    proto::VolInfoMsg {
        name: v.name.clone(),
        created: Some(time_to_wire(v.created)),
    }
}

/// A volume from the wire.
pub fn vol_from_wire(m: proto::VolInfoMsg) -> VolInfo {
    VolInfo {
        name: m.name,
        created: time_from_wire(m.created),
    }
}

/// File metadata on the wire.
pub fn file_to_wire(f: &FileInfo) -> proto::FileInfoMsg {
    proto::FileInfoMsg {
        size: f.size,
        modified: Some(time_to_wire(f.modified)),
        is_dir: f.is_dir,
    }
}

/// File metadata from the wire.
pub fn file_from_wire(m: proto::FileInfoMsg) -> FileInfo {
    FileInfo {
        size: m.size,
        modified: time_from_wire(m.modified),
        is_dir: m.is_dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<DiskError> {
        let op = OpClass::ReadFileAt;
        let errno = Errno(5);
        let mut v = vec![
            DiskError::DeadlineExceeded {
                op,
                waited: Duration::from_micros(1234),
            },
            DiskError::Faulty { reason: "f".into() },
            DiskError::Unreachable { reason: "u".into() },
            DiskError::CircuitOpen {
                peer: "node4".into(),
            },
            DiskError::Busy { reason: "b".into() },
            DiskError::Rejected { reason: "r".into() },
            DiskError::DiskNotFound { reason: "d".into() },
            DiskError::DeviceGone {
                op,
                errno: Errno(107),
            },
            DiskError::ShutDown,
            DiskError::InvalidArgument { reason: "a".into() },
            DiskError::VolumeNotFound,
            DiskError::VolumeExists,
            DiskError::VolumeNotEmpty,
            DiskError::FileNotFound,
            DiskError::FileExists,
            DiskError::WrongFileType(WrongType::IsDirectory),
            DiskError::WrongFileType(WrongType::NotDirectory),
            DiskError::DirectoryNotEmpty,
            DiskError::NoSpace,
            DiskError::PermissionDenied,
            DiskError::ReadOnly {
                op: OpClass::WriteAll,
            },
            DiskError::InUse { reason: "i".into() },
            DiskError::Unformatted,
            DiskError::AlreadyFormatted,
            DiskError::CorruptFormat { reason: "c".into() },
            DiskError::TooLarge { size: 9, limit: 3 },
            DiskError::UnexpectedEof { wanted: 7, got: 2 },
            DiskError::MediaError { op, errno },
            DiskError::NotDurable {
                op: OpClass::RenameFile,
                cause: Box::new(DiskError::DeadlineExceeded {
                    op: OpClass::RenameFile,
                    waited: Duration::from_millis(3),
                }),
            },
            DiskError::Io {
                op,
                errno: Errno(22),
            },
        ];
        for rule in PATH_RULES {
            v.push(DiskError::InvalidPath {
                path: "a/../b".into(),
                rule,
            });
        }
        for op in OpClass::ALL {
            v.push(DiskError::ReadOnly { op });
        }
        v
    }

    #[test]
    fn every_variant_round_trips_through_the_wire_and_a_status() {
        let all = every_variant();
        let mut kinds: Vec<&str> = all.iter().map(|e| e.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        // One entry per DiskError variant (see DiskError::kind).
        assert_eq!(kinds.len(), 30, "{kinds:?}");
        for e in all {
            let back =
                error_from_wire(WireError::decode(&*error_to_wire(&e).encode_to_vec()).unwrap());
            assert_eq!(back, e, "wire");
            let status = error_to_status(&e);
            let back = status_to_error(OpClass::Probe, Duration::ZERO, &status);
            assert_eq!(back, e, "status");
            assert_eq!(back.availability(), e.availability());
        }
    }

    #[test]
    fn bad_wire_values_decode_to_typed_errors() {
        let unknown = WireError {
            kind: "from_the_future".into(),
            ..WireError::default()
        };
        assert!(matches!(
            error_from_wire(unknown),
            DiskError::Rejected { .. }
        ));
        let bad_cause = WireError {
            kind: "not_durable".into(),
            cause: vec![0xff, 0xff, 0xff],
            ..WireError::default()
        };
        assert!(matches!(
            error_from_wire(bad_cause),
            DiskError::NotDurable { cause, .. } if matches!(*cause, DiskError::Rejected { .. })
        ));
        // A self-nesting chain stops at the depth limit.
        let mut w = WireError {
            kind: "io".into(),
            ..WireError::default()
        };
        for _ in 0..50 {
            w = WireError {
                kind: "not_durable".into(),
                cause: w.encode_to_vec(),
                ..WireError::default()
            };
        }
        let mut e = error_from_wire(w);
        let mut depth = 0;
        while let DiskError::NotDurable { cause, .. } = e {
            e = *cause;
            depth += 1;
        }
        assert!(depth <= MAX_CAUSE_DEPTH + 1);
        assert!(matches!(e, DiskError::Rejected { .. }));
        let s = Status::with_details(Code::Unknown, "x", vec![1, 2, 3].into());
        assert!(matches!(
            status_to_error(OpClass::ReadAll, Duration::ZERO, &s),
            DiskError::Rejected { .. }
        ));
    }

    #[test]
    fn transport_statuses_map_to_unavailable_variants() {
        let waited = Duration::from_millis(5);
        let s = Status::unavailable("connection refused");
        assert!(matches!(
            status_to_error(OpClass::ReadAll, waited, &s),
            DiskError::Unreachable { .. }
        ));
        let s = Status::deadline_exceeded("late");
        assert_eq!(
            status_to_error(OpClass::ReadAll, waited, &s),
            DiskError::DeadlineExceeded {
                op: OpClass::ReadAll,
                waited
            }
        );
        let s = Status::resource_exhausted("message too large");
        assert!(matches!(
            status_to_error(OpClass::ReadAll, waited, &s),
            DiskError::Rejected { .. }
        ));
    }

    #[test]
    fn values_round_trip() {
        let id = DiskId {
            uuid: uuid::Uuid::new_v4(),
            set_index: 1,
            disk_index: 7,
        };
        assert_eq!(id_from_wire(id_to_wire(&id)), Ok(id));
        let info = DiskInfo {
            id: Some(id),
            total: 10,
            free: 4,
            used: 6,
            files: 100,
            files_free: 50,
            state: HealthState::Suspect,
            in_flight: 3,
            zombies: 1,
        };
        assert_eq!(info_from_wire(info_to_wire(&info)), Ok(info));
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(time_from_wire(Some(time_to_wire(t))), t);
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(time_from_wire(Some(time_to_wire(before))), before);
        assert!(id_from_wire(proto::DiskIdMsg {
            uuid: vec![1, 2],
            set_index: 0,
            disk_index: 0
        })
        .is_err());
    }
}
