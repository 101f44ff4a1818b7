//! A linearizability checker for one key's history, the key seen as a
//! register (PUT writes a value, DELETE writes "absent", GET reads).
//!
//! Wing & Gong's search with Lowe's memoisation (the approach Porcupine
//! takes), written here: depth-first over which operation takes effect
//! next, among those whose call precedes every still-unlinearized
//! operation's return; a state (operations done, register value) seen
//! before is not explored again. An operation whose outcome is unknown (a
//! timeout, a 5xx, a client killed) has no return: it may take effect at
//! any point after its call, or never.

use std::collections::HashSet;

/// What an operation did to or saw in the register (`None` = absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A PUT of value `Some(v)`, or a DELETE (`None`).
    Write(Option<u64>),
    /// A GET (or HEAD) that returned this value.
    Read(Option<u64>),
}

/// One operation of the history; times in any monotonic unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Invocation time.
    pub call: u64,
    /// Response time; `None` when the outcome is unknown (only writes may
    /// be unknown: a read with no answer says nothing and is left out).
    pub ret: Option<u64>,
    /// What it did.
    pub action: Action,
}

/// The verdict on one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A total order exists; `ops` operations were checked.
    Linearizable {
        /// Operations in the history.
        ops: usize,
    },
    /// None exists.
    NotLinearizable {
        /// Operations in the history.
        ops: usize,
    },
    /// The search passed `budget` states without a verdict.
    Undecided {
        /// States explored.
        states: usize,
    },
}

/// Check `ops` against a register starting at `initial`, exploring at most
/// `budget` states.
pub fn check(ops: &[Op], initial: Option<u64>, budget: usize) -> Verdict {
    for o in ops {
        assert!(
            o.ret.is_some() || matches!(o.action, Action::Write(_)),
            "a read with no answer is not part of the history"
        );
        assert!(
            o.ret.is_none_or(|r| r >= o.call),
            "returned before called: {o:?}"
        );
    }
    let n = ops.len();
    let mut s = Search {
        ops,
        seen: HashSet::new(),
        budget,
        states: 0,
    };
    let mut done = vec![false; n];
    match s.dfs(&mut done, initial) {
        Some(true) => Verdict::Linearizable { ops: n },
        Some(false) => Verdict::NotLinearizable { ops: n },
        None => Verdict::Undecided { states: s.states },
    }
}

struct Search<'a> {
    ops: &'a [Op],
    seen: HashSet<(Vec<bool>, Option<u64>)>,
    budget: usize,
    states: usize,
}

impl Search<'_> {
    /// `Some(true)`: the rest linearizes from here; `None`: out of budget.
    fn dfs(&mut self, done: &mut Vec<bool>, value: Option<u64>) -> Option<bool> {
        // Every operation with a response taken effect: the rest (unknown
        // outcomes) may simply never have happened.
        if self
            .ops
            .iter()
            .zip(done.iter())
            .all(|(o, d)| *d || o.ret.is_none())
        {
            return Some(true);
        }
        if !self.seen.insert((done.clone(), value)) {
            return Some(false);
        }
        self.states += 1;
        if self.states > self.budget {
            return None;
        }
        // The next to take effect must be called before the earliest
        // response among those not yet taken effect.
        let horizon = self
            .ops
            .iter()
            .zip(done.iter())
            .filter(|(_, d)| !**d)
            .filter_map(|(o, _)| o.ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if done[i] || self.ops[i].call > horizon {
                continue;
            }
            let next = match self.ops[i].action {
                Action::Write(v) => v,
                Action::Read(v) if v == value => value,
                Action::Read(_) => continue,
            };
            done[i] = true;
            let r = self.dfs(done, next);
            done[i] = false;
            match r {
                Some(true) => return Some(true),
                Some(false) => {}
                None => return None,
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: u64, v: Option<u64>) -> Op {
        Op {
            call,
            ret: Some(ret),
            action: Action::Write(v),
        }
    }

    fn r(call: u64, ret: u64, v: Option<u64>) -> Op {
        Op {
            call,
            ret: Some(ret),
            action: Action::Read(v),
        }
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        let h = [
            w(0, 10, Some(1)),
            w(1, 11, Some(2)),
            r(12, 13, Some(1)),
            r(14, 15, Some(1)),
        ];
        assert_eq!(check(&h, None, 10_000), Verdict::Linearizable { ops: 4 });
    }

    #[test]
    fn a_planted_stale_read_is_caught() {
        // 2 acknowledged after 1; a read that starts later sees 1.
        let h = [w(0, 1, Some(1)), w(2, 3, Some(2)), r(4, 5, Some(1))];
        assert_eq!(check(&h, None, 10_000), Verdict::NotLinearizable { ops: 3 });
        // Flip-flopping reads of two concurrent writes are caught too.
        let h = [
            w(0, 20, Some(1)),
            w(0, 20, Some(2)),
            r(1, 2, Some(1)),
            r(3, 4, Some(2)),
            r(5, 6, Some(1)),
        ];
        assert_eq!(check(&h, None, 10_000), Verdict::NotLinearizable { ops: 5 });
    }

    #[test]
    fn a_planted_lost_write_is_caught() {
        // Acknowledged, then read as absent with no DELETE.
        let h = [w(0, 1, Some(7)), r(2, 3, None)];
        assert_eq!(check(&h, None, 10_000), Verdict::NotLinearizable { ops: 2 });
        // Acknowledged, then the previous value comes back.
        let h = [
            w(0, 1, Some(1)),
            w(2, 3, Some(2)),
            r(4, 5, Some(2)),
            r(6, 7, Some(1)),
        ];
        assert_eq!(check(&h, None, 10_000), Verdict::NotLinearizable { ops: 4 });
    }

    #[test]
    fn an_unknown_outcome_may_take_effect_late_or_never() {
        let unknown = Op {
            call: 0,
            ret: None,
            action: Action::Write(Some(9)),
        };
        // Never took effect.
        let h = [unknown, r(5, 6, None)];
        assert_eq!(check(&h, None, 10_000), Verdict::Linearizable { ops: 2 });
        // Took effect late.
        let h = [unknown, r(5, 6, None), r(7, 8, Some(9))];
        assert_eq!(check(&h, None, 10_000), Verdict::Linearizable { ops: 3 });
        // But once seen, it cannot be undone.
        let h = [unknown, r(5, 6, Some(9)), r(7, 8, None)];
        assert_eq!(check(&h, None, 10_000), Verdict::NotLinearizable { ops: 3 });
    }

    #[test]
    fn deletes_are_writes_of_absent() {
        let h = [
            w(0, 1, Some(1)),
            w(2, 3, None),
            r(4, 5, None),
            w(6, 7, Some(3)),
            r(8, 9, Some(3)),
        ];
        assert_eq!(check(&h, None, 10_000), Verdict::Linearizable { ops: 5 });
    }

    #[test]
    fn the_search_is_bounded() {
        // Many concurrent writes and a read no order explains.
        let mut h: Vec<Op> = (0..16).map(|i| w(0, 100, Some(i))).collect();
        h.push(r(101, 102, Some(99)));
        assert!(matches!(check(&h, None, 50), Verdict::Undecided { .. }));
    }
}
