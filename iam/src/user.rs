//! [`User`]: an access key, its secret, whether it may be used, and what it
//! may touch ([`Policy`]), as stored (JSON) in the config store.

use serde::{Deserialize, Serialize};

/// Whether a user may authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Requests with its key are accepted.
    Enabled,
    /// Requests with its key are refused; the user is kept.
    Disabled,
}

/// What a user may do: read and/or write, on these buckets (`*` for all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Bucket names, or `["*"]`.
    pub buckets: Vec<String>,
    /// GET, HEAD, LIST.
    pub read: bool,
    /// PUT, DELETE, multipart.
    pub write: bool,
}

impl Policy {
    /// Read and write on every bucket.
    pub fn read_write_all() -> Policy {
        Policy {
            buckets: vec!["*".into()],
            read: true,
            write: true,
        }
    }

    /// Whether the policy allows `access` on `bucket`.
    pub fn allows(&self, bucket: &str, access: Access) -> bool {
        let kind = match access {
            Access::Read => self.read,
            Access::Write => self.write,
        };
        kind && self.buckets.iter().any(|b| b == "*" || b == bucket)
    }
}

/// The kind of request a policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads.
    Read,
    /// Writes.
    Write,
}

/// One IAM user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The access key (the user's name on the wire).
    pub access_key: String,
    /// The secret key requests are signed with.
    pub secret_key: String,
    /// Enabled or disabled.
    pub status: Status,
    /// What it may do.
    pub policy: Policy,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a test failure.
        f.debug_struct("User")
            .field("access_key", &self.access_key)
            .field("status", &self.status)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Longest access key.
pub const MAX_ACCESS_KEY: usize = 128;

/// Why an access key or secret cannot be stored.
pub fn check_keys(access_key: &str, secret_key: &str) -> Result<(), String> {
    check_access_key(access_key)?;
    if secret_key.len() < 8 || secret_key.len() > 256 {
        return Err("secret key must be 8..=256 bytes".into());
    }
    Ok(())
}

/// Why no user can have this access key.
pub fn check_access_key(access_key: &str) -> Result<(), String> {
    if access_key.len() < 3 || access_key.len() > MAX_ACCESS_KEY {
        return Err(format!("access key must be 3..={MAX_ACCESS_KEY} bytes"));
    }
    if !access_key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.=+@".contains(&b))
        || access_key.starts_with('.')
    {
        return Err(
            "access key may hold only letters, digits and -_.=+@, not a leading '.'".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_keys() {
        let p = Policy {
            buckets: vec!["photos".into()],
            read: true,
            write: false,
        };
        assert!(p.allows("photos", Access::Read));
        assert!(!p.allows("photos", Access::Write));
        assert!(!p.allows("other", Access::Read));
        assert!(Policy::read_write_all().allows("any", Access::Write));
        assert!(check_keys("alice", "secret-123").is_ok());
        for (a, s) in [
            ("ab", "secret-123"),
            ("a/b/c", "secret-123"),
            (".hidden", "secret-123"),
            ("alice", "short"),
        ] {
            assert!(check_keys(a, s).is_err(), "{a} {s}");
        }
        let u = User {
            access_key: "alice".into(),
            secret_key: "top-secret-value".into(),
            status: Status::Enabled,
            policy: Policy::read_write_all(),
        };
        assert!(
            !format!("{u:?}").contains("top-secret"),
            "Debug leaks the secret"
        );
        let json = serde_json::to_string(&u).expect("json");
        assert_eq!(serde_json::from_str::<User>(&json).expect("parse"), u);
    }
}
