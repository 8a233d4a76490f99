//! Admission: from a matched route, its path parameters and the handshake's grant, the
//! subjects a new connection subscribes to and what it may do later. Refusals here are
//! about the subjects (injection, a grant that does not cover a path subject).

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::grant::{Grant, Permissions};
use crate::edge::respond::Refusal;
use crate::edge::route::Route;
use crate::metrics::Metrics;
use crate::routing::path::Params;
use crate::routing::subject::{self, CLAIM_PREFIX, SubjectError};

/// Everything the handshake decided, handed to the transport.
pub struct Admitted {
    /// The route's subjects for this connection.
    pub subjects: Vec<String>,
    /// What it may do at run time.
    pub permissions: Permissions,
    /// Raw mode: the subject its frames are published to.
    pub publish_to: Option<String>,
}

/// Builds the subjects and permissions of a connection from the path and the grant.
pub fn admit(
    route: &Route,
    params: Params,
    grant: Grant,
    metrics: &Metrics,
) -> Result<Admitted, Refusal> {
    let reject = |reason: &'static str| metrics.rejected.with_label_values(&[reason]).inc();
    let mut values = params;
    values.extend(grant.claims);
    let subjects = route.subjects_with_origin(&values).map_err(|e| match &e {
        SubjectError::Forbidden { name, .. }
        | SubjectError::Empty(name)
        | SubjectError::TooLong(name)
        | SubjectError::Missing(name)
            if name.starts_with(CLAIM_PREFIX) =>
        {
            reject("invalid_claim");
            Refusal::new(StatusCode::FORBIDDEN, "invalid_claim", e.to_string())
        }
        _ => Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    })?;
    let publish_to = route
        .publish_to(&values)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let (allow_sub, allow_pub) = route.allowances(&values);
    let mut subscribe = grant.subscribe;
    subscribe.extend(allow_sub);
    let mut publish = grant.publish;
    publish.extend(allow_pub);
    for (subject, from_path) in &subjects {
        if !route.is_public()
            && *from_path
            && !subscribe.iter().any(|p| subject::covers(p, subject))
        {
            reject("forbidden");
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("not allowed to subscribe to {subject}"),
            ));
        }
    }
    // Bounded by MAX_EXPIRY_SECS, so this cannot overflow; an instant past what the
    // clock holds would mean "never" within this process's life anyway.
    let expires = grant.expires.and_then(|at| {
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now().checked_add(left)
    });
    Ok(Admitted {
        subjects: subjects.into_iter().map(|(s, _)| s).collect(),
        permissions: Permissions {
            subscribe,
            publish,
            expires,
        },
        publish_to,
    })
}
