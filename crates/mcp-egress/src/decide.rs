//! What the proxy asks the gateway, and how names are resolved.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;

use async_trait::async_trait;

use crate::classify::AddrClass;

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
    /// Every address `host` resolved to, with its class; the proxy connects
    /// only to one of these.
    pub resolved: Vec<(IpAddr, AddrClass)>,
    /// Whether `host` was an address literal rather than a name.
    pub literal: bool,
    pub task_id: String,
    pub principal: String,
}

impl ConnectRequest {
    /// The resolved addresses that are not public.
    pub fn internal(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.resolved
            .iter()
            .filter(|(_, c)| c.is_internal())
            .map(|(ip, _)| *ip)
    }
}

/// The decider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// Whether addresses that are not public may be reached. Without it the
    /// proxy refuses them even when `allow` is true.
    pub allow_internal: bool,
    /// Why not, when `allow` is false.
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict {
            allow: false,
            allow_internal: false,
            reasons: vec![reason.into()],
        }
    }
}

/// The final word on a connection, as the proxy enforced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// The vetted address connected to, when allowed.
    pub connected_to: Option<IpAddr>,
    pub reasons: Vec<String>,
    /// Whether [`Decider::decide`] was asked (false when the name did not
    /// resolve, so nothing could be decided).
    pub decided: bool,
}

/// The gateway's side: decides each connection (policy, obligations) and
/// records the outcome (decision log).
#[async_trait]
pub trait Decider: Send + Sync + fmt::Debug {
    /// Decides `req`. Must not fail open: an internal error is a deny.
    async fn decide(&self, req: &ConnectRequest) -> Verdict;
    /// Records what the proxy did with `req` (called once per connection
    /// that got as far as a destination, allowed or not).
    async fn record(&self, req: &ConnectRequest, outcome: &Outcome);
}

/// Turns a name into addresses.
#[async_trait]
pub trait Resolver: Send + Sync + fmt::Debug {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<IpAddr>>;
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
