//! Field offsets the probes need, derived from the running kernel's BTF.
//!
//! rustc emits no CO-RE relocations, so instead of the kernel fixing up
//! field accesses at load time, the loader looks the fields up here and
//! passes the byte offsets in the `OFFSETS` global:
//!
//! * `request.q` → `request_queue.disk` → `gendisk.{major, first_minor}`
//!   (or `request.rq_disk` on kernels before 5.19, which still have it);
//! * `request.cmd_flags` (operation in the low `REQ_OP_BITS` bits) and
//!   `request.__data_len` (bytes).
//!
//! `REQ_OP_BITS` is a macro, not a type, but the kernel defines
//! `enum req_flag_bits { __REQ_FAILFAST_DEV = REQ_OP_BITS, ... }`, so BTF
//! carries it anyway.
//!
//! Why not the classic tracepoint's `format` file: it describes the
//! tracepoint's *record* (`dev`, `sector`, `rwbs`, ...), not `struct
//! request`, and a record has no request pointer to key in-flight requests
//! by. Without BTF the loader stops with a clear message (or takes a BTF
//! file for the kernel with `--btf`).

use probes_ebpf_common::{Offsets, FLAG_RQ_DISK, FLAG_VALID};

use crate::btf::{Btf, Kind};

/// Default `REQ_OP_BITS` (8 since Linux 4.10) when BTF lacks the enum.
const DEFAULT_REQ_OP_BITS: u32 = 8;

/// What is missing or unexpected in the BTF.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffsetError {
    /// A structure the probes read is not described.
    #[error("BTF has no struct {0}")]
    MissingStruct(&'static str),
    /// A field the probes read is missing.
    #[error("struct {ty} has no field {field}")]
    MissingField {
        /// The structure.
        ty: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field has an unexpected size or is a bitfield.
    #[error("field {ty}.{field} is {found}, expected {expected}")]
    UnexpectedField {
        /// The structure.
        ty: &'static str,
        /// The field.
        field: &'static str,
        /// What the BTF says.
        found: String,
        /// What the probes read.
        expected: &'static str,
    },
}

fn field(
    btf: &Btf,
    id: u32,
    ty: &'static str,
    name: &'static str,
    size: u32,
) -> Result<u32, OffsetError> {
    let m = btf
        .member(id, name)
        .ok_or(OffsetError::MissingField { ty, field: name })?;
    let expected = if size == 8 {
        "a pointer (8 bytes)"
    } else {
        "4 bytes"
    };
    let got = btf.size_of(m.type_id);
    if m.bitfield_size != 0 || m.bit_offset % 8 != 0 || got != Some(size) {
        return Err(OffsetError::UnexpectedField {
            ty,
            field: name,
            found: match (m.bitfield_size, got) {
                (0, Some(s)) => format!("{s} bytes at bit {}", m.bit_offset),
                (0, None) => "of unknown size".to_owned(),
                (b, _) => format!("a {b}-bit bitfield"),
            },
            expected,
        });
    }
    Ok(m.bit_offset / 8)
}

fn find_struct(btf: &Btf, name: &'static str) -> Result<u32, OffsetError> {
    btf.find(name, Kind::Struct)
        .ok_or(OffsetError::MissingStruct(name))
}

/// Derives the probes' offsets from `btf` (filters are added later by the
/// loader).
pub fn derive(btf: &Btf) -> Result<Offsets, OffsetError> {
    let request = find_struct(btf, "request")?;
    let gendisk = find_struct(btf, "gendisk")?;
    let mut off = Offsets {
        rq_cmd_flags: field(btf, request, "request", "cmd_flags", 4)?,
        rq_data_len: field(btf, request, "request", "__data_len", 4)?,
        disk_major: field(btf, gendisk, "gendisk", "major", 4)?,
        disk_first_minor: field(btf, gendisk, "gendisk", "first_minor", 4)?,
        flags: FLAG_VALID,
        ..Offsets::default()
    };
    if btf.member(request, "rq_disk").is_some() {
        off.rq_disk = field(btf, request, "request", "rq_disk", 8)?;
        off.flags |= FLAG_RQ_DISK;
    } else {
        let queue = find_struct(btf, "request_queue")?;
        off.rq_q = field(btf, request, "request", "q", 8)?;
        off.q_disk = field(btf, queue, "request_queue", "disk", 8)?;
    }
    let op_bits = btf
        .find("req_flag_bits", Kind::Enum)
        .and_then(|id| {
            btf.enum_values(id)
                .into_iter()
                .find(|(n, _)| n == "__REQ_FAILFAST_DEV")
        })
        .and_then(|(_, v)| u32::try_from(v).ok())
        .filter(|&b| (1..32).contains(&b))
        .unwrap_or(DEFAULT_REQ_OP_BITS);
    off.op_mask = (1u32 << op_bits) - 1;
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::Builder;
    use std::path::Path;

    #[test]
    fn running_kernel() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("vmlinux BTF");
        let off = derive(&btf).expect("offsets");
        assert_eq!(off.flags & FLAG_VALID, FLAG_VALID);
        assert_eq!(off.op_mask, 0xff, "REQ_OP_BITS is 8 on 6.x");
        // 6.18 has no request.rq_disk: the disk comes through the queue.
        assert_eq!(off.flags & FLAG_RQ_DISK, 0);
        assert_eq!(off.rq_q, 0, "q is the first field of struct request");
        assert!(off.q_disk > 0 && off.disk_first_minor > off.disk_major);
    }

    fn tiny(with_rq_disk: bool, data_len_bits: u32) -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("unsigned int", 1, 0, false, 4, &[32]); // 1
        b.ty("", 2, 0, false, 1, &[]); // 2: pointer
        let (maj, fm) = (b.str("major"), b.str("first_minor"));
        b.ty("gendisk", 4, 2, false, 16, &[maj, 1, 0, fm, 1, 32]); // 3
        let disk = b.str("disk");
        b.ty("request_queue", 4, 1, false, 64, &[disk, 2, 128]); // 4
        let (q, cf, dl, rd) = (
            b.str("q"),
            b.str("cmd_flags"),
            b.str("__data_len"),
            b.str("rq_disk"),
        );
        let mut m = vec![
            q,
            2,
            0,
            cf,
            1,
            64,
            dl,
            1,
            if data_len_bits == 0 {
                96
            } else {
                (data_len_bits << 24) | 96
            },
        ];
        if with_rq_disk {
            m.extend([rd, 2, 128]);
        }
        b.ty(
            "request",
            4,
            (m.len() / 3) as u32,
            data_len_bits != 0,
            64,
            &m,
        ); // 5
        let ff = b.str("__REQ_FAILFAST_DEV");
        b.ty("req_flag_bits", 6, 1, false, 4, &[ff, 9]);
        b.build()
    }

    #[test]
    fn queue_disk_layout() {
        let btf = Btf::parse(&tiny(false, 0)).expect("parse");
        let off = derive(&btf).expect("offsets");
        assert_eq!(
            off,
            Offsets {
                rq_q: 0,
                rq_disk: 0,
                q_disk: 16,
                disk_major: 0,
                disk_first_minor: 4,
                rq_cmd_flags: 8,
                rq_data_len: 12,
                op_mask: 0x1ff,
                flags: FLAG_VALID,
                _pad: 0,
            }
        );
    }

    #[test]
    fn old_kernels_with_rq_disk() {
        let btf = Btf::parse(&tiny(true, 0)).expect("parse");
        let off = derive(&btf).expect("offsets");
        assert_eq!(off.flags, FLAG_VALID | FLAG_RQ_DISK);
        assert_eq!(off.rq_disk, 16);
    }

    #[test]
    fn bitfields_are_refused() {
        let btf = Btf::parse(&tiny(false, 20)).expect("parse");
        assert!(matches!(
            derive(&btf),
            Err(OffsetError::UnexpectedField {
                field: "__data_len",
                ..
            })
        ));
    }

    #[test]
    fn missing_struct() {
        let mut b = Builder::new();
        b.ty("int", 1, 0, false, 4, &[32]);
        let btf = Btf::parse(&b.build()).expect("parse");
        assert_eq!(derive(&btf), Err(OffsetError::MissingStruct("request")));
    }
}
