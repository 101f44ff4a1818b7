//! Metric names of the node RPC (through the `metrics` facade; the node
//! picks the exporter). Same `diskio_` prefix as the disk layer's.

use crate::breaker::BreakerState;

/// Gauge: a peer's breaker, by peer (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "diskio_peer_breaker_state";
/// Counter: times a peer's breaker opened, by peer.
pub const BREAKER_OPENS: &str = "diskio_peer_breaker_opens_total";
/// Counter: heartbeats, by peer and result (`ok`, `missed`).
pub const HEARTBEATS: &str = "diskio_peer_heartbeats_total";
/// Counter: requests or connections the server refused, by reason
/// (`rejected`, `busy`, `connections`).
pub const REFUSED: &str = "diskio_rpc_refused_total";

pub(crate) fn breaker(peer: &str, state: BreakerState) {
    let v = match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    };
    metrics::gauge!(BREAKER_STATE, "peer" => peer.to_string()).set(v);
    if state == BreakerState::Open {
        metrics::counter!(BREAKER_OPENS, "peer" => peer.to_string()).increment(1);
    }
}

pub(crate) fn heartbeat(peer: &str, ok: bool) {
    let result = if ok { "ok" } else { "missed" };
    metrics::counter!(HEARTBEATS, "peer" => peer.to_string(), "result" => result).increment(1);
}

pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(REFUSED, "reason" => reason).increment(1);
}
