//! What a cluster is made of ([`ClusterSpec`]), every bound it observes
//! ([`ClusterTimeouts`], [`ClusterLimits`]), and how a node's process is started
//! ([`NodeCommand`], rendered per node from a [`NodeView`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};

/// Shape and bounds of a cluster. `ClusterSpec::default()` is the field report's cluster:
/// 4 nodes × 4 disks, erasure sets of 8 with parity 4.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSpec {
    /// Number of storage nodes (`node1`..`nodeN`).
    pub nodes: usize,
    /// Disks per node, each an ext4 file system on its own loop device.
    pub disks_per_node: usize,
    /// Size of each disk's (sparse) image file.
    pub disk_image_bytes: u64,
    /// Erasure set size written to the cluster config (must divide the disk count).
    pub set_size: usize,
    /// Parity shards per set (at most half the set).
    pub parity: usize,
    /// Quorum-lock timing written to the cluster config.
    pub locks: disk_io_rpc::LockTiming,
    /// Cluster secret for the config file; a random 256-bit hex string when `None`.
    pub secret: Option<String>,
    /// Port every node's RPC server listens on (each node has its own address).
    pub rpc_port: u16,
    /// Port every node's S3 server listens on.
    pub s3_port: u16,
    /// Port every node's ops HTTP server (`/metrics`, `/health/*`) listens on.
    pub http_port: u16,
    /// Network address of the cluster's /24 (e.g. `10.213.7.0`); derived from the
    /// process id and a counter when `None`. Each cluster's addresses exist only inside
    /// its own namespaces, so two clusters with one subnet would not clash either; distinct
    /// subnets keep logs unambiguous.
    pub subnet: Option<Ipv4Addr>,
    /// Prefix of every name the harness creates (namespaces, work directories); the
    /// start-up sweep only ever looks at names with this prefix.
    pub prefix: String,
    /// `None` (tests): the cluster is owned by this process and named
    /// `{prefix}{pid}x{counter}`, so the sweep can tell when its owner died. `Some(label)`
    /// (the CLI): the cluster outlives its creator and is named `{prefix}-{label}`; the
    /// sweep never touches it, `down` removes it.
    pub label: Option<String>,
    /// Directory holding each cluster's work directory (images, mount points, logs,
    /// config file).
    pub work_root: PathBuf,
    /// Whether `poweroff` also drops ARP (a real dead host stops answering ARP, so once
    /// peers' neighbour entries expire their sends fail with `EHOSTUNREACH`). Off by
    /// default: peers then see exactly what the field report describes, silence.
    pub poweroff_drops_arp: bool,
    /// How the harness decides that a started node is up.
    pub ready: ReadyCheck,
    /// Keep the work directory (logs, config) after teardown, for debugging.
    pub keep_work_dir: bool,
    /// Remove leftovers of crashed earlier runs (owner process dead) before starting.
    pub sweep_stale: bool,
    /// Size bounds.
    pub limits: ClusterLimits,
    /// Time bounds.
    pub timeouts: ClusterTimeouts,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 4,
            disks_per_node: 4,
            disk_image_bytes: 256 << 20,
            set_size: 8,
            parity: 4,
            locks: disk_io_rpc::LockTiming::default(),
            secret: None,
            rpc_port: 7100,
            s3_port: 9000,
            http_port: 9100,
            subnet: None,
            prefix: "dioh".into(),
            label: None,
            work_root: std::env::temp_dir().join("disk-io-cluster"),
            poweroff_drops_arp: false,
            ready: ReadyCheck::RpcPort,
            keep_work_dir: false,
            sweep_stale: true,
            limits: ClusterLimits::default(),
            timeouts: ClusterTimeouts::default(),
        }
    }
}

/// How a started node is judged up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyCheck {
    /// Do not wait: the node is up once its process is started.
    None,
    /// A TCP connect from the client namespace to the node's RPC address succeeds.
    RpcPort,
    /// A TCP connect from the client namespace to the node's S3 address succeeds.
    S3Port,
}

/// Size bounds of a cluster (each checked by [`ClusterSpec::validate`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterLimits {
    /// Most nodes a spec may ask for (addresses are `.11`..`.(10+N)` of a /24).
    pub max_nodes: usize,
    /// Most disks per node.
    pub max_disks_per_node: usize,
    /// Smallest image (ext4 needs room for its journal).
    pub min_image_bytes: u64,
    /// Largest image (they are sparse, but mkfs writes inode tables).
    pub max_image_bytes: u64,
    /// Threads creating disks (mkfs) in parallel.
    pub setup_threads: usize,
    /// How much of each node's log is printed when a test panics.
    pub log_tail_bytes: u64,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_nodes: 64,
            max_disks_per_node: 32,
            min_image_bytes: 16 << 20,
            max_image_bytes: 64 << 30,
            setup_threads: 4,
            log_tail_bytes: 8 << 10,
        }
    }
}

/// Every wait of the harness and its bound.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTimeouts {
    /// Each `ip`, `nft` or `ss` invocation.
    pub tool: Duration,
    /// A started node passing its [`ReadyCheck`].
    pub ready: Duration,
    /// One readiness connect attempt.
    pub connect_probe: Duration,
    /// `restart`: SIGTERM to exit before SIGKILL follows.
    pub graceful_stop: Duration,
    /// A killed process to be reaped.
    pub reap: Duration,
    /// A SIGSTOPped process's threads to all be stopped.
    pub freeze: Duration,
    /// A powered-off node's sockets to be gone after they were destroyed.
    pub sockets_gone: Duration,
    /// Taking the CLI's state-file lock.
    pub state_lock: Duration,
    /// Interval of every polling loop above.
    pub poll: Duration,
}

impl Default for ClusterTimeouts {
    fn default() -> Self {
        ClusterTimeouts {
            tool: Duration::from_secs(30),
            ready: Duration::from_secs(30),
            connect_probe: Duration::from_millis(250),
            graceful_stop: Duration::from_secs(5),
            reap: Duration::from_secs(10),
            freeze: Duration::from_secs(5),
            sockets_gone: Duration::from_secs(5),
            state_lock: Duration::from_secs(30),
            poll: Duration::from_millis(10),
        }
    }
}

impl ClusterSpec {
    /// A spec of `nodes` × `disks_per_node` with the other defaults; set size and parity
    /// shrink to fit small clusters (set size = min(8, disks), parity = set size / 2).
    pub fn with_shape(nodes: usize, disks_per_node: usize) -> ClusterSpec {
        let disks = nodes * disks_per_node;
        let set_size = (1..=8.min(disks))
            .rev()
            .find(|size| disks.is_multiple_of(*size))
            .unwrap_or(1);
        ClusterSpec {
            nodes,
            disks_per_node,
            set_size,
            parity: set_size / 2,
            ..ClusterSpec::default()
        }
    }

    /// Checks every field against its limits; nothing is created for an invalid spec.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(HarnessError::Config { what });
        let limits = &self.limits;
        if self.nodes == 0 || self.nodes > limits.max_nodes {
            return bad(format!(
                "nodes = {} (must be 1..={})",
                self.nodes, limits.max_nodes
            ));
        }
        if self.disks_per_node == 0 || self.disks_per_node > limits.max_disks_per_node {
            return bad(format!(
                "disks_per_node = {} (must be 1..={})",
                self.disks_per_node, limits.max_disks_per_node
            ));
        }
        if !(limits.min_image_bytes..=limits.max_image_bytes).contains(&self.disk_image_bytes) {
            return bad(format!(
                "disk_image_bytes = {} (must be {}..={})",
                self.disk_image_bytes, limits.min_image_bytes, limits.max_image_bytes
            ));
        }
        if limits.setup_threads == 0 {
            return bad("limits.setup_threads must be > 0".into());
        }
        if self.rpc_port == 0
            || self.s3_port == 0
            || self.http_port == 0
            || self.rpc_port == self.s3_port
            || self.http_port == self.s3_port
            || self.http_port == self.rpc_port
        {
            return bad(format!(
                "rpc_port = {}, s3_port = {}, http_port = {} (must be distinct and non-zero)",
                self.rpc_port, self.s3_port, self.http_port
            ));
        }
        if let Some(subnet) = self.subnet {
            if subnet.octets()[3] != 0 {
                return bad(format!(
                    "subnet = {subnet} (must be the network address of a /24)"
                ));
            }
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 16
            || !self.prefix.chars().all(|c| c.is_ascii_lowercase())
        {
            return bad(format!("prefix = {:?} (1 to 16 of [a-z])", self.prefix));
        }
        if let Some(label) = &self.label {
            if label.is_empty()
                || label.len() > 32
                || !label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return bad(format!("label = {label:?} (1 to 32 of [a-z0-9])"));
            }
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return bad("secret must be at least 16 characters".into());
        }
        let t = &self.timeouts;
        if t.poll.is_zero() || t.connect_probe.is_zero() {
            return bad("timeouts.poll and timeouts.connect_probe must be > 0".into());
        }
        crate::cluster::config::validate_sets(
            self.nodes * self.disks_per_node,
            self.set_size,
            self.parity,
        )
    }
}

/// The program a node runs, with `{placeholder}`s in its arguments and environment values
/// that the harness fills in per node (see [`NodeCommand::PLACEHOLDERS`]).
///
/// ```
/// use disk_io_harness::cluster::NodeCommand;
/// let cmd = NodeCommand::new("/usr/local/bin/disk-io-node")
///     .args(["serve", "--config", "{config}", "--node", "{node}"])
///     .env("RUST_LOG", "info");
/// assert_eq!(cmd.args[3], "--node");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCommand {
    /// The executable (an absolute path is safest: the node runs with the caller's `PATH`).
    pub program: PathBuf,
    /// Arguments, with placeholders.
    pub args: Vec<String>,
    /// Extra environment variables (values with placeholders). The harness always sets
    /// `DISKIO_CLUSTER`, `DISKIO_NODE`, `DISKIO_CLUSTER_CONFIG`, `DISKIO_RPC_ADDR`,
    /// `DISKIO_S3_ADDR` and `DISKIO_DISKS` (comma-separated) too.
    pub env: Vec<(String, String)>,
}

impl NodeCommand {
    /// Placeholders a node command may use, and what they become.
    pub const PLACEHOLDERS: [(&'static str, &'static str); 11] = [
        ("cluster", "the cluster's name"),
        ("node", "the node's name, e.g. node4"),
        ("index", "the node's number, from 1"),
        ("ip", "the node's IPv4 address"),
        ("rpc_addr", "ip:rpc_port"),
        ("s3_addr", "ip:s3_port"),
        ("http_addr", "ip:http_port (/metrics, /health/*)"),
        ("rpc_port", "the RPC port"),
        ("s3_port", "the S3 port"),
        ("config", "path of the cluster config file (TOML)"),
        ("disks", "the node's disk directories, comma-separated"),
    ];

    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<PathBuf>) -> NodeCommand {
        NodeCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `program serve --config {config} --node {node} --format-missing`:
    /// the `disk-io-node` binary at `program` serving its node, formatting
    /// disks that have no format yet at their erasure positions.
    pub fn disk_io_node(program: impl Into<PathBuf>) -> NodeCommand {
        NodeCommand::new(program).args([
            "serve",
            "--config",
            "{config}",
            "--node",
            "{node}",
            "--format-missing",
        ])
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> NodeCommand {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> NodeCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> NodeCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Fills in the placeholders for `node`. An unknown `{name}` is a
    /// [`Config`](HarnessError::Config) error (a typo would otherwise reach the node).
    pub fn render(&self, node: &NodeView) -> Result<NodeCommand> {
        Ok(NodeCommand {
            program: self.program.clone(),
            args: self
                .args
                .iter()
                .map(|a| substitute(a, node))
                .collect::<Result<_>>()?,
            env: self
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, node)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// Placeholder names used but unknown (checked when a cluster starts, before anything
    /// is created).
    pub fn unknown_placeholders(&self) -> Vec<String> {
        self.args
            .iter()
            .chain(self.env.iter().map(|(_, v)| v))
            .flat_map(|text| placeholders_in(text))
            .filter(|name| !Self::PLACEHOLDERS.iter().any(|(known, _)| known == name))
            .collect()
    }
}

/// What the harness knows about one node; the input of a node command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The cluster's name.
    pub cluster: String,
    /// `node1`, `node2`, ...
    pub name: String,
    /// 1-based.
    pub index: usize,
    /// Name of the node's network namespace.
    pub netns: String,
    /// The node's address (inside its namespace only).
    pub ip: Ipv4Addr,
    /// `ip:rpc_port`.
    pub rpc_addr: SocketAddr,
    /// `ip:s3_port`.
    pub s3_addr: SocketAddr,
    /// `ip:http_port`.
    pub http_addr: SocketAddr,
    /// Mount points of the node's disks.
    pub disks: Vec<PathBuf>,
    /// The cluster config file.
    pub config_path: PathBuf,
}

impl NodeView {
    fn value(&self, placeholder: &str) -> Option<String> {
        let disks = || {
            self.disks
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(match placeholder {
            "cluster" => self.cluster.clone(),
            "node" => self.name.clone(),
            "index" => self.index.to_string(),
            "ip" => self.ip.to_string(),
            "rpc_addr" => self.rpc_addr.to_string(),
            "s3_addr" => self.s3_addr.to_string(),
            "http_addr" => self.http_addr.to_string(),
            "rpc_port" => self.rpc_addr.port().to_string(),
            "s3_port" => self.s3_addr.port().to_string(),
            "config" => path_text(&self.config_path),
            "disks" => disks(),
            _ => return None,
        })
    }

    /// The environment every node process gets.
    pub(crate) fn environment(&self) -> Vec<(String, String)> {
        vec![
            ("DISKIO_CLUSTER".into(), self.cluster.clone()),
            ("DISKIO_NODE".into(), self.name.clone()),
            ("DISKIO_CLUSTER_CONFIG".into(), path_text(&self.config_path)),
            ("DISKIO_RPC_ADDR".into(), self.rpc_addr.to_string()),
            ("DISKIO_S3_ADDR".into(), self.s3_addr.to_string()),
            (
                "DISKIO_DISKS".into(),
                self.value("disks").unwrap_or_default(),
            ),
        ]
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// `{name}` occurrences in `text` (name = `[a-z0-9_]+`).
fn placeholders_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_placeholder_name(&after[..close]) => {
                found.push(after[..close].to_owned());
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    found
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn substitute(text: &str, node: &NodeView) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_placeholder_name(&after[..close]) => {
                let name = &after[..close];
                let value = node.value(name).ok_or_else(|| HarnessError::Config {
                    what: format!("unknown placeholder {{{name}}} in node command {text:?}"),
                })?;
                out.push_str(&value);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> NodeView {
        let ip = Ipv4Addr::new(10, 213, 1, 14);
        NodeView {
            cluster: "dioh1x0".into(),
            name: "node4".into(),
            index: 4,
            netns: "dioh1x0-node4".into(),
            ip,
            rpc_addr: SocketAddr::from((ip, 7100)),
            s3_addr: SocketAddr::from((ip, 9000)),
            http_addr: SocketAddr::from((ip, 9100)),
            disks: vec!["/d/1".into(), "/d/2".into()],
            config_path: "/w/cluster.toml".into(),
        }
    }

    #[test]
    fn renders_placeholders_and_leaves_other_braces() {
        let cmd = NodeCommand::new("/bin/node")
            .args([
                "serve",
                "--node",
                "{node}",
                "--listen={rpc_addr}",
                "{disks}",
                "{x",
            ])
            .arg("json={\"a\": 1}")
            .env("CFG", "{config}");
        let out = cmd.render(&view()).expect("render");
        assert_eq!(
            out.args,
            [
                "serve",
                "--node",
                "node4",
                "--listen=10.213.1.14:7100",
                "/d/1,/d/2",
                "{x",
                "json={\"a\": 1}"
            ]
        );
        assert_eq!(out.env, [("CFG".to_owned(), "/w/cluster.toml".to_owned())]);
        assert!(cmd.unknown_placeholders().is_empty());
    }

    #[test]
    fn unknown_placeholder_is_a_typed_error() {
        let cmd = NodeCommand::new("/bin/node").arg("--addr={rcp_addr}");
        assert_eq!(cmd.unknown_placeholders(), ["rcp_addr"]);
        assert!(matches!(
            cmd.render(&view()),
            Err(HarnessError::Config { .. })
        ));
    }

    #[test]
    fn spec_validation() {
        assert!(ClusterSpec::default().validate().is_ok());
        assert!(ClusterSpec::with_shape(2, 1).validate().is_ok());
        assert!(ClusterSpec::with_shape(3, 3).validate().is_ok());
        for bad in [
            ClusterSpec {
                nodes: 0,
                ..ClusterSpec::default()
            },
            ClusterSpec {
                set_size: 5,
                ..ClusterSpec::default()
            },
            ClusterSpec {
                parity: 5,
                ..ClusterSpec::default()
            },
            ClusterSpec {
                disk_image_bytes: 1,
                ..ClusterSpec::default()
            },
            ClusterSpec {
                label: Some("Bad-Label".into()),
                ..ClusterSpec::default()
            },
            ClusterSpec {
                subnet: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..ClusterSpec::default()
            },
            ClusterSpec {
                secret: Some("short".into()),
                ..ClusterSpec::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(HarnessError::Config { .. })),
                "{bad:?}"
            );
        }
    }
}
