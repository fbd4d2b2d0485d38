//! What the proxy asks the gateway, and how names are resolved.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;

use crate::classify::Classification;

/// The transport of a connection. Only TCP is proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
        }
    }
}

/// How the sandboxed client asked for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `CONNECT host:port` (TLS and other tunnels).
    HttpConnect,
    /// `GET http://host/...` forwarded by the proxy.
    HttpForward,
    /// SOCKS5 `CONNECT`.
    Socks5,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::HttpConnect => "http-connect",
            ProxyKind::HttpForward => "http-forward",
            ProxyKind::Socks5 => "socks5",
        }
    }
}

/// One connection to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The name or address literal as asked (lower-cased, no trailing dot).
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub via: ProxyKind,
    /// Every address `host` resolved to, with its classification; the
    /// proxy connects only to one of these.
    pub resolved: Vec<(IpAddr, Classification)>,
    /// Whether `host` was an address literal rather than a name.
    pub literal: bool,
    pub task_id: String,
    pub principal: String,
}

impl ConnectRequest {
    /// The resolved addresses that are not public.
    pub fn internal(&self) -> impl Iterator<Item = (IpAddr, Classification)> + '_ {
        self.resolved
            .iter()
            .copied()
            .filter(|(_, c)| c.is_internal())
    }
}

/// The proxy's address guard: why `req` may not be connected, one reason
/// per resolved internal address that `private` does not name exactly.
/// Empty when every internal address is granted (or there is none).
///
/// The proxy applies it to every verdict, whatever `allow` says; a decider
/// may apply it too, so that what it records is what the proxy will do.
pub fn ungranted_internal(req: &ConnectRequest, private: &[IpAddr]) -> Vec<String> {
    req.internal()
        .filter(|(ip, _)| !private.contains(ip))
        .map(|(ip, c)| {
            format!(
                "destination {:?} resolves to internal address {ip} ({c}) without a private grant",
                req.host
            )
        })
        .collect()
}

/// The decider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// The internal addresses this connection is explicitly granted (the
    /// policy's private grants, for this port and protocol). The proxy
    /// refuses every other internal address even when `allow` is true.
    pub private: Vec<IpAddr>,
    /// Why not, when `allow` is false.
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict {
            allow: false,
            private: Vec::new(),
            reasons: vec![reason.into()],
        }
    }
}

/// The final word on a connection, as the proxy enforced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected to this vetted address.
    Connected(IpAddr),
    /// Allowed, but no vetted address accepted the connection.
    Unreachable(String),
    /// The decider refused.
    Denied(Vec<String>),
    /// The decider allowed, but the address guard refused: internal
    /// addresses without a private grant ([`ungranted_internal`]).
    Guarded(Vec<String>),
    /// The name did not resolve, so nothing could be decided.
    Unresolved(String),
}

impl Outcome {
    /// Whether the decider's verdict and the guard let the connection
    /// through (it may still have found no address that answered).
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Connected(_) | Outcome::Unreachable(_))
    }

    /// Whether [`Decider::decide`] was asked and its verdict stands as the
    /// proxy's decision (so a decider that recorded its verdict has
    /// recorded this outcome's decision already).
    pub fn decided(&self) -> bool {
        !matches!(self, Outcome::Guarded(_) | Outcome::Unresolved(_))
    }

    pub fn reasons(&self) -> Vec<String> {
        match self {
            Outcome::Connected(_) => Vec::new(),
            Outcome::Unreachable(why) | Outcome::Unresolved(why) => vec![why.clone()],
            Outcome::Denied(reasons) | Outcome::Guarded(reasons) => reasons.clone(),
        }
    }
}

/// A request the proxy refused before there was a destination to decide:
/// malformed, unsupported, too large or too slow (HTTP 400, 408, 431;
/// SOCKS5 replies `0x01`, `0x07`, `0x08`, no acceptable method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// How the client asked, when the proxy could tell; `None` for an HTTP
    /// request whose method it could not read.
    pub via: Option<ProxyKind>,
    /// The destination as far as it could be read (an HTTP authority, a
    /// SOCKS5 name), escaped and cut to [`Rejected::MAX_TARGET`] bytes;
    /// never a path or query, which may carry secrets.
    pub target: Option<String>,
    pub reason: String,
    pub task_id: String,
    pub principal: String,
}

impl Rejected {
    /// Longest `target` kept.
    pub const MAX_TARGET: usize = 256;

    /// `raw`, escaped (control characters, quotes and non-ASCII spelled
    /// out) and cut to [`Rejected::MAX_TARGET`] bytes.
    pub fn target_of(raw: &str) -> String {
        let mut out = String::new();
        for c in raw.chars().flat_map(char::escape_default) {
            if out.len() >= Self::MAX_TARGET {
                break;
            }
            out.push(c);
        }
        out
    }
}

/// The gateway's side: decides each connection (policy, obligations) and
/// records the outcome (decision log).
#[async_trait]
pub trait Decider: Send + Sync + fmt::Debug {
    /// Decides `req`. Must not fail open: an internal error is a deny.
    async fn decide(&self, req: &ConnectRequest) -> Verdict;
    /// Records what the proxy did with `req` (called once per connection
    /// that got as far as a destination, allowed or not). A decider that
    /// records its verdicts in `decide` has only [`Outcome::decided`]
    /// `false` ones left to record.
    async fn record(&self, req: &ConnectRequest, outcome: &Outcome);
    /// Records a request refused before it named a destination that could
    /// be decided.
    async fn reject(&self, rejected: &Rejected);
}

/// Turns a name into addresses.
#[async_trait]
pub trait Resolver: Send + Sync + fmt::Debug {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// Opens the upstream connection to a vetted address.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream>;
}

/// Connects over TCP to the address itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

#[async_trait]
impl Connector for TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        tokio::net::TcpStream::connect(addr).await
    }
}

/// The system resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        for a in tokio::net::lookup_host((name, port)).await? {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        Ok(out)
    }
}

/// A fixed name → addresses map (names not in it do not resolve); for
/// tests and for operators who pin names.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new(hosts: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> StaticResolver {
        StaticResolver {
            hosts: hosts
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, name: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        self.hosts.get(name).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{name} does not resolve"))
        })
    }
}
