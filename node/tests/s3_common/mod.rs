//! What the S3 cluster tests share: a 4 × 4 cluster of full nodes in the
//! harness, a user made through the admin CLI, and real S3 clients
//! (Debian's awscli and python3-boto3, through `node/scripts/s3io.py`) run
//! inside the cluster's client namespace.
#![allow(dead_code)] // not every test binary uses every item

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use disk_io_harness::cluster::{Cluster, ClusterSpec, NodeCommand, ReadyCheck};
use disk_io_harness::privilege;
use disk_io_node::admin::{admin_call, AdminReply, AdminRequest, ClusterView};
use disk_io_rpc::{LockTiming, Peer, RpcConfig};

/// Debian's awscli (the tests must not pick up another one on PATH).
pub const AWS: &str = "/usr/bin/aws";
/// Debian's Python, which has python3-boto3.
pub const PYTHON: &str = "/usr/bin/python3";
/// The user every test makes.
pub const ACCESS_KEY: &str = "field-report";
/// Its secret.
pub const SECRET_KEY: &str = "field-report-secret-key-0123456789";

/// The S3 client script.
pub fn s3io_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3io.py")
}

/// Fail, naming what is missing, unless the privileges and the S3 clients
/// are there.
pub fn require() {
    privilege::require_cluster()
        .expect("the S3 cluster tests need root, netns, nftables and loop devices");
    assert!(
        Path::new(AWS).exists(),
        "{AWS} is missing: the S3 tests need Debian's awscli (`cargo xtask setup` installs it)"
    );
    let boto = Command::new(PYTHON)
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        boto,
        "{PYTHON} cannot import boto3: the S3 tests need Debian's python3-boto3 (`cargo xtask setup` installs it)"
    );
}

/// A cluster of full nodes (S3 served once ready) with `image` bytes per
/// disk, and the test user made through the admin CLI.
pub struct S3Cluster {
    /// The harness cluster.
    pub c: Cluster,
    /// One cluster at a time per test binary: the bounds the tests assert
    /// assume the machine is not also running another 1 GiB upload.
    _serial: Option<std::sync::MutexGuard<'static, ()>>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `disk-io-node` binary: cargo's for tests; next to the running
/// program's directory for the demo example (`target/release/examples/..`).
pub fn node_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_disk-io-node") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .expect("current exe")
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("disk-io-node"),
    }
}

/// The node command: `disk-io-node serve`, formatting fresh disks.
pub fn node_command() -> NodeCommand {
    NodeCommand::disk_io_node(node_bin())
}

impl S3Cluster {
    /// Start 4 nodes × 4 disks (2 sets of 4+4) and make the test user.
    pub fn start(image: u64) -> S3Cluster {
        S3Cluster::start_with(image, &[])
    }

    /// [`start`](Self::start) with extra `serve` arguments.
    pub fn start_with(image: u64, serve_args: &[&str]) -> S3Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        S3Cluster::launch(image, serve_args, Some(serial))
    }

    /// Another cluster beside one this process runs already (benchmarks
    /// that interleave two backends).
    pub fn second(image: u64, serve_args: &[&str]) -> S3Cluster {
        S3Cluster::launch(image, serve_args, None)
    }

    fn launch(
        image: u64,
        serve_args: &[&str],
        serial: Option<std::sync::MutexGuard<'static, ()>>,
    ) -> S3Cluster {
        require();
        let mut spec = ClusterSpec::with_shape(4, 4);
        spec.set_size = 8;
        spec.parity = 4;
        spec.disk_image_bytes = image;
        spec.ready = ReadyCheck::S3Port;
        // Lockers grant nothing for a TTL after their start; a short TTL
        // keeps the nodes' bootstrap (IAM's first load) short.
        spec.locks = LockTiming {
            ttl_ms: 6000,
            refresh_ms: 2000,
            attempt_ms: 250,
        };
        spec.timeouts.ready = Duration::from_secs(60);
        let c = Cluster::start(spec, node_command().args(serve_args.iter().copied()))
            .expect("start the cluster");
        let s = S3Cluster { c, _serial: serial };
        // Lockers grant nothing for a TTL after their start (a restarted
        // locker forgot leases its holders still count on), so the first
        // write may answer a typed "unavailable" for that long.
        let t0 = Instant::now();
        loop {
            let out = s.admin(&[
                "user",
                "add",
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ]);
            if out.status.success() {
                break;
            }
            let retry = out.status.code() == Some(1)
                && String::from_utf8_lossy(&out.stderr).contains("Unavailable");
            assert!(
                retry && t0.elapsed() < Duration::from_secs(30),
                "admin user add: {}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        s
    }

    /// `http://ip:port` of a node's S3 server.
    pub fn endpoint(&self, node: &str) -> String {
        format!("http://{}", self.c.node(node).expect("node").s3_addr)
    }

    /// A command run in the client namespace.
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = self
            .c
            .client_netns()
            .expect("client netns")
            .command(program)
            .expect("command in the client netns");
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .env("S3IO_ACCESS_KEY", ACCESS_KEY)
            .env("S3IO_SECRET_KEY", SECRET_KEY)
            .stdin(Stdio::null());
        cmd
    }

    /// `aws --endpoint-url <node> args…`, bounded by `timeout`.
    pub fn aws(&self, node: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.client_command(AWS);
        cmd.arg("--endpoint-url")
            .arg(self.endpoint(node))
            .args(args);
        run(cmd, timeout)
    }

    /// `aws` with other credentials.
    pub fn aws_as(&self, node: &str, key: &str, secret: &str, args: &[&str]) -> Output {
        let mut cmd = self.client_command(AWS);
        cmd.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .arg("--endpoint-url")
            .arg(self.endpoint(node))
            .args(args);
        run(cmd, Duration::from_secs(60))
    }

    /// `disk-io-node admin --config … args…` in the client namespace.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = self.client_command(node_bin().to_str().expect("utf-8 path"));
        cmd.arg("admin")
            .arg("--config")
            .arg(self.c.config_path())
            .args(args);
        run(cmd, Duration::from_secs(60))
    }

    /// Start `s3io.py args…` against `node`, its JSON lines on a channel.
    pub fn s3io(&self, node: &str, args: &[&str]) -> S3io {
        let mut cmd = self.client_command(PYTHON);
        cmd.arg(s3io_script())
            .arg("--endpoint")
            .arg(self.endpoint(node))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start s3io.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        S3io { child, rx }
    }

    /// The cluster view as `node` answers it (over the admin RPC, from a
    /// client runtime), within `timeout`.
    pub fn status(&self, node: &str, timeout: Duration) -> Result<ClusterView, String> {
        let n = self.c.node(node).map_err(|e| e.to_string())?;
        let (addr, secret) = (n.rpc_addr, self.c.config().secret);
        let name = node.to_string();
        self.c
            .run_in_client(timeout + Duration::from_secs(5), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let peer = Peer::new(&name, addr, secret.as_bytes(), RpcConfig::default())
                        .map_err(|e| e.to_string())?;
                    match admin_call(&peer, &AdminRequest::ClusterStatus, timeout).await {
                        Ok(AdminReply::Status(v)) => Ok(v),
                        Ok(other) => Err(format!("unexpected reply {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                })
            })
            .map_err(|e| e.to_string())?
    }

    /// After node4 was powered on at `since_ms` (Unix ms, taken before
    /// `poweron`): wait until every node sees every disk online and every
    /// set was scanned to completion (all it found healed) by a scan that
    /// started after `since_ms` (a node scans only once it sees all disks
    /// online); how long it took.
    pub fn wait_healed(&self, since_ms: u64, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let nodes = ["node1", "node2", "node3", "node4"];
        loop {
            let views: Vec<_> = nodes
                .iter()
                .filter_map(|n| self.status(n, Duration::from_secs(2)).ok())
                .collect();
            let sets = views.first().map_or(0, |v| v.sets.len());
            let online = views.len() == nodes.len()
                && views
                    .iter()
                    .all(|v| v.ready && v.sets.iter().all(|x| x.online == x.disks.len()));
            let scanned = sets > 0
                && (0..sets).all(|i| {
                    views
                        .iter()
                        .filter_map(|v| v.sets.get(i).and_then(|x| x.scanned_ms))
                        .any(|at| at >= since_ms)
                });
            if online && scanned {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < timeout, "not healed within {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET `path` of a node's ops HTTP server: (status, body).
    pub fn http_get(&self, node: &str, path: &str) -> (u16, String) {
        let addr = self.c.node(node).expect("node").http_addr;
        let path = path.to_string();
        self.c
            .run_in_client(Duration::from_secs(10), move || {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .expect("connect to the ops port");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\nHost: node\r\n\r\n").unwrap();
                let mut buf = String::new();
                s.read_to_string(&mut buf).expect("read the reply");
                let status = buf
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .expect("an HTTP status");
                let body = buf
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default();
                (status, body)
            })
            .expect("GET in the client netns")
    }
}

/// A running s3io.py.
pub struct S3io {
    child: Child,
    rx: mpsc::Receiver<serde_json::Value>,
}

impl S3io {
    /// Wait until `fraction` of the bytes went out (or the run ended).
    pub fn wait_fraction(&mut self, fraction: f64, timeout: Duration) -> Option<serde_json::Value> {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) if v["event"] == "progress" => {
                    let (b, t) = (
                        v["bytes"].as_f64().unwrap_or(0.0),
                        v["total"].as_f64().unwrap_or(1.0),
                    );
                    if b / t >= fraction {
                        return Some(v);
                    }
                }
                Ok(v) => return Some(v),
                Err(_) => return None,
            }
        }
        None
    }

    /// Wait for the final line (`done` or `error`), killing the client
    /// after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["event"] == "progress" => continue,
                Ok(v) => {
                    let _ = self.child.wait();
                    return v;
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    let _ = self.child.wait();
                    panic!("s3io.py gave no result within {timeout:?}; stderr: {err}");
                }
            }
        }
    }
}

impl Drop for S3io {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Now, in Unix milliseconds (what the cluster view's scan times use).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run `cmd` to completion within `timeout` (killed after it).
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() > end => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("{cmd:?} did not finish within {timeout:?}: {}", text(&out));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// stdout and stderr, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}; stdout: {}; stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Write `size` pseudo-random bytes (seeded) to `path`; their SHA-256.
pub fn random_file(path: &Path, size: u64, seed: u64) -> String {
    use rand::{RngCore, SeedableRng};
    use sha2::Digest;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
    hex::encode(h.finalize())
}

/// SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).expect("open");
    std::io::copy(&mut f, &mut h).expect("read");
    hex::encode(h.finalize())
}

/// A scratch directory for test files (not under /tmp's tmpfs, if any).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("diskio-s3-")
        .tempdir_in("/var/tmp")
        .expect("scratch dir")
}
