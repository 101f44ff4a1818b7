//! The running loader: probes attached, a scanner thread (in-flight scan,
//! stall tracking, heartbeat, snapshot every interval) and the optional
//! `/metrics` server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::RunConfig;
use crate::error::{LoaderError, Result};
use crate::http::MetricsServer;
use crate::probes::Probes;
use crate::snapshot::{DeviceNames, Snapshot};
use crate::stall::{StallEvent, StallTracker};
use crate::system;

type Latest = Arc<Mutex<Arc<Snapshot>>>;

/// A running loader. [`Loader::stop`] (or drop) stops the threads, detaches
/// the probes and removes the pins.
#[derive(Debug)]
pub struct Loader {
    stop: Arc<AtomicBool>,
    scanner: Option<JoinHandle<()>>,
    server: Option<MetricsServer>,
    latest: Latest,
    events: Receiver<StallEvent>,
    pin_dir: std::path::PathBuf,
}

impl Loader {
    /// Attaches the probes (errors come back here, before any thread
    /// starts), then starts scanning and, if configured, serving metrics.
    pub fn start(cfg: RunConfig) -> Result<Loader> {
        cfg.validate()?;
        let probes = Probes::attach(&cfg.probes)?;
        let pin_dir = probes.pin_dir().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let latest: Latest = Arc::new(Mutex::new(Arc::new(Snapshot {
            threshold: cfg.stall_threshold,
            inflight_capacity: cfg.probes.limits.inflight_entries,
            ..Snapshot::default()
        })));
        let (tx, events) = mpsc::sync_channel(cfg.event_queue);
        let mut scanner = Scanner {
            probes,
            tracker: StallTracker::new(cfg.stall_threshold),
            names: DeviceNames::new(cfg.max_device_names),
            latest: latest.clone(),
            events: tx,
            cfg: cfg.clone(),
        };
        // One scan before returning, so a caller sees a snapshot at once.
        scanner.scan_once();
        let server = match cfg.listen {
            Some(addr) => {
                let latest = latest.clone();
                Some(MetricsServer::start(addr, cfg.http, move || {
                    crate::metrics::render(current(&latest))
                })?)
            }
            None => None,
        };
        let stop_scan = stop.clone();
        let scanner = std::thread::Builder::new()
            .name("probe-scanner".into())
            .spawn(move || scanner.run(&stop_scan))
            .map_err(|e| LoaderError::io("spawning the scanner thread", e))?;
        Ok(Loader {
            stop,
            scanner: Some(scanner),
            server,
            latest,
            events,
            pin_dir,
        })
    }

    /// The `/metrics` address, if serving.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(MetricsServer::addr)
    }

    /// The latest snapshot (at most one scan interval old).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        current(&self.latest)
    }

    /// `/metrics` text of the latest snapshot.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(self.snapshot())
    }

    /// Stall start/end events (bounded queue; when nobody reads, the
    /// newest are dropped — they are logged either way).
    pub fn events(&self) -> &Receiver<StallEvent> {
        &self.events
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Whether the scanner thread still runs.
    pub fn is_running(&self) -> bool {
        self.scanner.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops scanning and serving, detaches the probes, removes the pins.
    /// Returns within about one scan interval plus the HTTP server's
    /// shutdown timeout.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.scanner.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn current(latest: &Latest) -> Arc<Snapshot> {
    latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

struct Scanner {
    probes: Probes,
    tracker: StallTracker,
    names: DeviceNames,
    latest: Latest,
    events: SyncSender<StallEvent>,
    cfg: RunConfig,
}

impl Scanner {
    fn run(mut self, stop: &AtomicBool) {
        let interval = self.cfg.scan_interval;
        let mut next = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                // Unparked early by `stop`.
                std::thread::park_timeout(next - now);
                continue;
            }
            self.scan_once();
            next += interval;
            // After a long pause (suspend, heavy load) do not catch up with
            // a burst of scans.
            if next < Instant::now() {
                next = Instant::now() + interval;
            }
        }
        // `self.probes` drops here: detach, unpin.
    }

    fn scan_once(&mut self) {
        let t0 = Instant::now();
        let maps = self.probes.maps();
        let scan = maps.scan_inflight(system::monotonic_ns(), self.cfg.max_scan_entries);
        let names = &mut self.names;
        let events = self.tracker.update(&scan, &mut |d| names.name(d));
        let hists = maps.read_hists(self.cfg.max_hist_keys);
        let counters = maps.read_counters();
        let mut names = std::collections::BTreeMap::new();
        for d in hists
            .keys()
            .map(|k| k.dev)
            .chain(scan.devices.keys().copied())
            .chain(self.tracker.devices().keys().copied())
        {
            names.entry(d).or_insert_with(|| self.names.name(d));
        }
        if let Err(e) = self
            .probes
            .heartbeat(self.cfg.scan_interval, self.cfg.stall_threshold)
        {
            tracing::warn!(error = %e, "writing the heartbeat");
        }
        let snap = Snapshot {
            scan,
            hists,
            counters,
            stalls: self.tracker.devices().clone(),
            names,
            threshold: self.cfg.stall_threshold,
            scan_duration: t0.elapsed(),
            inflight_capacity: self.cfg.probes.limits.inflight_entries,
        };
        // Publish the snapshot first: whoever reacts to an event and then
        // reads /metrics must see the state the event describes.
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        for ev in events {
            self.emit(ev);
        }
    }

    fn emit(&self, ev: StallEvent) {
        match &ev {
            StallEvent::Started {
                device,
                oldest_age,
                op,
                bytes,
                in_flight,
                ..
            } => tracing::warn!(
                device = %device,
                oldest_ms = oldest_age.as_millis() as u64,
                op = %op,
                bytes,
                in_flight,
                threshold_ms = self.tracker.threshold().as_millis() as u64,
                "stall started: request outstanding longer than the threshold"
            ),
            StallEvent::Ended { device, lasted, .. } => tracing::info!(
                device = %device,
                lasted_ms = lasted.as_millis() as u64,
                "stall ended"
            ),
        }
        match self.events.try_send(ev) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Waits (bounded) for the first event matching `pred`.
pub fn wait_event(
    events: &Receiver<StallEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&StallEvent) -> bool,
) -> Option<StallEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ev) if pred(&ev) => return Some(ev),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}
