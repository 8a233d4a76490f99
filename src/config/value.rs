//! Value types of the config: addresses, the upstream URL, durations, and `${VAR}`
//! interpolation.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

// === Value types ===

/// A socket address, `host:port`, with `${VAR}` interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        let s = s
            .strip_prefix("localhost:")
            .map_or(s.clone(), |port| format!("127.0.0.1:{port}"));
        s.parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {s:?}: expected IP:PORT, e.g. 0.0.0.0:8080"
            ))
        })
    }
}

/// The app's URL: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            host: "127.0.0.1".to_string(),
            port: 3000,
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl Upstream {
    /// Parses `http://host[:port][/]`.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let err = || format!("invalid upstream {s:?}: expected http://HOST:PORT");
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            if s.starts_with("https://") {
                format!("upstream {s:?}: https upstreams are not supported yet; use http://")
            } else {
                err()
            }
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(err());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| err())?)
            }
            _ => (rest, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(err());
        }
        Ok(Upstream {
            host: host.to_string(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        Upstream::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An address range, `10.0.0.0/8`, `fd00::/8`, or a single address (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let err = || format!("invalid address range {s:?}: expected e.g. 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.trim(), None),
        };
        let net: std::net::IpAddr = addr.parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if ip.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        // Both sit in the top bits of a u128 (IPv4 in the top 32): compare the top
        // `prefix` bits.
        let shift = 128 - u32::from(self.prefix);
        shift == 128 || (bits(ip) >> shift) == (bits(self.net) >> shift)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A duration written with a unit: `500ms`, `25s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let err = || {
            format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h), e.g. 25s")
        };
        let n: u64 = num.parse().map_err(|_| err())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = interpolated(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

// === Interpolation ===

/// Deserializes a string and expands `${VAR}` / `${VAR:-default}` from the environment.
pub(super) fn interpolated<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = StringOrNumber::deserialize(d)?.0;
    interpolate(&raw, |k| std::env::var(k).ok()).map_err(serde::de::Error::custom)
}

pub(super) fn interpolated_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    interpolated(d).map(Some)
}

/// Accepts a YAML scalar that is a string or a number (`level: 3`, `grace: 25s`).
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`. A variable that is
/// unset and has no default is an error naming it (never its value).
pub fn interpolate(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {raw:?}"))?;
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable {name} is not set and has no default"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// === JSON Schema (`fanfare schema`) ===

/// A string in `literal` form (a regular expression), or one that uses `${VAR}`
/// interpolation (checked when the file is loaded).
fn string_schema(literal: &str, description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": format!("^(?:{literal}|.*\\$\\{{.*)$"),
        "description": description,
    })
}

macro_rules! string_schema {
    ($t:ty, $name:literal, $literal:literal, $description:literal) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                string_schema($literal, $description)
            }
        }
    };
}

string_schema!(
    Addr,
    "Address",
    r"\S+:[0-9]{1,5}",
    "IP:PORT (or localhost:PORT)"
);
string_schema!(Upstream, "Upstream", r"http://\S+", "http://HOST:PORT");
string_schema!(
    Cidr,
    "Cidr",
    r"[0-9a-fA-F:.]+(/[0-9]{1,3})?",
    "an address range, 10.0.0.0/8 or fd00::/8"
);
string_schema!(
    Dur,
    "Duration",
    r"[0-9]+(ms|s|m|h)",
    "a number and a unit: 500ms, 25s, 2m, 1h"
);
