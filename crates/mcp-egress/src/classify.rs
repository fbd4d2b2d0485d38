//! Which addresses reach the gateway's own host or network rather than the
//! internet. [`classify`] is the only place that decides it: the gateway
//! hands its answer to the network policy (`input.request.network.
//! addresses`), and the proxy refuses every address that is not
//! [`AddrClass::Public`] unless the decision for that connection grants
//! exactly that address (see [`crate::ungranted_internal`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of one resolved address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Routable on the internet.
    Public,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT, RFC 6598).
    SharedCgnat,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// Cloud instance metadata: `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
    /// `fc00::/7` (unique local).
    UniqueLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Special-purpose ranges that are not the internet either:
    /// `192.0.0/24`, documentation, benchmarking `198.18/15`, `240/4`,
    /// `2001::/23` (Teredo and other IETF assignments), `2001:db8::/32`,
    /// discard `100::/64`, the local-use NAT64 prefix `64:ff9b:1::/48`.
    Reserved,
}

impl AddrClass {
    /// Everything but [`AddrClass::Public`].
    pub fn is_internal(self) -> bool {
        self != AddrClass::Public
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::SharedCgnat => "cgnat",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Metadata => "metadata",
            AddrClass::UniqueLocal => "unique-local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an IPv6 address carries the IPv4 address it was classified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// `::ffff:a.b.c.d` (IPv4-mapped).
    Mapped,
    /// `::a.b.c.d` (IPv4-compatible, deprecated).
    Compatible,
    /// `::ffff:0:a.b.c.d` (SIIT, IPv4-translated).
    Translated,
    /// `64:ff9b::a.b.c.d` (NAT64 well-known prefix, RFC 6052).
    Nat64,
    /// `64:ff9b:1::/48` (NAT64 local-use prefix, RFC 8215), read as a /96
    /// prefix: the IPv4 address in the last 32 bits.
    Nat64LocalUse,
    /// `2002:AABB:CCDD::/48` (6to4).
    SixToFour,
    /// `2001:0:…` (Teredo): the client's address, bit-inverted in the last
    /// 32 bits.
    Teredo,
}

impl Embedding {
    pub fn as_str(self) -> &'static str {
        match self {
            Embedding::Mapped => "v4-mapped",
            Embedding::Compatible => "v4-compatible",
            Embedding::Translated => "siit",
            Embedding::Nat64 => "nat64",
            Embedding::Nat64LocalUse => "nat64 local-use",
            Embedding::SixToFour => "6to4",
            Embedding::Teredo => "teredo",
        }
    }
}

/// What [`classify`] says about one address: its class and, for an IPv6
/// address that embeds an IPv4 one, which form and which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Classification {
    pub class: AddrClass,
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl Classification {
    pub fn is_internal(self) -> bool {
        self.class.is_internal()
    }

    /// The form, named for people and policies: `nat64 of 127.0.0.1`;
    /// `None` for an address that embeds nothing.
    pub fn form(self) -> Option<String> {
        self.embedded
            .map(|(how, v4)| format!("{} of {v4}", how.as_str()))
    }
}

impl fmt::Display for Classification {
    /// `loopback`, or `loopback, nat64 of 127.0.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.form() {
            Some(form) => write!(f, "{}, {form}", self.class),
            None => write!(f, "{}", self.class),
        }
    }
}

/// Classifies `ip`. IPv6 addresses that embed an IPv4 address (mapped,
/// compatible, SIIT, NAT64, 6to4, Teredo) are classified by the embedded
/// address, since that is where a packet to them ends up; the forms that
/// are never the internet themselves (NAT64 local-use, Teredo) are at
/// least [`AddrClass::Reserved`].
pub fn classify(ip: IpAddr) -> Classification {
    match ip {
        IpAddr::V4(v4) => Classification {
            class: classify_v4(v4),
            embedded: None,
        },
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return AddrClass::Metadata;
    }
    if ip.is_broadcast() {
        return AddrClass::Broadcast;
    }
    match (a, b, c) {
        (0, _, _) => AddrClass::Unspecified,
        (127, _, _) => AddrClass::Loopback,
        (10, _, _) => AddrClass::Private,
        (172, 16..=31, _) => AddrClass::Private,
        (192, 168, _) => AddrClass::Private,
        (100, 64..=127, _) => AddrClass::SharedCgnat,
        (169, 254, _) => AddrClass::LinkLocal,
        (224..=239, _, _) => AddrClass::Multicast,
        (240..=255, _, _) => AddrClass::Reserved,
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddrClass::Reserved,
        (198, 18..=19, _) => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Classification {
    let plain = |class| Classification {
        class,
        embedded: None,
    };
    let seg = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return plain(AddrClass::Metadata);
    }
    if ip.is_unspecified() {
        return plain(AddrClass::Unspecified);
    }
    if ip.is_loopback() {
        return plain(AddrClass::Loopback);
    }
    if let Some((how, v4)) = embedded_v4(ip) {
        let class = match (classify_v4(v4), how) {
            // These prefixes are not the internet whatever they carry.
            (AddrClass::Public, Embedding::Nat64LocalUse | Embedding::Teredo) => {
                AddrClass::Reserved
            }
            (class, _) => class,
        };
        return Classification {
            class,
            embedded: Some((how, v4)),
        };
    }
    plain(match seg[0] {
        0xfc00..=0xfdff => AddrClass::UniqueLocal,
        0xfe80..=0xfebf => AddrClass::LinkLocal,
        // Deprecated site-local: not the internet either.
        0xfec0..=0xfeff => AddrClass::Reserved,
        0xff00..=0xffff => AddrClass::Multicast,
        // IETF protocol assignments (2001::/23) and documentation.
        0x2001 if seg[1] < 0x0200 || seg[1] == 0x0db8 => AddrClass::Reserved,
        0x0100 if seg[1..4] == [0, 0, 0] => AddrClass::Reserved,
        // Everything else below 2000::/3 is unassigned or special.
        s if !(0x2000..=0x3fff).contains(&s) => AddrClass::Reserved,
        _ => AddrClass::Public,
    })
}

/// The IPv4 address a v6 address carries, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match seg {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some((Embedding::Mapped, v4(hi, lo))),
        // `::` and `::1` were classified before.
        [0, 0, 0, 0, 0, 0, hi, lo] => Some((Embedding::Compatible, v4(hi, lo))),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some((Embedding::Translated, v4(hi, lo))),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((Embedding::Nat64, v4(hi, lo))),
        [0x64, 0xff9b, 1, .., hi, lo] => Some((Embedding::Nat64LocalUse, v4(hi, lo))),
        [0x2002, hi, lo, ..] => Some((Embedding::SixToFour, v4(hi, lo))),
        [0x2001, 0, .., hi, lo] => Some((Embedding::Teredo, v4(!hi, !lo))),
        _ => None,
    }
}
