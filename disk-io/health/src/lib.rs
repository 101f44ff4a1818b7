//! # disk-io-health
//!
//! The health of one disk, local or remote:
//!
//! ```text
//!   Online ──fault──▶ Suspect ──N faults, no progress──▶ Faulty ◀──probe fails──┐
//!     ▲  ◀──success──────┘                                │ backoff+jitter      │
//!     │            trip / hold (zombies, stall, peer) ───▶│                     │
//!     └──────────── M consecutive probe successes ◀── Probing ───────────────────┘
//! ```
//!
//! * [`Machine`] is the state machine itself: a pure function of events and
//!   the instants they happen at (an injected clock and a seeded jitter
//!   source), with no I/O, no channels, no metrics and no locks, so it is
//!   tested deterministically without sleeping.
//! * [`Health`] is the handle a disk shares between callers and its monitor:
//!   the machine behind a short mutex, the state in an atomic for the
//!   fail-fast check, the real clock, a `watch` channel for subscribers and
//!   [`Observer`]s for whatever wants every transition (metrics:
//!   [`MetricsObserver`]).
//!
//! **Invariant:** Faulty and Probing disks fail every caller fast with
//! [`DiskError::Faulty`]; only the monitor's probe reaches the device.
//!
//! **Invariant:** a fault alone makes a disk Suspect. It turns Faulty after
//! `faulty_after_misses` consecutive faults *and* nothing having succeeded
//! for `no_progress_window`: a busy disk that is slow on one op but still
//! completes others is not taken out (RustFS issues #2686, #2601).
#![forbid(unsafe_code)]

mod config;
mod machine;
mod observe;
mod shared;

pub use config::HealthConfig;
pub use disk_io_api::HealthState;
pub use machine::{Event, Machine, Transition};
pub use observe::{MetricsObserver, Observer, STATE, TRANSITIONS};
pub use shared::Health;

use disk_io_api::DiskError;
