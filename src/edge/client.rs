//! Who the client is: its address (for limits and logs) and whether it reached the
//! edge over https. Forwarded headers are believed only from `limits.trusted_proxies`.

use std::net::IpAddr;

use pingora::prelude::Session;

use crate::config::Cidr;

/// The client of a request, as far as fanfare believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address; the peer's unless a trusted proxy forwarded another.
    pub ip: Option<IpAddr>,
    /// Whether it used https (only a trusted proxy can say so: fanfare serves http).
    pub https: bool,
}

impl Client {
    /// The client of `session`'s request.
    pub fn of(session: &Session, trusted: &[Cidr]) -> Client {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(std::net::SocketAddr::ip);
        let header = |name: &str| {
            session
                .req_header()
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",")
        };
        Client::from_parts(
            peer,
            &header("x-forwarded-for"),
            &header("x-forwarded-proto"),
            trusted,
        )
    }

    /// The client, given the peer address and the forwarded header values.
    pub fn from_parts(
        peer: Option<IpAddr>,
        forwarded_for: &str,
        forwarded_proto: &str,
        trusted: &[Cidr],
    ) -> Client {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
        let Some(peer) = peer.filter(|p| is_trusted(*p)) else {
            return Client {
                ip: peer,
                https: false,
            };
        };
        // The right-most address that is not a trusted proxy: everything to its left
        // was written by someone fanfare does not trust.
        let mut ip = peer;
        for hop in forwarded_for
            .rsplit(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    ip = addr;
                    if !is_trusted(addr) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let proto = forwarded_proto.split(',').next().unwrap_or("").trim();
        Client {
            ip: Some(ip),
            https: proto.eq_ignore_ascii_case("https"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let untrusted = Client::from_parts(Some(ip("203.0.113.9")), "1.2.3.4", "https", &trusted);
        assert_eq!(
            untrusted,
            Client {
                ip: Some(ip("203.0.113.9")),
                https: false
            }
        );
        let via_lb = Client::from_parts(
            Some(ip("10.0.0.2")),
            "6.6.6.6, 198.51.100.7, 10.0.0.9",
            "https",
            &trusted,
        );
        assert_eq!(
            via_lb,
            Client {
                ip: Some(ip("198.51.100.7")),
                https: true
            }
        );
        let no_xff = Client::from_parts(Some(ip("10.0.0.2")), "", "", &trusted);
        assert_eq!(
            no_xff,
            Client {
                ip: Some(ip("10.0.0.2")),
                https: false
            }
        );
        let garbage = Client::from_parts(Some(ip("10.0.0.2")), "not-an-ip", "", &trusted);
        assert_eq!(garbage.ip, Some(ip("10.0.0.2")));
        let none = Client::from_parts(Some(ip("10.0.0.2")), "1.2.3.4", "https", &[]);
        assert_eq!(
            none,
            Client {
                ip: Some(ip("10.0.0.2")),
                https: false
            }
        );
    }
}
