//! A small reader of BTF (the kernel's type format) — just enough to find a
//! struct's member offsets and an enum's values.
//!
//! aya parses BTF too, but keeps struct members private; this reader keeps
//! the raw bytes plus an index of where each type starts, and decodes
//! members only for the few types the loader asks about.
//! Format: `Documentation/bpf/btf.rst` in the kernel tree.

use std::path::Path;

/// BTF magic, in the file's byte order.
const MAGIC: u16 = 0xeb9f;
/// Size of `struct btf_header` version 1.
const HEADER_LEN: usize = 24;

/// What can be wrong with a BTF blob.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// Not BTF, or BTF of the other byte order.
    #[error("not a BTF file (magic {0:#06x}, expected 0xeb9f)")]
    BadMagic(u16),
    /// The header or a section points outside the data.
    #[error("truncated or corrupt BTF: {0}")]
    Corrupt(&'static str),
    /// A type kind this reader does not know; the layout after it is unknown.
    #[error("unknown BTF type kind {kind} (type id {id})")]
    UnknownKind {
        /// The kind number.
        kind: u32,
        /// The type id.
        id: u32,
    },
}

/// BTF type kinds (`BTF_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Integer.
    Int,
    /// Pointer.
    Ptr,
    /// Array.
    Array,
    /// Struct.
    Struct,
    /// Union.
    Union,
    /// Enum (32-bit values).
    Enum,
    /// Forward declaration.
    Fwd,
    /// Typedef.
    Typedef,
    /// `volatile`.
    Volatile,
    /// `const`.
    Const,
    /// `restrict`.
    Restrict,
    /// Function.
    Func,
    /// Function prototype.
    FuncProto,
    /// Variable.
    Var,
    /// Data section.
    Datasec,
    /// Floating point.
    Float,
    /// Declaration tag.
    DeclTag,
    /// Type tag.
    TypeTag,
    /// Enum (64-bit values).
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data after the 12-byte common header.
    fn extra_len(self, vlen: usize) -> usize {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
            Kind::Enum | Kind::FuncProto => 8 * vlen,
            Kind::Ptr
            | Kind::Fwd
            | Kind::Typedef
            | Kind::Volatile
            | Kind::Const
            | Kind::Restrict
            | Kind::Func
            | Kind::Float
            | Kind::TypeTag => 0,
        }
    }
}

/// One type's common header.
#[derive(Clone, Copy, Debug)]
pub struct TypeHeader {
    /// Offset of the name in the string section.
    name_off: u32,
    /// Kind.
    pub kind: Kind,
    /// `kind_flag` bit (for structs: member offsets carry bitfield sizes).
    kind_flag: bool,
    /// Number of members / values / parameters.
    vlen: usize,
    /// `size` (int, struct, union, enum, float, datasec) or `type`
    /// (ptr, typedef, modifiers, func, var).
    pub size_or_type: u32,
    /// Where the kind-specific data starts in the type section.
    extra: usize,
}

/// A struct or union member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name (empty for anonymous struct/union members).
    pub name: String,
    /// Its type id.
    pub type_id: u32,
    /// Offset from the start of the containing struct, in bits.
    pub bit_offset: u32,
    /// Bitfield width in bits (0 for a regular member).
    pub bitfield_size: u32,
}

/// A parsed BTF blob (types and strings; base BTF only).
#[derive(Debug)]
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// `index[id - 1]` = start of type `id` in `types`.
    index: Vec<TypeHeader>,
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    /// Reads and parses a BTF file (e.g. `/sys/kernel/btf/vmlinux`).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(BtfError::Read)?;
        Btf::parse(&data)
    }

    /// Parses a BTF blob in native byte order.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Corrupt("shorter than its header"))?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr = |off| u32_at(data, off).ok_or(BtfError::Corrupt("shorter than its header"));
        let hdr_len = hdr(4)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Corrupt("header too short"));
        }
        let (type_off, type_len) = (hdr(8)? as usize, hdr(12)? as usize);
        let (str_off, str_len) = (hdr(16)? as usize, hdr(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types = section(type_off, type_len)
            .ok_or(BtfError::Corrupt("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(BtfError::Corrupt("string section out of bounds"))?
            .to_vec();
        let mut index = Vec::new();
        let mut pos = 0;
        while pos < types.len() {
            let id = index.len() as u32 + 1;
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(&types, pos),
                u32_at(&types, pos + 4),
                u32_at(&types, pos + 8),
            ) else {
                return Err(BtfError::Corrupt("type header truncated"));
            };
            let raw_kind = (info >> 24) & 0x1f;
            let kind =
                Kind::from_raw(raw_kind).ok_or(BtfError::UnknownKind { kind: raw_kind, id })?;
            let vlen = (info & 0xffff) as usize;
            let extra = pos + 12;
            let next = extra + kind.extra_len(vlen);
            if next > types.len() {
                return Err(BtfError::Corrupt("type data truncated"));
            }
            index.push(TypeHeader {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                extra,
            });
            pos = next;
        }
        Ok(Btf {
            types,
            strings,
            index,
        })
    }

    /// Number of types (ids run from 1 to this).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the blob has no types.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn string(&self, off: u32) -> &str {
        let Some(rest) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The header of type `id` (`None` for 0 = void or out of range).
    pub fn header(&self, id: u32) -> Option<&TypeHeader> {
        self.index.get((id as usize).checked_sub(1)?)
    }

    /// Name of type `id`.
    pub fn name(&self, id: u32) -> &str {
        self.header(id).map_or("", |h| self.string(h.name_off))
    }

    /// The id of the first type named `name` of kind `kind`.
    pub fn find(&self, name: &str, kind: Kind) -> Option<u32> {
        self.index
            .iter()
            .position(|h| h.kind == kind && self.string(h.name_off) == name)
            .map(|i| i as u32 + 1)
    }

    /// Members of struct or union `id` (empty for other kinds).
    pub fn members(&self, id: u32) -> Vec<Member> {
        let Some(h) = self.header(id) else {
            return Vec::new();
        };
        if !matches!(h.kind, Kind::Struct | Kind::Union) {
            return Vec::new();
        }
        (0..h.vlen)
            .filter_map(|i| {
                let at = h.extra + 12 * i;
                let name_off = u32_at(&self.types, at)?;
                let type_id = u32_at(&self.types, at + 4)?;
                let offset = u32_at(&self.types, at + 8)?;
                let (bit_offset, bitfield_size) = if h.kind_flag {
                    (offset & 0xff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                Some(Member {
                    name: self.string(name_off).to_owned(),
                    type_id,
                    bit_offset,
                    bitfield_size,
                })
            })
            .collect()
    }

    /// Values of enum `id` (`Enum` or `Enum64`).
    pub fn enum_values(&self, id: u32) -> Vec<(String, i64)> {
        let Some(h) = self.header(id) else {
            return Vec::new();
        };
        match h.kind {
            Kind::Enum => (0..h.vlen)
                .filter_map(|i| {
                    let at = h.extra + 8 * i;
                    let name = self.string(u32_at(&self.types, at)?).to_owned();
                    Some((name, i64::from(u32_at(&self.types, at + 4)? as i32)))
                })
                .collect(),
            Kind::Enum64 => (0..h.vlen)
                .filter_map(|i| {
                    let at = h.extra + 12 * i;
                    let name = self.string(u32_at(&self.types, at)?).to_owned();
                    let lo = u64::from(u32_at(&self.types, at + 4)?);
                    let hi = u64::from(u32_at(&self.types, at + 8)?);
                    Some((name, ((hi << 32) | lo) as i64))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> u32 {
        // Bounded: a corrupt blob could contain a typedef cycle.
        for _ in 0..32 {
            match self.header(id) {
                Some(h)
                    if matches!(
                        h.kind,
                        Kind::Typedef
                            | Kind::Volatile
                            | Kind::Const
                            | Kind::Restrict
                            | Kind::TypeTag
                    ) =>
                {
                    id = h.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Size in bytes of type `id` after resolving typedefs (pointers are
    /// 8 bytes); `None` for types without a fixed size here.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        let h = self.header(self.resolve(id))?;
        match h.kind {
            Kind::Int | Kind::Enum | Kind::Enum64 | Kind::Struct | Kind::Union | Kind::Float => {
                Some(h.size_or_type)
            }
            Kind::Ptr => Some(8),
            _ => None,
        }
    }

    /// Finds member `name` of struct/union `id`, looking inside anonymous
    /// struct and union members too (the kernel uses them a lot); returns
    /// the member with its bit offset from the start of `id`.
    pub fn member(&self, id: u32, name: &str) -> Option<Member> {
        self.member_in(id, name, 0, 0)
    }

    fn member_in(&self, id: u32, name: &str, base_bits: u32, depth: u32) -> Option<Member> {
        if depth > 8 {
            return None;
        }
        let members = self.members(self.resolve(id));
        for m in &members {
            if m.name == name {
                return Some(Member {
                    bit_offset: base_bits + m.bit_offset,
                    ..m.clone()
                });
            }
        }
        members
            .iter()
            .filter(|m| m.name.is_empty())
            .find_map(|m| self.member_in(m.type_id, name, base_bits + m.bit_offset, depth + 1))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tiny BTF blob: types as (name, info, size_or_type, extra
    /// u32s), strings section built from the names used.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        pub(crate) fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        pub(crate) fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) {
            let n = self.str(name);
            let info = (kind << 24) | vlen | (u32::from(kflag) << 31);
            for v in [n, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&v.to_ne_bytes());
            }
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.push(1);
            out.push(0);
            for v in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let mut b = Builder::new();
        // 1: int (4 bytes)
        b.ty("int", 1, 0, false, 4, &[32]);
        // 2: typedef myint -> 1
        b.ty("myint", 8, 0, false, 1, &[]);
        // 3: union { int a; myint b; } (anonymous)
        let (a, bb) = (b.str("a"), b.str("b"));
        b.ty("", 5, 2, false, 4, &[a, 1, 0, bb, 2, 0]);
        // 4: ptr -> 1
        b.ty("", 2, 0, false, 1, &[]);
        // 5: struct s { ptr p; <anon union> at 64; int bits:3 at 96 }
        let (p, bits) = (b.str("p"), b.str("bits"));
        b.ty(
            "s",
            4,
            3,
            true,
            16,
            &[p, 4, 0, 0, 3, 64, bits, 1, (3 << 24) | 96],
        );
        let btf = Btf::parse(&b.build()).expect("parse");
        assert_eq!(btf.len(), 5);
        let s = btf.find("s", Kind::Struct).expect("struct s");
        assert_eq!(s, 5);
        let p = btf.member(s, "p").expect("p");
        assert_eq!((p.bit_offset, btf.size_of(p.type_id)), (0, Some(8)));
        let m = btf.member(s, "b").expect("b inside the anonymous union");
        assert_eq!(m.bit_offset, 64);
        assert_eq!(btf.size_of(m.type_id), Some(4));
        let bits = btf.member(s, "bits").expect("bits");
        assert_eq!((bits.bit_offset, bits.bitfield_size), (96, 3));
        assert!(btf.member(s, "nope").is_none());
        assert!(btf.find("s", Kind::Union).is_none());
    }

    #[test]
    fn enums() {
        let mut b = Builder::new();
        let (x, y) = (b.str("X"), b.str("Y"));
        b.ty("e", 6, 2, false, 4, &[x, 8, y, u32::MAX]);
        let btf = Btf::parse(&b.build()).expect("parse");
        let e = btf.find("e", Kind::Enum).expect("enum");
        assert_eq!(
            btf.enum_values(e),
            vec![("X".to_owned(), 8), ("Y".to_owned(), -1)]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"hello world, not btf at all"),
            Err(BtfError::BadMagic(_))
        ));
        assert!(matches!(Btf::parse(&[0x9f]), Err(BtfError::Corrupt(_))));
        let mut b = Builder::new();
        b.ty("int", 1, 0, false, 4, &[32]);
        let mut data = b.build();
        data.truncate(data.len() - 8);
        assert!(Btf::parse(&data).is_err());
        let mut b = Builder::new();
        b.ty("weird", 30, 0, false, 4, &[]);
        assert!(matches!(
            Btf::parse(&b.build()),
            Err(BtfError::UnknownKind { kind: 30, id: 1 })
        ));
    }

    #[test]
    fn reads_the_running_kernel() {
        // Every CI machine of this project has BTF (DESIGN.md "This machine").
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("vmlinux BTF");
        assert!(btf.len() > 1000);
        let rq = btf.find("request", Kind::Struct).expect("struct request");
        assert!(btf.member(rq, "q").is_some());
    }
}
