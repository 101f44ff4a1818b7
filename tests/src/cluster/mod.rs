//! The cluster harness: N storage-node processes, each in its own network namespace with M
//! disks, and a power switch per node.
//!
//! Remote-disk, erasure-set, lock and S3 tests need what the field report describes: a
//! 4-node × 4-disk cluster in which one node loses power mid-operation. This module builds
//! it on one machine, without knowing what a node runs: the caller gives the command for
//! each node (a [`NodeCommand`] template or a closure over a [`NodeView`]), the harness
//! gives the node its namespace, address, ports, disks and a cluster config file.
//!
//! # Shape
//!
//! ```text
//!   root namespace: nothing but the `ip netns` bind mounts, the disks' mounts and the node
//!   processes' PIDs (their sockets live in their own namespaces)
//!
//!   {cluster}-hub:     br0 ─┬─ v-client ── eth0 {cluster}-client  10.213.X.2   (test clients)
//!                           ├─ v-node1  ── eth0 {cluster}-node1   10.213.X.11  rpc :7100, s3 :9000
//!                           ├─ …
//!                           └─ v-nodeN  ── eth0 {cluster}-nodeN   10.213.X.(10+N)
//! ```
//!
//! Each node's disks are ext4 file systems on loop devices over sparse image files in the
//! cluster's work directory (so the eBPF block probes see real block requests), mounted at
//! `{work_dir}/disks/nodeI/diskJ`; `{work_dir}/cluster.toml` is the config file (schema in
//! [`config`]); `{work_dir}/logs/nodeI.log` collects the node's stdout and stderr across
//! restarts.
//!
//! # Power
//!
//! * [`Cluster::poweroff`]: the node's namespace drops every packet (nftables, see
//!   [`power`]), then its process is SIGSTOPped: its sockets stay open and send nothing,
//!   so peers see neither RST nor FIN, only silence.
//! * [`Cluster::poweron`]: SIGKILL while the drop is still in place (the kernel's FIN/RST
//!   for the dead process's sockets are dropped too), wait for the exit, destroy leftover
//!   sockets, lift the drop, start the node's command again: a fresh process with the same
//!   disks and address.
//! * [`Cluster::kill`] is a plain crash (the kernel closes the sockets: peers get FIN, or
//!   RST for unread data, and new connects are refused); [`Cluster::restart`] is SIGTERM,
//!   SIGKILL after a grace period, start.
//!
//! # Invariants
//!
//! * Test traffic never leaves the cluster's namespaces: links are created from inside the
//!   hub, no namespace has a default route, and nothing is configured in the root
//!   namespace (see [`network`]).
//! * Names are unique per cluster instance (`{prefix}{pid}x{counter}`), so clusters of
//!   parallel tests in one process, or in parallel processes, never clash.
//! * Dropping a [`Cluster`] removes everything it made, also while a test panics: processes
//!   are killed and reaped, nftables tables removed, namespaces deleted, disks unmounted,
//!   loop devices detached, images and work directory removed; it then checks by listing
//!   ([`sweep::leftovers`]) and removes anything still there. While panicking it first
//!   prints the tail of every node's log. A run that died without dropping (SIGKILL) is
//!   swept by the next cluster start ([`sweep::sweep_stale`]).
//! * Every wait is bounded by [`ClusterTimeouts`]; every size by [`ClusterLimits`].
//!
//! # Example
//!
//! ```no_run
//! use std::net::TcpStream;
//! use std::time::Duration;
//! use disk_io_harness::cluster::{Cluster, ClusterSpec, NodeCommand};
//! use disk_io_harness::privilege;
//!
//! privilege::require_cluster().expect("the cluster harness needs root, netns, nft, loop");
//! let node = NodeCommand::new("/path/to/disk-io-echo-node")
//!     .args(["--node", "{node}", "--listen", "{rpc_addr}", "--disks", "{disks}"]);
//! let mut cluster = Cluster::start(ClusterSpec::default(), node).expect("4 nodes x 4 disks");
//! let node4 = cluster.node("node4").unwrap().rpc_addr;
//! cluster.poweroff("node4").unwrap();
//! // A client in the client namespace: the connect times out instead of being refused.
//! let outcome = cluster
//!     .run_in_client(Duration::from_secs(5), move || {
//!         TcpStream::connect_timeout(&node4, Duration::from_secs(1)).map(drop)
//!     })
//!     .unwrap();
//! assert_eq!(outcome.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
//! cluster.poweron("node4").unwrap(); // new process, same disks, same address
//! ```

pub mod config;
pub mod network;
pub mod power;
mod process;
pub mod spec;
pub mod sweep;

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use config::{ClusterConfig, NodeConfig, CONFIG_SCHEMA};
pub use power::POWEROFF_TABLE;
pub use spec::{ClusterLimits, ClusterSpec, ClusterTimeouts, NodeCommand, NodeView, ReadyCheck};
pub use sweep::Leftovers;

use process::{Liveness, NodeProcess};

use crate::error::{io_context, HarnessError, Result};
use crate::loopdev::Ext4OnLoop;
use crate::netns::{Netns, NetnsRuntime, RuntimeSpec};

/// Clusters created by this process so far (the `counter` of `{prefix}{pid}x{counter}`).
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// One disk of a node, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// 1-based index within the node.
    pub index: usize,
    /// The image file.
    pub image: PathBuf,
    /// Where its ext4 file system is mounted (what the node gets).
    pub mount_dir: PathBuf,
    /// The loop device, e.g. `/dev/loop7`.
    pub device: PathBuf,
    /// The loop device's major number (what block probes key on).
    pub major: u32,
    /// The loop device's minor number.
    pub minor: u32,
}

/// A node's process as recorded: pid and start time (see `process`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (tells a reused pid apart).
    pub start_ticks: u64,
}

/// One node, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// What the node's command is rendered from.
    pub view: NodeView,
    /// Whether its namespace was created (it is deleted on teardown).
    pub netns_created: bool,
    /// Its log file.
    pub log_path: PathBuf,
    /// Its disks.
    pub disks: Vec<DiskRecord>,
    /// The last process started for it.
    pub process: Option<ProcessRecord>,
    /// Whether its namespace drops every packet.
    pub powered_off: bool,
    /// How many times its command was started.
    pub starts: u32,
}

/// Everything needed to act on a cluster from another process (what the CLI keeps in its
/// state file).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name (prefix of all its resources).
    pub name: String,
    /// The spec it was made from.
    pub spec: ClusterSpec,
    /// Its work directory.
    pub work_dir: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its /24 (network address).
    pub subnet: Ipv4Addr,
    /// The hub namespace, once created.
    pub hub_netns: Option<String>,
    /// The client namespace, once created.
    pub client_netns: Option<String>,
    /// The client's address.
    pub client_ip: Ipv4Addr,
    /// The node command template (`None` when the cluster was started with a closure).
    pub command: Option<NodeCommand>,
    /// The nodes.
    pub nodes: Vec<NodeRecord>,
}

/// A node's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// Packets flow.
    On,
    /// Every packet is dropped.
    Off,
}

/// A node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Running.
    Running,
    /// Stopped (powered off).
    Stopped,
    /// Exited or killed, not restarted.
    Exited,
    /// Never started.
    NotStarted,
}

/// One node in a [`ClusterStatus`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// RPC address.
    pub rpc_addr: SocketAddr,
    /// S3 address.
    pub s3_addr: SocketAddr,
    /// Ops HTTP address.
    pub http_addr: SocketAddr,
    /// Pid of its current (or last) process.
    pub pid: Option<i32>,
    /// Power.
    pub power: Power,
    /// Process state.
    pub process: ProcessState,
    /// Times started.
    pub starts: u32,
    /// Packets dropped since it was powered off (`None` while on).
    pub dropped_packets: Option<u64>,
    /// Its disks.
    pub disks: Vec<DiskRecord>,
    /// Its log file.
    pub log_path: PathBuf,
}

/// What [`Cluster::status`] reports (also the CLI's `status`; `Display` prints a table).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// Its /24.
    pub subnet: Ipv4Addr,
    /// Client namespace.
    pub client_netns: String,
    /// Client address.
    pub client_ip: Ipv4Addr,
    /// Config file.
    pub config_path: PathBuf,
    /// Work directory.
    pub work_dir: PathBuf,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster {}  subnet {}/{}  client {} (ip netns exec {} ...)",
            self.name,
            self.subnet,
            network::PREFIX_LEN,
            self.client_ip,
            self.client_netns
        )?;
        writeln!(f, "config  {}", self.config_path.display())?;
        writeln!(
            f,
            "{:<8} {:<21} {:<21} {:>8} {:<6} {:<8} {:>6}  DISKS",
            "NODE", "RPC", "S3", "PID", "POWER", "PROCESS", "STARTS"
        )?;
        for n in &self.nodes {
            let pid = n.pid.map_or("-".to_owned(), |p| p.to_string());
            let power = match n.power {
                Power::On => "on",
                Power::Off => "OFF",
            };
            let process = match n.process {
                ProcessState::Running => "running",
                ProcessState::Stopped => "stopped",
                ProcessState::Exited => "exited",
                ProcessState::NotStarted => "-",
            };
            let disks: Vec<String> = n
                .disks
                .iter()
                .map(|d| {
                    let dev = d.device.file_name().unwrap_or_default().to_string_lossy();
                    format!("{dev}({}:{})", d.major, d.minor)
                })
                .collect();
            writeln!(
                f,
                "{:<8} {:<21} {:<21} {:>8} {:<6} {:<8} {:>6}  {}",
                n.name,
                n.rpc_addr.to_string(),
                n.s3_addr.to_string(),
                pid,
                power,
                process,
                n.starts,
                disks.join(" ")
            )?;
            for d in &n.disks {
                writeln!(f, "         disk{} {}", d.index, d.mount_dir.display())?;
            }
        }
        Ok(())
    }
}

/// `(node, disk, image, outcome)` of one disk creation job.
type MadeDisk = (usize, usize, PathBuf, Result<Ext4OnLoop>);

/// How node commands are made.
#[derive(Clone)]
enum Launcher {
    Template(NodeCommand),
    Custom(Arc<dyn Fn(&NodeView) -> NodeCommand + Send + Sync>),
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Launcher::Template(t) => f.debug_tuple("Template").field(t).finish(),
            Launcher::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A running cluster (see the module docs). Dropping it tears everything down.
#[derive(Debug)]
pub struct Cluster {
    state: ClusterState,
    launcher: Launcher,
    /// Per node: its current process.
    procs: Vec<Option<NodeProcess>>,
    /// Per node: its disks' fixtures (empty for an attached cluster).
    disks: Vec<Vec<Ext4OnLoop>>,
    /// Start node processes in a session of their own (CLI clusters).
    new_session: bool,
    /// Drop tears down.
    owned: bool,
    /// Teardown ran.
    down: bool,
}

impl Cluster {
    /// Starts a cluster whose nodes run `command` (placeholders filled in per node).
    pub fn start(spec: ClusterSpec, command: NodeCommand) -> Result<Cluster> {
        let unknown = command.unknown_placeholders();
        if !unknown.is_empty() {
            return Err(HarnessError::Config {
                what: format!("node command uses unknown placeholders {unknown:?}"),
            });
        }
        Self::start_inner(spec, Launcher::Template(command), false)
    }

    /// Starts a cluster whose nodes run what `command` returns for each node.
    pub fn start_with(
        spec: ClusterSpec,
        command: impl Fn(&NodeView) -> NodeCommand + Send + Sync + 'static,
    ) -> Result<Cluster> {
        Self::start_inner(spec, Launcher::Custom(Arc::new(command)), false)
    }

    /// Starts a cluster meant to outlive this process (the CLI's `up`): `spec.label` must
    /// be set; node processes get a session of their own. Call [`detach`](Self::detach) to
    /// leave it running.
    pub fn start_persistent(spec: ClusterSpec, command: NodeCommand) -> Result<Cluster> {
        if spec.label.is_none() {
            return Err(HarnessError::Config {
                what: "a persistent cluster needs spec.label".into(),
            });
        }
        let unknown = command.unknown_placeholders();
        if !unknown.is_empty() {
            return Err(HarnessError::Config {
                what: format!("node command uses unknown placeholders {unknown:?}"),
            });
        }
        Self::start_inner(spec, Launcher::Template(command), true)
    }

    fn start_inner(spec: ClusterSpec, launcher: Launcher, new_session: bool) -> Result<Cluster> {
        spec.validate()?;
        crate::privilege::require_cluster()?;
        let counter = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = match &spec.label {
            Some(label) => format!("{}-{label}", spec.prefix),
            None => format!("{}{pid}x{counter}", spec.prefix),
        };
        fs::create_dir_all(&spec.work_root)
            .map_err(|e| io_context(format!("mkdir {}", spec.work_root.display()), e))?;
        let work_root = spec
            .work_root
            .canonicalize()
            .map_err(|e| io_context(format!("work root {}", spec.work_root.display()), e))?;
        if spec.sweep_stale {
            // A leftover that cannot be removed must not stop this cluster (its names are
            // its own); say so loudly instead.
            match sweep::sweep_stale(&spec.prefix, &work_root, &spec.timeouts) {
                Ok(swept) => {
                    for left in &swept {
                        tracing::info!(cluster = %left.cluster, "removed a stale cluster");
                    }
                }
                Err(e) => eprintln!("disk-io-harness: sweeping stale clusters: {e}"),
            }
        }
        let work_dir = work_root.join(&name);
        if work_dir.exists() || !crate::netns::list(&format!("{name}-"))?.is_empty() {
            return Err(HarnessError::Config {
                what: format!(
                    "cluster {name} exists already (work dir {}); take it down first",
                    work_dir.display()
                ),
            });
        }
        fs::create_dir(&work_dir)
            .map_err(|e| io_context(format!("mkdir {}", work_dir.display()), e))?;
        let subnet = spec
            .subnet
            .unwrap_or_else(|| network::default_subnet(pid, counter));
        let config_path = work_dir.join("cluster.toml");
        let nodes = (1..=spec.nodes)
            .map(|index| {
                let node = format!("node{index}");
                let ip = network::node_ip(subnet, index);
                NodeRecord {
                    view: NodeView {
                        cluster: name.clone(),
                        netns: format!("{name}-{node}"),
                        ip,
                        rpc_addr: SocketAddr::from((ip, spec.rpc_port)),
                        s3_addr: SocketAddr::from((ip, spec.s3_port)),
                        http_addr: SocketAddr::from((ip, spec.http_port)),
                        disks: (1..=spec.disks_per_node)
                            .map(|d| work_dir.join("disks").join(&node).join(format!("disk{d}")))
                            .collect(),
                        config_path: config_path.clone(),
                        index,
                        name: node.clone(),
                    },
                    netns_created: false,
                    log_path: work_dir.join("logs").join(format!("{node}.log")),
                    disks: Vec::new(),
                    process: None,
                    powered_off: false,
                    starts: 0,
                }
            })
            .collect();
        let mut cluster = Cluster {
            state: ClusterState {
                name,
                command: match &launcher {
                    Launcher::Template(t) => Some(t.clone()),
                    Launcher::Custom(_) => None,
                },
                spec,
                work_dir,
                config_path,
                subnet,
                hub_netns: None,
                client_netns: None,
                client_ip: network::client_ip(subnet),
                nodes,
            },
            launcher,
            procs: Vec::new(),
            disks: Vec::new(),
            new_session,
            owned: true,
            down: false,
        };
        cluster
            .procs
            .resize_with(cluster.state.nodes.len(), || None);
        cluster
            .disks
            .resize_with(cluster.state.nodes.len(), Vec::new);
        // From here on an error drops `cluster`, which removes whatever was made.
        cluster.build_network()?;
        cluster.build_disks()?;
        cluster.write_config()?;
        let all: Vec<usize> = (0..cluster.state.nodes.len()).collect();
        for &i in &all {
            cluster.launch(i)?;
        }
        cluster.wait_ready(&all)?;
        Ok(cluster)
    }

    fn timeouts(&self) -> &ClusterTimeouts {
        &self.state.spec.timeouts
    }

    fn build_network(&mut self) -> Result<()> {
        let tool = self.timeouts().tool;
        let name = self.state.name.clone();
        let hub = Netns::create(&format!("{name}-hub"), tool)?.persist();
        self.state.hub_netns = Some(hub.name().to_owned());
        network::create_bridge(&hub)?;
        let client = Netns::create(&format!("{name}-client"), tool)?.persist();
        self.state.client_netns = Some(client.name().to_owned());
        network::attach(&hub, &client, "v-client", self.state.client_ip)?;
        for i in 0..self.state.nodes.len() {
            let view = self.state.nodes[i].view.clone();
            let ns = Netns::create(&view.netns, tool)?.persist();
            self.state.nodes[i].netns_created = true;
            network::attach(&hub, &ns, &format!("v-{}", view.name), view.ip)?;
        }
        Ok(())
    }

    fn build_disks(&mut self) -> Result<()> {
        let images = self.state.work_dir.join("images");
        fs::create_dir_all(&images)
            .map_err(|e| io_context(format!("mkdir {}", images.display()), e))?;
        let logs = self.state.work_dir.join("logs");
        fs::create_dir_all(&logs)
            .map_err(|e| io_context(format!("mkdir {}", logs.display()), e))?;
        let jobs: Vec<(usize, usize, PathBuf, PathBuf)> = self
            .state
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| {
                let images = &images;
                node.view.disks.iter().enumerate().map(move |(d, mount)| {
                    let image = images.join(format!("{}-disk{}.img", node.view.name, d + 1));
                    (i, d, image, mount.clone())
                })
            })
            .collect();
        let size = self.state.spec.disk_image_bytes;
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<MadeDisk>> = Mutex::new(Vec::with_capacity(jobs.len()));
        let workers = self.state.spec.limits.setup_threads.min(jobs.len()).max(1);
        thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let Some((i, d, image, mount)) = jobs.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        return;
                    };
                    let made = Ext4OnLoop::create(image, size, mount);
                    if let Ok(mut done) = results.lock() {
                        done.push((*i, *d, image.clone(), made));
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        results.sort_by_key(|(i, d, _, _)| (*i, *d));
        let mut first_error = None;
        for (i, d, image, made) in results {
            match made {
                Ok(disk) => {
                    let (major, minor) = disk.loop_device().major_minor();
                    self.state.nodes[i].disks.push(DiskRecord {
                        index: d + 1,
                        image,
                        mount_dir: disk.mount_dir().to_path_buf(),
                        device: disk.loop_device().path().to_path_buf(),
                        major,
                        minor,
                    });
                    self.disks[i].push(disk);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The config file's content.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            schema: CONFIG_SCHEMA,
            name: self.state.name.clone(),
            secret: self.secret(),
            set_size: self.state.spec.set_size,
            parity: self.state.spec.parity,
            locks: self.state.spec.locks.clone(),
            nodes: self
                .state
                .nodes
                .iter()
                .map(|n| NodeConfig {
                    name: n.view.name.clone(),
                    rpc_addr: n.view.rpc_addr,
                    s3_addr: n.view.s3_addr,
                    http_addr: Some(n.view.http_addr),
                    disks: n.view.disks.clone(),
                })
                .collect(),
        }
    }

    fn secret(&self) -> String {
        self.state.spec.secret.clone().unwrap_or_default()
    }

    fn write_config(&mut self) -> Result<()> {
        if self.state.spec.secret.is_none() {
            let bytes: [u8; 32] = rand::random();
            self.state.spec.secret = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
        }
        Ok(self.config().write(&self.state.config_path)?)
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.state
            .nodes
            .iter()
            .position(|n| n.view.name == name)
            .ok_or_else(|| HarnessError::NoSuchNode {
                cluster: self.state.name.clone(),
                name: name.to_owned(),
            })
    }

    fn ns(&self, name: &str) -> Result<Netns> {
        Netns::open(name, self.timeouts().tool)
    }

    fn node_ns(&self, i: usize) -> Result<Netns> {
        self.ns(&self.state.nodes[i].view.netns)
    }

    /// Starts node `i`'s command (does not wait for it to be ready).
    fn launch(&mut self, i: usize) -> Result<()> {
        let view = self.state.nodes[i].view.clone();
        let command = match &self.launcher {
            Launcher::Template(t) => t.render(&view)?,
            Launcher::Custom(f) => f(&view),
        };
        let mut process = self.node_ns(i)?.command(&command.program)?;
        process
            .args(&command.args)
            .envs(view.environment())
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.state.work_dir);
        let log = self.state.nodes[i].log_path.clone();
        let spawned = NodeProcess::spawn(process, &log, self.new_session)?;
        let record = &mut self.state.nodes[i];
        record.process = Some(ProcessRecord {
            pid: spawned.pid(),
            start_ticks: spawned.start_ticks(),
        });
        record.starts += 1;
        self.procs[i] = Some(spawned);
        Ok(())
    }

    /// Waits until every node in `which` passes the spec's [`ReadyCheck`]; fails early if
    /// one exits.
    fn wait_ready(&mut self, which: &[usize]) -> Result<()> {
        let t = self.timeouts().clone();
        let deadline = Instant::now() + t.ready;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            for &i in &pending {
                if let Some(Liveness::Exited(status)) = self.procs[i].as_mut().map(|p| p.liveness())
                {
                    let node = &self.state.nodes[i];
                    return Err(HarnessError::Command {
                        cmd: format!("{} of cluster {}", node.view.name, self.state.name),
                        status,
                        stderr: format!(
                            "exited while starting; log {}:\n{}",
                            node.log_path.display(),
                            process::tail(&node.log_path, self.state.spec.limits.log_tail_bytes)
                        ),
                    });
                }
            }
            let addrs: Vec<(usize, SocketAddr)> = pending
                .iter()
                .filter_map(|&i| {
                    let view = &self.state.nodes[i].view;
                    match self.state.spec.ready {
                        ReadyCheck::None => None,
                        ReadyCheck::RpcPort => Some((i, view.rpc_addr)),
                        ReadyCheck::S3Port => Some((i, view.s3_addr)),
                    }
                })
                .collect();
            if addrs.is_empty() {
                return Ok(());
            }
            let probe = t.connect_probe;
            let probes = addrs.clone();
            let up: Vec<usize> = self.run_in_client(probe * 2 + t.tool, move || {
                probes
                    .iter()
                    .filter(|(_, addr)| TcpStream::connect_timeout(addr, probe).is_ok())
                    .map(|(i, _)| *i)
                    .collect()
            })?;
            pending.retain(|i| !up.contains(i));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|&i| self.state.nodes[i].view.name.as_str())
                    .collect();
                return Err(HarnessError::Timeout {
                    what: format!(
                        "nodes {names:?} of cluster {} to accept connections within {:?} (logs in {})",
                        self.state.name,
                        t.ready,
                        self.state.work_dir.join("logs").display()
                    ),
                });
            }
            thread::sleep(t.poll);
        }
    }

    /// The cluster's name (prefix of every resource it owns).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The spec it was made from (with the secret filled in).
    pub fn spec(&self) -> &ClusterSpec {
        &self.state.spec
    }

    /// The recorded state (what the CLI persists).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Path of the config file.
    pub fn config_path(&self) -> &Path {
        &self.state.config_path
    }

    /// The work directory.
    pub fn work_dir(&self) -> &Path {
        &self.state.work_dir
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&NodeView> {
        Ok(&self.state.nodes[self.index_of(name)?].view)
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.state.nodes.iter().map(|n| &n.view)
    }

    /// The node's disks.
    pub fn disks(&self, name: &str) -> Result<&[DiskRecord]> {
        Ok(&self.state.nodes[self.index_of(name)?].disks)
    }

    /// A handle on the node's network namespace (run tools or code inside it).
    pub fn node_netns(&self, name: &str) -> Result<Netns> {
        self.node_ns(self.index_of(name)?)
    }

    /// A handle on the client namespace, where test clients run.
    pub fn client_netns(&self) -> Result<Netns> {
        let name = self
            .state
            .client_netns
            .as_deref()
            .ok_or_else(|| HarnessError::Config {
                what: format!("cluster {} has no client namespace", self.state.name),
            })?;
        self.ns(name)
    }

    /// The client namespace's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.state.client_ip
    }

    /// Runs `f` on a thread inside the client namespace (see [`Netns::run`]).
    pub fn run_in_client<T, F>(&self, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.client_netns()?.run(timeout, f)
    }

    /// A tokio runtime whose threads live in the client namespace.
    pub fn client_runtime(&self, spec: &RuntimeSpec) -> Result<NetnsRuntime> {
        self.client_netns()?.tokio_runtime(spec)
    }

    /// Pid of the node's current process, if it has one that has not exited.
    pub fn pid(&mut self, name: &str) -> Result<Option<i32>> {
        let i = self.index_of(name)?;
        Ok(self.procs[i].as_mut().and_then(|p| {
            let alive = !matches!(p.liveness(), Liveness::Exited(_));
            alive.then(|| p.pid())
        }))
    }

    /// Whether the node is powered off.
    pub fn is_powered_off(&self, name: &str) -> Result<bool> {
        Ok(self.state.nodes[self.index_of(name)?].powered_off)
    }

    /// Packets the node's power-off table dropped so far (`None` while it is on).
    pub fn dropped_packets(&self, name: &str) -> Result<Option<u64>> {
        power::dropped_packets(&self.node_netns(name)?)
    }

    fn process_state(&mut self, i: usize) -> ProcessState {
        match self.procs[i].as_mut().map(|p| p.liveness()) {
            None => ProcessState::NotStarted,
            Some(Liveness::Running) => ProcessState::Running,
            Some(Liveness::Stopped) => ProcessState::Stopped,
            Some(Liveness::Exited(_)) => ProcessState::Exited,
        }
    }

    fn state_word(&mut self, i: usize) -> String {
        let power = if self.state.nodes[i].powered_off {
            "powered off"
        } else {
            "powered on"
        };
        let process = match self.process_state(i) {
            ProcessState::Running => "running",
            ProcessState::Stopped => "stopped",
            ProcessState::Exited => "exited",
            ProcessState::NotStarted => "not started",
        };
        format!("{power}, process {process}")
    }

    /// Powers the node off: every packet in its namespace is dropped, then its process is
    /// stopped (its sockets stay open and send nothing). Errors if it is off already.
    pub fn poweroff(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        if self.state.nodes[i].powered_off {
            return Err(HarnessError::NodeState {
                node: name.to_owned(),
                op: "power off",
                state: self.state_word(i),
            });
        }
        let t = self.timeouts().clone();
        let ns = self.node_ns(i)?;
        power::cut(&ns, self.state.spec.poweroff_drops_arp)?;
        self.state.nodes[i].powered_off = true;
        if let Some(p) = self.procs[i].as_mut() {
            p.signal(Signal::SIGSTOP)?;
            p.wait_stopped(t.freeze, t.poll)?;
        }
        Ok(())
    }

    /// Powers the node back on: SIGKILL its stopped process while packets are still
    /// dropped, wait for the exit, destroy its leftover sockets, lift the drop, start its
    /// command again (a new process with the same disks and address) and wait until it is
    /// ready. Errors if it is on.
    pub fn poweron(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        if !self.state.nodes[i].powered_off {
            return Err(HarnessError::NodeState {
                node: name.to_owned(),
                op: "power on",
                state: self.state_word(i),
            });
        }
        let t = self.timeouts().clone();
        if let Some(p) = self.procs[i].as_mut() {
            p.kill_and_reap(t.reap, t.poll)?;
        }
        let ns = self.node_ns(i)?;
        power::destroy_sockets(&ns, t.sockets_gone, t.poll)?;
        power::restore(&ns)?;
        self.state.nodes[i].powered_off = false;
        self.launch(i)?;
        self.wait_ready(&[i])
    }

    /// Crashes the node's process (SIGKILL, reaped): the kernel closes its sockets, so
    /// peers see FIN (or RST for unread data) and new connects are refused. The node stays
    /// down until [`start_node`](Self::start_node) or [`restart`](Self::restart).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        if self.state.nodes[i].powered_off {
            return Err(HarnessError::NodeState {
                node: name.to_owned(),
                op: "kill",
                state: self.state_word(i),
            });
        }
        let t = self.timeouts().clone();
        if let Some(p) = self.procs[i].as_mut() {
            p.kill_and_reap(t.reap, t.poll)?;
        }
        Ok(())
    }

    /// Stops the node's process (SIGTERM; SIGKILL after `graceful_stop`), starts its
    /// command again and waits until it is ready.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        if self.state.nodes[i].powered_off {
            return Err(HarnessError::NodeState {
                node: name.to_owned(),
                op: "restart",
                state: self.state_word(i),
            });
        }
        let t = self.timeouts().clone();
        if let Some(p) = self.procs[i].as_mut() {
            p.signal(Signal::SIGTERM)?;
            if p.wait_exited(t.graceful_stop, t.poll).is_err() {
                p.kill_and_reap(t.reap, t.poll)?;
            }
        }
        self.launch(i)?;
        self.wait_ready(&[i])
    }

    /// Starts the node's command if its process has exited (after [`kill`](Self::kill) or
    /// a crash) and waits until it is ready.
    pub fn start_node(&mut self, name: &str) -> Result<()> {
        let i = self.index_of(name)?;
        let state = self.process_state(i);
        if self.state.nodes[i].powered_off
            || matches!(state, ProcessState::Running | ProcessState::Stopped)
        {
            return Err(HarnessError::NodeState {
                node: name.to_owned(),
                op: "start",
                state: self.state_word(i),
            });
        }
        self.launch(i)?;
        self.wait_ready(&[i])
    }

    /// Every node's address, pid, power, process state and disks.
    pub fn status(&mut self) -> Result<ClusterStatus> {
        let mut nodes = Vec::with_capacity(self.state.nodes.len());
        for i in 0..self.state.nodes.len() {
            let process = self.process_state(i);
            let record = &self.state.nodes[i];
            let dropped = if record.powered_off {
                self.node_ns(i)
                    .and_then(|ns| power::dropped_packets(&ns))
                    .unwrap_or(None)
            } else {
                None
            };
            let record = &self.state.nodes[i];
            nodes.push(NodeStatus {
                name: record.view.name.clone(),
                netns: record.view.netns.clone(),
                ip: record.view.ip,
                rpc_addr: record.view.rpc_addr,
                s3_addr: record.view.s3_addr,
                http_addr: record.view.http_addr,
                pid: record.process.map(|p| p.pid),
                power: if record.powered_off {
                    Power::Off
                } else {
                    Power::On
                },
                process,
                starts: record.starts,
                dropped_packets: dropped,
                disks: record.disks.clone(),
                log_path: record.log_path.clone(),
            });
        }
        Ok(ClusterStatus {
            name: self.state.name.clone(),
            subnet: self.state.subnet,
            client_netns: self.state.client_netns.clone().unwrap_or_default(),
            client_ip: self.state.client_ip,
            config_path: self.state.config_path.clone(),
            work_dir: self.state.work_dir.clone(),
            nodes,
        })
    }

    /// The node's log file (stdout and stderr of every process started for it).
    pub fn log_path(&self, name: &str) -> Result<&Path> {
        Ok(&self.state.nodes[self.index_of(name)?].log_path)
    }

    /// The node's whole log.
    pub fn log(&self, name: &str) -> Result<String> {
        let path = self.log_path(name)?;
        fs::read_to_string(path).map_err(|e| io_context(format!("reading {}", path.display()), e))
    }

    /// Prints the tail of every node's log to stderr (bounded by `limits.log_tail_bytes`).
    pub fn print_logs(&self) {
        let max = self.state.spec.limits.log_tail_bytes;
        for node in &self.state.nodes {
            eprintln!(
                "----- {} log ({}), last {max} bytes -----\n{}",
                node.view.name,
                node.log_path.display(),
                process::tail(&node.log_path, max)
            );
        }
    }

    /// What of this cluster exists on the machine now (all empty after teardown).
    pub fn leftovers(&self) -> Result<Leftovers> {
        let root = self
            .state
            .work_dir
            .parent()
            .unwrap_or(&self.state.spec.work_root);
        sweep::leftovers(&self.state.name, root, self.timeouts().tool)
    }

    /// Tears the cluster down now, reporting the first error (drop does the same and
    /// reports on stderr).
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    /// Leaves the cluster running (processes, namespaces, mounts) and returns its state,
    /// for [`attach`](Self::attach) from another process.
    pub fn detach(mut self) -> ClusterState {
        self.down = true;
        self.owned = false;
        for p in self.procs.iter_mut() {
            if let Some(p) = p.take() {
                p.release();
            }
        }
        for disks in self.disks.iter_mut() {
            for disk in disks.drain(..) {
                disk.persist();
            }
        }
        self.state.clone()
    }

    /// Acts on a cluster from its recorded state (made by [`detach`](Self::detach)).
    /// Dropping the handle leaves the cluster running; [`shutdown`](Self::shutdown) tears
    /// it down; [`detach`](Self::detach) returns the updated state.
    pub fn attach(state: ClusterState) -> Result<Cluster> {
        let command = state.command.clone().ok_or_else(|| HarnessError::Config {
            what: format!(
                "cluster {} was started with a closure; only its creator can restart nodes",
                state.name
            ),
        })?;
        let procs = state
            .nodes
            .iter()
            .map(|n| n.process.map(|p| NodeProcess::adopt(p.pid, p.start_ticks)))
            .collect();
        let disks = state.nodes.iter().map(|_| Vec::new()).collect();
        Ok(Cluster {
            state,
            launcher: Launcher::Template(command),
            procs,
            disks,
            new_session: true,
            owned: false,
            down: false,
        })
    }

    /// Removes everything (see the module docs); tries every step, returns the first error.
    fn teardown(&mut self) -> Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        let t = self.timeouts().clone();
        let mut first_error = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cluster teardown");
                first_error.get_or_insert(e);
            }
        };
        for p in self.procs.iter_mut().flatten() {
            note(p.kill_and_reap(t.reap, t.poll));
        }
        let mut namespaces: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.netns_created)
            .map(|n| n.view.netns.clone())
            .collect();
        namespaces.extend(self.state.client_netns.clone());
        namespaces.extend(self.state.hub_netns.clone());
        for node in self.state.nodes.iter_mut().filter(|n| n.powered_off) {
            if let Ok(ns) = Netns::open(&node.view.netns, t.tool) {
                note(power::restore(&ns));
            }
            node.powered_off = false;
        }
        for name in &namespaces {
            let Ok(ns) = Netns::open(name, t.tool) else {
                continue;
            };
            // Anything else a test started inside (e.g. a tool left running).
            for pid in ns.pids().unwrap_or_default() {
                if let Some(start) = process::start_ticks_of(pid) {
                    note(NodeProcess::adopt(pid, start).kill_and_reap(t.reap, t.poll));
                }
            }
            note(crate::netns::delete_named(name, t.tool));
        }
        for disks in self.disks.iter_mut() {
            for disk in disks.drain(..) {
                note(disk.unmount());
            }
        }
        if !self.owned {
            // An attached cluster holds no fixtures: adopt the recorded disks.
            // Only devices still attached to the recorded image: a freed device number may
            // belong to someone else by now.
            for node in &self.state.nodes {
                for d in &node.disks {
                    match Ext4OnLoop::adopt_backed_by(&d.device, &d.mount_dir, &d.image) {
                        Ok(Some(disk)) => note(disk.unmount()),
                        Ok(None) => {}
                        Err(e) => note(Err(e)),
                    }
                }
            }
        }
        if thread::panicking() {
            self.print_logs();
        }
        if !self.state.spec.keep_work_dir {
            crate::mounts::detach_below(&self.state.work_dir);
            if self.state.work_dir.exists() {
                note(fs::remove_dir_all(&self.state.work_dir).map_err(|e| {
                    io_context(format!("removing {}", self.state.work_dir.display()), e)
                }));
            }
        }
        // Whatever a failed step left: list it, remove it, and say if anything stays.
        match self.leftovers() {
            Ok(mut left) => {
                if self.state.spec.keep_work_dir {
                    left.work_dir = None;
                }
                if !left.is_empty() {
                    note(sweep::remove(&left, &t));
                    if let Ok(mut still) = self.leftovers() {
                        if self.state.spec.keep_work_dir {
                            still.work_dir = None;
                        }
                        if !still.is_empty() {
                            note(Err(HarnessError::Io(std::io::Error::other(format!(
                                "cluster {} left behind: {still:?}",
                                self.state.name
                            )))));
                        }
                    }
                }
            }
            Err(e) => note(Err(e)),
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.owned || self.down {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!(
                "disk-io-harness: tearing down cluster {} failed: {e}",
                self.state.name
            );
        }
    }
}
