//! Quorum reduction over per-disk results.
//!
//! **Invariant:** a disk whose result is in the *unavailable* family
//! ([`DiskError::is_unavailable`]: deadline missed, faulty, unreachable,
//! gone, ...) is *missing*: it is never a vote for or against anything.
//! Only disks that answered vote. Hence two different failures:
//!
//! * [`QuorumError::Unavailable`]: fewer disks answered than the quorum
//!   needs; nothing can be decided (the field report's "8/8 offline" with six
//!   disks alive would show up here, with the true counts).
//! * [`QuorumError::Lost`]: enough disks answered, but no answer reached
//!   quorum (they failed or disagree).
//!
//! When one answered error reaches quorum by itself (e.g. "not found" on a
//! read quorum of disks), it is the agreed answer ([`Outcome::Agreed`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use disk_io_api::DiskError;

use crate::metrics;

/// Which object operation a quorum was for (metrics label, errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuorumOp {
    /// Set initialisation (disk ids).
    Init,
    /// Creating a bucket.
    MakeBucket,
    /// Object data write.
    WriteData,
    /// Object metadata write.
    WriteMeta,
    /// Metadata read.
    ReadMeta,
    /// Shard reads of one block.
    ReadData,
    /// Delete.
    Delete,
    /// Listing.
    List,
}

impl QuorumOp {
    /// Every op, for registering their series.
    pub const ALL: [QuorumOp; 8] = [
        QuorumOp::Init,
        QuorumOp::MakeBucket,
        QuorumOp::WriteData,
        QuorumOp::WriteMeta,
        QuorumOp::ReadMeta,
        QuorumOp::ReadData,
        QuorumOp::Delete,
        QuorumOp::List,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumOp::Init => "init",
            QuorumOp::MakeBucket => "make_bucket",
            QuorumOp::WriteData => "write_data",
            QuorumOp::WriteMeta => "write_meta",
            QuorumOp::ReadMeta => "read_meta",
            QuorumOp::ReadData => "read_data",
            QuorumOp::Delete => "delete",
            QuorumOp::List => "list",
        }
    }
}

impl QuorumOp {
    /// Whether one answered error reaching quorum is the answer. True for
    /// reads, listings and deletes ("not found" on a read quorum means
    /// not found); false for writes, whose failure is always a
    /// [`QuorumError`] (the counts show which errors came back).
    pub fn agrees_on_errors(self) -> bool {
        match self {
            QuorumOp::Init
            | QuorumOp::ReadMeta
            | QuorumOp::ReadData
            | QuorumOp::Delete
            | QuorumOp::List => true,
            QuorumOp::MakeBucket | QuorumOp::WriteData | QuorumOp::WriteMeta => false,
        }
    }
}

impl std::fmt::Display for QuorumOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kind of error and how many disks returned it (one representative
/// error per variant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorCount {
    /// A representative error of this variant.
    pub error: DiskError,
    /// Disks that returned this variant.
    pub count: usize,
}

/// The counts a quorum failure carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumCounts {
    /// Which operation.
    pub op: QuorumOp,
    /// Disks the quorum needs.
    pub needed: usize,
    /// Disks asked.
    pub total: usize,
    /// Disks that answered (successes and answered errors).
    pub answered: usize,
    /// Disks that succeeded (or agreed with the largest group). For a
    /// shard write that stops as soon as quorum is impossible, the disks
    /// still in the write at that moment.
    pub succeeded: usize,
    /// Disks that were unavailable (missing, not votes).
    pub unavailable: usize,
    /// Answered errors, grouped by variant.
    pub errors: Vec<ErrorCount>,
    /// Unavailable errors, grouped by variant.
    pub unavailable_errors: Vec<ErrorCount>,
}

/// Why quorum was not reached. The two branches are different types of
/// failure and callers (and alerts) must be able to tell them apart.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// Too few disks answered: `answered < needed`. Unavailable disks are
    /// missing, not votes.
    #[error(
        "{}: quorum unavailable: needed {}, answered {} ({} ok), unavailable {} of {}",
        .0.op, .0.needed, .0.answered, .0.succeeded, .0.unavailable, .0.total
    )]
    Unavailable(QuorumCounts),
    /// Enough disks answered, but no answer reached quorum.
    #[error(
        "{}: quorum lost: needed {}, answered {} ({} ok, errors {:?}), unavailable {} of {}",
        .0.op, .0.needed, .0.answered, .0.succeeded, .0.errors, .0.unavailable, .0.total
    )]
    Lost(QuorumCounts),
}

impl QuorumError {
    /// The counts, whichever the branch.
    pub fn counts(&self) -> &QuorumCounts {
        match self {
            QuorumError::Unavailable(c) | QuorumError::Lost(c) => c,
        }
    }
}

/// A quorum that was met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least `needed` disks succeeded.
    Met {
        /// How many.
        succeeded: usize,
    },
    /// At least `needed` disks answered the same error: that is the answer.
    Agreed(DiskError),
}

/// Per-set counters that must not depend on a global recorder (tests read
/// them directly; the `metrics` facade gets the same increments).
#[derive(Debug, Default)]
pub struct SetStats {
    false_quorum_loss: AtomicU64,
    quorum_unavailable: AtomicU64,
    quorum_lost: AtomicU64,
    bitrot: AtomicU64,
}

impl SetStats {
    /// Quorum failures while health showed enough disks admitting.
    pub fn false_quorum_loss(&self) -> u64 {
        self.false_quorum_loss.load(Ordering::Relaxed)
    }
    /// `QuorumError::Unavailable` returned.
    pub fn quorum_unavailable(&self) -> u64 {
        self.quorum_unavailable.load(Ordering::Relaxed)
    }
    /// `QuorumError::Lost` returned.
    pub fn quorum_lost(&self) -> u64 {
        self.quorum_lost.load(Ordering::Relaxed)
    }
    /// Shard blocks that failed their checksum.
    pub fn bitrot(&self) -> u64 {
        self.bitrot.load(Ordering::Relaxed)
    }
    pub(crate) fn add_bitrot(&self, set: usize) {
        self.bitrot.fetch_add(1, Ordering::Relaxed);
        metrics::bitrot(set);
    }
}

/// Whether an error shows by itself that the disk is out (its device is
/// gone, its health or breaker took it out, its peer is unreachable), so
/// that a health state that has not caught up yet does not make its
/// absence look false. A deadline miss does not: a timeout counted as
/// "offline" while health still admits the disk is exactly the shape of a
/// false quorum loss (or of a deadline shorter than health's trip window).
pub fn proves_out(e: &DiskError) -> bool {
    matches!(
        e,
        DiskError::DeviceGone { .. }
            | DiskError::Faulty { .. }
            | DiskError::DiskNotFound { .. }
            | DiskError::ShutDown
            | DiskError::CircuitOpen { .. }
            | DiskError::Unreachable { .. }
    )
}

/// Tally of one quorum round: feed each disk's result with whether its
/// health admitted callers at the time, then ask for the [`Tally::verdict`].
#[derive(Debug)]
pub struct Tally {
    op: QuorumOp,
    needed: usize,
    total: usize,
    succeeded: usize,
    disagreed: usize,
    admitting: usize,
    errors: Vec<ErrorCount>,
    unavailable: Vec<ErrorCount>,
}

fn bump(groups: &mut Vec<ErrorCount>, e: DiskError) {
    let d = std::mem::discriminant(&e);
    match groups
        .iter_mut()
        .find(|g| std::mem::discriminant(&g.error) == d)
    {
        Some(g) => g.count += 1,
        None => groups.push(ErrorCount { error: e, count: 1 }),
    }
}

impl Tally {
    /// A tally for `total` disks needing `needed` of them.
    ///
    /// # Panics
    /// If `needed` is 0 or above `total` (a quorum no set can meet is a bug
    /// in the caller, not a runtime condition).
    pub fn new(op: QuorumOp, needed: usize, total: usize) -> Tally {
        assert!(needed >= 1 && needed <= total, "quorum {needed} of {total}");
        Tally {
            op,
            needed,
            total,
            succeeded: 0,
            disagreed: 0,
            admitting: 0,
            errors: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    /// One success.
    pub fn ok(&mut self, admits: bool) {
        self.succeeded += 1;
        self.admitting += usize::from(admits);
    }

    /// A disk that answered, but with something other than the winning
    /// answer (another version, a corrupt file, a bad checksum).
    pub fn disagree(&mut self, admits: bool) {
        self.disagreed += 1;
        self.admitting += usize::from(admits);
    }

    /// A disk that was not heard from (the caller stopped waiting): missing.
    pub fn missing(&mut self, admits: bool) {
        self.admitting += usize::from(admits);
    }

    /// One disk's error, sorted into its family. A disk counts as
    /// admitting (for false quorum loss) when its health admits callers and
    /// its own answer does not prove it out (see [`proves_out`]).
    pub fn err(&mut self, e: DiskError, admits: bool) {
        self.admitting += usize::from(admits && !proves_out(&e));
        if e.is_unavailable() {
            bump(&mut self.unavailable, e);
        } else {
            bump(&mut self.errors, e);
        }
    }

    /// One disk's result.
    pub fn add<T>(&mut self, r: &Result<T, DiskError>, admits: bool) {
        match r {
            Ok(_) => self.ok(admits),
            Err(e) => self.err(e.clone(), admits),
        }
    }

    /// Disks recorded so far.
    pub fn recorded(&self) -> usize {
        self.succeeded + self.answered_errors() + self.unavailable_count()
    }

    fn answered_errors(&self) -> usize {
        self.errors.iter().map(|g| g.count).sum::<usize>() + self.disagreed
    }

    fn unavailable_count(&self) -> usize {
        self.unavailable.iter().map(|g| g.count).sum()
    }

    /// Whether the verdict would be "too few answered".
    pub fn short_of_answers(&self) -> bool {
        self.succeeded < self.needed && self.succeeded + self.answered_errors() < self.needed
    }

    /// The operation tallied.
    pub fn op(&self) -> QuorumOp {
        self.op
    }

    /// Successes so far.
    pub fn succeeded(&self) -> usize {
        self.succeeded
    }

    /// The counts as they stand.
    pub fn counts(&self) -> QuorumCounts {
        QuorumCounts {
            op: self.op,
            needed: self.needed,
            total: self.total,
            answered: self.succeeded + self.answered_errors(),
            succeeded: self.succeeded,
            unavailable: self.unavailable_count(),
            errors: self.errors.clone(),
            unavailable_errors: self.unavailable.clone(),
        }
    }

    /// The reduction. Disks not recorded count as unavailable.
    pub fn verdict(&self, set: usize, stats: &SetStats) -> Result<Outcome, QuorumError> {
        debug_assert!(self.recorded() <= self.total);
        if self.succeeded >= self.needed {
            return Ok(Outcome::Met {
                succeeded: self.succeeded,
            });
        }
        if self.op.agrees_on_errors() {
            if let Some(g) = self.errors.iter().find(|g| g.count >= self.needed) {
                return Ok(Outcome::Agreed(g.error.clone()));
            }
        }
        let mut counts = self.counts();
        // Disks never recorded (the caller stopped waiting) are missing.
        counts.unavailable = self.total - counts.answered;
        let err = if counts.answered < self.needed {
            stats.quorum_unavailable.fetch_add(1, Ordering::Relaxed);
            if self.admitting >= self.needed {
                // Health said enough disks were in, yet too few answered:
                // the shape of the field report's false quorum loss.
                stats.false_quorum_loss.fetch_add(1, Ordering::Relaxed);
                metrics::false_quorum_loss(set, self.op);
                tracing::error!(set, op = %self.op, admitting = self.admitting, ?counts,
                    "false quorum loss: health showed enough disks admitting");
            }
            QuorumError::Unavailable(counts)
        } else {
            stats.quorum_lost.fetch_add(1, Ordering::Relaxed);
            QuorumError::Lost(counts)
        };
        metrics::quorum_failure(set, &err);
        Err(err)
    }
}

/// Shared stats handle.
pub type StatsRef = Arc<SetStats>;

#[cfg(test)]
mod tests {
    use super::*;
    use disk_io_api::OpClass;
    use std::time::Duration;

    fn miss() -> DiskError {
        DiskError::DeadlineExceeded {
            op: OpClass::ReadAll,
            waited: Duration::from_millis(5),
        }
    }
    fn eio() -> DiskError {
        DiskError::MediaError {
            op: OpClass::ReadAll,
            errno: disk_io_api::Errno(5),
        }
    }

    #[test]
    fn met_when_enough_succeed_even_with_errors_and_misses() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteData, 5, 8);
        for _ in 0..5 {
            t.ok(true);
        }
        t.err(miss(), false);
        t.err(eio(), true);
        t.err(DiskError::FileNotFound, true);
        assert_eq!(t.verdict(0, &s), Ok(Outcome::Met { succeeded: 5 }));
    }

    #[test]
    fn agreed_error_is_the_answer() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::ReadMeta, 4, 8);
        for _ in 0..4 {
            t.err(DiskError::FileNotFound, true);
        }
        t.ok(true);
        t.err(miss(), true);
        assert_eq!(
            t.verdict(0, &s),
            Ok(Outcome::Agreed(DiskError::FileNotFound))
        );
    }

    #[test]
    fn a_write_never_agrees_on_an_error() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteData, 5, 8);
        for _ in 0..3 {
            t.ok(true);
        }
        for _ in 0..5 {
            t.err(DiskError::NoSpace, true);
        }
        let e = t.verdict(0, &s).unwrap_err();
        assert!(matches!(&e, QuorumError::Lost(c) if c.errors[0].count == 5 && c.answered == 8));
    }

    #[test]
    fn lost_when_enough_answered_but_failed() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteData, 5, 8);
        for _ in 0..3 {
            t.ok(true);
        }
        for _ in 0..3 {
            t.err(eio(), true);
        }
        t.err(DiskError::NoSpace, true);
        t.err(miss(), false);
        let e = t.verdict(0, &s).unwrap_err();
        let QuorumError::Lost(c) = &e else {
            panic!("expected Lost, got {e:?}")
        };
        assert_eq!(
            (c.needed, c.answered, c.succeeded, c.unavailable),
            (5, 7, 3, 1)
        );
        assert_eq!(c.errors.len(), 2, "EIO and ENOSPC grouped by variant");
        assert_eq!(c.errors[0].count, 3);
        assert_eq!(s.quorum_lost(), 1);
        assert_eq!(s.false_quorum_loss(), 0);
    }

    #[test]
    fn unavailable_disks_are_missing_not_votes() {
        // 3 ok + 5 timeouts, quorum 5: the timeouts must not turn this into
        // "quorum lost with 5 errors"; it is "too few answered".
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteData, 5, 8);
        for _ in 0..3 {
            t.ok(true);
        }
        for _ in 0..5 {
            t.err(miss(), false);
        }
        let e = t.verdict(0, &s).unwrap_err();
        let QuorumError::Unavailable(c) = &e else {
            panic!("expected Unavailable, got {e:?}")
        };
        assert_eq!(
            (c.needed, c.answered, c.succeeded, c.unavailable),
            (5, 3, 3, 5)
        );
        assert!(c.errors.is_empty(), "no timeout counted as an error vote");
        assert_eq!(c.unavailable_errors[0].count, 5);
        assert_eq!(s.false_quorum_loss(), 0, "health showed them out");
    }

    #[test]
    fn unrecorded_disks_count_as_unavailable() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::ReadData, 4, 8);
        t.ok(false);
        t.err(eio(), false);
        let e = t.verdict(0, &s).unwrap_err();
        assert!(
            matches!(e, QuorumError::Unavailable(ref c) if c.unavailable == 6 && c.answered == 2)
        );
    }

    #[test]
    fn unavailable_while_health_admits_counts_false_quorum_loss() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteMeta, 5, 8);
        for _ in 0..8 {
            t.err(miss(), true);
        }
        assert!(matches!(t.verdict(3, &s), Err(QuorumError::Unavailable(_))));
        assert_eq!(s.false_quorum_loss(), 1);
        assert_eq!(s.quorum_unavailable(), 1);
    }

    #[test]
    fn a_disk_proved_out_by_its_own_error_is_not_admitting() {
        let s = SetStats::default();
        let mut t = Tally::new(QuorumOp::WriteData, 5, 8);
        for _ in 0..3 {
            t.ok(true);
        }
        for _ in 0..5 {
            t.err(
                DiskError::DeviceGone {
                    op: OpClass::CreateFile,
                    errno: disk_io_api::Errno(107),
                },
                true,
            );
        }
        assert!(matches!(t.verdict(0, &s), Err(QuorumError::Unavailable(_))));
        assert_eq!(s.false_quorum_loss(), 0);
    }

    #[test]
    #[should_panic(expected = "quorum 9 of 8")]
    fn impossible_quorum_is_a_bug() {
        let _ = Tally::new(QuorumOp::WriteData, 9, 8);
    }
}
