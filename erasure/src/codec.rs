//! Reed-Solomon coding of one block and the shard file layout.
//!
//! A shard file is a run of shard blocks, each `HASH_LEN` bytes of BLAKE3
//! over the shard bytes followed by the shard bytes. Block `b` of an object
//! of `size` bytes with blocks of `block_size` covers object bytes
//! `b*block_size ..`; its shard bytes are `shard_len(block_len)` long: the
//! block split over `data` shards, rounded up to an even length (the
//! codec's rule), the last data shard zero-padded.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::ErasureError;

/// Bytes of the per-block checksum.
pub const HASH_LEN: usize = 32;

/// BLAKE3 of `data`.
pub fn hash(data: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(data).as_bytes()
}

/// The geometry of one object's shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Data shards.
    pub data: usize,
    /// Parity shards.
    pub parity: usize,
    /// Object bytes per block.
    pub block_size: u64,
    /// Object size.
    pub size: u64,
}

impl Geometry {
    /// Total shards.
    pub fn shards(&self) -> usize {
        self.data + self.parity
    }
    /// Number of blocks (0 for an empty object).
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }
    /// Object bytes in block `b`.
    pub fn block_len(&self, b: u64) -> u64 {
        debug_assert!(b < self.blocks());
        (self.size - b * self.block_size).min(self.block_size)
    }
    /// Shard bytes (without checksum) for a block of `block_len` bytes.
    pub fn shard_len(&self, block_len: u64) -> usize {
        let per = block_len.div_ceil(self.data as u64) as usize;
        per.max(1).next_multiple_of(2)
    }
    /// Offset of block `b` in a shard file and its length with checksum.
    pub fn shard_block(&self, b: u64) -> (u64, usize) {
        let full = (HASH_LEN + self.shard_len(self.block_size)) as u64;
        (b * full, HASH_LEN + self.shard_len(self.block_len(b)))
    }
    /// Size of every shard file.
    pub fn shard_file_size(&self) -> u64 {
        let n = self.blocks();
        if n == 0 {
            return 0;
        }
        let (off, len) = self.shard_block(n - 1);
        off + len as u64
    }
}

/// Encoder for one object (reuses its working space across blocks).
pub struct Encoder {
    data: usize,
    parity: usize,
    rs: Option<ReedSolomonEncoder>,
}

fn codec(e: reed_solomon_simd::Error) -> ErasureError {
    ErasureError::Codec {
        reason: e.to_string(),
    }
}

impl Encoder {
    /// An encoder for `data` + `parity`.
    pub fn new(data: usize, parity: usize) -> Encoder {
        Encoder {
            data,
            parity,
            rs: None,
        }
    }

    /// Split `block` into `data` shards of `shard_len` (zero-padded) and
    /// compute the parity; returns every shard with its checksum in front
    /// (`HASH_LEN + shard_len` bytes each, data shards first).
    pub fn encode(&mut self, block: &[u8], shard_len: usize) -> Result<Vec<Vec<u8>>, ErasureError> {
        assert!(shard_len.is_multiple_of(2) && shard_len * self.data >= block.len());
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(self.data + self.parity);
        for i in 0..self.data {
            let mut s = vec![0u8; HASH_LEN + shard_len];
            let start = (i * shard_len).min(block.len());
            let end = ((i + 1) * shard_len).min(block.len());
            s[HASH_LEN..HASH_LEN + end - start].copy_from_slice(&block[start..end]);
            out.push(s);
        }
        let rs = match self.rs.as_mut() {
            Some(rs) => {
                rs.reset(self.data, self.parity, shard_len).map_err(codec)?;
                rs
            }
            None => self
                .rs
                .insert(ReedSolomonEncoder::new(self.data, self.parity, shard_len).map_err(codec)?),
        };
        for s in &out {
            rs.add_original_shard(&s[HASH_LEN..]).map_err(codec)?;
        }
        let result = rs.encode().map_err(codec)?;
        for r in result.recovery_iter() {
            let mut s = Vec::with_capacity(HASH_LEN + shard_len);
            s.extend_from_slice(&[0u8; HASH_LEN]);
            s.extend_from_slice(r);
            out.push(s);
        }
        drop(result);
        for s in &mut out {
            let h = hash(&s[HASH_LEN..]);
            s[..HASH_LEN].copy_from_slice(&h);
        }
        Ok(out)
    }
}

/// Whether a shard block (checksum + bytes) is intact.
pub fn verify(block: &[u8]) -> bool {
    block.len() > HASH_LEN && hash(&block[HASH_LEN..]) == block[..HASH_LEN]
}

/// Rebuild the shards of a block from at least `data` verified ones
/// (`shards[i]` is `Some(bytes without checksum)` when present). Returns the
/// `data` original shards, followed by the `parity` ones when
/// `with_parity`, all without checksums.
pub fn reconstruct(
    data: usize,
    parity: usize,
    shard_len: usize,
    mut shards: Vec<Option<Vec<u8>>>,
    with_parity: bool,
) -> Result<Vec<Vec<u8>>, ErasureError> {
    assert_eq!(shards.len(), data + parity);
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < data {
        return Err(ErasureError::Codec {
            reason: format!("{present} shards present, {data} needed"),
        });
    }
    let given_parity = shards.split_off(data);
    let mut originals = shards;
    if originals.iter().any(Option::is_none) {
        let mut dec = ReedSolomonDecoder::new(data, parity, shard_len).map_err(codec)?;
        for (i, s) in originals.iter().enumerate() {
            if let Some(s) = s {
                dec.add_original_shard(i, s).map_err(codec)?;
            }
        }
        for (i, s) in given_parity.iter().enumerate() {
            if let Some(s) = s {
                dec.add_recovery_shard(i, s).map_err(codec)?;
            }
        }
        let res = dec.decode().map_err(codec)?;
        for (i, s) in res.restored_original_iter() {
            originals[i] = Some(s.to_vec());
        }
    }
    let originals: Vec<Vec<u8>> = originals
        .into_iter()
        .map(|s| s.expect("decoder restores every missing original"))
        .collect();
    let mut all = originals;
    if !with_parity {
        return Ok(all);
    }
    if given_parity.iter().any(Option::is_none) {
        let mut enc = ReedSolomonEncoder::new(data, parity, shard_len).map_err(codec)?;
        for s in &all {
            enc.add_original_shard(s).map_err(codec)?;
        }
        let res = enc.encode().map_err(codec)?;
        let rec: Vec<Vec<u8>> = res.recovery_iter().map(<[u8]>::to_vec).collect();
        drop(res);
        all.extend(rec);
    } else {
        all.extend(given_parity.into_iter().map(|s| s.expect("present")));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_odd_sizes() {
        let g = Geometry {
            data: 4,
            parity: 4,
            block_size: 1 << 20,
            size: (1 << 20) + 3,
        };
        assert_eq!(g.blocks(), 2);
        assert_eq!(g.block_len(1), 3);
        assert_eq!(g.shard_len(3), 2);
        assert_eq!(g.shard_len(1 << 20), 1 << 18);
        assert_eq!(
            g.shard_file_size(),
            (HASH_LEN as u64 + (1 << 18)) + HASH_LEN as u64 + 2
        );
        let empty = Geometry { size: 0, ..g };
        assert_eq!(empty.blocks(), 0);
        assert_eq!(empty.shard_file_size(), 0);
    }

    #[test]
    fn encode_then_rebuild_from_any_four() {
        let block: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
        let g = Geometry {
            data: 4,
            parity: 4,
            block_size: 1001,
            size: 1001,
        };
        let len = g.shard_len(1001);
        let shards = Encoder::new(4, 4).encode(&block, len).unwrap();
        assert!(shards.iter().all(|s| verify(s)));
        for missing in [[0usize, 1, 2, 3], [4, 5, 6, 7], [0, 2, 5, 7]] {
            let given: Vec<Option<Vec<u8>>> = (0..8)
                .map(|i| (!missing.contains(&i)).then(|| shards[i][HASH_LEN..].to_vec()))
                .collect();
            let all = reconstruct(4, 4, len, given, true).unwrap();
            for i in 0..8 {
                assert_eq!(all[i], shards[i][HASH_LEN..], "shard {i}");
            }
            let joined: Vec<u8> = all[..4].concat();
            assert_eq!(&joined[..1001], &block[..]);
        }
        let mut bad = shards[0].clone();
        bad[HASH_LEN + 3] ^= 1;
        assert!(!verify(&bad));
    }
}
