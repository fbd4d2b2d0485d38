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
    classify(s.parse::<IpAddr>().unwrap())
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
        ("2002:7f00:1::", AddrClass::Loopback),
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
        "2002:808:808::",
    ] {
        assert_eq!(class(ip), AddrClass::Public, "{ip}");
    }
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

/// Allows what is in `allow` (host, port), records every outcome.
#[derive(Debug, Default)]
struct TestDecider {
    allow: Vec<(String, u16)>,
    internal_ok: bool,
    asked: Mutex<Vec<ConnectRequest>>,
    recorded: Mutex<Vec<(String, Outcome)>>,
}

#[async_trait]
impl Decider for TestDecider {
    async fn decide(&self, req: &ConnectRequest) -> Verdict {
        self.asked.lock().unwrap().push(req.clone());
        if self.allow.contains(&(req.host.clone(), req.port)) {
            Verdict {
                allow: true,
                allow_internal: self.internal_ok,
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
}

struct Setup {
    socket: std::path::PathBuf,
    decider: Arc<TestDecider>,
    upstream_port: u16,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

/// A proxy with `names` resolving to 127.0.0.1, and an upstream HTTP
/// server on 127.0.0.1 answering "hello <request line>".
async fn setup(allow: &[&str], internal_ok: bool) -> Setup {
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
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("egress.sock");
    let decider = Arc::new(TestDecider {
        allow: allow
            .iter()
            .map(|h| ((*h).to_owned(), upstream_port))
            .collect(),
        internal_ok,
        ..TestDecider::default()
    });
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let resolver = StaticResolver::new([
        ("good.test".to_owned(), vec![lo]),
        ("rebind.test".to_owned(), vec![lo]),
        (
            "meta.test".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
    ]);
    let proxy = EgressProxy::bind(
        &socket,
        decider.clone(),
        Arc::new(resolver),
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

async fn exchange(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn http_forward_and_connect_reach_an_allowed_destination() {
    let s = setup(&["good.test"], true).await;
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
    assert!(rec.iter().all(|(h, o)| h == "good.test" && o.allowed));
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
    let s = setup(&["rebind.test", "meta.test"], false).await;
    let port = s.upstream_port;
    let out = exchange(
        &s.socket,
        format!("CONNECT rebind.test:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{text}");
    assert!(
        text.contains("resolves to loopback address 127.0.0.1"),
        "{text}"
    );
    let out = exchange(
        &s.socket,
        format!("GET http://meta.test:{port}/latest/meta-data HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("403") && text.contains("metadata address 169.254.169.254"),
        "{text}"
    );
    let rec = s.decider.recorded.lock().unwrap().clone();
    assert_eq!(rec.len(), 2);
    assert!(rec.iter().all(|(_, o)| !o.allowed));
    s.cancel.cancel();
}

#[tokio::test]
async fn refusals_have_clear_answers() {
    let s = setup(&["good.test"], true).await;
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
    ];
    for (req, want) in cases {
        let out = exchange(&s.socket, req.as_bytes()).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{req:.60}: {text}"
        );
    }
    s.cancel.cancel();
}

#[tokio::test]
async fn socks5_connects_by_name_and_refuses_with_0x02() {
    let s = setup(&["good.test"], true).await;
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
    // BIND is not offered; username/password only: no acceptable method.
    let out = exchange(&s.socket, &[5, 1, 0, 5, 2, 0, 1, 1, 1, 1, 1, 0, 80]).await;
    assert_eq!(out.get(2..4), Some(&[5u8, 7][..]));
    let out = exchange(&s.socket, &[5, 1, 2]).await;
    assert_eq!(out, vec![5, 0xff]);
    s.cancel.cancel();
}
