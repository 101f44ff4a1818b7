//! `disk-io-node` processes in the cluster harness (each node in its own
//! network namespace, ext4-on-loop disks, nftables power-off), driven by
//! remote disks in the client namespace:
//!
//! * power-off of node4 during 64 concurrent remote ops: every op answers by
//!   its deadline, unavailable; the breaker opens within 1 s + slack; 1 000
//!   calls then fail fast without growing threads or memory; power-on: the
//!   breaker half-opens and closes and calls succeed again in bounded time.
//! * no false alarm: node2 saturated by bulk shard writes from several
//!   callers while heartbeats run: no breaker ever opens.
//!
//! Needs root, network namespaces, nftables and loop devices; without them
//! the tests fail naming what is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_io::{CreateOptions, Deadline, DeleteOptions, Disk, DiskError, HealthConfig};
mod common;
use common::until_ok;
use disk_io_harness::cluster::{Cluster, ClusterSpec};
use disk_io_harness::netns::RuntimeSpec;
use disk_io_harness::privilege;
use disk_io_rpc::{BreakerConfig, BreakerState, Peer, RpcConfig};

/// Slack on every timing assertion (a loaded 2-core CI machine); the real
/// figures are printed.
const SLACK: Duration = Duration::from_millis(500);

fn cluster(nodes: usize) -> Cluster {
    privilege::require_cluster()
        .expect("the cluster tests need root, netns, nftables and loop devices");
    let mut spec = ClusterSpec::with_shape(nodes, 1);
    spec.set_size = nodes;
    spec.parity = nodes / 2;
    spec.disk_image_bytes = 512 << 20;
    Cluster::start(spec, common::node_command()).expect("start the cluster")
}

fn health() -> HealthConfig {
    HealthConfig {
        faulty_after_misses: u32::MAX,
        ..HealthConfig::default()
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Record {
    started: Instant,
    ended: Instant,
    deadline: Deadline,
    outcome: Result<(), DiskError>,
}

#[test]
fn poweroff_during_64_ops_breaker_fail_fast_and_recovery() {
    let mut c = cluster(4);
    let node4 = c.node("node4").unwrap().rpc_addr;
    let secret = c.config().secret;
    let rt = c
        .client_runtime(&RuntimeSpec::default())
        .expect("client runtime");
    let cfg = RpcConfig {
        // Long enough that the 1 000 fail-fast calls all meet an open
        // breaker (no half-open probe among them); short enough that
        // recovery after power-on stays quick.
        breaker: BreakerConfig {
            open_for: Duration::from_secs(2),
            ..BreakerConfig::default()
        },
        ..RpcConfig::default()
    };
    let (peer, disk) = rt
        .block_on(Duration::from_secs(30), async move {
            let peer = Peer::new("node4", node4, secret.as_bytes(), cfg).expect("peer");
            let disk = peer.disk(0, health(), Vec::new());
            until_ok(&disk, Duration::from_secs(20)).await;
            disk.make_vol("v", Deadline::after(Duration::from_secs(5)))
                .await
                .expect("make_vol");
            disk.write_all(
                "v",
                "obj",
                &[5u8; 4096],
                Deadline::after(Duration::from_secs(5)),
            )
            .await
            .expect("write_all");
            (peer, disk)
        })
        .expect("warm-up");
    assert_eq!(peer.breaker_state(), BreakerState::Closed);

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let disk = disk.clone();
        let stop = stop.clone();
        tasks.push(
            rt.spawn(async move {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let deadline = Deadline::after(Duration::from_millis(1000));
                    let started = Instant::now();
                    let outcome = match i % 4 {
                        0 => disk.read_all("v", "obj", deadline).await.map(drop),
                        1 => {
                            disk.write_all("v", &format!("w{i}"), &[1u8; 8192], deadline)
                                .await
                        }
                        2 => disk
                            .read_file_at("v", "obj", 0, 4096, deadline)
                            .await
                            .map(drop),
                        _ => disk.stat_file("v", "obj", deadline).await.map(drop),
                    };
                    log.push(Record {
                        started,
                        ended: Instant::now(),
                        deadline,
                        outcome,
                    });
                    if log.last().is_some_and(|r| r.outcome.is_err()) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                log
            })
            .expect("spawn"),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let off_call = Instant::now();
    c.poweroff("node4").expect("poweroff");
    let off_done = Instant::now();
    let opened = loop {
        if peer.breaker_state() == BreakerState::Open {
            break off_call.elapsed();
        }
        assert!(
            off_call.elapsed() < Duration::from_secs(1) + SLACK * 2,
            "breaker not open {:?} after the power-off",
            off_call.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "dead-peer detection: breaker open {opened:?} after the power-off call began (poweroff took {:?})",
        off_done - off_call
    );
    assert!(
        opened <= Duration::from_secs(1) + SLACK,
        "breaker open after {opened:?}"
    );
    // Let every op in flight at the power-off reach its deadline.
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut after_off = 0;
    let mut worst = Duration::ZERO;
    for t in tasks {
        let log = rt
            .block_on(Duration::from_secs(10), t)
            .expect("join")
            .expect("task");
        for r in log {
            total += 1;
            let late = r.deadline.overshoot(r.ended);
            worst = worst.max(late);
            assert!(
                late <= SLACK,
                "an op answered {late:?} after its deadline: {:?}",
                r.outcome
            );
            if r.started >= off_done + Duration::from_millis(50) {
                after_off += 1;
                let e = r
                    .outcome
                    .as_ref()
                    .expect_err("an op after the power-off succeeded");
                assert!(e.is_unavailable(), "not an unavailable error: {e:?}");
            } else if let Err(e) = &r.outcome {
                assert!(e.is_unavailable(), "answered error during power-off: {e:?}");
            }
        }
    }
    println!("{total} ops, {after_off} started after the power-off, worst overshoot {worst:?}");
    assert!(after_off >= 64, "the tasks kept calling through the outage");

    // Fail fast, bounded.
    let threads_before = threads();
    let rss_before = rss_kib();
    let d2 = disk.clone();
    let lat = rt
        .block_on(Duration::from_secs(30), async move {
            let mut lat = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let t = Instant::now();
                let e = d2
                    .read_all("v", "obj", Deadline::after(Duration::from_secs(1)))
                    .await
                    .unwrap_err();
                lat.push(t.elapsed());
                assert!(matches!(e, DiskError::CircuitOpen { .. }), "{e:?}");
            }
            lat
        })
        .expect("fail-fast calls");
    let mut sorted = lat.clone();
    sorted.sort();
    let (p50, p99, max) = (sorted[500], sorted[990], sorted[999]);
    println!("fail-fast while open: p50 {p50:?} p99 {p99:?} max {max:?}");
    assert!(p99 < Duration::from_millis(1), "p99 {p99:?}");
    assert!(max < Duration::from_millis(20), "max {max:?}");
    assert!(
        threads() <= threads_before,
        "threads grew: {threads_before} -> {}",
        threads()
    );
    assert!(
        rss_kib() <= rss_before + 8 * 1024,
        "memory grew: {rss_before} KiB -> {} KiB",
        rss_kib()
    );

    let on = Instant::now();
    c.poweron("node4").expect("poweron");
    let d3 = disk.clone();
    let back = rt
        .block_on(Duration::from_secs(40), async move {
            until_ok(&d3, Duration::from_secs(30)).await
        })
        .expect("recovery");
    println!(
        "recovery: calls succeed {:?} after the power-on call began ({back:?} after it returned)",
        on.elapsed()
    );
    assert_eq!(peer.breaker_state(), BreakerState::Closed);
    assert!(peer.breaker_opened() >= 1);
    let d4 = disk.clone();
    let data = rt
        .block_on(Duration::from_secs(10), async move {
            d4.read_all("v", "obj", Deadline::after(Duration::from_secs(5)))
                .await
        })
        .expect("read");
    assert_eq!(
        data.as_deref(),
        Ok(&[5u8; 4096][..]),
        "node4's disk survived the power-off"
    );
    drop(rt);
    c.shutdown().expect("teardown");
}

#[test]
fn a_saturated_peer_is_never_declared_dead() {
    let c = cluster(2);
    let node2 = c.node("node2").unwrap().rpc_addr;
    let secret = c.config().secret;
    let rt = c
        .client_runtime(&RuntimeSpec::default())
        .expect("client runtime");
    // 20 s of saturation, as the issue asks; the heartbeat period is
    // 100 ms, so that is about 200 heartbeats per caller.
    let saturate = Duration::from_secs(20);
    let callers = 4;
    let out = rt
        .block_on(Duration::from_secs(60), async move {
            let mut peers = Vec::new();
            for _ in 0..callers {
                // One peer each: its own data and liveness connections.
                peers.push(
                    Peer::new("node2", node2, secret.as_bytes(), RpcConfig::default())
                        .expect("peer"),
                );
            }
            let first = peers[0].disk(0, health(), Vec::new());
            until_ok(&first, Duration::from_secs(20)).await;
            first
                .make_vol("bulk", Deadline::after(Duration::from_secs(5)))
                .await
                .expect("make_vol");
            let end = Instant::now() + saturate;
            let mut writers = Vec::new();
            for (i, p) in peers.iter().enumerate() {
                for j in 0..2 {
                    let disk = p.disk(0, health(), Vec::new());
                    writers.push(tokio::spawn(async move {
                        let chunk = vec![i as u8; 1 << 20];
                        let mut bytes = 0u64;
                        let mut n = 0;
                        while Instant::now() < end {
                            let path = format!("s{i}-{j}-{n}");
                            n += 1;
                            let d = || Deadline::after(Duration::from_secs(10));
                            let mut w = disk
                                .create_file("bulk", &path, CreateOptions::default(), d())
                                .await
                                .expect("create_file");
                            for _ in 0..8 {
                                w.append(&chunk, d()).await.expect("append");
                            }
                            bytes += w.finish(d()).await.expect("finish");
                            disk.delete("bulk", &path, DeleteOptions::default(), d())
                                .await
                                .expect("delete");
                        }
                        bytes
                    }));
                }
            }
            let mut total = 0;
            for w in writers {
                total += w.await.expect("writer");
            }
            let stats: Vec<_> = peers
                .iter()
                .map(|p| (p.breaker_opened(), p.heartbeats()))
                .collect();
            (total, stats)
        })
        .expect("saturation run");
    let (bytes, stats) = out;
    println!(
        "saturation: {} MiB of shard writes to node2 in {saturate:?} ({:.0} MiB/s); per caller (breaker opened, (heartbeats ok, missed)): {stats:?}",
        bytes >> 20,
        (bytes >> 20) as f64 / saturate.as_secs_f64()
    );
    for (opened, (ok, _missed)) in &stats {
        assert_eq!(*opened, 0, "a live, busy peer was declared dead");
        assert!(*ok >= 20, "heartbeats ran: {stats:?}");
    }
    drop(rt);
    c.shutdown().expect("teardown");
}
