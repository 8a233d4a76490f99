//! Process-wide connection limits: total held connections, held connections per
//! client IP, and connections per IP that have not finished their first request head.
//! A slot is taken before the upgrade (past a limit: `429`) and released when the held
//! connection ends (the guard drops). IPv6 clients are counted per /64: one host
//! usually holds a whole /64, so counting single addresses would not limit it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::LimitsConfig;

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    pending: HashMap<IpAddr, usize>,
}

/// The connection limiter.
pub struct ConnectionLimits {
    // Atomics: a reload changes them under way (connections held past a lowered limit
    // stay; new ones are counted against it).
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    max_pending_per_ip: AtomicUsize,
    counts: Mutex<Counts>,
}

/// The address a client is counted under: itself for IPv4 (and IPv4-mapped IPv6),
/// its /64 for IPv6.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// A connection that has not yet sent a whole request head; dropping it (or calling
/// [`Pending::done`]) frees its place.
pub struct Pending {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Pending {
    /// The request head has arrived: the connection no longer counts as pending.
    pub fn done(&mut self) {
        if let Some(ip) = self.ip.take() {
            let mut c = self.limits.counts();
            if let Some(n) = c.pending.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.pending.remove(&ip);
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.done();
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections`.
    Total,
    /// `limits.max_connections_per_ip`.
    PerIp,
}

/// A held connection's slot; dropping it frees the slot.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    /// Limits from configuration.
    pub fn new(config: &LimitsConfig) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total: AtomicUsize::new(config.max_connections),
            max_per_ip: AtomicUsize::new(config.max_connections_per_ip),
            max_pending_per_ip: AtomicUsize::new(config.max_pending_per_ip),
            counts: Mutex::default(),
        })
    }

    /// Takes the limits of a reloaded configuration.
    pub fn update(&self, config: &LimitsConfig) {
        self.max_total
            .store(config.max_connections, Ordering::Relaxed);
        self.max_per_ip
            .store(config.max_connections_per_ip, Ordering::Relaxed);
        self.max_pending_per_ip
            .store(config.max_pending_per_ip, Ordering::Relaxed);
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a new connection from `ip` as pending until its first request head;
    /// `None` when that address has `limits.max_pending_per_ip` pending already.
    pub fn pending(self: &Arc<Self>, ip: IpAddr) -> Option<Pending> {
        let ip = limit_key(ip);
        let mut c = self.counts();
        let n = c.pending.entry(ip).or_insert(0);
        if *n >= self.max_pending_per_ip.load(Ordering::Relaxed) {
            return None;
        }
        *n += 1;
        Some(Pending {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Takes a slot for a connection from `ip`.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refused> {
        let ip = ip.map(limit_key);
        let mut c = self.counts();
        if c.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Refused::Total);
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip.load(Ordering::Relaxed) {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts();
        c.total -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

/// A token bucket for client publishes.
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket refilled at `rate` per second up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst.max(1)),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token; `false` when there is none.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(limit_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn pending_connections_per_ip_are_capped() {
        let limits = ConnectionLimits::new(&LimitsConfig {
            max_pending_per_ip: 2,
            ..LimitsConfig::default()
        });
        let a = "2001:db8::1".parse().unwrap();
        let b = "2001:db8::2".parse().unwrap();
        let p1 = limits.pending(a).unwrap();
        let mut p2 = limits.pending(b).unwrap();
        assert!(limits.pending(a).is_none(), "same /64");
        p2.done();
        let _p3 = limits.pending(a).unwrap();
        drop(p1);
        assert!(limits.pending(b).is_some());
    }

    #[test]
    fn limits_and_release() {
        let l = ConnectionLimits::new(&LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(Some(a)).unwrap();
        let _s2 = l.acquire(Some(a)).unwrap();
        assert_eq!(l.acquire(Some(a)).err(), Some(Refused::PerIp));
        let _s3 = l.acquire(Some(b)).unwrap();
        assert_eq!(l.acquire(Some(b)).err(), Some(Refused::Total));
        drop(s1);
        let again = l.acquire(Some(a));
        assert!(again.is_ok());
        assert_eq!(l.total(), 3);
        drop(again);
        assert_eq!(l.total(), 2);
    }
}
