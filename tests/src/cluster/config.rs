//! The cluster config file: one TOML file every node of a cluster reads
//! (`disk-io-node serve --config cluster.toml --node NAME`).
//!
//! The schema lives in `disk-io-rpc` ([`disk_io_rpc::cluster`]), which the node links; the
//! harness writes the file with that same struct, so the two cannot drift apart.

pub use disk_io_rpc::cluster::{ClusterConfig, ConfigError, NodeConfig, CONFIG_SCHEMA};

use crate::error::HarnessError;

impl From<ConfigError> for HarnessError {
    fn from(e: ConfigError) -> HarnessError {
        HarnessError::Config {
            what: e.to_string(),
        }
    }
}

/// Checks erasure-set arithmetic (see [`disk_io_rpc::cluster::validate_sets`]).
pub(crate) fn validate_sets(
    disks: usize,
    set_size: usize,
    parity: usize,
) -> crate::error::Result<()> {
    Ok(disk_io_rpc::cluster::validate_sets(
        disks, set_size, parity,
    )?)
}
