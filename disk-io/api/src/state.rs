//! [`HealthState`]: what a disk's health machine says about it, as callers
//! see it (the machine itself lives in `disk-io-health`).

use serde::{Deserialize, Serialize};

/// Health of one disk, local or remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum HealthState {
    /// Serving.
    Online = 0,
    /// Serving, but recent operations failed or missed their deadline.
    Suspect = 1,
    /// Out: calls fail fast until probes succeed.
    Faulty = 2,
    /// Out, and being probed.
    Probing = 3,
}

impl HealthState {
    /// Every state, in gauge order.
    pub const ALL: [HealthState; 4] = [
        HealthState::Online,
        HealthState::Suspect,
        HealthState::Faulty,
        HealthState::Probing,
    ];

    /// The state a gauge value stands for (`None` for anything else).
    pub fn from_u8(v: u8) -> Option<HealthState> {
        HealthState::ALL.get(v as usize).copied()
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Online => "online",
            HealthState::Suspect => "suspect",
            HealthState::Faulty => "faulty",
            HealthState::Probing => "probing",
        }
    }

    /// Whether callers are let through.
    pub fn admits(self) -> bool {
        matches!(self, HealthState::Online | HealthState::Suspect)
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_values_round_trip() {
        for s in HealthState::ALL {
            assert_eq!(HealthState::from_u8(s as u8), Some(s));
        }
        assert_eq!(HealthState::from_u8(4), None);
    }
}
