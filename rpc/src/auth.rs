//! Per-request authentication: HMAC-SHA256 over the method, the caller's
//! budget, a timestamp, a nonce and the SHA-256 of the encoded body, with a
//! replay window and a bounded nonce cache.
//!
//! Why HMAC rather than mTLS: every node of a cluster already shares one
//! secret (the cluster config file); HMAC needs no certificate authority,
//! no rotation of per-node certificates and no TLS handshake on the
//! liveness path, and it authenticates each request (not just the
//! connection), so a replayed or tampered request is refused on its own.
//! It does not encrypt: the node RPC runs on the cluster's private network.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use prost::Message;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::Request;

type HmacSha256 = Hmac<Sha256>;

/// Metadata key: unix time of signing, milliseconds.
pub const H_TS: &str = "x-dio-ts";
/// Metadata key: 16 random bytes, hex.
pub const H_NONCE: &str = "x-dio-nonce";
/// Metadata key: the caller's remaining budget, microseconds.
pub const H_BUDGET: &str = "x-dio-budget";
/// Metadata key: the signature, hex.
pub const H_SIG: &str = "x-dio-sig";

/// Why a request was not authenticated. Every case is refused before the
/// request touches a disk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header is not in its format.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The timestamp is outside the replay window.
    #[error("timestamp outside the replay window")]
    Stale,
    /// The signature does not match (wrong secret or tampered request).
    #[error("bad signature")]
    BadSignature,
    /// The nonce was seen before.
    #[error("replayed request")]
    Replayed,
    /// The nonce cache is full of unexpired nonces (a flood); refusing is
    /// safer than forgetting one.
    #[error("nonce cache full")]
    CacheFull,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn mac(
    secret: &[u8],
    method: &str,
    ts: u64,
    nonce: &[u8; 16],
    budget_us: u64,
    body: &[u8],
) -> HmacSha256 {
    let digest = Sha256::digest(body);
    // Hmac accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [
        method.as_bytes(),
        &ts.to_be_bytes(),
        nonce,
        &budget_us.to_be_bytes(),
        &digest,
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m
}

fn ascii(s: String) -> AsciiMetadataValue {
    // Hex and decimal digits are always valid metadata.
    AsciiMetadataValue::try_from(s).expect("ascii metadata")
}

/// Signs `req` for `method` (the gRPC path, e.g. `/diskio.rpc.v1.DiskService/ReadAll`).
pub fn sign<T: Message>(secret: &[u8], method: &str, budget: Duration, req: &mut Request<T>) {
    let ts = unix_ms(SystemTime::now());
    let nonce: [u8; 16] = rand::random();
    let budget_us = u64::try_from(budget.as_micros()).unwrap_or(u64::MAX);
    let body = req.get_ref().encode_to_vec();
    let sig = mac(secret, method, ts, &nonce, budget_us, &body)
        .finalize()
        .into_bytes();
    let md = req.metadata_mut();
    md.insert(H_TS, ascii(ts.to_string()));
    md.insert(H_NONCE, ascii(hex::encode(nonce)));
    md.insert(H_BUDGET, ascii(budget_us.to_string()));
    md.insert(H_SIG, ascii(hex::encode(sig)));
}

fn header<'a>(md: &'a MetadataMap, key: &'static str) -> Result<&'a str, AuthError> {
    md.get(key)
        .ok_or(AuthError::Missing(key))?
        .to_str()
        .map_err(|_| AuthError::Malformed(key))
}

/// Remembers nonces until their timestamp leaves the replay window.
#[derive(Debug)]
struct NonceCache {
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
    cap: usize,
}

impl NonceCache {
    fn insert(&mut self, nonce: [u8; 16], expires_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        while let Some(&(n, exp)) = self.order.front() {
            if exp > now_ms {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&n) == Some(&exp) {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= self.cap {
            return Err(AuthError::CacheFull);
        }
        self.seen.insert(nonce, expires_ms);
        self.order.push_back((nonce, expires_ms));
        Ok(())
    }
}

/// The server's side: checks signatures, the window and the nonces.
#[derive(Debug)]
pub struct Verifier {
    secret: Vec<u8>,
    window_ms: u64,
    cache: Mutex<NonceCache>,
}

impl Verifier {
    /// A verifier for `secret` with a replay window and a nonce cache bound.
    pub fn new(secret: &[u8], window: Duration, cache_entries: usize) -> Verifier {
        Verifier {
            secret: secret.to_vec(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            cache: Mutex::new(NonceCache {
                seen: HashMap::new(),
                order: VecDeque::new(),
                cap: cache_entries,
            }),
        }
    }

    /// Checks `req` for `method`; returns the caller's budget.
    pub fn verify<T: Message>(
        &self,
        method: &str,
        req: &Request<T>,
    ) -> Result<Duration, AuthError> {
        self.verify_at(method, req, SystemTime::now())
    }

    fn verify_at<T: Message>(
        &self,
        method: &str,
        req: &Request<T>,
        now: SystemTime,
    ) -> Result<Duration, AuthError> {
        let md = req.metadata();
        let ts: u64 = header(md, H_TS)?
            .parse()
            .map_err(|_| AuthError::Malformed(H_TS))?;
        let budget_us: u64 = header(md, H_BUDGET)?
            .parse()
            .map_err(|_| AuthError::Malformed(H_BUDGET))?;
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(header(md, H_NONCE)?, &mut nonce)
            .map_err(|_| AuthError::Malformed(H_NONCE))?;
        let mut sig = [0u8; 32];
        hex::decode_to_slice(header(md, H_SIG)?, &mut sig)
            .map_err(|_| AuthError::Malformed(H_SIG))?;
        let now_ms = unix_ms(now);
        if ts.abs_diff(now_ms) > self.window_ms {
            return Err(AuthError::Stale);
        }
        let body = req.get_ref().encode_to_vec();
        let expect = mac(&self.secret, method, ts, &nonce, budget_us, &body)
            .finalize()
            .into_bytes();
        if !bool::from(expect.as_slice().ct_eq(&sig)) {
            return Err(AuthError::BadSignature);
        }
        // Only authentic requests reach the cache, so a flood of forgeries
        // cannot fill it.
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nonce, ts.saturating_add(self.window_ms), now_ms)?;
        Ok(Duration::from_micros(budget_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PathRequest;

    const M: &str = "/diskio.rpc.v1.DiskService/ReadAll";

    fn req() -> Request<PathRequest> {
        Request::new(PathRequest {
            disk: 0,
            vol: "v".into(),
            path: "p".into(),
        })
    }

    fn signed(secret: &[u8]) -> Request<PathRequest> {
        let mut r = req();
        sign(secret, M, Duration::from_millis(1500), &mut r);
        r
    }

    fn copy(r: &Request<PathRequest>) -> Request<PathRequest> {
        let mut c = Request::new(r.get_ref().clone());
        *c.metadata_mut() = r.metadata().clone();
        c
    }

    #[test]
    fn good_request_passes_once_with_its_budget() {
        let v = Verifier::new(b"secret-secret-secret", Duration::from_secs(30), 16);
        let r = signed(b"secret-secret-secret");
        assert_eq!(v.verify(M, &r), Ok(Duration::from_millis(1500)));
        assert_eq!(v.verify(M, &copy(&r)), Err(AuthError::Replayed));
    }

    #[test]
    fn unsigned_wrong_secret_tampered_wrong_method_stale_are_refused() {
        let v = Verifier::new(b"secret-secret-secret", Duration::from_secs(30), 16);
        assert_eq!(v.verify(M, &req()), Err(AuthError::Missing(H_TS)));
        assert_eq!(
            v.verify(M, &signed(b"another-secret-here")),
            Err(AuthError::BadSignature)
        );
        let mut t = signed(b"secret-secret-secret");
        t.get_mut().path = "q".into();
        assert_eq!(v.verify(M, &t), Err(AuthError::BadSignature));
        let mut t = signed(b"secret-secret-secret");
        t.metadata_mut().insert(H_BUDGET, ascii("99999999".into()));
        assert_eq!(
            v.verify(M, &t),
            Err(AuthError::BadSignature),
            "budget is signed"
        );
        let r = signed(b"secret-secret-secret");
        assert_eq!(
            v.verify("/diskio.rpc.v1.DiskService/Delete", &r),
            Err(AuthError::BadSignature)
        );
        let later = SystemTime::now() + Duration::from_secs(31);
        assert_eq!(
            v.verify_at(M, &signed(b"secret-secret-secret"), later),
            Err(AuthError::Stale)
        );
        let mut m = signed(b"secret-secret-secret");
        m.metadata_mut().insert(H_NONCE, ascii("zz".into()));
        assert_eq!(v.verify(M, &m), Err(AuthError::Malformed(H_NONCE)));
    }

    #[test]
    fn nonce_cache_is_bounded_and_expires() {
        let v = Verifier::new(b"secret-secret-secret", Duration::from_secs(30), 2);
        assert!(v.verify(M, &signed(b"secret-secret-secret")).is_ok());
        assert!(v.verify(M, &signed(b"secret-secret-secret")).is_ok());
        assert_eq!(
            v.verify(M, &signed(b"secret-secret-secret")),
            Err(AuthError::CacheFull)
        );
        // Once the window has passed the old nonces are forgotten (and their
        // requests would be stale anyway).
        let r = signed(b"secret-secret-secret");
        let mut cache = v.cache.lock().unwrap();
        let now = unix_ms(SystemTime::now()) + 31_000;
        assert!(cache.insert([9; 16], now + 30_000, now).is_ok());
        assert_eq!(cache.seen.len(), 1);
        drop(cache);
        drop(r);
    }
}
