//! What can go wrong passing a request on, and what the client gets for it.

use http::StatusCode;

use crate::edge::respond::Refusal;

/// Why a request passed on did not end well.
pub(super) enum Failure {
    /// Nothing reached the client yet: it gets this refusal (and the log the reason).
    Refuse(Refusal, String),
    /// The client failed, or the response broke after the head of this status (0:
    /// before any head): the connection closes.
    Broken(u16),
}

/// An error reaching the app.
pub(super) struct UpError {
    pub(super) kind: UpKind,
    pub(super) why: String,
}

#[derive(PartialEq, Eq)]
pub(super) enum UpKind {
    /// The app closed the connection.
    Closed,
    /// A socket error.
    Io,
    /// A timeout.
    Timeout,
    /// The client hung up while the app worked: the request is abandoned.
    ClientGone,
}

impl UpError {
    pub(super) fn io(what: &str, e: &std::io::Error) -> UpError {
        UpError {
            kind: UpKind::Io,
            why: format!("{what}: {e}"),
        }
    }

    pub(super) fn timed_out(what: &str) -> UpError {
        UpError {
            kind: UpKind::Timeout,
            why: format!("{what} timed out"),
        }
    }

    pub(super) fn failure(self) -> Failure {
        if self.kind == UpKind::ClientGone {
            return Failure::Broken(0);
        }
        let refusal = if self.kind == UpKind::Timeout {
            Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the app did not answer in time",
            )
        } else {
            unavailable()
        };
        Failure::Refuse(refusal, self.why)
    }
}

pub(super) fn unavailable() -> Refusal {
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "the app is not reachable",
    )
}
