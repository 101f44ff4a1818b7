//! [`Listener`] and [`AdminHandler`]: where a node's RPC server hands notifications from its
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

/// Serves operators' requests that reach a node over its RPC (the node
/// RPC's authentication covers them). Requests and replies are opaque
/// bytes here (the node defines their JSON); a handler answers every
/// request it understands, errors included, in its reply, and returns
/// `Err` only when it cannot answer at all.
#[async_trait::async_trait]
pub trait AdminHandler: Send + Sync {
    /// Answer `request` by `deadline`.
    async fn handle(&self, request: &[u8], deadline: crate::Deadline) -> crate::Result<Vec<u8>>;
}
