//! A namespace socket, and waiting on the queues of a session's sockets.

use std::collections::HashMap;
use std::sync::Arc;

use crate::hub::direct::Registration;
use crate::hub::{ClientQueue, Membership};
use crate::limits::Bucket;
use crate::transport::Conn;

/// One connected namespace: a fanfare connection of its own.
pub(super) struct Socket {
    pub(super) nsp: String,
    pub(super) queue: Arc<ClientQueue>,
    pub(super) _memberships: Vec<(String, Membership)>,
    pub(super) _registration: Registration,
    pub(super) conn: Arc<Conn>,
    pub(super) claims: HashMap<String, String>,
    pub(super) publish: Vec<String>,
    pub(super) bucket: Option<Box<Bucket>>,
}

/// The index of a socket whose queue has something to take (one socket, the common
/// case, is waited on without an allocation).
pub(super) async fn any_ready(sockets: &[Socket]) -> usize {
    if let [one] = sockets {
        one.queue.ready().await;
        return 0;
    }
    let waits = sockets.iter().map(|s| Box::pin(s.queue.ready()));
    futures::future::select_all(waits).await.1
}

/// Until a socket's queue is closed for a slow consumer.
pub(super) async fn any_closed(sockets: &[Socket]) {
    match sockets {
        [] => std::future::pending().await,
        [one] => one.queue.closed().await,
        _ => {
            let waits = sockets.iter().map(|s| Box::pin(s.queue.closed()));
            futures::future::select_all(waits).await;
        }
    }
}
