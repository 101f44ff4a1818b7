//! [`Deadline`]: the absolute instant by which an operation must answer.

use std::time::{Duration, Instant};

/// An absolute instant on the monotonic clock by which an operation must
/// return `Ok` or an error.
///
/// Absolute rather than relative so that a deadline can be handed through
/// several layers (a composite operation, a remote call, a retry) without each
/// layer restarting the clock: every step spends from the same budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline `budget` from now. A budget too large to represent is
    /// clamped to about a century, which no caller can tell apart from "never".
    pub fn after(budget: Duration) -> Self {
        let now = Instant::now();
        Deadline(
            now.checked_add(budget)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)),
        )
    }

    /// A deadline at the given instant.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left until the deadline, zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of two deadlines: a sub-step never gets more time than its
    /// parent operation.
    pub fn min(self, other: Deadline) -> Deadline {
        if self.0 <= other.0 {
            self
        } else {
            other
        }
    }

    /// A deadline `fraction` (0.0..=1.0) of the way from now to `self`,
    /// used to keep part of a budget for a step that must run afterwards
    /// (for example, closing a file after a read).
    pub fn fraction(self, fraction: f64) -> Deadline {
        let fraction = fraction.clamp(0.0, 1.0);
        Deadline::after(self.remaining().mul_f64(fraction))
    }

    /// How far past the deadline `at` is (zero if `at` is before it).
    pub fn overshoot(self, at: Instant) -> Duration {
        at.saturating_duration_since(self.0)
    }

    /// A deadline `margin` earlier than this one (never earlier than now):
    /// what a step gets when part of the budget must stay with its caller,
    /// e.g. a server answering a remote call before the client gives up.
    pub fn shrink(self, margin: Duration) -> Deadline {
        let now = Instant::now();
        Deadline(self.0.checked_sub(margin).unwrap_or(now).max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_is_zero_after_expiry() {
        let d = Deadline::at(Instant::now() - Duration::from_millis(5));
        assert!(d.is_expired());
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[test]
    fn after_huge_budget_does_not_overflow() {
        let d = Deadline::after(Duration::MAX);
        assert!(!d.is_expired());
        assert!(d.remaining() > Duration::from_secs(3600 * 24 * 365));
    }

    #[test]
    fn min_picks_earlier_and_fraction_shrinks() {
        let a = Deadline::after(Duration::from_secs(1));
        let b = Deadline::after(Duration::from_secs(2));
        assert_eq!(a.min(b), a);
        assert_eq!(b.min(a), a);
        let half = b.fraction(0.5);
        assert!(half < b);
        assert!(half.remaining() <= Duration::from_secs(1));
    }

    #[test]
    fn shrink_keeps_a_margin_and_never_goes_into_the_past() {
        let d = Deadline::after(Duration::from_secs(10));
        let s = d.shrink(Duration::from_secs(3));
        assert!(s < d);
        assert!(s.remaining() <= Duration::from_secs(7));
        let tight = Deadline::after(Duration::from_millis(1)).shrink(Duration::from_secs(5));
        assert!(tight.is_expired());
        assert!(tight.instant() <= Instant::now());
    }

    #[test]
    fn overshoot_measures_lateness() {
        let now = Instant::now();
        let d = Deadline::at(now);
        assert_eq!(d.overshoot(now - Duration::from_millis(1)), Duration::ZERO);
        assert_eq!(
            d.overshoot(now + Duration::from_millis(3)),
            Duration::from_millis(3)
        );
    }
}
