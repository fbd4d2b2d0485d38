#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::forward::ForwardArgs;
use crate::*;

fn class(s: &str) -> AddrClass {
    classify(s.parse::<IpAddr>().unwrap()).class
}

#[test]
fn classifier_refuses_every_internal_range() {
    let cases = [
        ("127.0.0.1", AddrClass::Loopback),
        ("127.255.0.9", AddrClass::Loopback),
        ("::1", AddrClass::Loopback),
        ("0.0.0.0", AddrClass::Unspecified),
        ("0.1.2.3", AddrClass::Unspecified),
        ("::", AddrClass::Unspecified),
        ("10.0.0.1", AddrClass::Private),
        ("172.16.0.1", AddrClass::Private),
        ("172.31.255.255", AddrClass::Private),
        ("192.168.1.1", AddrClass::Private),
        ("100.64.0.1", AddrClass::SharedCgnat),
        ("100.127.255.255", AddrClass::SharedCgnat),
        ("169.254.1.1", AddrClass::LinkLocal),
        ("169.254.169.254", AddrClass::Metadata),
        ("fd00:ec2::254", AddrClass::Metadata),
        ("fe80::1", AddrClass::LinkLocal),
        ("febf::1", AddrClass::LinkLocal),
        ("fc00::1", AddrClass::UniqueLocal),
        ("fd12:3456::1", AddrClass::UniqueLocal),
        ("224.0.0.1", AddrClass::Multicast),
        ("239.255.255.250", AddrClass::Multicast),
        ("ff02::1", AddrClass::Multicast),
        ("255.255.255.255", AddrClass::Broadcast),
        ("240.0.0.1", AddrClass::Reserved),
        ("192.0.2.1", AddrClass::Reserved),
        ("198.18.0.1", AddrClass::Reserved),
        ("2001:db8::1", AddrClass::Reserved),
        // IPv6 forms that carry an internal IPv4 address.
        ("::ffff:127.0.0.1", AddrClass::Loopback),
        ("::ffff:169.254.169.254", AddrClass::Metadata),
        ("::ffff:10.1.2.3", AddrClass::Private),
        ("::10.1.2.3", AddrClass::Private),
        ("::ffff:0:192.168.0.1", AddrClass::Private),
        ("64:ff9b::a9fe:a9fe", AddrClass::Metadata),
        ("64:ff9b:1::7f00:1", AddrClass::Loopback),
        ("2002:7f00:1::", AddrClass::Loopback),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", AddrClass::Loopback),
        ("::ffff:0:a9fe:a9fe", AddrClass::Metadata),
        // Prefixes that are not the internet whatever they carry.
        ("64:ff9b:1::808:808", AddrClass::Reserved),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", AddrClass::Reserved),
        ("2001:2::1", AddrClass::Reserved),
    ];
    for (ip, want) in cases {
        assert_eq!(class(ip), want, "{ip}");
        assert!(class(ip).is_internal(), "{ip}");
    }
}

#[test]
fn classifier_passes_public_addresses() {
    for ip in [
        "1.1.1.1",
        "140.82.112.6",
        "172.32.0.1",
        "172.15.255.255",
        "100.128.0.1",
        "100.63.255.255",
        "169.253.1.1",
        "192.169.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
        "2001:200::1",
    ] {
        assert_eq!(class(ip), AddrClass::Public, "{ip}");
    }
}

#[test]
fn classifier_names_the_form_of_an_embedded_address() {
    let form = |s: &str| classify(s.parse::<IpAddr>().unwrap()).form();
    for (ip, want) in [
        ("::ffff:127.0.0.1", "v4-mapped of 127.0.0.1"),
        ("::7f00:1", "v4-compatible of 127.0.0.1"),
        ("::ffff:0:7f00:1", "siit of 127.0.0.1"),
        ("64:ff9b::7f00:1", "nat64 of 127.0.0.1"),
        ("64:ff9b:1::a9fe:a9fe", "nat64 local-use of 169.254.169.254"),
        ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254"),
        (
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "teredo of 127.0.0.1",
        ),
    ] {
        assert_eq!(form(ip).as_deref(), Some(want), "{ip}");
    }
    assert_eq!(form("127.0.0.1"), None);
    assert_eq!(form("fe80::1"), None);
    let c = classify("64:ff9b::7f00:1".parse().unwrap());
    assert_eq!(c.to_string(), "loopback, nat64 of 127.0.0.1");
}

#[test]
fn host_names_are_strict() {
    assert_eq!(
        parse_host("API.GitHub.com."),
        Some(Host::Name("api.github.com".to_owned()))
    );
    assert_eq!(parse_host("[::1]"), Some(Host::Ip("::1".parse().unwrap())));
    assert_eq!(
        parse_host("10.0.0.1"),
        Some(Host::Ip("10.0.0.1".parse().unwrap()))
    );
    for bad in [
        "",
        "a..b",
        "-a.com",
        "a b.com",
        "a@b.com",
        "a%2eb.com",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "[example.com]",
        "ex\u{430}mple.com",
    ] {
        assert_eq!(parse_host(bad), None, "{bad:?}");
    }
    assert_eq!(parse_host(&"a.".repeat(130)), None);
}

#[test]
fn forwarder_args_round_trip_and_reject_garbage() {
    let a = ForwardArgs {
        socket: "/run/egress.sock".into(),
        port: 3128,
        argv: vec!["/usr/bin/curl".into(), "--".into(), "-x".into()],
    };
    assert_eq!(ForwardArgs::parse(a.to_args()).unwrap(), a);
    let parse = |v: &[&str]| ForwardArgs::parse(v.iter().map(std::ffi::OsString::from));
    assert!(
        parse(&[
            "__egress-forward",
            "--socket",
            "/s",
            "--port",
            "0",
            "--",
            "x"
        ])
        .is_err()
    );
    assert!(parse(&["__egress-forward", "--socket", "/s", "--port", "1", "--"]).is_err());
    assert!(parse(&["__egress-forward", "--port", "1", "--", "x"]).is_err());
    assert!(parse(&["serve"]).is_err());
}

/// Allows what is in `allow` (host, port) and grants `private`, records
/// every outcome and every rejected request.
#[derive(Debug, Default)]
struct TestDecider {
    allow: Vec<(String, u16)>,
    private: Vec<IpAddr>,
    asked: Mutex<Vec<ConnectRequest>>,
    recorded: Mutex<Vec<(String, Outcome)>>,
    rejected: Mutex<Vec<Rejected>>,
}

#[async_trait]
impl Decider for TestDecider {
    async fn decide(&self, req: &ConnectRequest) -> Verdict {
        self.asked.lock().unwrap().push(req.clone());
        if self.allow.contains(&(req.host.clone(), req.port)) {
            Verdict {
                allow: true,
                private: self.private.clone(),
                reasons: Vec::new(),
            }
        } else {
            Verdict::deny(format!("{}:{} not allowed", req.host, req.port))
        }
    }
    async fn record(&self, req: &ConnectRequest, outcome: &Outcome) {
        self.recorded
            .lock()
            .unwrap()
            .push((req.host.clone(), outcome.clone()));
    }
    async fn reject(&self, rejected: &Rejected) {
        self.rejected.lock().unwrap().push(rejected.clone());
    }
}

/// Sends every connection to `to` and remembers the vetted address it
/// was asked for, so that tests can allow any address and send nothing off
/// the host.
#[derive(Debug)]
struct Redirect {
    to: std::net::SocketAddr,
    asked: Mutex<Vec<std::net::SocketAddr>>,
}

#[async_trait]
impl Connector for Redirect {
    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        self.asked.lock().unwrap().push(addr);
        tokio::net::TcpStream::connect(self.to).await
    }
}

struct Setup {
    socket: std::path::PathBuf,
    decider: Arc<TestDecider>,
    upstream_port: u16,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

/// An upstream HTTP server on 127.0.0.1 answering "hello <request line>".
async fn hello_upstream() -> u16 {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let body = format!("hello {}", text.lines().next().unwrap());
                let host = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("host:"))
                    .unwrap_or("")
                    .to_owned();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Seen-Host: {}\r\n\r\n{body}",
                    body.len(),
                    host.trim()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    });
    upstream_port
}

/// A proxy with the test names resolving as `hosts` says (plus
/// `good.test`, `rebind.test`, `evil.test` to 127.0.0.1 and `meta.test` to
/// 169.254.169.254), allowing `allow` on the upstream's port with the
/// private grants `private`, connecting with `connector` (plain TCP when
/// `None`).
async fn setup_with(
    allow: &[&str],
    private: &[&str],
    hosts: &[(&str, &str)],
    connector: Option<Arc<dyn Connector>>,
    upstream_port: u16,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("egress.sock");
    let decider = Arc::new(TestDecider {
        allow: allow
            .iter()
            .map(|h| ((*h).to_owned(), upstream_port))
            .collect(),
        private: private.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..TestDecider::default()
    });
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut names = vec![
        ("good.test".to_owned(), vec![lo]),
        ("rebind.test".to_owned(), vec![lo]),
        ("evil.test".to_owned(), vec![lo]),
        (
            "meta.test".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
    ];
    names.extend(
        hosts
            .iter()
            .map(|(name, ip)| ((*name).to_owned(), vec![ip.parse().unwrap()])),
    );
    let proxy = EgressProxy::bind(
        &socket,
        decider.clone(),
        Arc::new(StaticResolver::new(names)),
        connector.unwrap_or_else(|| Arc::new(TcpConnector)),
        ProxyContext {
            task_id: "t1".to_owned(),
            principal: "alice".to_owned(),
        },
        ProxySettings::default(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.serve(cancel.clone()));
    Setup {
        socket,
        decider,
        upstream_port,
        cancel,
        _dir: dir,
    }
}

/// [`setup_with`] over a "hello" upstream, plain TCP.
async fn setup(allow: &[&str], private: &[&str]) -> Setup {
    let port = hello_upstream().await;
    setup_with(allow, private, &[], None, port).await
}

async fn exchange(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    out
}

#[tokio::test]
async fn http_forward_and_connect_reach_an_allowed_destination() {
    let s = setup(&["good.test"], &["127.0.0.1"]).await;
    let port = s.upstream_port;
    let out = exchange(
        &s.socket,
        format!(
            "GET http://good.test:{port}/x?y HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: secret\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("hello GET /x?y HTTP/1.1"), "{text}");
    // The Host header is the vetted one, not the client's.
    assert!(
        text.contains(&format!("X-Seen-Host: Host: good.test:{port}")),
        "{text}"
    );

    let mut c = UnixStream::connect(&s.socket).await.unwrap();
    c.write_all(
        format!("CONNECT good.test:{port} HTTP/1.1\r\nHost: x\r\n\r\nGET /tunnel HTTP/1.1\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
        "{text}"
    );
    assert!(text.contains("hello GET /tunnel"), "{text}");
    let rec = s.decider.recorded.lock().unwrap().clone();
    assert_eq!(rec.len(), 2);
    assert!(
        rec.iter().all(
            |(h, o)| h == "good.test" && *o == Outcome::Connected("127.0.0.1".parse().unwrap())
        )
    );
    let asked = s.decider.asked.lock().unwrap().clone();
    assert_eq!(asked[0].via, ProxyKind::HttpForward);
    assert_eq!(asked[1].via, ProxyKind::HttpConnect);
    assert_eq!(asked[0].principal, "alice");
    assert_eq!(asked[0].task_id, "t1");
    s.cancel.cancel();
}

#[tokio::test]
async fn internal_addresses_are_refused_without_an_explicit_allowance() {
    // The decider allows the name, but it resolves to loopback.
    let s = setup(&["rebind.test", "meta.test"], &[]).await;
    let port = s.upstream_port;
    let out = exchange(
        &s.socket,
        format!("CONNECT rebind.test:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{text}");
    assert!(
        text.contains("resolves to internal address 127.0.0.1 (loopback) without a private grant"),
        "{text}"
    );
    let out = exchange(
        &s.socket,
        format!("GET http://meta.test:{port}/latest/meta-data HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("403") && text.contains("internal address 169.254.169.254 (metadata)"),
        "{text}"
    );
    let rec = s.decider.recorded.lock().unwrap().clone();
    assert_eq!(rec.len(), 2);
    assert!(
        rec.iter().all(|(_, o)| matches!(o, Outcome::Guarded(_))),
        "{rec:?}"
    );
    s.cancel.cancel();
}

/// Every internal form, one name each, as the issue lists them.
const INTERNAL_FORMS: [(&str, &str, &str); 22] = [
    (
        "nat64.test",
        "64:ff9b::7f00:1",
        "loopback, nat64 of 127.0.0.1",
    ),
    (
        "nat64-meta.test",
        "64:ff9b::a9fe:a9fe",
        "metadata, nat64 of 169.254.169.254",
    ),
    (
        "nat64-local.test",
        "64:ff9b:1::7f00:1",
        "loopback, nat64 local-use of 127.0.0.1",
    ),
    (
        "nat64-local-public.test",
        "64:ff9b:1::808:808",
        "reserved, nat64 local-use of 8.8.8.8",
    ),
    (
        "sixtofour.test",
        "2002:7f00:1::1",
        "loopback, 6to4 of 127.0.0.1",
    ),
    (
        "teredo.test",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "loopback, teredo of 127.0.0.1",
    ),
    (
        "compat.test",
        "::a9fe:a9fe",
        "metadata, v4-compatible of 169.254.169.254",
    ),
    (
        "siit.test",
        "::ffff:0:7f00:1",
        "loopback, siit of 127.0.0.1",
    ),
    (
        "mapped.test",
        "::ffff:127.0.0.1",
        "loopback, v4-mapped of 127.0.0.1",
    ),
    ("loopback.test", "127.0.0.2", "loopback"),
    ("private.test", "10.1.2.3", "private"),
    ("meta4.test", "169.254.169.254", "metadata"),
    ("linklocal.test", "169.254.1.1", "link-local"),
    ("linklocal6.test", "fe80::1", "link-local"),
    ("ula.test", "fd12:3456::1", "unique-local"),
    ("cgnat.test", "100.64.0.1", "cgnat"),
    ("zero.test", "0.0.0.0", "unspecified"),
    ("zero6.test", "::", "unspecified"),
    ("broadcast.test", "255.255.255.255", "broadcast"),
    ("multicast.test", "224.0.0.1", "multicast"),
    ("multicast6.test", "ff02::1", "multicast"),
    ("loopback6.test", "::1", "loopback"),
];

/// The guard is independent of the allow: a decider that allows every name
/// but grants nothing private opens none of the internal forms, and the
/// refusal is recorded with its reason; a grant of exactly the address
/// opens it (and a grant of another spelling of it does not).
#[tokio::test]
async fn an_allow_without_a_private_grant_opens_no_internal_form() {
    let upstream = hello_upstream().await;
    let hosts: Vec<(&str, &str)> = INTERNAL_FORMS.iter().map(|(n, ip, _)| (*n, *ip)).collect();
    let names: Vec<&str> = INTERNAL_FORMS.iter().map(|(n, _, _)| *n).collect();
    // Nothing leaves the host: every connection goes to the local upstream.
    let redirect = Arc::new(Redirect {
        to: ([127, 0, 0, 1], upstream).into(),
        asked: Mutex::new(Vec::new()),
    });
    let s = setup_with(&names, &[], &hosts, Some(redirect.clone()), upstream).await;
    for (name, ip, label) in INTERNAL_FORMS {
        let out = exchange(
            &s.socket,
            format!("CONNECT {name}:{upstream} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        let ip: IpAddr = ip.parse().unwrap();
        let reason = format!(
            "destination {name:?} resolves to internal address {ip} ({label}) without a private grant"
        );
        assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{name}: {text}");
        assert!(text.contains(&reason), "{name}: {text}");
        let rec = s.decider.recorded.lock().unwrap().clone();
        let last = rec.last().unwrap();
        assert_eq!(last.0, name);
        assert_eq!(last.1, Outcome::Guarded(vec![reason]));
    }
    assert!(redirect.asked.lock().unwrap().is_empty());
    s.cancel.cancel();

    for (name, ip, _) in INTERNAL_FORMS {
        let granted = setup_with(&[name], &[ip], &hosts, Some(redirect.clone()), upstream).await;
        let out = exchange(
            &granted.socket,
            format!("CONNECT {name}:{upstream} HTTP/1.1\r\n\r\nGET /in HTTP/1.1\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("hello GET /in"), "{name}: {text}");
        let ip: IpAddr = ip.parse().unwrap();
        let rec = granted.decider.recorded.lock().unwrap().clone();
        assert_eq!(rec, vec![(name.to_owned(), Outcome::Connected(ip))]);
        assert_eq!(
            redirect.asked.lock().unwrap().last(),
            Some(&std::net::SocketAddr::new(ip, upstream))
        );
        granted.cancel.cancel();
    }

    // A grant must name the vetted address itself, not another spelling.
    for (name, other) in [
        ("mapped.test", "127.0.0.1"),
        ("nat64.test", "127.0.0.1"),
        ("private.test", "10.1.2.4"),
    ] {
        let s = setup_with(&[name], &[other], &hosts, Some(redirect.clone()), upstream).await;
        let out = exchange(
            &s.socket,
            format!("CONNECT {name}:{upstream} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 403"), "{name}: {text}");
        s.cancel.cancel();
    }
    assert_eq!(redirect.asked.lock().unwrap().len(), INTERNAL_FORMS.len());
}

#[tokio::test]
async fn refusals_have_clear_answers() {
    let s = setup(&["good.test"], &["127.0.0.1"]).await;
    let port = s.upstream_port;
    let cases: Vec<(String, &str)> = vec![
        (
            format!("CONNECT good.test:{} HTTP/1.1\r\n\r\n", port + 1),
            "403 Forbidden",
        ),
        (
            format!("CONNECT good.test.evil.test:{port} HTTP/1.1\r\n\r\n"),
            "502 Bad Gateway",
        ),
        (
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
            "403 Forbidden",
        ),
        (
            "CONNECT good.test HTTP/1.1\r\n\r\n".to_owned(),
            "400 Bad Request",
        ),
        (
            format!("GET https://good.test:{port}/ HTTP/1.1\r\n\r\n"),
            "400 Bad Request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: good.test\r\n\r\n".to_owned(),
            "400 Bad Request",
        ),
        (
            format!("GET http://user@good.test:{port}/ HTTP/1.1\r\n\r\n"),
            "400 Bad Request",
        ),
        (
            format!(
                "GET http://good.test:{port}/ HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            "431 Request Header Fields Too Large",
        ),
        // Bodies two parsers could frame differently.
        (
            format!(
                "POST http://good.test:{port}/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            "400 Bad Request",
        ),
        (
            format!(
                "POST http://good.test:{port}/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            ),
            "400 Bad Request",
        ),
        (
            format!("POST http://good.test:{port}/ HTTP/1.1\r\nContent-Length: +3\r\n\r\n"),
            "400 Bad Request",
        ),
    ];
    for (req, want) in &cases {
        let out = exchange(&s.socket, req.as_bytes()).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{req:.60}: {text}"
        );
    }
    // Every refusal is recorded: the decided ones as outcomes, the ones
    // refused before a destination could be decided as rejections.
    let recorded = s.decider.recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert!(recorded.iter().all(|(_, o)| !o.allowed()));
    let rejected = s.decider.rejected.lock().unwrap().clone();
    let seen: Vec<(Option<ProxyKind>, Option<String>, String)> = rejected
        .into_iter()
        .map(|r| {
            assert_eq!((r.task_id.as_str(), r.principal.as_str()), ("t1", "alice"));
            (r.via, r.target, r.reason)
        })
        .collect();
    let good = format!("good.test:{port}");
    let forward = Some(ProxyKind::HttpForward);
    assert_eq!(
        seen,
        vec![
            (
                Some(ProxyKind::HttpConnect),
                Some("good.test".to_owned()),
                "malformed destination \"good.test\"".to_owned()
            ),
            (
                forward,
                Some(good.clone()),
                "https URLs go through CONNECT (set HTTPS_PROXY), not plain forwarding".to_owned()
            ),
            (
                None,
                None,
                "only absolute http:// URLs and CONNECT are proxied".to_owned()
            ),
            (
                forward,
                Some(format!("<userinfo>@{good}")),
                "user info in the destination is not accepted".to_owned()
            ),
            (None, None, "request header fields too large".to_owned()),
            (
                forward,
                Some(good.clone()),
                "both Content-Length and Transfer-Encoding".to_owned()
            ),
            (
                forward,
                Some(good.clone()),
                "only one Transfer-Encoding, \"chunked\", is accepted in a request".to_owned()
            ),
            (
                forward,
                Some(good.clone()),
                "malformed Content-Length \"+3\"".to_owned()
            ),
        ]
    );
    s.cancel.cancel();
}

#[tokio::test]
async fn socks5_connects_by_name_and_refuses_with_0x02() {
    let s = setup(&["good.test"], &["127.0.0.1"]).await;
    let port = s.upstream_port.to_be_bytes();
    let mut c = UnixStream::connect(&s.socket).await.unwrap();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 9];
    req.extend_from_slice(b"good.test");
    req.extend_from_slice(&port);
    c.write_all(&req).await.unwrap();
    let mut hello = [0u8; 2];
    c.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello, [5, 0]);
    let mut reply = [0u8; 10];
    c.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "{reply:?}");
    c.write_all(b"GET /s HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("hello GET /s"));

    // IPv4, IPv6 literal and an unlisted name: not allowed (0x02).
    let mut v4 = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
    v4.extend_from_slice(&port);
    let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
    v6.extend_from_slice(&[0; 15]);
    v6.push(1);
    v6.extend_from_slice(&port);
    let mut other = vec![5, 1, 0, 5, 1, 0, 3, 9];
    other.extend_from_slice(b"meta.test");
    other.extend_from_slice(&port);
    for req in [v4, v6, other] {
        let out = exchange(&s.socket, &req).await;
        assert_eq!(out.get(..2), Some(&[5u8, 0][..]));
        assert_eq!(out.get(2..4), Some(&[5u8, 2][..]), "{out:?}");
    }
    // BIND is not offered; username/password only: no acceptable method;
    // a name that is no host name. Each is recorded as a rejection.
    let out = exchange(&s.socket, &[5, 1, 0, 5, 2, 0, 1, 1, 1, 1, 1, 0, 80]).await;
    assert_eq!(out.get(2..4), Some(&[5u8, 7][..]));
    let out = exchange(&s.socket, &[5, 1, 2]).await;
    assert_eq!(out, vec![5, 0xff]);
    let mut bad_name = vec![5, 1, 0, 5, 1, 0, 3, 6];
    bad_name.extend_from_slice(b"a\nb@c\x01");
    bad_name.extend_from_slice(&port);
    let out = exchange(&s.socket, &bad_name).await;
    assert_eq!(out.get(2..4), Some(&[5u8, 1][..]));
    let rejected: Vec<(Option<ProxyKind>, Option<String>, String)> = s
        .decider
        .rejected
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.via, r.target.clone(), r.reason.clone()))
        .collect();
    let socks = Some(ProxyKind::Socks5);
    assert_eq!(
        rejected,
        vec![
            (
                socks,
                Some("1.1.1.1:80".to_owned()),
                "SOCKS5 command 2 is not supported (only CONNECT)".to_owned()
            ),
            (
                socks,
                None,
                "no acceptable SOCKS5 authentication method (only \"none\" is offered)".to_owned()
            ),
            (
                socks,
                Some("a\\nb@c\\u{1}".to_owned()),
                "malformed destination name".to_owned()
            ),
        ]
    );
    s.cancel.cancel();
}

/// An upstream that answers the first request of each connection (after
/// its body: Content-Length or chunked) with `Connection: close`, then
/// reads until the proxy closes and reports every byte it was sent.
async fn recording_upstream() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got);
                    let Some(end) = text.find("\r\n\r\n") else {
                        return false;
                    };
                    let head = text[..end].to_ascii_lowercase();
                    let body = &text[end + 4..];
                    if head.contains("transfer-encoding: chunked") {
                        body.ends_with("\r\n\r\n")
                            && (body.starts_with("0\r\n") || body.contains("\r\n0\r\n"))
                    } else if let Some(l) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                    {
                        body.len() >= l.trim().parse::<usize>().unwrap()
                    } else {
                        true
                    }
                };
                while !complete(&got) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let body = format!("hello {}", text.lines().next().unwrap_or_default());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&got).to_string());
            });
        }
    });
    (port, rx)
}

/// Two requests in one write on one plain-HTTP proxy connection, the second
/// to a host the decider refuses: only the first is decided and forwarded,
/// with exactly its body; the second never reaches any upstream.
#[tokio::test]
async fn pipelined_requests_are_never_forwarded_unchecked() {
    let (port, mut seen) = recording_upstream().await;
    let s = setup_with(&["good.test"], &["127.0.0.1"], &[], None, port).await;
    let second = format!("GET http://evil.test:{port}/second HTTP/1.1\r\nHost: evil.test\r\n\r\n");
    let firsts = [
        format!("GET http://good.test:{port}/first HTTP/1.1\r\n\r\n"),
        format!("POST http://good.test:{port}/first HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
        format!(
            "POST http://good.test:{port}/first HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n"
        ),
    ];
    for first in &firsts {
        // Also a second request that smuggles itself as the upstream's
        // origin-form request to the vetted host.
        for next in [
            second.clone(),
            "GET /second HTTP/1.1\r\nHost: evil.test\r\n\r\n".to_owned(),
        ] {
            let out = exchange(&s.socket, format!("{first}{next}").as_bytes()).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
            assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
                .await
                .unwrap()
                .unwrap();
            let body_at = first.find("\r\n\r\n").unwrap() + 4;
            assert!(
                got.starts_with("POST /first") || got.starts_with("GET /first"),
                "{got}"
            );
            assert!(got.ends_with(&first[body_at..]), "upstream saw {got:?}");
            assert!(
                !got.contains("second") && !got.contains("evil"),
                "upstream saw {got:?}"
            );
        }
    }
    let asked = s.decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2 * firsts.len());
    assert!(asked.iter().all(|r| r.host == "good.test"));
    s.cancel.cancel();
}

/// A chunked body the proxy cannot frame exactly is not relayed past the
/// point where the framing broke.
#[tokio::test]
async fn a_malformed_chunked_body_ends_the_connection() {
    let (port, mut seen) = recording_upstream().await;
    let s = setup_with(&["good.test"], &["127.0.0.1"], &[], None, port).await;
    for bad in [
        "\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let mut c = UnixStream::connect(&s.socket).await.unwrap();
        c.write_all(
            format!(
                "POST http://good.test:{port}/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{bad}GET /second HTTP/1.1\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(got.starts_with("POST /c HTTP/1.1"), "{got:?}");
        assert!(!got.contains("second"), "{bad:?}: upstream saw {got:?}");
    }
    s.cancel.cancel();
}
