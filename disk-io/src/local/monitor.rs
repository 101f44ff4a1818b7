//! The health monitor task of a [`LocalDisk`](super::LocalDisk) and its
//! active probe.
//!
//! Every tick: publish the driver's gauges; take the disk out while its
//! zombies exceed the cap or its stall source reports a stalled request;
//! otherwise run the active probe when the health machine says one is due
//! (periodically while Online, after the backoff while Faulty).

use std::sync::atomic::AtomicBool;
use std::sync::Weak;
use std::time::{Duration, Instant};

use disk_io_api::{Deadline, DiskError, OpClass, Result};
use disk_io_driver::RelPath;

use super::paths::system_name;
use super::Inner;

/// Size of the file the active probe writes, reads back and deletes.
const PROBE_SIZE: usize = 4096;

pub(super) async fn run(weak: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        inner.monitor_tick().await;
    }
}

impl Inner {
    /// Write, read back and delete a small file, through the same atomic
    /// write path callers use (tmp file, write, fsync, rename, directory
    /// fsync), so it touches the device itself, not just the page cache.
    pub(super) async fn probe(&self) -> Result<()> {
        let class = OpClass::Probe;
        let deadline = self.cfg.deadline(class);
        let started = Instant::now();
        let r = tokio::time::timeout_at(super::tokio_instant(deadline), self.probe_steps(deadline))
            .await
            .unwrap_or_else(|_| {
                Err(DiskError::DeadlineExceeded {
                    op: class,
                    waited: started.elapsed(),
                })
            });
        crate::metrics::probe(&self.label, r.is_ok());
        r
    }

    /// The health probe of an inspection handle: reads only.
    async fn read_probe(&self) -> Result<()> {
        let class = OpClass::Probe;
        let deadline = self.cfg.deadline(class);
        let r = match self.sys.as_ref() {
            Some(sys) => self
                .read_small(&sys.dir, &Self::format_name(), class, deadline)
                .await
                .map(|_| ()),
            None => self
                .driver
                .statfs(&self.root, deadline)
                .await
                .map(|_| ())
                .map_err(|e| Self::err(e, class, ".")),
        };
        crate::metrics::probe(&self.label, r.is_ok());
        r
    }

    async fn probe_steps(&self, deadline: Deadline) -> Result<()> {
        let class = OpClass::Probe;
        let tmp = self.sys()?.tmp.as_ref().ok_or(DiskError::Unformatted)?;
        let name = system_name(&format!("probe-{}", uuid::Uuid::new_v4()));
        let pattern: Vec<u8> = (0..PROBE_SIZE).map(|i| (i * 31 + 7) as u8).collect();
        let committed = AtomicBool::new(false);
        let written = self
            .atomic_write(tmp, &name, &pattern, &committed, class, deadline)
            .await;
        let checked = match written {
            Ok(()) => self
                .read_small(tmp, &RelPath::from(name.clone()), class, deadline)
                .await
                .and_then(|(back, _)| {
                    if back == pattern {
                        Ok(())
                    } else {
                        Err(DiskError::MediaError {
                            op: class,
                            errno: disk_io_driver::EIO,
                        })
                    }
                }),
            Err(e) => Err(e),
        };
        if committed.load(std::sync::atomic::Ordering::Acquire) {
            match self.driver.unlinkat(tmp, &name, false, deadline).await {
                Ok(()) => {}
                Err(e) => {
                    self.spawn_unlink_tmp(name);
                    checked.clone()?;
                    return Err(Self::err(e, class, "probe"));
                }
            }
        }
        checked
    }

    /// One tick of the health monitor.
    async fn monitor_tick(&self) {
        let stats = self.driver.stats();
        let zombies = stats.zombies();
        let cap = self.cfg.driver.zombie_cap;
        crate::metrics::driver_gauges(&self.label, stats.in_flight(), zombies);
        if zombies > cap {
            self.health.hold(&format!(
                "{zombies} zombie operations exceed the cap of {cap}"
            ));
            return;
        }
        if let Some(stall) = self.stall.as_ref().and_then(|s| s.check()) {
            self.health.hold(&format!(
                "device {} has a request outstanding for {:?}",
                stall.device, stall.oldest_age
            ));
            return;
        }
        if self.health.probe_due() {
            let r = match self.mode {
                super::OpenMode::Owner => self.probe().await,
                // An inspection handle never writes on its own: its health
                // probe reads the disk's identity (or the root's capacity on
                // a directory that is not a disk) under the probe budget.
                super::OpenMode::Inspect => self.read_probe().await,
            };
            self.health.on_probe(&r);
        }
    }
}
