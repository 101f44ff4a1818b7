//! [`Ledger`]: what a mutual-exclusion test records and checks. Clients
//! take a lock, read a shared counter, think, and commit `value + 1` only
//! if they still hold the lock at that moment (the fencing a real store
//! does with a lease token); every committed critical section is logged
//! with its interval, token and client. [`Ledger::check`] then proves the
//! two properties a lock must give: the counter equals the committed
//! sections (no lost update), and no two committed sections overlapped.

use std::sync::Mutex;
use std::time::Instant;

/// One committed critical section.
#[derive(Clone, Debug)]
pub struct Section {
    /// When the holder read the counter.
    pub start: Instant,
    /// When it committed.
    pub end: Instant,
    /// The lease token it held.
    pub token: String,
    /// Which client.
    pub client: String,
}

/// The shared counter and the log of committed sections.
#[derive(Debug, Default)]
pub struct Ledger {
    counter: Mutex<u64>,
    log: Mutex<Vec<Section>>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Read the counter (the start of a critical section).
    pub fn read(&self) -> u64 {
        *self.counter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commit `read + 1` if `still_held()` says so, checked under the
    /// counter's lock so nothing commits between the check and the write.
    /// Returns whether it committed.
    pub fn commit(
        &self,
        read: u64,
        start: Instant,
        token: &str,
        client: &str,
        still_held: impl FnOnce() -> bool,
    ) -> bool {
        let mut c = self.counter.lock().unwrap_or_else(|e| e.into_inner());
        if !still_held() {
            return false;
        }
        *c = read + 1;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Section {
                start,
                end: Instant::now(),
                token: token.to_string(),
                client: client.to_string(),
            });
        true
    }

    /// The committed sections, in start order.
    pub fn sections(&self) -> Vec<Section> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        log.sort_by_key(|s| s.start);
        log
    }

    /// Why the log breaks mutual exclusion, if it does: a lost update
    /// (counter ≠ committed sections) or two overlapping sections.
    pub fn violation(&self) -> Option<String> {
        let log = self.sections();
        let counter = self.read();
        if counter != log.len() as u64 {
            return Some(format!(
                "counter is {counter} after {} committed sections: an update was lost",
                log.len()
            ));
        }
        log.windows(2).find(|w| w[1].start < w[0].end).map(|w| {
            format!(
                "sections {} ({}) and {} ({}) overlapped by {:?}",
                w[0].token,
                w[0].client,
                w[1].token,
                w[1].client,
                w[0].end - w[1].start
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lost_update_and_an_overlap_are_both_caught() {
        let l = Ledger::new();
        let a = l.read();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(l.commit(a, t0, "t1", "c1", || true));
        assert!(!l.commit(l.read(), Instant::now(), "t2", "c2", || false));
        assert_eq!(l.violation(), None);
        // A second holder that read before the first committed: lost update
        // and overlap.
        let stale = a;
        let t1 = t0 + Duration::from_micros(500);
        assert!(l.commit(stale, t1, "t3", "c3", || true));
        let v = l.violation().expect("a violation");
        assert!(v.contains("lost"), "{v}");
        // The overlap alone (counter consistent) is caught too.
        let l = Ledger::new();
        let s = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let v0 = l.read();
        assert!(l.commit(v0, s, "a", "c1", || true));
        let v1 = l.read();
        assert!(l.commit(v1, s + Duration::from_micros(100), "b", "c2", || true));
        assert!(l.violation().expect("overlap").contains("overlapped"));
    }
}
