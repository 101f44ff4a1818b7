//! Self-tests of the cluster harness, with the `disk-io-echo-node` stand-in as the node
//! program: nodes reachable from the client namespace and from each other, unreachable
//! from the root namespace; power-off is silence (a connect times out, an established
//! connection gets no FIN) and power-on is a fresh process with the same disks; a crash is
//! loud (refused, FIN/RST); teardown leaves nothing, also when the test panics or its
//! process is killed; the CLI acts on one cluster across invocations.
//!
//! These need root, network namespaces, nftables and loop devices (CI runs them as root);
//! without them they fail, naming what is missing. Every wait is bounded.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use disk_io_harness::cluster::{
    network, power, sweep, Cluster, ClusterConfig, ClusterSpec, ClusterState, NodeCommand, Power,
    ProcessState, POWEROFF_TABLE,
};
use disk_io_harness::netns::{self, RuntimeSpec};
use disk_io_harness::{loopdev, mounts, privilege, HarnessError};

/// The stand-in node program.
const ECHO: &str = env!("CARGO_BIN_EXE_disk-io-echo-node");
/// The CLI.
const CLI: &str = env!("CARGO_BIN_EXE_disk-io-cluster");
/// Upper bound for anything that should finish promptly.
const BOUND: Duration = Duration::from_secs(15);
/// How long a powered-off node is watched for a FIN, RST or reply.
const SILENCE: Duration = Duration::from_millis(1500);
/// Connect timeout used against a powered-off node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A powered-on node must answer an old connection's retransmission with RST within this.
const RESET_BOUND: Duration = Duration::from_secs(30);
/// A refused connect (crashed node) must fail at least this fast.
const FAST_FAIL: Duration = Duration::from_millis(500);
/// Selects a child role of this test binary (see `a_panicking_test_still_cleans_up`).
const CHILD_ENV: &str = "DISKIO_CLUSTER_SELFTEST_CHILD";

fn echo_command() -> NodeCommand {
    NodeCommand::new(ECHO).args([
        "--node",
        "{node}",
        "--listen",
        "{rpc_addr}",
        "--disks",
        "{disks}",
    ])
}

fn start(spec: ClusterSpec) -> Cluster {
    privilege::require_cluster().expect("the cluster harness needs these privileges and tools");
    let started = Instant::now();
    let cluster = Cluster::start(spec, echo_command()).expect("start the cluster");
    eprintln!(
        "cluster {} ({} nodes x {} disks) up in {:.0?}",
        cluster.name(),
        cluster.spec().nodes,
        cluster.spec().disks_per_node,
        started.elapsed()
    );
    cluster
}

/// A line-protocol connection to a node.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, BOUND)?;
        stream.set_read_timeout(Some(BOUND))?;
        stream.set_write_timeout(Some(BOUND))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn { stream, reader })
    }

    fn call(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(reply.trim_end().to_owned())
    }
}

/// One request on a fresh connection, made inside the client namespace.
fn call(cluster: &Cluster, addr: SocketAddr, line: &str) -> io::Result<String> {
    let line = line.to_owned();
    cluster
        .run_in_client(BOUND, move || Conn::open(addr)?.call(&line))
        .expect("client thread")
}

/// `PONG <node> <pid> <peer>` parsed.
fn pong(reply: &str) -> (String, i32, SocketAddr) {
    let words: Vec<&str> = reply.split(' ').collect();
    assert_eq!(words.len(), 4, "reply {reply:?}");
    assert_eq!(words[0], "PONG", "reply {reply:?}");
    (
        words[1].to_owned(),
        words[2].parse().expect("pid"),
        words[3].parse().expect("peer"),
    )
}

fn ip_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("ip -j output")
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn root_link_names() -> BTreeSet<String> {
    ip_json(&["link", "show"])
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

fn root_has_harness_table() -> bool {
    power::nft_tables_here(BOUND)
        .expect("nft list tables in the root namespace")
        .iter()
        .any(|(_, name)| name == POWEROFF_TABLE)
}

/// A connect from the root namespace with SO_DONTROUTE: it may only use on-link routes,
/// so it can never send anything through the host's gateway; its errno.
fn dontroute_connect_errno(addr: SocketAddrV4) -> Option<nix::errno::Errno> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .expect("socket");
    socket::setsockopt(&fd, sockopt::DontRoute, &true).expect("SO_DONTROUTE");
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(addr)).err()
}

#[test]
fn four_nodes_reachable_inside_their_namespaces_only() {
    let links_before = root_link_names();
    let mut cluster = start(ClusterSpec::default());
    let client_ip = cluster.client_ip();
    let nodes: Vec<_> = cluster.nodes().cloned().collect();
    assert_eq!(nodes.len(), 4);

    // The client reaches every node, from its own address.
    for node in &nodes {
        let (name, pid, peer) = pong(&call(&cluster, node.rpc_addr, "PING").expect("PING"));
        assert_eq!(name, node.name);
        assert_eq!(Some(pid), cluster.pid(&node.name).unwrap());
        assert_eq!(peer.ip(), std::net::IpAddr::V4(client_ip));
    }

    // A tokio runtime whose threads live in the client namespace reaches them all at once.
    let runtime = cluster
        .client_runtime(&RuntimeSpec::default())
        .expect("client runtime");
    let addrs: Vec<(String, SocketAddr)> =
        nodes.iter().map(|n| (n.name.clone(), n.rpc_addr)).collect();
    let replies = runtime
        .block_on(BOUND, async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut tasks = Vec::new();
            for (name, addr) in addrs {
                tasks.push(tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.write_all(b"PING\n").await?;
                    let mut line = String::new();
                    tokio::io::BufReader::new(stream)
                        .read_line(&mut line)
                        .await?;
                    io::Result::Ok((name, line.trim_end().to_owned()))
                }));
            }
            let mut replies = Vec::new();
            for task in tasks {
                replies.push(task.await.expect("task").expect("async PING"));
            }
            replies
        })
        .expect("async PINGs");
    for (name, reply) in replies {
        let (answered, _, peer) = pong(&reply);
        assert_eq!(answered, name);
        assert_eq!(peer.ip(), std::net::IpAddr::V4(client_ip));
    }
    drop(runtime);

    // Nodes reach each other.
    let node2 = nodes[1].rpc_addr;
    let from_node1 = cluster
        .node_netns("node1")
        .unwrap()
        .run(BOUND, move || Conn::open(node2)?.call("PING"))
        .unwrap()
        .expect("node1 -> node2");
    assert_eq!(pong(&from_node1).2.ip(), std::net::IpAddr::V4(nodes[0].ip));

    // The root namespace cannot reach them: no new interface, no address or route into the
    // cluster's subnet, and a connect restricted to on-link routes finds none. (A plain
    // connect would leave through the host's default route, so it is not tried.)
    // (Compared by the harness' own link names: unrelated software may add links.)
    let ours = |name: &str| {
        name == network::BRIDGE || name == network::MEMBER_IF || name.starts_with("v-")
    };
    let added: Vec<String> = root_link_names()
        .difference(&links_before)
        .filter(|name| ours(name))
        .cloned()
        .collect();
    assert!(
        added.is_empty(),
        "the harness added links to the root namespace: {added:?}"
    );
    for iface in ip_json(&["-4", "addr", "show"]).as_array().unwrap() {
        for addr in iface["addr_info"].as_array().into_iter().flatten() {
            let local: Ipv4Addr = addr["local"].as_str().unwrap().parse().unwrap();
            assert!(
                !nodes.iter().any(|n| in_cidr(n.ip, &format!("{local}/24"))),
                "root namespace has {local} in the cluster subnet"
            );
        }
    }
    for route in ip_json(&["-4", "route", "show", "table", "all"])
        .as_array()
        .unwrap()
    {
        let dst = route["dst"].as_str().unwrap_or("default");
        if dst == "default" {
            continue;
        }
        assert!(
            !nodes.iter().any(|n| in_cidr(n.ip, dst)),
            "root namespace routes {dst} into the cluster subnet: {route}"
        );
    }
    for node in &nodes {
        let errno = dontroute_connect_errno(SocketAddrV4::new(node.ip, node.rpc_addr.port()));
        assert_eq!(
            errno,
            Some(nix::errno::Errno::ENETUNREACH),
            "root namespace connect to {} must find no route",
            node.rpc_addr
        );
    }
    assert!(!root_has_harness_table());

    // The config file describes the cluster; the disks are ext4 on loop devices.
    let config = ClusterConfig::load(cluster.config_path()).expect("config file");
    assert_eq!(config, cluster.config());
    assert_eq!((config.set_size, config.parity), (8, 4));
    assert_eq!(config.nodes.len(), 4);
    for (node, configured) in nodes.iter().zip(&config.nodes) {
        assert_eq!(configured.name, node.name);
        assert_eq!(configured.rpc_addr, node.rpc_addr);
        assert_eq!(configured.disks, node.disks);
        assert_eq!(cluster.disks(&node.name).unwrap().len(), 4);
        for disk in cluster.disks(&node.name).unwrap() {
            let mount = mounts::mount_at(&disk.mount_dir)
                .unwrap()
                .expect("disk mounted");
            assert_eq!(mount.fs_type, "ext4");
            assert_eq!(Path::new(&mount.source), disk.device);
            assert_eq!((mount.major, mount.minor), (disk.major, disk.minor));
            assert_eq!(disk.major, 7, "loop devices have major 7");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cluster.config_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds the secret");
}

#[test]
fn poweroff_is_silence_and_poweron_is_a_fresh_process_with_the_same_disks() {
    let mut cluster = start(ClusterSpec::default());
    let node4 = cluster.node("node4").unwrap().clone();
    for disk in 1..=4 {
        let reply = call(
            &cluster,
            node4.rpc_addr,
            &format!("PUT {disk} key{disk} value-{disk}"),
        );
        assert_eq!(reply.unwrap(), "OK");
    }
    let old_pid = cluster.pid("node4").unwrap().expect("node4 runs");
    let addr = node4.rpc_addr;
    let mut held = cluster
        .run_in_client(BOUND, move || Conn::open(addr))
        .unwrap()
        .expect("connection to node4");
    assert!(held.call("PING").unwrap().starts_with("PONG node4"));

    let t = Instant::now();
    cluster.poweroff("node4").expect("poweroff node4");
    eprintln!("poweroff node4 took {:.0?}", t.elapsed());
    let status = cluster.status().unwrap();
    let off = &status.nodes[3];
    assert_eq!(
        (off.power, off.process),
        (Power::Off, ProcessState::Stopped)
    );
    assert_eq!(off.pid, Some(old_pid));
    let tables = power::nft_tables(&cluster.node_netns("node4").unwrap()).unwrap();
    assert!(tables.contains(&("inet".to_owned(), POWEROFF_TABLE.to_owned())));
    assert!(!root_has_harness_table(), "nothing in the root namespace");
    assert!(matches!(
        cluster.poweroff("node4"),
        Err(HarnessError::NodeState { .. })
    ));

    // The established connection: no FIN, no RST, just nothing.
    held.stream.set_read_timeout(Some(SILENCE)).unwrap();
    let t = Instant::now();
    let mut byte = [0u8; 1];
    match held.reader.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a powered-off peer must send nothing, got {other:?}"),
    }
    assert!(t.elapsed() >= SILENCE - Duration::from_millis(100));

    // A new connect is not refused: it times out.
    let t = Instant::now();
    let connect = cluster
        .run_in_client(BOUND, move || {
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        })
        .unwrap();
    let waited = t.elapsed();
    eprintln!("connect to powered-off node4 gave up after {waited:.0?}: {connect:?}");
    assert_eq!(
        connect.map(drop).unwrap_err().kind(),
        io::ErrorKind::TimedOut,
        "a powered-off node must not refuse"
    );
    assert!(
        waited >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );

    // The other nodes still answer.
    for name in ["node1", "node2", "node3"] {
        let addr = cluster.node(name).unwrap().rpc_addr;
        assert_eq!(pong(&call(&cluster, addr, "PING").unwrap()).0, name);
    }
    let dropped = cluster
        .dropped_packets("node4")
        .unwrap()
        .expect("powered off");
    assert!(dropped > 0, "the drop rules counted the SYNs");

    // Data sent now is neither answered nor refused; after power-on the fresh stack
    // answers its retransmission with RST (the old process's sockets were destroyed under
    // the drop, so no late FIN ever reaches us).
    held.stream
        .write_all(b"PING\n")
        .expect("send buffer accepts");
    match held.reader.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a powered-off peer must send nothing, got {other:?}"),
    }

    let t = Instant::now();
    cluster.poweron("node4").expect("poweron node4");
    eprintln!(
        "poweron node4 (kill, lift, restart, ready) took {:.0?}",
        t.elapsed()
    );
    let new_pid = cluster.pid("node4").unwrap().expect("node4 runs again");
    assert_ne!(new_pid, old_pid);
    let (_, answered_pid, _) = pong(&call(&cluster, addr, "PING").unwrap());
    assert_eq!(answered_pid, new_pid);
    for disk in 1..=4 {
        let reply = call(&cluster, addr, &format!("GET {disk} key{disk}")).unwrap();
        assert_eq!(
            reply,
            format!("VALUE value-{disk}"),
            "disk {disk} kept its data"
        );
    }
    assert!(power::nft_tables(&cluster.node_netns("node4").unwrap())
        .unwrap()
        .is_empty());
    let status = cluster.status().unwrap();
    assert_eq!(status.nodes[3].power, Power::On);
    assert_eq!(status.nodes[3].starts, 2);
    assert!(matches!(
        cluster.poweron("node4"),
        Err(HarnessError::NodeState { .. })
    ));

    held.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + RESET_BOUND;
    loop {
        match held.reader.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "old connection neither reset nor closed within {RESET_BOUND:?}"
                );
            }
            other => panic!("the old connection must be reset, got {other:?}"),
        }
    }
    eprintln!("old connection reset {:.0?} after poweron", t.elapsed());
}

#[test]
fn kill_is_a_loud_crash_and_restart_starts_a_new_process() {
    let mut cluster = start(ClusterSpec::with_shape(2, 1));
    let addr = cluster.node("node2").unwrap().rpc_addr;
    let mut held = cluster
        .run_in_client(BOUND, move || Conn::open(addr))
        .unwrap()
        .unwrap();
    assert!(held.call("PING").unwrap().starts_with("PONG node2"));
    let old = cluster.pid("node2").unwrap().unwrap();

    cluster.kill("node2").expect("kill node2");
    assert_eq!(cluster.pid("node2").unwrap(), None);
    // The established connection sees the close at once.
    let mut byte = [0u8; 1];
    match held.reader.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("a crashed peer's close must arrive, got {other:?}"),
    }
    // And a new connect is refused, fast.
    let t = Instant::now();
    let refused = cluster
        .run_in_client(BOUND, move || TcpStream::connect_timeout(&addr, BOUND))
        .unwrap();
    assert_eq!(
        refused.map(drop).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(t.elapsed() < FAST_FAIL, "refused in {:?}", t.elapsed());

    // Typed refusals.
    assert!(matches!(
        cluster.poweron("node2"),
        Err(HarnessError::NodeState { .. })
    ));
    assert!(matches!(
        cluster.poweroff("node9"),
        Err(HarnessError::NoSuchNode { .. })
    ));

    cluster.start_node("node2").expect("start node2 again");
    let (_, pid, _) = pong(&call(&cluster, addr, "PING").unwrap());
    assert_ne!(pid, old);
    assert!(matches!(
        cluster.start_node("node2"),
        Err(HarnessError::NodeState { .. })
    ));

    let node1 = cluster.node("node1").unwrap().rpc_addr;
    let before = cluster.pid("node1").unwrap().unwrap();
    cluster.restart("node1").expect("restart node1");
    let (_, after, _) = pong(&call(&cluster, node1, "PING").unwrap());
    assert_ne!(after, before);
    assert_eq!(cluster.status().unwrap().nodes[0].starts, 2);
}

/// Processes, namespaces, nft tables, mounts, loop devices and files of `name`: none.
fn assert_nothing_left(name: &str, work_root: &Path, pids: &[i32]) {
    let left = sweep::leftovers(name, work_root, BOUND).expect("list leftovers");
    assert!(left.is_empty(), "leftovers of {name}: {left:?}");
    assert!(netns::list(name).unwrap().is_empty());
    assert!(
        !loopdev::attached_loop_devices()
            .unwrap()
            .iter()
            .any(|(_, backing)| backing.starts_with(work_root.join(name))),
        "a loop device of {name} is still attached"
    );
    for &pid in pids {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        assert!(gone, "node process {pid} survived");
    }
    assert!(!root_has_harness_table());
}

fn work_root(cluster: &Cluster) -> PathBuf {
    cluster.work_dir().parent().unwrap().to_path_buf()
}

#[test]
fn drop_removes_every_namespace_table_mount_and_loop_device() {
    let mut cluster = start(ClusterSpec::with_shape(2, 2));
    cluster.poweroff("node2").expect("poweroff node2");
    let name = cluster.name().to_owned();
    let root = work_root(&cluster);
    let pids: Vec<i32> = cluster
        .state()
        .nodes
        .iter()
        .filter_map(|n| n.process.map(|p| p.pid))
        .collect();
    let before = cluster.leftovers().unwrap();
    assert_eq!(before.netns.len(), 4, "hub, client, 2 nodes: {before:?}");
    assert_eq!(before.mounts.len(), 4);
    assert_eq!(before.loop_devices.len(), 4);
    assert_eq!(before.processes.len(), 2);
    assert!(before
        .nft_tables
        .iter()
        .any(|t| t.ends_with(&format!("inet {POWEROFF_TABLE}"))));
    drop(cluster);
    assert_nothing_left(&name, &root, &pids);
}

/// Runs this test binary's test `test` with the child role `role`; its output.
fn run_child(test: &str, role: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test");
    wait_output(child, BOUND * 4)
}

fn wait_output(mut child: std::process::Child, bound: Duration) -> Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("child test did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn child_cluster_name(output: &str) -> String {
    output
        .lines()
        .find_map(|l| Some(&l[l.find("CLUSTER=")? + "CLUSTER=".len()..]))
        .unwrap_or_else(|| panic!("the child printed no CLUSTER= line:\n{output}"))
        .trim()
        .to_owned()
}

/// Prefix of the child's cluster: other tests' start-up sweeps (prefix `dioh`) never touch
/// it, so what the parent finds is what the child itself left.
const PANIC_PREFIX: &str = "diohpanic";

#[test]
fn a_panicking_test_still_cleans_up() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("panic") {
        let mut spec = ClusterSpec::with_shape(2, 1);
        spec.prefix = PANIC_PREFIX.into();
        spec.sweep_stale = false;
        let mut cluster = start(spec);
        cluster.poweroff("node2").expect("poweroff");
        println!("CLUSTER={}", cluster.name());
        panic!("deliberate panic with a cluster up");
    }
    privilege::require_cluster().expect("the cluster harness needs these privileges and tools");
    let out = run_child("a_panicking_test_still_cleans_up", "panic");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child test must fail");
    assert!(
        stderr.contains("deliberate panic"),
        "child stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("----- node1 log"),
        "a panicking test prints the node logs:\n{stderr}"
    );
    let name = child_cluster_name(&stdout);
    assert_nothing_left(
        &name,
        &ClusterSpec::default().work_root.canonicalize().unwrap(),
        &[],
    );
}

const SWEEP_PREFIX: &str = "diohsweep";

#[test]
fn sweep_removes_what_a_killed_run_left() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("hang") {
        let mut spec = ClusterSpec::with_shape(2, 1);
        spec.prefix = SWEEP_PREFIX.into();
        spec.sweep_stale = false;
        let mut cluster = start(spec);
        cluster.poweroff("node1").expect("poweroff");
        println!("CLUSTER={}", cluster.name());
        io::stdout().flush().unwrap();
        // Wait to be killed (bounded, in case the parent died).
        std::thread::sleep(BOUND * 4);
        return;
    }
    privilege::require_cluster().expect("the cluster harness needs these privileges and tools");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sweep_removes_what_a_killed_run_left",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "hang")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test NAME ... " without a newline before the test's output.
            if let Some(at) = line.find("CLUSTER=") {
                let _ = tx.send(line[at + "CLUSTER=".len()..].trim().to_owned());
            }
        }
    });
    let name = rx
        .recv_timeout(BOUND * 2)
        .expect("the child started a cluster");
    child.kill().unwrap();
    child.wait().unwrap();
    let root = ClusterSpec::default().work_root.canonicalize().unwrap();

    let left = sweep::leftovers(&name, &root, BOUND).unwrap();
    assert_eq!(left.netns.len(), 4, "{left:?}");
    assert_eq!(left.processes.len(), 2, "orphaned node processes: {left:?}");
    assert_eq!(left.mounts.len(), 2);
    assert_eq!(left.loop_devices.len(), 2);
    assert_eq!(left.nft_tables.len(), 1);
    assert!(sweep::stale_clusters(SWEEP_PREFIX, &root)
        .unwrap()
        .contains(&name));

    let swept =
        sweep::sweep_stale(SWEEP_PREFIX, &root, &ClusterSpec::default().timeouts).expect("sweep");
    assert!(swept.iter().any(|l| l.cluster == name));
    assert_nothing_left(&name, &root, &left.processes);
}

/// Runs the CLI with `args`; `(success, stdout, stderr)`.
fn cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    let child = Command::new(CLI)
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let out = wait_output(child, BOUND * 4);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes the CLI's cluster down however the test ends.
struct Down<'a>(&'a Path, String);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cli(self.0, &["down", "--label", &self.1]);
    }
}

#[test]
fn cli_drives_one_cluster_across_invocations() {
    privilege::require_cluster().expect("the cluster harness needs these privileges and tools");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let label = format!("st{}", std::process::id());
    let _down = Down(&state, label.clone());

    let t = Instant::now();
    let (ok, out, err) = cli(
        &state,
        &["up", "--nodes", "2", "--disks", "1", "--label", &label],
    );
    assert!(ok, "up failed: {err}");
    eprintln!("CLI up (2 x 1) in {:.0?}:\n{out}", t.elapsed());
    assert!(out.contains("node1") && out.contains("node2"), "{out}");
    let (ok, _, err) = cli(&state, &["up", "--label", &label]);
    assert!(!ok, "a second up must refuse: {err}");

    let status = |state: &Path| -> serde_json::Value {
        let (ok, out, err) = cli(state, &["status", "--json"]);
        assert!(ok, "status: {err}");
        serde_json::from_str(&out).expect("status JSON")
    };
    let before = status(&state);
    assert_eq!(before["nodes"].as_array().unwrap().len(), 2, "{before}");
    let old_pid = before["nodes"][1]["pid"].as_i64().unwrap();
    assert_eq!(before["nodes"][1]["power"], "on");

    let (ok, _, err) = cli(&state, &["poweroff", "node2"]);
    assert!(ok, "poweroff: {err}");
    let off = status(&state);
    assert_eq!(off["nodes"][1]["power"], "off");
    assert_eq!(off["nodes"][1]["process"], "stopped");

    // Acting on the recorded cluster from this process: node2 is silent, node1 answers.
    let recorded: ClusterState =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let attached = Cluster::attach(recorded).expect("attach");
    let node2 = attached.node("node2").unwrap().rpc_addr;
    let node1 = attached.node("node1").unwrap().rpc_addr;
    let connect = attached
        .run_in_client(BOUND, move || {
            TcpStream::connect_timeout(&node2, CONNECT_TIMEOUT)
        })
        .unwrap();
    assert_eq!(
        connect.map(drop).unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    assert!(call(&attached, node1, "PING")
        .unwrap()
        .starts_with("PONG node1"));
    drop(attached); // an attached handle leaves the cluster running

    let (ok, _, err) = cli(&state, &["poweron", "node2"]);
    assert!(ok, "poweron: {err}");
    let on = status(&state);
    assert_eq!(on["nodes"][1]["power"], "on");
    assert_eq!(on["nodes"][1]["process"], "running");
    assert_ne!(on["nodes"][1]["pid"].as_i64().unwrap(), old_pid);
    let (ok, log, _) = cli(&state, &["logs", "node2"]);
    assert!(ok && log.matches("listening on").count() == 2, "{log}");
    let (ok, out, err) = cli(
        &state,
        &["exec", "node2", "--", "ss", "-H", "-t", "-l", "-n"],
    );
    assert!(ok, "exec: {err}");
    // `ss` ran inside node2's namespace: it lists node2's listener, on node2's address.
    let node2_addr = on["nodes"][1]["rpc_addr"].as_str().unwrap().to_owned();
    assert!(out.contains(&node2_addr), "ss in node2's namespace: {out}");

    let recorded: ClusterState =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let name = recorded.name.clone();
    let root = recorded.work_dir.parent().unwrap().to_path_buf();
    let pids: Vec<i32> = recorded
        .nodes
        .iter()
        .filter_map(|n| n.process.map(|p| p.pid))
        .collect();
    let (ok, out, err) = cli(&state, &["down"]);
    assert!(ok, "down: {err}");
    assert!(out.contains("is down"));
    assert!(!state.exists());
    assert_nothing_left(&name, &root, &pids);
}

#[test]
fn without_root_the_cli_names_the_missing_privilege() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    privilege::require_root().expect("this test drops from root to nobody itself");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = dir.path().join("state.json");
    let label = format!("np{}", std::process::id());
    let child = Command::new(CLI)
        .arg("--state")
        .arg(&state)
        .args(["up", "--nodes", "1", "--disks", "1", "--label", &label])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI as nobody");
    let out = wait_output(child, BOUND);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing privilege") && stderr.contains("root"),
        "the refusal names the privilege: {stderr}"
    );
    assert!(!state.exists(), "nothing recorded");
    assert!(netns::list(&format!("dioh-{label}")).unwrap().is_empty());
}
