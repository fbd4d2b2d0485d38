//! [`EgressProxy`]: one task's proxy on its unix socket.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::classify::classify;
use crate::decide::{ConnectRequest, Decider, Outcome, Protocol, ProxyKind, Resolver};
use crate::error::EgressError;
use crate::host::{Host, parse_host};

/// Headers a forwarded request may carry, at most.
const MAX_HEADERS: usize = 64;
/// SOCKS5 replies (RFC 1928 section 6).
const SOCKS_GENERAL_FAILURE: u8 = 0x01;
const SOCKS_NOT_ALLOWED: u8 = 0x02;
const SOCKS_HOST_UNREACHABLE: u8 = 0x04;
const SOCKS_CONNECTION_REFUSED: u8 = 0x05;
const SOCKS_COMMAND_NOT_SUPPORTED: u8 = 0x07;
const SOCKS_ADDRESS_NOT_SUPPORTED: u8 = 0x08;

/// Bounds of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Time a client has to send its whole request head or SOCKS handshake.
    pub header_timeout: Duration,
    /// Time for name resolution plus the upstream connect.
    pub connect_timeout: Duration,
    /// Largest HTTP request head (request line and headers).
    pub max_header_bytes: usize,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 64,
        }
    }
}

/// Whose connections these are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyContext {
    pub task_id: String,
    pub principal: String,
}

/// A bound proxy; [`EgressProxy::serve`] runs it.
#[derive(Debug)]
pub struct EgressProxy {
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    decider: Arc<dyn Decider>,
    resolver: Arc<dyn Resolver>,
    ctx: ProxyContext,
    settings: ProxySettings,
}

impl EgressProxy {
    /// Listens on a new unix socket at `path` (mode 0666: the sandbox user
    /// connects; the directory holding it is what keeps others out). Must
    /// be called inside a tokio runtime.
    pub fn bind(
        path: &Path,
        decider: Arc<dyn Decider>,
        resolver: Arc<dyn Resolver>,
        ctx: ProxyContext,
        settings: ProxySettings,
    ) -> Result<EgressProxy, EgressError> {
        let err = |source| EgressError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
        Ok(EgressProxy {
            listener,
            path: path.to_path_buf(),
            shared: Arc::new(Shared {
                decider,
                resolver,
                ctx,
                settings,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `cancel` fires, then drops every open
    /// connection and removes the socket file.
    pub async fn serve(self, cancel: CancellationToken) {
        let mut conns = JoinSet::new();
        let span = info_span!("egress", task_id = %self.shared.ctx.task_id);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if conns.len() >= self.shared.settings.max_connections {
                            warn!(parent: &span, limit = self.shared.settings.max_connections, "egress connection limit reached; closing a new connection");
                            drop(stream);
                            continue;
                        }
                        let shared = self.shared.clone();
                        conns.spawn(handle(shared, stream).instrument(span.clone()));
                    }
                    Err(e) => {
                        warn!(parent: &span, error = %e, "egress accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.abort_all();
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// A client connection with the bytes read from it but not yet consumed.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads once more; `Ok(false)` at end of stream.
    async fn read_more(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    /// Takes exactly `n` bytes, reading as needed.
    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.read_more().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }
}

/// Why a connection was not made.
#[derive(Debug)]
enum Refusal {
    /// The policy, the obligation or the address check said no.
    Denied(Vec<String>),
    /// The name does not resolve.
    Unresolved(String),
    /// No vetted address accepted the connection.
    Unreachable(String),
}

async fn handle(shared: Arc<Shared>, stream: UnixStream) {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    let head_timeout = shared.settings.header_timeout;
    match tokio::time::timeout(head_timeout, conn.read_more()).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Ok(Err(_)) => return,
        Err(_) => {
            let _ = conn
                .stream
                .write_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
    }
    if conn.buf.first() == Some(&5) {
        socks5(&shared, conn).await;
    } else {
        http(&shared, conn).await;
    }
}

/// What an HTTP request head asked for.
struct HttpAsk {
    host: Host,
    port: u16,
    /// `None` for CONNECT; for forwarding, the rewritten request head.
    forward: Option<Vec<u8>>,
    via: ProxyKind,
}

async fn http(shared: &Shared, mut conn: Conn) {
    let limit = shared.settings.max_header_bytes;
    let parsed = tokio::time::timeout(shared.settings.header_timeout, async {
        loop {
            match parse_http(&conn.buf) {
                Ok(Some((ask, used))) => return Ok((ask, used)),
                Ok(None) if conn.buf.len() > limit => {
                    return Err((431, "request header fields too large".to_owned()));
                }
                Ok(None) => match conn.read_more().await {
                    Ok(true) => {}
                    _ => return Err((400, "connection closed inside the request head".to_owned())),
                },
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let (ask, used) = match parsed {
        Ok(Ok(v)) => v,
        Ok(Err((code, why))) => {
            debug!(reason = %why, "egress: bad HTTP request");
            http_reply(&mut conn.stream, code, &why).await;
            return;
        }
        Err(_) => {
            http_reply(&mut conn.stream, 408, "request head not received in time").await;
            return;
        }
    };
    if used > limit {
        http_reply(&mut conn.stream, 431, "request header fields too large").await;
        return;
    }
    let body_start = conn.buf.split_off(used);
    let mut upstream = match vet_and_connect(shared, ask.host, ask.port, ask.via).await {
        Ok(s) => s,
        Err(r) => {
            let (code, msg) = match r {
                Refusal::Denied(reasons) => (403, reasons.join("; ")),
                Refusal::Unresolved(m) | Refusal::Unreachable(m) => (502, m),
            };
            http_reply(&mut conn.stream, code, &msg).await;
            return;
        }
    };
    let sent = match &ask.forward {
        None => {
            conn.stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
        }
        Some(head) => upstream.write_all(head).await,
    };
    if sent.is_err() || upstream.write_all(&body_start).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn.stream, &mut upstream).await;
}

/// Parses a complete request head: `Ok(None)` when more bytes are needed.
fn parse_http(buf: &[u8]) -> Result<Option<(HttpAsk, usize)>, (u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((431, "too many request header fields".to_owned()));
        }
        Err(e) => return Err((400, format!("malformed HTTP request: {e}"))),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err((400, "malformed HTTP request".to_owned()));
    };
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Some((
            HttpAsk {
                host,
                port,
                forward: None,
                via: ProxyKind::HttpConnect,
            },
            used,
        )));
    }
    let lower = target.get(..8).map(str::to_ascii_lowercase);
    let rest = match lower.as_deref() {
        Some(p) if p.starts_with("http://") => target.get(7..).unwrap_or_default(),
        Some("https://") => {
            return Err((
                400,
                "https URLs go through CONNECT (set HTTPS_PROXY), not plain forwarding".to_owned(),
            ));
        }
        _ => {
            return Err((
                400,
                "only absolute http:// URLs and CONNECT are proxied".to_owned(),
            ));
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(end);
    let (host, port) = authority(auth, Some(80))?;
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('/') => p.split('#').next().unwrap_or("/").to_owned(),
        p => format!("/{}", p.split('#').next().unwrap_or_default()),
    };
    // The upstream sees an origin-form request for the vetted host only:
    // hop-by-hop and proxy headers dropped, Host set from the URL (a
    // different Host header could reach another virtual host on the same
    // address), one request per connection.
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {auth}\r\n").into_bytes();
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "host"
                | "connection"
                | "proxy-connection"
                | "proxy-authorization"
                | "keep-alive"
                | "te"
                | "upgrade"
        ) {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some((
        HttpAsk {
            host,
            port,
            forward: Some(head),
            via: ProxyKind::HttpForward,
        },
        used,
    )))
}

/// `host:port` (or `[v6]:port`); `default_port` when the port is absent
/// and allowed to be.
fn authority(auth: &str, default_port: Option<u16>) -> Result<(Host, u16), (u16, String)> {
    let bad = || (400, format!("malformed destination {auth:?}"));
    if auth.contains('@') {
        return Err((
            400,
            "user info in the destination is not accepted".to_owned(),
        ));
    }
    let (host, port) = match auth.rfind(':') {
        // A bare IPv6 literal without brackets has colons but no port.
        Some(i) if !auth.starts_with('[') || auth.get(..i).is_some_and(|h| h.ends_with(']')) => {
            let port = auth
                .get(i + 1..)
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(bad)?;
            (auth.get(..i).unwrap_or_default(), port)
        }
        _ => (auth, default_port.ok_or_else(bad)?),
    };
    if port == 0 {
        return Err(bad());
    }
    let host = parse_host(host).ok_or_else(bad)?;
    Ok((host, port))
}

async fn http_reply(stream: &mut UnixStream, code: u16, msg: &str) {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let body = format!("{msg}\n");
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn socks5(shared: &Shared, mut conn: Conn) {
    let asked =
        tokio::time::timeout(shared.settings.header_timeout, socks_handshake(&mut conn)).await;
    let (host, port) = match asked {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(code))) => {
            socks_reply(&mut conn.stream, code).await;
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    let mut upstream = match vet_and_connect(shared, host, port, ProxyKind::Socks5).await {
        Ok(s) => s,
        Err(r) => {
            let code = match r {
                Refusal::Denied(_) => SOCKS_NOT_ALLOWED,
                Refusal::Unresolved(_) => SOCKS_HOST_UNREACHABLE,
                Refusal::Unreachable(_) => SOCKS_CONNECTION_REFUSED,
            };
            socks_reply(&mut conn.stream, code).await;
            return;
        }
    };
    if conn
        .stream
        .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .is_err()
    {
        return;
    }
    let early = std::mem::take(&mut conn.buf);
    if upstream.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn.stream, &mut upstream).await;
}

/// The SOCKS5 greeting and request; the inner `Err` is the reply code to
/// refuse with.
async fn socks_handshake(conn: &mut Conn) -> std::io::Result<Result<(Host, u16), u8>> {
    let hello = conn.take(2).await?;
    let nmethods = usize::from(hello.get(1).copied().unwrap_or(0));
    let methods = conn.take(nmethods).await?;
    if !methods.contains(&0) {
        // No acceptable method (only "no authentication" is offered).
        conn.stream.write_all(&[5, 0xff]).await?;
        let _ = conn.stream.shutdown().await;
        return Err(std::io::Error::other("no acceptable SOCKS5 method"));
    }
    conn.stream.write_all(&[5, 0]).await?;
    let head = conn.take(4).await?;
    let (ver, cmd, atyp) = (head[0], head[1], head[3]);
    if ver != 5 {
        return Ok(Err(SOCKS_GENERAL_FAILURE));
    }
    let host = match atyp {
        1 => {
            let a = conn.take(4).await?;
            Host::Ip(IpAddr::from([a[0], a[1], a[2], a[3]]))
        }
        3 => {
            let len = usize::from(conn.take(1).await?[0]);
            let name = conn.take(len).await?;
            match std::str::from_utf8(&name).ok().and_then(parse_host) {
                Some(h) => h,
                None => {
                    conn.take(2).await?;
                    return Ok(Err(SOCKS_GENERAL_FAILURE));
                }
            }
        }
        4 => {
            let a = conn.take(16).await?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&a);
            Host::Ip(IpAddr::from(o))
        }
        _ => return Ok(Err(SOCKS_ADDRESS_NOT_SUPPORTED)),
    };
    let p = conn.take(2).await?;
    let port = u16::from_be_bytes([p[0], p[1]]);
    if cmd != 1 {
        // BIND and UDP ASSOCIATE are not offered.
        return Ok(Err(SOCKS_COMMAND_NOT_SUPPORTED));
    }
    if port == 0 {
        return Ok(Err(SOCKS_GENERAL_FAILURE));
    }
    Ok(Ok((host, port)))
}

async fn socks_reply(stream: &mut UnixStream, code: u8) {
    let _ = stream.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    let _ = stream.shutdown().await;
}

/// Resolves, classifies, asks the decider, enforces the address check and
/// connects to a vetted address; logs and records the outcome.
async fn vet_and_connect(
    shared: &Shared,
    host: Host,
    port: u16,
    via: ProxyKind,
) -> Result<TcpStream, Refusal> {
    let budget = shared.settings.connect_timeout;
    let (name, literal, resolved) = match &host {
        Host::Ip(ip) => (ip.to_string(), true, Ok(vec![*ip])),
        Host::Name(n) => {
            let r = match tokio::time::timeout(budget, shared.resolver.resolve(n, port)).await {
                Ok(Ok(ips)) if !ips.is_empty() => Ok(ips),
                Ok(Ok(_)) => Err(format!("{n} resolves to no address")),
                Ok(Err(e)) => Err(format!("{n} does not resolve: {e}")),
                Err(_) => Err(format!("resolving {n} timed out")),
            };
            (n.clone(), false, r)
        }
    };
    let mut req = ConnectRequest {
        host: name,
        port,
        protocol: Protocol::Tcp,
        via,
        resolved: Vec::new(),
        literal,
        task_id: shared.ctx.task_id.clone(),
        principal: shared.ctx.principal.clone(),
    };
    let ips = match resolved {
        Ok(ips) => ips,
        Err(why) => {
            finish(shared, &req, false, None, vec![why.clone()], false).await;
            return Err(Refusal::Unresolved(why));
        }
    };
    req.resolved = ips.iter().map(|ip| (*ip, classify(*ip))).collect();
    let verdict = shared.decider.decide(&req).await;
    if !verdict.allow {
        let reasons = if verdict.reasons.is_empty() {
            vec!["denied by the network policy".to_owned()]
        } else {
            verdict.reasons
        };
        finish(shared, &req, false, None, reasons.clone(), true).await;
        return Err(Refusal::Denied(reasons));
    }
    if !verdict.allow_internal {
        let internal: Vec<String> = req
            .resolved
            .iter()
            .filter(|(_, c)| c.is_internal())
            .map(|(ip, c)| format!("destination {:?} resolves to {c} address {ip}", req.host))
            .collect();
        if !internal.is_empty() {
            finish(shared, &req, false, None, internal.clone(), true).await;
            return Err(Refusal::Denied(internal));
        }
    }
    // Only the vetted addresses, in order; never a fresh lookup.
    let mut last = String::from("no address to connect to");
    let deadline = tokio::time::Instant::now() + budget;
    for (ip, _) in &req.resolved {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                finish(shared, &req, true, Some(*ip), Vec::new(), true).await;
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
            Err(_) => {
                last = format!("connecting to {addr} timed out");
                break;
            }
        }
    }
    // Allowed, but no vetted address answered.
    finish(shared, &req, true, None, vec![last.clone()], true).await;
    Err(Refusal::Unreachable(last))
}

async fn finish(
    shared: &Shared,
    req: &ConnectRequest,
    allowed: bool,
    connected_to: Option<IpAddr>,
    reasons: Vec<String>,
    decided: bool,
) {
    let ips: Vec<String> = req
        .resolved
        .iter()
        .map(|(ip, c)| format!("{ip}/{c}"))
        .collect();
    if allowed {
        info!(
            host = %req.host,
            port = req.port,
            via = req.via.as_str(),
            resolved = ?ips,
            connected_to = ?connected_to,
            decision = "allow",
            "egress connection"
        );
    } else {
        info!(
            host = %req.host,
            port = req.port,
            via = req.via.as_str(),
            resolved = ?ips,
            decision = "deny",
            reasons = ?reasons,
            "egress connection"
        );
    }
    let outcome = Outcome {
        allowed,
        connected_to,
        reasons,
        decided,
    };
    shared.decider.record(req, &outcome).await;
}
