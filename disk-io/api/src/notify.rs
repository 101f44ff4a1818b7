//! [`Listener`]: where a node's RPC server hands notifications from its
//! peers ("the IAM user alice changed"). Notifications are hints: a
//! listener must not block (it runs on the server's request path) and may
//! drop what it cannot take; whatever a dropped hint would have refreshed,
//! a periodic reload refreshes later.

/// Receives peers' notifications.
pub trait Listener: Send + Sync {
    /// `topic` says what changed (e.g. `iam.user`), `key` which one.
    /// Returns whether the hint was taken (false: dropped, queue full).
    fn notify(&self, topic: &str, key: &str) -> bool;
}
