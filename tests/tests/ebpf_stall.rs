//! The probe loader sees a stalled block device: a loop device whose image
//! lives on a FUSE mount, with the FUSE layer hung while an O_DIRECT write
//! is in flight on the ext4 on top. The stall is reported within
//! threshold + 2 × scan interval, clears after release, and `/metrics`
//! shows it (and passes promtool).

mod ebpf_common;

use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ebpf_common::*;
use probes_ebpf_loader::{wait_event, StallEvent};

const THRESHOLD: Duration = Duration::from_millis(300);
const INTERVAL: Duration = Duration::from_millis(100);

#[test]
fn hung_fuse_under_a_loop_device_is_a_stall_that_clears_after_release() {
    let disk_fx = stallable_disk();
    let (ext4, ctl, dev) = (&disk_fx.ext4, &disk_fx.ctl, disk_fx.dev.clone());
    let loader = start_loader(&dev, THRESHOLD, INTERVAL);

    // Allocate the block first so the stalled write is a plain overwrite
    // that goes straight to the device.
    let path = ext4.mount_dir().join("block");
    let file = open_direct(&path, true);
    file.write_at(&Block([0xab; 4096]).0, 0)
        .expect("first O_DIRECT write");
    file.sync_all().expect("fsync");
    // Nothing stalled yet.
    let before = scrape(&loader);
    assert_eq!(
        metric(
            &before,
            &format!("diskio_block_stalled{{device=\"{dev}\"}}")
        )
        .unwrap_or(0.0),
        0.0
    );

    ctl.hang();
    let (tx, writer_done) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let r = file.write_at(&Block([0xcd; 4096]).0, 0);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    assert!(
        ctl.wait_for_hung(1, BOUND),
        "the block write never reached the FUSE daemon"
    );
    let hung_at = Instant::now();

    let started = wait_event(loader.events(), BOUND, |e| {
        matches!(e, StallEvent::Started { .. })
    })
    .expect("no stall reported while the device was hung");
    let seen_after = hung_at.elapsed();
    let StallEvent::Started {
        device,
        oldest_age,
        in_flight,
        ..
    } = &started
    else {
        unreachable!("filtered above")
    };
    assert_eq!(device, &dev);
    assert!(*in_flight >= 1);
    // The age at the scan that saw it is how long after issue it was seen.
    assert!(
        *oldest_age <= THRESHOLD + 2 * INTERVAL,
        "stall seen {oldest_age:?} after issue; bound {:?}",
        THRESHOLD + 2 * INTERVAL
    );
    // Wall clock from the FUSE daemon seeing the request, with slack for a
    // loaded machine.
    assert!(
        seen_after < THRESHOLD + 2 * INTERVAL + Duration::from_secs(1),
        "{seen_after:?}"
    );

    let during = scrape(&loader);
    assert_eq!(
        metric(
            &during,
            &format!("diskio_block_stalled{{device=\"{dev}\"}}")
        ),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        metric(
            &during,
            &format!("diskio_block_stalls_total{{device=\"{dev}\"}}")
        ),
        Some(1.0)
    );
    let oldest = metric(
        &during,
        &format!("diskio_block_oldest_in_flight_seconds{{device=\"{dev}\"}}"),
    )
    .expect("oldest in-flight gauge");
    assert!(oldest > THRESHOLD.as_secs_f64(), "{oldest}");
    assert!(
        metric(
            &during,
            &format!("diskio_block_requests_in_flight{{device=\"{dev}\"}}")
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    promtool_check(&during).expect("/metrics during a stall");

    ctl.release();
    writer_done
        .recv_timeout(BOUND)
        .expect("O_DIRECT write still blocked after release")
        .expect("O_DIRECT write");
    writer.join().expect("writer thread");
    let ended = wait_event(loader.events(), BOUND, |e| {
        matches!(e, StallEvent::Ended { .. })
    })
    .expect("the stall never ended after release");
    assert_eq!(ended.device(), dev);

    let after = scrape(&loader);
    assert_eq!(
        metric(&after, &format!("diskio_block_stalled{{device=\"{dev}\"}}")),
        Some(0.0),
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            &format!("diskio_block_stalls_total{{device=\"{dev}\"}}")
        ),
        Some(1.0)
    );
    // The stalled write completed and landed in the write histogram.
    let writes = metric(
        &after,
        &format!("diskio_block_request_duration_seconds_count{{device=\"{dev}\",op=\"write\"}}"),
    )
    .expect("write histogram");
    assert!(writes >= 2.0, "{writes}");
    let slow = metric(
        &after,
        &format!("diskio_block_request_duration_seconds_bucket{{device=\"{dev}\",op=\"write\",le=\"0.268435456\"}}"),
    )
    .expect("bucket at 2^28 ns");
    assert!(
        slow < writes,
        "the stalled write must sit above 268 ms: {slow} of {writes}"
    );
    promtool_check(&after).expect("/metrics after the stall");

    let pin_dir = loader.pin_dir().to_path_buf();
    loader.stop();
    assert!(
        !pin_dir.exists(),
        "pins left behind in {}",
        pin_dir.display()
    );
}
