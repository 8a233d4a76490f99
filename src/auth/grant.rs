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

/// The latest expiry fanfare accepts: the end of year 9999, in unix seconds. Anything
/// later is not a real expiry (and would overflow the clocks it is added to).
pub const MAX_EXPIRY_SECS: f64 = 253_402_300_799.0;

/// The expiry at unix time `secs` (fractions honoured); `None` when it is not a finite
/// time between 1970 and [`MAX_EXPIRY_SECS`].
pub fn expiry_at(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || !(0.0..=MAX_EXPIRY_SECS).contains(&secs) {
        return None;
    }
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries() {
        let at = |s: f64| {
            expiry_at(s).map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            })
        };
        assert_eq!(at(1_700_000_000.5), Some(1_700_000_000.5));
        assert_eq!(at(0.0), Some(0.0));
        for bad in [
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            18_446_744_073_709_551_615.0,
            9.3e18,
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
