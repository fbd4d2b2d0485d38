//! Destination host names as clients send them, validated.

use std::fmt;
use std::net::IpAddr;

/// Longest DNS name accepted.
const MAX_NAME: usize = 253;

/// A destination: a DNS name (lower case, no trailing dot) or a literal
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parses a host as found in a CONNECT target, an absolute URI or a SOCKS5
/// domain: an IPv6 literal may come in brackets; a name must be LDH labels
/// of 1-63 characters (underscores tolerated), 253 characters at most.
/// Anything else (spaces, `@`, percent escapes, empty labels) is refused, so
/// a look-alike spelling cannot slip past the policy's host match.
pub fn parse_host(raw: &str) -> Option<Host> {
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(Host::Ip(ip));
    }
    if unbracketed.len() != raw.len() {
        return None;
    }
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // All-numeric names ("1.2.3", "0x7f.1") are address spellings some
    // resolvers accept; refuse them rather than guess.
    let numeric = name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"));
    (ok && !numeric).then_some(Host::Name(name))
}
