//! Object I/O under injected faults, over 8 local disks of which some are
//! FaultFs mounts: hung disks during a write and a read, a quorum of
//! failing disks, bitrot, and healing what was missed.
//!
//! These tests need root and /dev/fuse (CI runs as root); without them they
//! fail with a message naming what is missing. Timing bounds are generous
//! (a loaded 2-core machine); figures belong to the bench.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use disk_io::Deadline;
use disk_io_erasure::{ErasureError, QuorumError, QuorumOp};
use disk_io_harness::FaultControl;
use tokio::io::{AsyncRead, ReadBuf};

mod common;
use common::*;

/// Slack on top of a deadline for "returned by its deadline".
const SLACK: Duration = Duration::from_millis(500);

/// A source that hangs the given FaultFs disks once `after` bytes were read.
struct HangAt<'a> {
    data: &'a [u8],
    pos: usize,
    after: usize,
    ctls: Vec<FaultControl>,
}

impl AsyncRead for HangAt<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.after && !this.ctls.is_empty() {
            for c in this.ctls.drain(..) {
                c.hang();
            }
        }
        let n = buf
            .remaining()
            .min(this.data.len() - this.pos)
            .min(64 << 10);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_disks_hung_mid_write_succeeds_by_its_deadline_reads_back_and_heals() {
    let fx = fixture(&[2, 5], test_config()).await;
    let data = bytes(12 << 20, 7);
    let budget = Duration::from_secs(30);
    let deadline = Deadline::after(budget);
    let mut src = HangAt {
        data: &data,
        pos: 0,
        after: data.len() * 3 / 10,
        ctls: vec![fx.ctl(2).clone(), fx.ctl(5).clone()],
    };
    let started = Instant::now();
    let rep = fx
        .set
        .put_object(BUCKET, "big", &mut src, deadline)
        .await
        .expect("write with 2 of 8 disks hung");
    let took = started.elapsed();
    assert!(
        fx.ctl(2).is_hung() && fx.ctl(5).is_hung(),
        "the disks were hung"
    );
    assert!(
        deadline.overshoot(Instant::now()) <= SLACK,
        "the write took {took:?}"
    );
    // Dropped as stragglers, not waited out: far below the 10 s data budget.
    assert!(took < Duration::from_secs(8), "the write took {took:?}");
    assert!(
        rep.missed.contains(&2) && rep.missed.contains(&5),
        "{rep:?}"
    );
    assert!(rep.written.len() >= 5 && rep.written.len() + rep.missed.len() == 8);
    assert_eq!(
        fx.set.heal_queue().len(),
        1,
        "the object was queued for healing"
    );

    // Reads back byte-exact with the two disks still hung.
    let started = Instant::now();
    let (back, r) = get(&fx.set, "big", None, Deadline::after(budget))
        .await
        .expect("read with 2 hung");
    assert!(back == data, "object differs");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(r.bitrot.is_empty(), "{r:?}");

    // Stat and list answer without waiting on the hung disks.
    let started = Instant::now();
    let info = fx
        .set
        .stat_object(BUCKET, "big", Deadline::after(budget))
        .await
        .expect("stat with 2 hung");
    assert_eq!(info.size, data.len() as u64);
    let names = fx
        .set
        .list(BUCKET, "", Deadline::after(budget))
        .await
        .expect("list with 2 hung");
    assert_eq!(names, vec!["big".to_string()]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The disks come back: healing rebuilds both shards and verifies them.
    fx.ctl(2).release();
    fx.ctl(5).release();
    let task = fx.set.heal_queue().try_pop().expect("queued");
    assert_eq!(task.object, "big");
    let mut healed = None;
    for _ in 0..20 {
        // The hung disks may need a probe or two to be Online again.
        match fx
            .set
            .heal_object(BUCKET, "big", Deadline::after(Duration::from_secs(30)))
            .await
        {
            Ok(h) if (h.healed.contains(&2) && h.healed.contains(&5)) || h.good.len() == 8 => {
                healed = Some(h);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let h = healed.expect("healing rebuilt the shards of disks 2 and 5");
    assert!(h.failed.is_empty(), "{h:?}");
    assert!(
        h.healed.iter().all(|p| rep.missed.contains(p)),
        "{h:?} {rep:?}"
    );
    let again = fx
        .set
        .heal_object(BUCKET, "big", Deadline::after(Duration::from_secs(30)))
        .await
        .expect("second heal");
    assert_eq!(
        again.good.len(),
        8,
        "every shard verified on disk: {again:?}"
    );
    assert_eq!(fx.set.stats().false_quorum_loss(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_disks_hung_object_still_readable_fast() {
    let hung = [0usize, 1, 2, 3];
    let fx = fixture(&hung, test_config()).await;
    let data = bytes((5 << 20) + 777, 9);
    put(&fx.set, "obj", &data, setup_deadline()).await;
    for &p in &hung {
        fx.ctl(p).hang();
    }
    let budget = Duration::from_secs(30);
    let started = Instant::now();
    let (back, r) = get(&fx.set, "obj", None, Deadline::after(budget))
        .await
        .expect("read with 4 of 8 hung");
    let took = started.elapsed();
    assert!(back == data, "object differs");
    // Hedged, not waited out (the per-disk data budget is 10 s).
    assert!(took < Duration::from_secs(8), "read took {took:?}");
    let (part, _) = get(
        &fx.set,
        "obj",
        Some((1 << 20, 300_000)),
        Deadline::after(budget),
    )
    .await
    .expect("ranged read with 4 hung");
    assert_eq!(part, &data[1 << 20..(1 << 20) + 300_000]);
    let info = fx
        .set
        .stat_object(BUCKET, "obj", Deadline::after(budget))
        .await
        .expect("stat with 4 hung");
    assert_eq!(info.size, data.len() as u64);
    assert!(r.bitrot.is_empty(), "{r:?}");
    // (No hedge is needed here: the hung disks never answered the metadata
    // read, so shards are asked of the four that did. tests/hedge.rs
    // covers a disk that turns slow after its metadata answered.)
    let names = fx
        .set
        .list(BUCKET, "", Deadline::after(budget))
        .await
        .expect("list with 4 hung");
    assert_eq!(names, vec!["obj".to_string()]);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // A write now cannot reach quorum (4 < 5): a typed error by its
    // deadline, not a hang.
    let deadline = Deadline::after(Duration::from_secs(3));
    let mut src: &[u8] = &data[..1000];
    let r = fx.set.put_object(BUCKET, "new", &mut src, deadline).await;
    assert!(
        matches!(
            r,
            Err(ErasureError::Quorum(_)) | Err(ErasureError::DeadlineExceeded { .. })
        ),
        "{r:?}"
    );
    assert!(deadline.overshoot(Instant::now()) <= SLACK);
    for &p in &hung {
        fx.ctl(p).release();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_of_eight_failing_is_a_clean_quorum_error_and_nothing_is_visible() {
    let failing = [1usize, 2, 4, 6, 7];
    let fx = fixture(&failing, test_config()).await;
    for &p in &failing {
        fx.ctl(p).fail_eio(&format!("/{BUCKET}"));
        fx.ctl(p).fail_eio("/diskio-tmp");
    }
    let data = bytes(3 << 20, 5);
    let deadline = Deadline::after(Duration::from_secs(20));
    let mut src: &[u8] = &data;
    let started = Instant::now();
    let r = fx.set.put_object(BUCKET, "torn", &mut src, deadline).await;
    let took = started.elapsed();
    let Err(ErasureError::Quorum(QuorumError::Lost(c))) = &r else {
        panic!("expected QuorumError::Lost, got {r:?}")
    };
    assert_eq!(c.needed, 5);
    assert_eq!(c.total, 8);
    assert_eq!(c.answered, 8, "EIO is an answer: {c:?}");
    assert_eq!(c.unavailable, 0);
    // The write stops as soon as quorum is impossible: the fifth failing
    // disk may not have failed yet, and is then among those still in the
    // write (`succeeded`).
    let errors: usize = c.errors.iter().map(|g| g.count).sum();
    assert!(errors >= 4 && errors + c.succeeded == 8, "{c:?}");
    assert!(c.succeeded < 5, "{c:?}");
    assert!(
        c.errors
            .iter()
            .all(|g| matches!(g.error, disk_io::DiskError::MediaError { .. })),
        "{c:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing visible: not through the API, and no metadata on any disk.
    for &p in &failing {
        fx.ctl(p).clear_eio();
    }
    assert_eq!(
        fx.set.stat_object(BUCKET, "torn", setup_deadline()).await,
        Err(ErasureError::ObjectNotFound)
    );
    assert!(!fx
        .set
        .list(BUCKET, "", setup_deadline())
        .await
        .unwrap()
        .contains(&"torn".to_string()));
    for root in &fx.backing {
        // The background cleanup takes the renamed shard files and the
        // directories they created away.
        let dir = root.join(BUCKET).join("torn");
        eventually("no object directory left", || !dir.exists()).await;
        let files = files_under(&root.join(BUCKET));
        assert!(files.is_empty(), "{root:?} holds {files:?}");
    }
    assert_eq!(fx.set.stats().false_quorum_loss(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_of_eight_gone_is_quorum_unavailable_not_lost() {
    let gone = [0usize, 3, 4, 5, 6];
    let fx = fixture(&gone, test_config()).await;
    for &p in &gone {
        fx.mounts[p]
            .as_ref()
            .unwrap()
            .fs
            .kill_daemon()
            .expect("kill daemon");
    }
    let deadline = Deadline::after(Duration::from_secs(20));
    let mut src: &[u8] = &[7u8; 100_000];
    let r = fx.set.put_object(BUCKET, "obj", &mut src, deadline).await;
    let Err(ErasureError::Quorum(QuorumError::Unavailable(c))) = &r else {
        panic!("expected QuorumError::Unavailable, got {r:?}")
    };
    // As above, the fifth gone disk may still be counted in the write.
    // Either the data phase or the version clock (read while the data
    // streams; it needs the version threshold, 4, of listings) fails first.
    assert!(
        c.needed == 5 || (c.op == QuorumOp::List && c.needed == 4),
        "{c:?}"
    );
    assert_eq!(c.answered, c.succeeded, "{c:?}");
    assert!(
        c.unavailable >= 4 && c.unavailable + c.succeeded == 8,
        "{c:?}"
    );
    assert!(c.succeeded < 5, "{c:?}");
    assert!(c.errors.is_empty(), "an unavailable disk is no vote: {c:?}");
    assert!(deadline.overshoot(Instant::now()) <= SLACK);
    assert_eq!(
        fx.set.stats().false_quorum_loss(),
        0,
        "health showed the gone disks out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_one_shard_are_detected_reconstructed_and_healed() {
    let fx = fixture(&[], test_config()).await;
    let data = bytes((2 << 20) + 99, 11);
    let rep = put(&fx.set, "rot", &data, setup_deadline()).await;
    // Corrupt the shard of data shard 0 (always read first) in its file.
    let d0 = (0..8)
        .find(|&p| disk_io_erasure::meta::distribution("rot", 8)[p] == 0)
        .unwrap();
    let path = fx.backing[d0]
        .join(BUCKET)
        .join("rot")
        .join(format!("{}.shards", rep.version));
    let mut bytes_on_disk = std::fs::read(&path).expect("shard file");
    for i in [40usize, 41, 5000, 300_000] {
        bytes_on_disk[i] ^= 0xA5;
    }
    std::fs::write(&path, &bytes_on_disk).unwrap();
    // A GET asks the disks whose metadata answered first; the corrupt disk
    // may not be among them, so read until it was asked (every read must
    // be correct either way).
    let mut reported = None;
    for _ in 0..30 {
        let (back, r) = get(&fx.set, "rot", None, setup_deadline())
            .await
            .expect("get");
        assert!(back == data, "read must be correct despite bitrot");
        assert!(r.bitrot.is_empty() || r.bitrot == vec![d0], "{r:?}");
        if !r.bitrot.is_empty() {
            reported = Some(r);
            break;
        }
    }
    let r = reported.expect("the corrupt shard was read and reported");
    assert_eq!(r.bitrot, vec![d0], "{r:?}");
    assert!(fx.set.stats().bitrot() >= 1);
    assert_eq!(fx.set.heal_queue().len(), 1);
    let h = fx
        .set
        .heal_object(BUCKET, "rot", setup_deadline())
        .await
        .expect("heal");
    // The corrupt shard, and any disk a loaded machine left behind in the
    // write (straggler grace).
    assert!(h.healed.contains(&d0), "{h:?}");
    assert!(
        h.healed.iter().all(|&p| p == d0 || rep.missed.contains(&p)),
        "{h:?} {rep:?}"
    );
    let (back, r) = get(&fx.set, "rot", None, setup_deadline())
        .await
        .expect("get");
    assert!(back == data);
    assert!(r.bitrot.is_empty(), "healed shard verifies: {r:?}");
    // The scanner finds objects the queue never heard of: remove one
    // disk's copy entirely.
    std::fs::remove_dir_all(fx.backing[3].join(BUCKET).join("rot")).unwrap();
    let s = fx.set.scan(BUCKET, setup_deadline()).await;
    assert_eq!((s.objects, s.healed, s.failed), (1, 1, 0), "{s:?}");
    let h = fx
        .set
        .heal_object(BUCKET, "rot", setup_deadline())
        .await
        .unwrap();
    assert_eq!(h.good.len(), 8, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_disk_costs_one_straggler_grace_then_none_while_remembered() {
    // A large, fixed grace makes the effect unmistakable on a loaded
    // machine: the first PUT waits it out, the next ones do not.
    let grace = Duration::from_secs(2);
    let cfg = disk_io_erasure::ErasureConfig {
        straggler_floor: grace,
        straggler_wait: grace,
        straggler_memory: Duration::from_secs(60),
        ..test_config()
    };
    let fx = fixture(&[4], cfg).await;
    fx.ctl(4).hang();
    let data = bytes(100_000, 1);
    let started = Instant::now();
    let first = put(
        &fx.set,
        "p0",
        &data,
        Deadline::after(Duration::from_secs(30)),
    )
    .await;
    let first_took = started.elapsed();
    assert!(first.missed.contains(&4), "{first:?}");
    assert!(
        first_took >= grace,
        "the first PUT gave the hung disk its grace: {first_took:?}"
    );
    for i in 1..4 {
        let started = Instant::now();
        let rep = put(
            &fx.set,
            &format!("p{i}"),
            &data,
            Deadline::after(Duration::from_secs(30)),
        )
        .await;
        let took = started.elapsed();
        assert!(rep.missed.contains(&4), "{rep:?}");
        assert!(
            took < grace.mul_f64(0.75),
            "PUT {i} waited for a disk known to lag: {took:?}"
        );
    }
    fx.ctl(4).release();
}
