//! The cluster config file: one TOML file every node of a cluster reads
//! (`disk-io-node serve --config cluster.toml --node NAME`).
//!
//! The schema is the serde struct [`ClusterConfig`]; the node reads it and the cluster
//! harness writes it with this same struct (the harness depends on this crate, never the
//! reverse).
//!
//! ```toml
//! schema = 1                      # version of this layout; readers refuse others
//! name = "dioh4242x0"             # cluster name (logs, metrics labels)
//! secret = "9f2c…"                # shared secret for authenticating node RPCs
//! set_size = 8                    # disks per erasure set
//! parity = 4                      # parity shards per set (≤ set_size / 2)
//!
//! [[nodes]]                       # one table per node, in node order
//! name = "node1"                  # unique
//! rpc_addr = "10.213.7.11:7100"   # where its RPC server listens (unique)
//! s3_addr = "10.213.7.11:9000"    # where its S3 server listens (unique)
//! http_addr = "10.213.7.11:9100"  # optional: /metrics, /health/live, /health/ready
//! disks = ["/tmp/disk-io-cluster/dioh4242x0/disks/node1/disk1", "…"]  # mount points
//! ```
//!
//! Sets are formed from the disks in node order: with 4 nodes × 4 disks and `set_size = 8`
//! the caller spreads each set over all nodes (2 disks of each node per set); how disks map
//! to sets is the erasure layer's business, the file only says which disks exist where.
//! Unknown keys are refused, so a misspelt key fails loudly instead of being ignored.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a cluster config was refused or could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field's value is not acceptable (the message names the field).
    #[error("invalid cluster configuration: {what}")]
    Invalid {
        /// What is wrong, naming the field.
        what: String,
    },
    /// Reading or writing the file failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error, as text (keeps the type `Clone + Eq`).
        error: String,
    },
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn io_context(context: String, e: std::io::Error) -> ConfigError {
    ConfigError::Io {
        context,
        error: e.to_string(),
    }
}

/// The schema version this struct reads and writes.
pub const CONFIG_SCHEMA: u32 = 1;

/// A cluster config file (see the module docs for the TOML layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Layout version; [`CONFIG_SCHEMA`].
    pub schema: u32,
    /// The cluster's name.
    pub name: String,
    /// Shared secret authenticating node-to-node calls. The file is written mode 0600.
    pub secret: String,
    /// Disks per erasure set.
    pub set_size: usize,
    /// Parity shards per set.
    pub parity: usize,
    /// Timing of quorum locks (optional; defaults below).
    #[serde(default)]
    pub locks: LockTiming,
    /// The nodes, in order.
    pub nodes: Vec<NodeConfig>,
}

/// Timing of quorum locks, one for the whole cluster: holders refresh on
/// it and lockers size their leases and their quiet period after a start
/// by it, so they must agree.
///
/// ```toml
/// [locks]
/// ttl_ms = 30000      # lease length
/// refresh_ms = 10000  # holders refresh this often (at most ttl / 2)
/// attempt_ms = 1000   # one call to one locker (below refresh_ms)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockTiming {
    /// Lease length, milliseconds.
    pub ttl_ms: u64,
    /// Refresh interval, milliseconds.
    pub refresh_ms: u64,
    /// Deadline of one call to one locker, milliseconds.
    pub attempt_ms: u64,
}

impl Default for LockTiming {
    fn default() -> Self {
        // RustFS's figures: 30 s TTL refreshed every 10 s, 1 s attempts.
        LockTiming {
            ttl_ms: 30_000,
            refresh_ms: 10_000,
            attempt_ms: 1_000,
        }
    }
}

impl LockTiming {
    /// Lease length.
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms)
    }

    /// Refresh interval.
    pub fn refresh(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.refresh_ms)
    }

    /// One call's deadline.
    pub fn attempt(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.attempt_ms)
    }

    fn validate(&self) -> Result<()> {
        if self.ttl_ms == 0 || self.refresh_ms == 0 || self.refresh_ms * 2 > self.ttl_ms {
            return Err(ConfigError::Invalid {
                what: format!(
                    "locks: refresh_ms = {} must be in 1..=ttl_ms / 2 (ttl_ms = {})",
                    self.refresh_ms, self.ttl_ms
                ),
            });
        }
        // A refresh round must finish within the validity it extends (the
        // holder counts 90 % of the TTL).
        if self.refresh_ms + self.attempt_ms >= self.ttl_ms / 10 * 9 {
            return Err(ConfigError::Invalid {
                what: format!(
                    "locks: refresh_ms + attempt_ms ({}) must be below 90 % of ttl_ms ({})",
                    self.refresh_ms + self.attempt_ms,
                    self.ttl_ms
                ),
            });
        }
        if self.attempt_ms == 0 || self.attempt_ms >= self.refresh_ms {
            return Err(ConfigError::Invalid {
                what: format!(
                    "locks: attempt_ms = {} must be in 1..refresh_ms ({})",
                    self.attempt_ms, self.refresh_ms
                ),
            });
        }
        Ok(())
    }
}

/// One node of a [`ClusterConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node name (`node1`, ...).
    pub name: String,
    /// Address of its RPC server.
    pub rpc_addr: SocketAddr,
    /// Address of its S3 server.
    pub s3_addr: SocketAddr,
    /// Address of its ops HTTP server (`/metrics`, `/health/live`,
    /// `/health/ready`); none without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// Mount points of its disks.
    pub disks: Vec<PathBuf>,
}

/// Checks erasure-set arithmetic: `set_size` divides `disks`, `1 ≤ parity ≤ set_size / 2`
/// (parity 0 is allowed for a single-disk set).
pub fn validate_sets(disks: usize, set_size: usize, parity: usize) -> Result<()> {
    let bad = |what: String| Err(ConfigError::Invalid { what });
    if set_size == 0 || !disks.is_multiple_of(set_size) {
        return bad(format!(
            "set_size = {set_size} must divide the number of disks ({disks})"
        ));
    }
    if parity > set_size / 2 || (parity == 0 && set_size > 1) {
        return bad(format!(
            "parity = {parity} must be in 1..={} for sets of {set_size}",
            set_size / 2
        ));
    }
    Ok(())
}

impl ClusterConfig {
    /// Checks the schema version, unique names and addresses, and the set arithmetic.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(ConfigError::Invalid { what });
        if self.schema != CONFIG_SCHEMA {
            return bad(format!(
                "schema = {} (this build reads {CONFIG_SCHEMA})",
                self.schema
            ));
        }
        if self.secret.len() < 16 {
            return bad("secret must be at least 16 characters".into());
        }
        if self.nodes.is_empty() {
            return bad("no [[nodes]]".into());
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut disks = HashSet::new();
        for node in &self.nodes {
            if node.name.is_empty() || !names.insert(node.name.as_str()) {
                return bad(format!("node name {:?} is empty or repeated", node.name));
            }
            for addr in [Some(node.rpc_addr), Some(node.s3_addr), node.http_addr]
                .into_iter()
                .flatten()
            {
                if !addrs.insert(addr) {
                    return bad(format!("address {addr} is used twice"));
                }
            }
            if node.disks.is_empty() {
                return bad(format!("node {} has no disks", node.name));
            }
            for disk in &node.disks {
                if !disk.is_absolute() || !disks.insert((node.name.as_str(), disk)) {
                    return bad(format!(
                        "disk {} of {} must be an absolute path, listed once",
                        disk.display(),
                        node.name
                    ));
                }
            }
        }
        self.locks.validate()?;
        let total = self.nodes.iter().map(|n| n.disks.len()).sum();
        validate_sets(total, self.set_size, self.parity)
    }

    /// Parses and validates a config.
    pub fn from_toml(text: &str) -> Result<ClusterConfig> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            what: format!("cluster config: {e}"),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            what: format!("serializing the cluster config: {e}"),
        })?;
        Ok(format!(
            "# disk-io cluster config (schema {CONFIG_SCHEMA}), written by disk-io-rpc.\n{body}"
        ))
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = fs::read_to_string(path)
            .map_err(|e| io_context(format!("reading {}", path.display()), e))?;
        Self::from_toml(&text)
    }

    /// Validates, then writes the config to `path` atomically (a 0600 temporary file
    /// renamed over it), so a node never reads half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = self.to_toml()?;
        let tmp = path.with_extension("toml.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_context(format!("creating {}", tmp.display()), e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_context(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, path).map_err(|e| io_context(format!("renaming to {}", path.display()), e))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Parses a disk spec `NODE:N` (N counts from 1, as `disk1`, `disk2`, ... do) into the
    /// node and the disk's 0-based index on it.
    pub fn disk_spec<'a>(&'a self, spec: &str) -> Result<(&'a NodeConfig, u32)> {
        let bad = |what: String| ConfigError::Invalid { what };
        let (name, n) = spec
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("disk {spec:?}: expected NODE:N")))?;
        let node = self
            .node(name)
            .ok_or_else(|| bad(format!("disk {spec:?}: no node named {name:?}")))?;
        let n: u32 = n
            .parse()
            .map_err(|_| bad(format!("disk {spec:?}: {n:?} is not a number")))?;
        if n == 0 || n as usize > node.disks.len() {
            return Err(bad(format!(
                "disk {spec:?}: {name} has disks 1..={}",
                node.disks.len()
            )));
        }
        Ok((node, n - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        let nodes = (1..=4)
            .map(|i| NodeConfig {
                name: format!("node{i}"),
                rpc_addr: format!("10.213.7.{}:7100", 10 + i).parse().unwrap(),
                s3_addr: format!("10.213.7.{}:9000", 10 + i).parse().unwrap(),
                http_addr: None,
                disks: (1..=4)
                    .map(|d| PathBuf::from(format!("/w/disks/node{i}/disk{d}")))
                    .collect(),
            })
            .collect();
        ClusterConfig {
            schema: CONFIG_SCHEMA,
            name: "dioh1x0".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            set_size: 8,
            parity: 4,
            locks: Default::default(),
            nodes,
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let config = sample();
        let text = config.to_toml().unwrap();
        assert!(text.contains("[[nodes]]"), "{text}");
        assert!(text.contains("rpc_addr = \"10.213.7.14:7100\""), "{text}");
        assert_eq!(ClusterConfig::from_toml(&text).unwrap(), config);
        // A file without [locks] gets the defaults; one with it keeps them.
        let mut bare = text.clone();
        let start = bare.find("[locks]").expect("locks table written");
        let end = start + bare[start..].find("\n\n").unwrap_or(bare.len() - start);
        bare.replace_range(start..end, "");
        assert_eq!(
            ClusterConfig::from_toml(&bare).unwrap().locks,
            LockTiming::default()
        );
        let mut custom = config.clone();
        custom.locks = LockTiming {
            ttl_ms: 3000,
            refresh_ms: 1000,
            attempt_ms: 300,
        };
        let round = ClusterConfig::from_toml(&custom.to_toml().unwrap()).unwrap();
        assert_eq!(round.locks, custom.locks);
    }

    #[test]
    fn write_is_private_and_loadable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        sample().write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ClusterConfig::load(&path).unwrap(), sample());
    }

    #[test]
    fn refuses_bad_configs_with_typed_errors() {
        let cases: [fn(&mut ClusterConfig); 12] = [
            |c| c.locks.refresh_ms = c.locks.ttl_ms,
            |c| c.locks.attempt_ms = c.locks.refresh_ms,
            |c| c.locks.ttl_ms = 0,
            |c| c.schema = 2,
            |c| c.secret = "short".into(),
            |c| c.nodes[1].name = "node1".into(),
            |c| c.nodes[1].s3_addr = c.nodes[0].rpc_addr,
            |c| c.nodes[2].disks.clear(),
            |c| c.nodes[2].disks[0] = "relative".into(),
            |c| c.set_size = 5,
            |c| c.parity = 0,
            |c| c.nodes.clear(),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut config = sample();
            mutate(&mut config);
            assert!(
                matches!(config.validate(), Err(ConfigError::Invalid { .. })),
                "case {i}"
            );
        }
        let unknown_key = sample().to_toml().unwrap() + "\nextra = 1\n";
        assert!(matches!(
            ClusterConfig::from_toml(&unknown_key),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            ClusterConfig::from_toml("not toml ["),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
