//! The bounded heal queue. Writes that missed disks and reads that found
//! missing or corrupt shards push here; a healer pops and rebuilds
//! (see `ErasureSet::heal_object`); the scanner finds what a full queue dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use disk_io_api::Deadline;

use crate::metrics;

/// One object to check and heal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealTask {
    /// Set index.
    pub set: usize,
    /// Bucket.
    pub bucket: String,
    /// Object name.
    pub object: String,
}

/// What [`HealQueue::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Already queued.
    Duplicate,
    /// The queue is full; counted and dropped (the scanner finds it).
    Dropped,
}

/// A bounded, de-duplicated FIFO of heal tasks.
#[derive(Debug)]
pub struct HealQueue {
    capacity: usize,
    inner: Mutex<(VecDeque<HealTask>, HashSet<HealTask>)>,
    notify: Notify,
}

impl HealQueue {
    /// A queue holding at most `capacity` tasks.
    pub fn new(capacity: usize) -> HealQueue {
        assert!(capacity > 0);
        HealQueue {
            capacity,
            inner: Mutex::new((VecDeque::new(), HashSet::new())),
            notify: Notify::new(),
        }
    }

    /// Queue a task (never blocks).
    pub fn push(&self, task: HealTask) -> Pushed {
        let mut g = self.inner.lock().expect("heal queue lock");
        if g.1.contains(&task) {
            return Pushed::Duplicate;
        }
        if g.0.len() >= self.capacity {
            metrics::heal_dropped();
            tracing::warn!(?task, "heal queue full; dropped (the scanner will find it)");
            return Pushed::Dropped;
        }
        g.1.insert(task.clone());
        g.0.push_back(task);
        debug_assert_eq!(g.0.len(), g.1.len());
        metrics::heal_queue(g.0.len());
        drop(g);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Take the oldest task without waiting.
    pub fn try_pop(&self) -> Option<HealTask> {
        let mut g = self.inner.lock().expect("heal queue lock");
        let t = g.0.pop_front()?;
        g.1.remove(&t);
        metrics::heal_queue(g.0.len());
        Some(t)
    }

    /// Take the oldest task, waiting at most until `deadline`.
    pub async fn pop(&self, deadline: Deadline) -> Option<HealTask> {
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.try_pop() {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline.instant().into(), notified)
                .await
                .is_err()
            {
                return self.try_pop();
            }
        }
    }

    /// Tasks queued.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("heal queue lock").0.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(o: &str) -> HealTask {
        HealTask {
            set: 0,
            bucket: "b".into(),
            object: o.into(),
        }
    }

    #[tokio::test]
    async fn bounded_deduplicated_fifo() {
        let q = HealQueue::new(2);
        assert_eq!(q.push(t("a")), Pushed::Queued);
        assert_eq!(q.push(t("a")), Pushed::Duplicate);
        assert_eq!(q.push(t("b")), Pushed::Queued);
        assert_eq!(q.push(t("c")), Pushed::Dropped);
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop(), Some(t("a")));
        assert_eq!(
            q.pop(Deadline::after(Duration::from_millis(10))).await,
            Some(t("b"))
        );
        let started = std::time::Instant::now();
        assert_eq!(
            q.pop(Deadline::after(Duration::from_millis(30))).await,
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
