//! What a handshake grants: the subject patterns a connection may subscribe and
//! publish to, the claims that fill subject templates, and when it expires.

use std::collections::HashMap;
use std::time::SystemTime;

/// What an authorized connection may do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Subject patterns it may subscribe to.
    pub subscribe: Vec<String>,
    /// Subject patterns it may publish to.
    pub publish: Vec<String>,
    /// String claims by placeholder name (`claims.sub` → `u1`).
    pub claims: HashMap<String, String>,
    /// When the credential expires; the connection is closed then.
    pub expires: Option<SystemTime>,
}

/// What one connection may do, from its grant and its route.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// Subject patterns it may subscribe to at run time.
    pub subscribe: Vec<String>,
    /// Subject patterns it may publish to.
    pub publish: Vec<String>,
    /// When its credential expires (the connection is closed then).
    pub expires: Option<tokio::time::Instant>,
}
