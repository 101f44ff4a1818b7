//! Run-time fault switches shared between a test and the FUSE daemon threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How many directory fsyncs [`FaultControl::fsynced_dirs`] remembers.
pub const FSYNCDIR_LOG: usize = 4096;

/// A cheap, clonable handle that flips the faults of one [`FaultFs`](super::FaultFs) while it
/// runs.
///
/// Every switch takes effect for requests that arrive after the call; requests already inside
/// the daemon are not affected (except parked ones, which [`release`](Self::release) wakes).
/// Path patterns match the path *inside the mount*, with a leading `/`
/// (for example `/vol1/format.json`).
#[derive(Clone, Debug)]
pub struct FaultControl {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Signalled whenever the state changes: wakes parked requests, sleeping (latency)
    /// requests and `wait_for_hung` callers.
    changed: Condvar,
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    hung: bool,
    parked: usize,
    latency: Duration,
    eio_patterns: Vec<String>,
    /// `EIO` for directory fsyncs only, on paths containing one of these.
    fsyncdir_eio_patterns: Vec<String>,
    /// Paths of the directory fsyncs the daemon saw, oldest first, at most
    /// `FSYNCDIR_LOG` of them.
    fsyncdir_log: std::collections::VecDeque<String>,
    enospc: bool,
    /// Bumped by every change of latency/hang, so a sleeping request can tell that its
    /// latency was switched off (it then stops sleeping early).
    epoch: u64,
    /// Set once the mount is being torn down: no request may park or sleep from then on,
    /// so teardown can never wait on the switches.
    closing: bool,
}

/// What a request is about to do, for the fault rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Touches data or metadata without needing space.
    Plain,
    /// May need new space (write, create, mkdir, fallocate, growing truncate).
    Allocates,
}

impl FaultControl {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not disable the harness: the state stays consistent
        // because every critical section is a few plain assignments.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state();
        f(&mut state);
        state.epoch = state.epoch.wrapping_add(1);
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Makes every request that reaches the daemon from now on block until
    /// [`release`](Self::release) (or [`reset`](Self::reset), or the mount is dropped).
    ///
    /// This is what a dead disk looks like from the kernel's side: the request was accepted
    /// and never answers. Release and forget messages are not parked: the kernel sends them
    /// asynchronously after the last close, nobody waits for them, and parking them would
    /// only tie up daemon threads and inflate [`hung_requests`](Self::hung_requests).
    pub fn hang(&self) {
        self.update(|s| s.hung = true);
    }

    /// Lets all parked requests continue and stops parking new ones.
    pub fn release(&self) {
        self.update(|s| s.hung = false);
    }

    /// Whether the hang switch is on.
    pub fn is_hung(&self) -> bool {
        self.state().hung
    }

    /// How many requests are parked right now by [`hang`](Self::hang).
    ///
    /// Only requests the daemon has already read are counted; with every daemon thread
    /// parked, further requests queue inside the kernel and are not counted.
    pub fn hung_requests(&self) -> usize {
        self.state().parked
    }

    /// Waits until at least `min` requests are parked, for at most `timeout`.
    /// Returns whether that many were parked; tests use it to know a hang is engaged.
    pub fn wait_for_hung(&self, min: usize, timeout: Duration) -> bool {
        let (state, _) = self
            .inner
            .changed
            .wait_timeout_while(self.state(), timeout, |s| s.parked < min)
            .unwrap_or_else(|e| e.into_inner());
        state.parked >= min
    }

    /// Delays every request by `latency` before it is served; `Duration::ZERO` turns it off.
    /// Lowering the latency also shortens requests that are already sleeping.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|s| s.latency = latency);
    }

    /// The current injected latency.
    pub fn latency(&self) -> Duration {
        self.state().latency
    }

    /// Adds a rule: every request on a path containing `pattern` fails with `EIO`
    /// (lookup, getattr, setattr, open, create, read, write, flush, fsync, readdir, mkdir,
    /// mknod, unlink, rmdir, rename, ...). Releases and forgets are never failed, so open
    /// files can always be closed.
    pub fn fail_eio(&self, pattern: &str) {
        let pattern = pattern.to_owned();
        self.update(|s| s.eio_patterns.push(pattern));
    }

    /// Removes all `EIO` rules (including directory-fsync ones).
    pub fn clear_eio(&self) {
        self.update(|s| {
            s.eio_patterns.clear();
            s.fsyncdir_eio_patterns.clear();
        });
    }

    /// Adds a rule: only directory fsyncs (`FSYNCDIR`) of paths containing
    /// `pattern` fail with `EIO`; everything else on them works. This is
    /// the failure after a rename has landed that makes it not durable.
    pub fn fail_fsync_dir(&self, pattern: &str) {
        let pattern = pattern.to_owned();
        self.update(|s| s.fsyncdir_eio_patterns.push(pattern));
    }

    /// The directories fsynced so far (paths inside the mount, with a
    /// leading `/`), oldest first; the log keeps the last
    /// [`FSYNCDIR_LOG`] entries.
    pub fn fsynced_dirs(&self) -> Vec<String> {
        self.state().fsyncdir_log.iter().cloned().collect()
    }

    /// Records a directory fsync and says whether it must fail.
    pub(crate) fn on_fsync_dir(&self, path: &str) -> bool {
        let mut s = self.state();
        if s.fsyncdir_log.len() >= FSYNCDIR_LOG {
            s.fsyncdir_log.pop_front();
        }
        s.fsyncdir_log.push_back(path.to_string());
        s.fsyncdir_eio_patterns
            .iter()
            .any(|p| path.contains(p.as_str()))
    }

    /// While on, requests that may allocate space (write, create, mkdir, mknod, symlink,
    /// link, fallocate, truncate to a larger size) fail with `ENOSPC` without touching
    /// the backing file.
    pub fn set_enospc(&self, on: bool) {
        self.update(|s| s.enospc = on);
    }

    /// Clears every switch (hang, latency, `EIO` rules, `ENOSPC`) and wakes parked requests.
    pub fn reset(&self) {
        self.update(|s| {
            s.hung = false;
            s.latency = Duration::ZERO;
            s.eio_patterns.clear();
            s.fsyncdir_eio_patterns.clear();
            s.enospc = false;
        });
    }

    /// Total number of requests the daemon has handled (forgets excluded).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Teardown: reset everything and never park or sleep again.
    pub(crate) fn close(&self) {
        self.update(|s| {
            s.closing = true;
            s.hung = false;
            s.latency = Duration::ZERO;
            s.eio_patterns.clear();
            s.fsyncdir_eio_patterns.clear();
            s.enospc = false;
        });
    }

    /// Counts a request that bypasses the switches (release).
    pub(crate) fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Entry gate of every request: counts it, parks it while hung, then applies latency.
    pub(crate) fn admit(&self) {
        self.count();
        let mut state = self.state();
        if state.hung && !state.closing {
            state.parked += 1;
            self.inner.changed.notify_all();
            while state.hung && !state.closing {
                state = self
                    .inner
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.parked -= 1;
        }
        let latency = state.latency;
        if latency.is_zero() || state.closing {
            return;
        }
        // Sleep on the condvar rather than thread::sleep so that switching latency off (or
        // tearing down) ends the delay at once.
        let epoch = state.epoch;
        drop(
            self.inner
                .changed
                .wait_timeout_while(state, latency, |s| s.epoch == epoch && !s.closing)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }

    /// The errno (if any) the switches inject for a request on `path` doing `access`.
    pub(crate) fn injected_error(&self, path: &str, access: Access) -> Option<i32> {
        let state = self.state();
        if state.eio_patterns.iter().any(|p| path.contains(p.as_str())) {
            return Some(libc::EIO);
        }
        if access == Access::Allocates && state.enospc {
            return Some(libc::ENOSPC);
        }
        None
    }

    /// Whether `ENOSPC` injection is on (for operations that decide late whether they
    /// allocate, such as truncate).
    pub(crate) fn enospc(&self) -> bool {
        self.state().enospc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Instant;

    #[test]
    fn hang_parks_until_release() {
        let ctl = FaultControl::new();
        ctl.hang();
        let worker = {
            let ctl = ctl.clone();
            thread::spawn(move || ctl.admit())
        };
        assert!(ctl.wait_for_hung(1, Duration::from_secs(5)));
        assert_eq!(ctl.hung_requests(), 1);
        ctl.release();
        worker.join().expect("admit thread panicked");
        assert_eq!(ctl.hung_requests(), 0);
        assert_eq!(ctl.requests(), 1);
    }

    #[test]
    fn latency_is_cut_short_by_reset() {
        let ctl = FaultControl::new();
        ctl.set_latency(Duration::from_secs(30));
        let start = Instant::now();
        let worker = {
            let ctl = ctl.clone();
            thread::spawn(move || ctl.admit())
        };
        thread::sleep(Duration::from_millis(50));
        ctl.reset();
        worker.join().expect("admit thread panicked");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn rules_match_paths() {
        let ctl = FaultControl::new();
        ctl.fail_eio("bad");
        assert_eq!(
            ctl.injected_error("/x/bad.txt", Access::Plain),
            Some(libc::EIO)
        );
        assert_eq!(ctl.injected_error("/x/good.txt", Access::Allocates), None);
        ctl.set_enospc(true);
        assert_eq!(
            ctl.injected_error("/x/good.txt", Access::Allocates),
            Some(libc::ENOSPC)
        );
        assert_eq!(ctl.injected_error("/x/good.txt", Access::Plain), None);
        ctl.close();
        ctl.hang();
        // Closing wins over a later hang: teardown can never park.
        ctl.admit();
    }
}
