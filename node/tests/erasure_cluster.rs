//! Issue 11's cluster acceptance: erasure sets over `disk-io-node`
//! processes in the cluster harness (4 nodes × 4 ext4-on-loop disks, each
//! node in its own network namespace, nftables power-off).
//!
//! * 2 sets of 8 with 4 parity, 2 disks of each set on every node;
//! * a 512 MiB object (deterministic, streamed) is PUT; when the PUT has
//!   read 30 % of it, node4 is powered off from another thread; the PUT
//!   completes and reports node4's two disks of its set as missed;
//! * the object reads back byte-exact (chunk by chunk, plus a chained
//!   BLAKE3 digest) with node4 still off;
//! * node4 is powered on; once its breaker closed, healing rebuilds its two
//!   shards, a second heal finds all 8 good, and every shard file is checked
//!   on disk (through the mounts) block by block against its BLAKE3;
//! * `false_quorum_loss` stays 0 on both sets at every step.
//!
//! The disks are formatted by this test, at the positions
//! [`Topology::sets`] gives them (column by column: 2 disks of each set per
//! node), not with the node's `--format-missing`: that numbers disks node by
//! node (global index / set size), which would put set 0 entirely on node1
//! and node2 and set 1 on node3 and node4, so `ErasureSets::open` would find
//! the wrong ids and a node power-off would take 4 disks of a set.
//!
//! Needs root, network namespaces, nftables and loop devices; without them
//! the test fails naming what is missing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk, DiskConfig, HealthConfig, LocalDisk};
use disk_io_erasure::codec::{self, Geometry};
use disk_io_erasure::{meta, DiskSlot, ErasureConfig, ErasureSets, Topology};
mod common;
use common::until_ok;
use disk_io_harness::cluster::{Cluster, ClusterSpec, NodeCommand};
use disk_io_harness::netns::RuntimeSpec;
use disk_io_harness::privilege;
use disk_io_rpc::{BreakerState, Peer, RpcConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const BUCKET: &str = "bkt";
const OBJECT_BYTES: u64 = 512 << 20;
/// Generator chunk (also the unit of the chained digest).
const CHUNK: usize = 1 << 20;
const SEED: u64 = 0x5EED_0011;

/// Deterministic chunk `i` of the object (xorshift64, 8 bytes a step).
fn chunk(i: u64) -> Vec<u8> {
    let mut x = (SEED ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut out = Vec::with_capacity(CHUNK);
    for _ in 0..CHUNK / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Chained digest: `d' = BLAKE3(d || BLAKE3(chunk))`.
fn chain(d: [u8; 32], chunk: &[u8]) -> [u8; 32] {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&d);
    buf[32..].copy_from_slice(&codec::hash(chunk));
    codec::hash(&buf)
}

/// The object as a stream. Sends one message on `trigger` when `after`
/// bytes were read, and records the longest gap between two reads (a PUT
/// stalled by a dead disk stops reading its source).
struct Source {
    next_chunk: u64,
    cur: Vec<u8>,
    pos: usize,
    read: Arc<AtomicU64>,
    after: u64,
    trigger: Option<mpsc::Sender<Instant>>,
    digest: [u8; 32],
    last_poll: Option<Instant>,
    /// (gap, bytes read when it ended)
    max_gap: (Duration, u64),
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let now = Instant::now();
        let read = this.read.load(Ordering::Relaxed);
        if let Some(last) = this.last_poll {
            let gap = now - last;
            if gap > this.max_gap.0 {
                this.max_gap = (gap, read);
            }
        }
        this.last_poll = Some(now);
        if read >= this.after {
            if let Some(t) = this.trigger.take() {
                let _ = t.send(now);
            }
        }
        if this.pos == this.cur.len() {
            if this.next_chunk * CHUNK as u64 >= OBJECT_BYTES {
                return Poll::Ready(Ok(())); // EOF
            }
            this.cur = chunk(this.next_chunk);
            this.digest = chain(this.digest, &this.cur);
            this.next_chunk += 1;
            this.pos = 0;
        }
        let n = buf.remaining().min(this.cur.len() - this.pos);
        buf.put_slice(&this.cur[this.pos..this.pos + n]);
        this.pos += n;
        this.read.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// A GET sink comparing every byte with the generator as it comes.
#[derive(Default)]
struct Check {
    buf: Vec<u8>,
    chunks: u64,
    bytes: u64,
    first_mismatch: Option<u64>,
    digest: [u8; 32],
}

impl Check {
    fn settle(&mut self) {
        while self.buf.len() >= CHUNK {
            let got: Vec<u8> = self.buf.drain(..CHUNK).collect();
            let want = chunk(self.chunks);
            if self.first_mismatch.is_none() && got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                self.first_mismatch = Some(self.chunks * CHUNK as u64 + at as u64);
            }
            self.digest = chain(self.digest, &got);
            self.chunks += 1;
        }
    }
}

impl AsyncWrite for Check {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        self.settle();
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn node_name(node: usize) -> String {
    format!("node{}", node + 1)
}

/// Every shard file of the object's version, read through the node's
/// mounts, verified block by block against its BLAKE3. Returns the
/// positions whose file is complete and intact.
fn shards_on_disk(
    mounts: &[std::path::PathBuf],
    name: &str,
    m: disk_io_erasure::meta::ObjectMeta,
) -> Vec<Result<usize, String>> {
    let geo: Geometry = m.geometry();
    let rel = meta::shard_path(name, m.version);
    mounts
        .iter()
        .enumerate()
        .map(|(pos, root)| {
            let path = root.join(BUCKET).join(&rel);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() as u64 != geo.shard_file_size() {
                return Err(format!(
                    "{}: {} B, want {}",
                    path.display(),
                    bytes.len(),
                    geo.shard_file_size()
                ));
            }
            for b in 0..geo.blocks() {
                let (off, len) = geo.shard_block(b);
                if !codec::verify(&bytes[off as usize..off as usize + len]) {
                    return Err(format!("{}: block {b} fails its checksum", path.display()));
                }
            }
            Ok(pos)
        })
        .collect()
}

#[test]
fn poweroff_node4_at_30_percent_of_a_512_mib_put_then_read_and_heal() {
    let t0 = Instant::now();
    privilege::require_cluster()
        .expect("this test needs root, network namespaces, nftables and loop devices");
    let topo = Topology {
        nodes: 4,
        disks_per_node: 4,
        set_size: 8,
        parity: 4,
    };
    let layout = topo.sets().expect("topology");
    let mut spec = ClusterSpec::with_shape(topo.nodes, topo.disks_per_node);
    spec.set_size = topo.set_size;
    spec.parity = topo.parity;
    // 128 MiB of shards per disk, plus a staged copy while healing.
    spec.disk_image_bytes = 1 << 30;
    let node = NodeCommand::new(env!("CARGO_BIN_EXE_disk-io-node"))
        .args(["serve", "--config", "{config}", "--node", "{node}"]);
    let mut c = Cluster::start(spec, node).expect("start the cluster");

    // Format every disk at its topology position (see the module doc):
    // node by node, process down, disks opened here as their owner.
    let fmt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut mounts: HashMap<DiskSlot, std::path::PathBuf> = HashMap::new();
    for node in 0..topo.nodes {
        let name = node_name(node);
        c.kill(&name).expect("stop the node to format its disks");
        let records = c.disks(&name).expect("disks").to_vec();
        for (disk, rec) in records.iter().enumerate() {
            let slot = DiskSlot { node, disk };
            let (set, pos) = layout
                .iter()
                .enumerate()
                .find_map(|(s, slots)| slots.iter().position(|x| *x == slot).map(|p| (s, p)))
                .expect("every disk is in a set");
            fmt.block_on(async {
                let d = LocalDisk::builder(&rec.mount_dir)
                    .config(DiskConfig::default())
                    .open(Deadline::after(Duration::from_secs(20)))
                    .await
                    .expect("open disk to format");
                d.format(
                    set as u32,
                    pos as u32,
                    true,
                    Deadline::after(Duration::from_secs(20)),
                )
                .await
                .expect("format");
            });
            mounts.insert(slot, rec.mount_dir.clone());
        }
        c.start_node(&name).expect("start the node again");
    }
    drop(fmt);
    println!("cluster up and formatted in {:?}", t0.elapsed());

    let secret = c.config().secret;
    let addrs: Vec<_> = (0..topo.nodes)
        .map(|n| c.node(&node_name(n)).unwrap().rpc_addr)
        .collect();
    let rt = c
        .client_runtime(&RuntimeSpec::default())
        .expect("client runtime");

    // Peers, remote disks and the sets, in the client namespace.
    let (peers, sets) = rt
        .block_on(Duration::from_secs(60), async move {
            let mut peers = Vec::new();
            let mut disks: HashMap<DiskSlot, Arc<dyn Disk>> = HashMap::new();
            for (node, addr) in addrs.iter().enumerate() {
                let peer = Peer::new(
                    &node_name(node),
                    *addr,
                    secret.as_bytes(),
                    RpcConfig::default(),
                )
                .expect("peer");
                for disk in 0..topo.disks_per_node {
                    let d = peer.disk(disk as u32, HealthConfig::default(), Vec::new());
                    until_ok(&d, Duration::from_secs(20)).await;
                    disks.insert(DiskSlot { node, disk }, Arc::new(d));
                }
                peers.push(peer);
            }
            let (sets, reports) = ErasureSets::open(
                topo,
                |slot| disks[&slot].clone(),
                ErasureConfig::default(),
                Deadline::after(Duration::from_secs(10)),
            )
            .await
            .expect("open the sets");
            for r in &reports {
                assert_eq!(r.available(), 8, "every disk answers its id: {r:?}");
            }
            for set in sets.sets() {
                set.make_bucket(BUCKET, Deadline::after(Duration::from_secs(20)))
                    .await
                    .expect("make bucket");
            }
            (peers, Arc::new(sets))
        })
        .expect("open the sets");
    let no_false_loss = |sets: &ErasureSets, step: &str| {
        for s in sets.sets() {
            assert_eq!(
                s.stats().false_quorum_loss(),
                0,
                "false quorum loss on set {} {step}",
                s.index()
            );
        }
    };
    no_false_loss(&sets, "after open");

    let name = "big-object".to_string();
    let set_ix = sets.set_for(BUCKET, &name).index();
    // node4's positions in the object's set.
    let node4_pos: Vec<usize> = layout[set_ix]
        .iter()
        .enumerate()
        .filter(|(_, s)| s.node == 3)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(node4_pos.len(), 2, "2 disks of each set per node");
    let set_mounts: Vec<_> = layout[set_ix].iter().map(|s| mounts[s].clone()).collect();
    println!("object {name:?} on set {set_ix}; node4 holds positions {node4_pos:?}");

    // PUT, powering node4 off from another thread at 30 %.
    let read = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Instant>();
    let after = OBJECT_BYTES * 3 / 10;
    let src = Source {
        next_chunk: 0,
        cur: Vec::new(),
        pos: 0,
        read: read.clone(),
        after,
        trigger: Some(tx),
        digest: [0; 32],
        last_poll: None,
        max_gap: (Duration::ZERO, 0),
    };
    let put_budget = Duration::from_secs(300);
    let off_times = Arc::new(Mutex::new(None));
    let put_started = Instant::now();
    let (put, put_took, put_digest, max_gap) = std::thread::scope(|scope| {
        let c = &mut c;
        let read = read.clone();
        let off_times = off_times.clone();
        let off = scope.spawn(move || {
            let Ok(triggered) = rx.recv_timeout(Duration::from_secs(240)) else {
                return Err("the PUT never reached 30 %".to_string());
            };
            let begin = Instant::now();
            let r = c.poweroff("node4").map_err(|e| format!("poweroff: {e}"));
            let done = Instant::now();
            *off_times.lock().unwrap() =
                Some((triggered, begin, done, read.load(Ordering::Relaxed)));
            r
        });
        let sets2 = sets.clone();
        let name2 = name.clone();
        let out = rt
            .block_on(put_budget + Duration::from_secs(30), async move {
                let mut src = src;
                let started = Instant::now();
                let r = sets2
                    .set_for(BUCKET, &name2)
                    .put_object(BUCKET, &name2, &mut src, Deadline::after(put_budget))
                    .await;
                (r, started.elapsed(), src.digest, src.max_gap)
            })
            .expect("the PUT task");
        off.join()
            .expect("power-off thread")
            .expect("node4 powered off");
        out
    });
    let (triggered, off_begin, off_done, read_at_off) =
        off_times.lock().unwrap().expect("power-off times");
    let put = put.unwrap_or_else(|e| panic!("the PUT with node4 powered off failed: {e}"));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let healthy = triggered - put_started;
    let rest = put_started + put_took - off_done;
    println!(
        "PUT {} MiB in {put_took:?}: 30 % ({:.0} MiB) after {healthy:?} ({:.0} MiB/s, healthy); \
         poweroff took {:?} (source at {:.0} MiB when it returned); \
         remaining {:.0} MiB with node4 off in {rest:?} ({:.0} MiB/s)",
        mib(OBJECT_BYTES),
        mib(after),
        mib(after) / healthy.as_secs_f64(),
        off_done - off_begin,
        mib(read_at_off),
        mib(OBJECT_BYTES - read_at_off),
        mib(OBJECT_BYTES - read_at_off) / rest.as_secs_f64(),
    );
    println!(
        "longest pause of the PUT reading its source: {:?} (at {:.0} MiB); report: written {:?} missed {:?}",
        max_gap.0,
        mib(max_gap.1),
        put.written,
        put.missed
    );
    assert_eq!(put.size, OBJECT_BYTES);
    assert!(
        put_took < Duration::from_secs(240),
        "the PUT took {put_took:?}"
    );
    let mut missed = put.missed.clone();
    missed.sort();
    assert_eq!(
        missed, node4_pos,
        "the PUT missed exactly node4's disks: {put:?}"
    );
    assert_eq!(put.written.len(), 6, "{put:?}");
    assert!(
        max_gap.0 < Duration::from_secs(10),
        "the PUT stalled {:?} at {:.0} MiB",
        max_gap.0,
        mib(max_gap.1)
    );
    no_false_loss(&sets, "after the PUT");

    // GET with node4 still off: byte-exact.
    let sets2 = sets.clone();
    let name2 = name.clone();
    let (got, check, get_took) = rt
        .block_on(Duration::from_secs(300), async move {
            let mut check = Check::default();
            let started = Instant::now();
            let r = sets2
                .set_for(BUCKET, &name2)
                .get_object(
                    BUCKET,
                    &name2,
                    None,
                    &mut check,
                    Deadline::after(Duration::from_secs(240)),
                )
                .await;
            (r, check, started.elapsed())
        })
        .expect("the GET task");
    let got = got.unwrap_or_else(|e| panic!("GET with node4 off: {e}"));
    println!(
        "GET with node4 off: {:.0} MiB in {get_took:?} ({:.0} MiB/s); report {got:?}",
        mib(check.bytes),
        mib(check.bytes) / get_took.as_secs_f64()
    );
    assert_eq!(check.bytes, OBJECT_BYTES);
    assert!(check.buf.is_empty());
    assert_eq!(check.first_mismatch, None, "the object read back differs");
    assert_eq!(
        check.digest, put_digest,
        "digest of what was read vs written"
    );
    assert!(got.bitrot.is_empty(), "{got:?}");
    no_false_loss(&sets, "after the GET");

    // Power node4 on; wait for its breaker to close and its disks to answer.
    let on = Instant::now();
    c.poweron("node4").expect("poweron");
    let on_returned = on.elapsed();
    let peer4 = peers[3].clone();
    let node4_disks: Vec<Arc<dyn Disk>> = node4_pos
        .iter()
        .map(|&p| sets.sets()[set_ix].disks()[p].clone())
        .collect();
    let back = rt
        .block_on(Duration::from_secs(60), async move {
            let start = Instant::now();
            loop {
                let mut ok = peer4.breaker_state() == BreakerState::Closed;
                for d in &node4_disks {
                    ok &= d
                        .disk_id(Deadline::after(Duration::from_millis(500)))
                        .await
                        .is_ok();
                }
                if ok {
                    return Ok(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(45) {
                    return Err(peer4.breaker_state());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .expect("waiting for node4")
        .unwrap_or_else(|s| panic!("node4's breaker not closed 45 s after power-on: {s:?}"));
    println!(
        "poweron returned after {on_returned:?}; breaker closed and disks answer {back:?} later"
    );
    assert!(
        peers[3].breaker_opened() >= 1,
        "the breaker opened at the power-off"
    );

    // Heal: the queued task, retried while node4's disks come back.
    let sets2 = sets.clone();
    let name2 = name.clone();
    let (first, queued, heal_took, again) = rt
        .block_on(Duration::from_secs(400), async move {
            let queued = sets2.heal_queue().len();
            let started = Instant::now();
            let mut first = None;
            for _ in 0..20 {
                let r = match sets2
                    .heal_next(Deadline::after(Duration::from_millis(100)))
                    .await
                {
                    Some((_, r)) => r,
                    None => {
                        sets2
                            .set_for(BUCKET, &name2)
                            .heal_object(BUCKET, &name2, Deadline::after(Duration::from_secs(120)))
                            .await
                    }
                };
                match r {
                    Ok(h) if h.skipped.is_empty() && h.failed.is_empty() => {
                        first = Some(h);
                        break;
                    }
                    other => {
                        println!("heal attempt: {other:?}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let took = started.elapsed();
            let again = sets2
                .set_for(BUCKET, &name2)
                .heal_object(BUCKET, &name2, Deadline::after(Duration::from_secs(120)))
                .await;
            (first, queued, took, again)
        })
        .expect("the heal task");
    let first = first.expect("healing rebuilt node4's shards within 20 attempts");
    println!("heal queue held {queued}; heal in {heal_took:?}: {first:?}; second heal: {again:?}");
    assert!(queued >= 1, "the PUT queued the object for healing");
    let mut healed = first.healed.clone();
    healed.sort();
    assert_eq!(healed, node4_pos, "node4's shards were rebuilt: {first:?}");
    let again = again.expect("second heal");
    assert_eq!(again.good.len(), 8, "all 8 shards good: {again:?}");
    assert!(
        again.healed.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );
    no_false_loss(&sets, "after healing");

    // On disk: every shard file of the version, block by block.
    let sets2 = sets.clone();
    let name2 = name.clone();
    let m = rt
        .block_on(Duration::from_secs(60), async move {
            let set = sets2.set_for(BUCKET, &name2);
            let d = Deadline::after(Duration::from_secs(20));
            let entries = set.disks()[0]
                .list_dir(BUCKET, &name2, d)
                .await
                .expect("object directory");
            let file = entries
                .iter()
                .find(|e| e.ends_with(meta::VERSION_SUFFIX))
                .expect("a version file");
            let raw = set.disks()[0]
                .read_all(BUCKET, &format!("{name2}/{file}"), d)
                .await
                .expect("metadata");
            disk_io_erasure::ObjectMeta::from_bytes(&raw, 8).expect("decode metadata")
        })
        .expect("read metadata");
    assert_eq!(m.version, put.version);
    let on_disk = shards_on_disk(&set_mounts, &name, m);
    println!("on disk: {on_disk:?}");
    assert!(
        on_disk.iter().all(|r| r.is_ok()),
        "every shard file intact on disk: {on_disk:?}"
    );
    no_false_loss(&sets, "at the end");

    drop(rt);
    c.shutdown().expect("teardown");
    println!("total {:?}", t0.elapsed());
}
