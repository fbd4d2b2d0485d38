//! The egress of `network: restricted` sandboxes.
//!
//! A restricted sandbox keeps an empty network namespace (loopback only).
//! Its only way out is [`EgressProxy`]: a proxy the gateway serves on a
//! per-task unix socket that is bind-mounted into the sandbox, where the
//! in-sandbox [`forward`]er relays `127.0.0.1:<port>` to it and runs the
//! command with `HTTP(S)_PROXY`/`ALL_PROXY` pointing there. The proxy speaks
//! HTTP `CONNECT`, plain absolute-form HTTP forwarding and SOCKS5 (no auth,
//! `CONNECT`, domain/IPv4/IPv6 addresses) on the same socket.
//!
//! Invariants:
//! - every connection is resolved in the gateway ([`Resolver`]), every
//!   resolved address is classified ([`classify`]), and the gateway's
//!   [`Decider`] is asked with host, port, protocol and addresses before
//!   anything is opened; what is not allowed is refused (HTTP 403, SOCKS
//!   reply `0x02`);
//! - an address that is not public (loopback, private, link-local,
//!   metadata, CGNAT, unique-local, multicast, broadcast, reserved, and the
//!   mapped, compatible, SIIT, NAT64, 6to4 and Teredo forms of those) is
//!   refused unless the verdict grants exactly that address
//!   ([`Verdict::private`]); `allow` alone never opens one
//!   ([`ungranted_internal`], the guard). [`classify`] is the only judge of
//!   "internal", for the gateway's policy input and for the guard;
//! - the proxy connects only to an address it vetted, never resolves again
//!   (no DNS rebinding between the check and the connect);
//! - headers and greetings are bounded in size and time; one HTTP request
//!   per forwarded connection: the upstream gets that request's head and
//!   body as framed, never what the client sends after it;
//! - every decision is logged (`tracing`, target `mcp_egress`) and handed
//!   back to the decider ([`Decider::record`]), and so is every request
//!   refused before it could be decided ([`Decider::reject`]).

#![forbid(unsafe_code)]

mod body;
mod classify;
mod decide;
mod error;
pub mod forward;
mod host;
mod proxy;

pub use classify::{AddrClass, Classification, Embedding, classify};
pub use decide::{
    ConnectRequest, Connector, Decider, Outcome, Protocol, ProxyKind, Rejected, Resolver,
    StaticResolver, SystemResolver, TcpConnector, Verdict, ungranted_internal,
};
pub use error::EgressError;
pub use host::{Host, parse_host};
pub use proxy::{EgressProxy, ProxyContext, ProxySettings};

#[cfg(test)]
mod tests;
