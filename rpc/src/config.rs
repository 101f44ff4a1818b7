//! [`RpcConfig`]: every limit, bound and timing of the node RPC, client and
//! server, in one place (no literals in the code paths).

use std::time::Duration;

use disk_io_api::OpTimeouts;

/// The per-peer circuit breaker's thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive unavailable outcomes of data calls (unreachable, no
    /// answer by the deadline) that open the breaker.
    pub failure_threshold: u32,
    /// Consecutive missed heartbeats that open the breaker.
    pub heartbeat_misses: u32,
    /// How long the breaker stays open before it lets one probe through
    /// (half-open).
    pub open_for: Duration,
    /// Random extra time open, as a fraction of `open_for` (0.0..=1.0), so
    /// that many clients do not probe a returning peer in lock step.
    pub jitter: f64,
    /// A missed heartbeat does not count while the peer answered a data
    /// call this recently: a peer busy with bulk transfers (whose
    /// heartbeats queue behind them on a loaded machine) is alive.
    pub progress_window: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            heartbeat_misses: 2,
            open_for: Duration::from_millis(250),
            jitter: 0.2,
            progress_window: Duration::from_millis(300),
        }
    }
}

/// Limits and timings of the node RPC.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcConfig {
    // ---- server ------------------------------------------------------------
    /// Part of the caller's budget the server keeps for its answer to travel
    /// back: the local op runs under `budget - margin`.
    pub server_margin: Duration,
    /// The most the server grants any op of a class, whatever the client
    /// asks (a client's budget is never trusted beyond this).
    pub server_caps: OpTimeouts,
    /// Largest encoded message accepted or sent, either way.
    pub max_message_bytes: usize,
    /// Requests running at once on the server (all connections); past it
    /// the answer is `Busy`.
    pub max_in_flight: usize,
    /// Connections open at once; a connection past it is closed as soon
    /// as it is accepted.
    pub max_connections: usize,
    /// Requests running at once from one connection; past it `Busy`.
    pub max_in_flight_per_connection: usize,
    /// HTTP/2 streams a client may open on one connection (the transport's
    /// own bound, above the typed per-connection limit).
    pub max_streams_per_connection: u32,
    /// Open shard-writer sessions on the server; past it `Busy`.
    pub max_sessions: usize,
    /// A session with no call for this long is dropped (its file is left as
    /// written; the caller's `finish` never came).
    pub session_idle: Duration,
    /// How far a request's timestamp may be from the server's clock.
    pub replay_window: Duration,
    /// Nonces remembered for replay detection; when full of unexpired
    /// nonces the server answers `Busy` rather than forget one.
    pub nonce_cache_entries: usize,

    // ---- transport (both sides) ---------------------------------------------
    /// TCP_USER_TIMEOUT on data and liveness sockets: unacknowledged data
    /// older than this kills the connection.
    pub tcp_user_timeout: Duration,
    /// TCP keepalive idle time on data sockets.
    pub tcp_keepalive: Duration,
    /// HTTP/2 PING interval on data connections. Deliberately lax: a peer
    /// busy with a large transfer must not be declared dead by it; fast
    /// detection is the liveness channel's job.
    pub http2_keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered on a data connection.
    pub http2_keepalive_timeout: Duration,

    // ---- client ------------------------------------------------------------
    /// Longest TCP connect (also bounded by each call's deadline).
    pub connect_timeout: Duration,
    /// Period of the liveness heartbeat (its own connection per peer).
    pub heartbeat_interval: Duration,
    /// How long one heartbeat may take before it counts as missed.
    pub heartbeat_timeout: Duration,
    /// The per-peer breaker.
    pub breaker: BreakerConfig,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            server_margin: Duration::from_millis(20),
            server_caps: OpTimeouts::default(),
            // The local disk's `max_read_all` (16 MiB) plus framing.
            max_message_bytes: 17 << 20,
            max_in_flight: 512,
            max_connections: 1024,
            max_in_flight_per_connection: 128,
            max_streams_per_connection: 256,
            max_sessions: 1024,
            session_idle: Duration::from_secs(30),
            replay_window: Duration::from_secs(30),
            nonce_cache_entries: 1 << 18,
            tcp_user_timeout: Duration::from_secs(2),
            tcp_keepalive: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(10),
            http2_keepalive_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(250),
            breaker: BreakerConfig::default(),
        }
    }
}

impl RpcConfig {
    /// Why this configuration cannot work, if it cannot (names the field).
    pub fn check(&self) -> Result<(), String> {
        self.server_caps.check()?;
        let positive: [(&str, bool); 13] = [
            ("max_message_bytes", self.max_message_bytes > 0),
            ("max_connections", self.max_connections > 0),
            ("max_in_flight", self.max_in_flight > 0),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection > 0,
            ),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection > 0,
            ),
            ("max_sessions", self.max_sessions > 0),
            ("session_idle", !self.session_idle.is_zero()),
            ("replay_window", !self.replay_window.is_zero()),
            ("nonce_cache_entries", self.nonce_cache_entries > 0),
            ("connect_timeout", !self.connect_timeout.is_zero()),
            ("heartbeat_interval", !self.heartbeat_interval.is_zero()),
            ("heartbeat_timeout", !self.heartbeat_timeout.is_zero()),
            (
                "breaker.failure_threshold and heartbeat_misses",
                self.breaker.failure_threshold > 0 && self.breaker.heartbeat_misses > 0,
            ),
        ];
        for (name, ok) in positive {
            if !ok {
                return Err(format!("rpc.{name} must be > 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.breaker.jitter) {
            return Err("rpc.breaker.jitter must be in 0.0..=1.0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_zeroes_are_named() {
        assert_eq!(RpcConfig::default().check(), Ok(()));
        let c = RpcConfig {
            max_sessions: 0,
            ..RpcConfig::default()
        };
        assert!(c.check().unwrap_err().contains("max_sessions"));
        let c = RpcConfig {
            breaker: BreakerConfig {
                jitter: 2.0,
                ..BreakerConfig::default()
            },
            ..RpcConfig::default()
        };
        assert!(c.check().unwrap_err().contains("jitter"));
    }
}
