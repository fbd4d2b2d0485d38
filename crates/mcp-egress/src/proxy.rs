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

use crate::body::{self, Framing, send_body};
use crate::classify::classify;
use crate::decide::{
    ConnectRequest, Connector, Decider, Outcome, Protocol, ProxyKind, Rejected, Resolver,
    ungranted_internal,
};
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
    connector: Arc<dyn Connector>,
    ctx: ProxyContext,
    settings: ProxySettings,
}

impl EgressProxy {
    /// Listens on a new unix socket at `path` (mode 0666: the sandbox user
    /// connects; the directory holding it is what keeps others out). Must
    /// be called inside a tokio runtime. `connector` opens the upstream
    /// connections ([`crate::TcpConnector`] but in tests).
    pub fn bind(
        path: &Path,
        decider: Arc<dyn Decider>,
        resolver: Arc<dyn Resolver>,
        connector: Arc<dyn Connector>,
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
                connector,
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
    /// The policy, the obligation or the address guard said no.
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
            // Nothing was sent: no request to record.
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
    /// `None` for CONNECT; for forwarding, the rewritten request head and
    /// how long the body after it is.
    forward: Option<(Vec<u8>, Framing)>,
    via: ProxyKind,
}

/// An HTTP request refused before it could be decided.
struct BadRequest {
    code: u16,
    reason: String,
    via: Option<ProxyKind>,
    /// The authority, when it was read (see [`Rejected::target`]).
    target: Option<String>,
}

impl BadRequest {
    fn new(code: u16, reason: impl Into<String>) -> BadRequest {
        BadRequest {
            code,
            reason: reason.into(),
            via: None,
            target: None,
        }
    }

    /// Notes what was asked; user info (`user:password@`) is not kept.
    fn asked(mut self, via: ProxyKind, authority: &str) -> BadRequest {
        let shown = match authority.rsplit_once('@') {
            Some((_, host)) => format!("<userinfo>@{host}"),
            None => authority.to_owned(),
        };
        self.via = Some(via);
        self.target = Some(Rejected::target_of(&shown));
        self
    }
}

async fn http(shared: &Shared, mut conn: Conn) {
    let limit = shared.settings.max_header_bytes;
    let parsed = tokio::time::timeout(shared.settings.header_timeout, async {
        loop {
            match parse_http(&conn.buf) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) if conn.buf.len() > limit => {
                    return Err(BadRequest::new(431, "request header fields too large"));
                }
                Ok(None) => match conn.read_more().await {
                    Ok(true) => {}
                    _ => {
                        return Err(BadRequest::new(
                            400,
                            "connection closed inside the request head",
                        ));
                    }
                },
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let parsed = match parsed {
        Ok(Ok((_, used))) if used > limit => {
            Err(BadRequest::new(431, "request header fields too large"))
        }
        Ok(v) => v,
        Err(_) => Err(BadRequest::new(408, "request head not received in time")),
    };
    let (ask, used) = match parsed {
        Ok(v) => v,
        Err(bad) => {
            reject(shared, bad.via, bad.target, &bad.reason).await;
            http_reply(&mut conn.stream, bad.code, &bad.reason).await;
            return;
        }
    };
    let mut rest = conn.buf.split_off(used);
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
    match ask.forward {
        None => {
            // A tunnel to the vetted destination: whatever the client sends
            // in it goes there, unparsed.
            let established = conn
                .stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            if established.is_err() || upstream.write_all(&rest).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut conn.stream, &mut upstream).await;
        }
        Some((head, framing)) => {
            if upstream.write_all(&head).await.is_err() {
                return;
            }
            forward_one(conn.stream, &mut rest, upstream, framing, limit).await;
        }
    }
}

/// Relays one forwarded request's body and the response to it. Only the
/// body as its head framed it reaches the upstream: whatever the client
/// sends after it (a pipelined request to any host) is never read into
/// the upstream connection, and the client connection is closed once the
/// upstream has answered and closed (it was sent `Connection: close`).
async fn forward_one(
    mut client: UnixStream,
    rest: &mut Vec<u8>,
    mut upstream: TcpStream,
    framing: Framing,
    limit: usize,
) {
    let (mut client_r, mut client_w) = client.split();
    let (mut up_r, mut up_w) = upstream.split();
    let body = send_body(&mut client_r, rest, &mut up_w, framing, limit);
    let response = tokio::io::copy(&mut up_r, &mut client_w);
    tokio::pin!(body, response);
    let mut body_sent = false;
    loop {
        tokio::select! {
            sent = &mut body, if !body_sent => match sent {
                Ok(()) => body_sent = true,
                Err(e) => {
                    debug!(error = %e, "egress: request body not relayed; closing");
                    return;
                }
            },
            _ = &mut response => return,
        }
    }
}

/// Parses a complete request head: `Ok(None)` when more bytes are needed.
fn parse_http(buf: &[u8]) -> Result<Option<(HttpAsk, usize)>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadRequest::new(431, "too many request header fields"));
        }
        Err(e) => return Err(BadRequest::new(400, format!("malformed HTTP request: {e}"))),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(BadRequest::new(400, "malformed HTTP request"));
    };
    if method == "CONNECT" {
        let (host, port) = authority(target, None)
            .map_err(|why| BadRequest::new(400, why).asked(ProxyKind::HttpConnect, target))?;
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
    let via = ProxyKind::HttpForward;
    let lower = target.get(..8).map(str::to_ascii_lowercase);
    let rest = match lower.as_deref() {
        Some(p) if p.starts_with("http://") => target.get(7..).unwrap_or_default(),
        Some("https://") => {
            let auth = target.get(8..).unwrap_or_default();
            let auth = auth.split(['/', '?', '#']).next().unwrap_or_default();
            return Err(BadRequest::new(
                400,
                "https URLs go through CONNECT (set HTTPS_PROXY), not plain forwarding",
            )
            .asked(via, auth));
        }
        _ => {
            return Err(BadRequest::new(
                400,
                "only absolute http:// URLs and CONNECT are proxied",
            ));
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(end);
    let (host, port) =
        authority(auth, Some(80)).map_err(|why| BadRequest::new(400, why).asked(via, auth))?;
    let framing =
        body::framing(req.headers).map_err(|why| BadRequest::new(400, why).asked(via, auth))?;
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
            forward: Some((head, framing)),
            via,
        },
        used,
    )))
}

/// `host:port` (or `[v6]:port`); `default_port` when the port is absent
/// and allowed to be. `Err` is why not.
fn authority(auth: &str, default_port: Option<u16>) -> Result<(Host, u16), String> {
    let bad = || format!("malformed destination {auth:?}");
    if auth.contains('@') {
        return Err("user info in the destination is not accepted".to_owned());
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

/// A SOCKS5 request refused before it could be decided.
struct SocksRefusal {
    /// The reply code to send; `None` when the refusal was already sent
    /// (no acceptable authentication method).
    reply: Option<u8>,
    reason: String,
    target: Option<String>,
}

impl SocksRefusal {
    fn new(reply: u8, reason: impl Into<String>, target: Option<String>) -> SocksRefusal {
        SocksRefusal {
            reply: Some(reply),
            reason: reason.into(),
            target,
        }
    }
}

async fn socks5(shared: &Shared, mut conn: Conn) {
    let asked =
        tokio::time::timeout(shared.settings.header_timeout, socks_handshake(&mut conn)).await;
    let (host, port) = match asked {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(refusal))) => {
            reject(
                shared,
                Some(ProxyKind::Socks5),
                refusal.target,
                &refusal.reason,
            )
            .await;
            if let Some(code) = refusal.reply {
                socks_reply(&mut conn.stream, code).await;
            }
            return;
        }
        // The client went away mid-handshake, or was too slow to finish it.
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

/// The SOCKS5 greeting and request; the inner `Err` is the refusal.
async fn socks_handshake(conn: &mut Conn) -> std::io::Result<Result<(Host, u16), SocksRefusal>> {
    let hello = conn.take(2).await?;
    let nmethods = usize::from(hello.get(1).copied().unwrap_or(0));
    let methods = conn.take(nmethods).await?;
    if !methods.contains(&0) {
        // No acceptable method (only "no authentication" is offered).
        conn.stream.write_all(&[5, 0xff]).await?;
        let _ = conn.stream.shutdown().await;
        return Ok(Err(SocksRefusal {
            reply: None,
            reason: "no acceptable SOCKS5 authentication method (only \"none\" is offered)"
                .to_owned(),
            target: None,
        }));
    }
    conn.stream.write_all(&[5, 0]).await?;
    let head = conn.take(4).await?;
    let (ver, cmd, atyp) = (head[0], head[1], head[3]);
    if ver != 5 {
        return Ok(Err(SocksRefusal::new(
            SOCKS_GENERAL_FAILURE,
            format!("SOCKS version {ver} in the request; only 5 is spoken"),
            None,
        )));
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
                    let raw = String::from_utf8_lossy(&name);
                    return Ok(Err(SocksRefusal::new(
                        SOCKS_GENERAL_FAILURE,
                        "malformed destination name",
                        Some(Rejected::target_of(&raw)),
                    )));
                }
            }
        }
        4 => {
            let a = conn.take(16).await?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&a);
            Host::Ip(IpAddr::from(o))
        }
        _ => {
            return Ok(Err(SocksRefusal::new(
                SOCKS_ADDRESS_NOT_SUPPORTED,
                format!("SOCKS5 address type {atyp} is not supported"),
                None,
            )));
        }
    };
    let p = conn.take(2).await?;
    let port = u16::from_be_bytes([p[0], p[1]]);
    let target = Some(Rejected::target_of(&match &host {
        Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        h => format!("{h}:{port}"),
    }));
    if cmd != 1 {
        // BIND and UDP ASSOCIATE are not offered.
        return Ok(Err(SocksRefusal::new(
            SOCKS_COMMAND_NOT_SUPPORTED,
            format!("SOCKS5 command {cmd} is not supported (only CONNECT)"),
            target,
        )));
    }
    if port == 0 {
        return Ok(Err(SocksRefusal::new(
            SOCKS_GENERAL_FAILURE,
            "destination port 0",
            target,
        )));
    }
    Ok(Ok((host, port)))
}

async fn socks_reply(stream: &mut UnixStream, code: u8) {
    let _ = stream.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    let _ = stream.shutdown().await;
}

/// Resolves, classifies, asks the decider, applies the address guard and
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
            finish(shared, &req, Outcome::Unresolved(why.clone())).await;
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
        finish(shared, &req, Outcome::Denied(reasons.clone())).await;
        return Err(Refusal::Denied(reasons));
    }
    // The guard: an allow alone never opens an internal address.
    let ungranted = ungranted_internal(&req, &verdict.private);
    if !ungranted.is_empty() {
        finish(shared, &req, Outcome::Guarded(ungranted.clone())).await;
        return Err(Refusal::Denied(ungranted));
    }
    // Only the vetted addresses, in order; never a fresh lookup.
    let mut last = String::from("no address to connect to");
    let deadline = tokio::time::Instant::now() + budget;
    for (ip, _) in &req.resolved {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout_at(deadline, shared.connector.connect(addr)).await {
            Ok(Ok(s)) => {
                finish(shared, &req, Outcome::Connected(*ip)).await;
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
            Err(_) => {
                last = format!("connecting to {addr} timed out");
                break;
            }
        }
    }
    finish(shared, &req, Outcome::Unreachable(last.clone())).await;
    Err(Refusal::Unreachable(last))
}

async fn finish(shared: &Shared, req: &ConnectRequest, outcome: Outcome) {
    let ips: Vec<String> = req
        .resolved
        .iter()
        .map(|(ip, c)| format!("{ip} ({c})"))
        .collect();
    match &outcome {
        Outcome::Connected(ip) => info!(
            host = %req.host,
            port = req.port,
            via = req.via.as_str(),
            resolved = ?ips,
            connected_to = %ip,
            decision = "allow",
            "egress connection"
        ),
        other => info!(
            host = %req.host,
            port = req.port,
            via = req.via.as_str(),
            resolved = ?ips,
            decision = if other.allowed() { "allow" } else { "deny" },
            reasons = ?other.reasons(),
            "egress connection"
        ),
    }
    shared.decider.record(req, &outcome).await;
}

/// Logs and records a request refused before it could be decided.
async fn reject(shared: &Shared, via: Option<ProxyKind>, target: Option<String>, reason: &str) {
    info!(
        via = via.map_or("http", ProxyKind::as_str),
        target = target.as_deref().unwrap_or_default(),
        reason,
        decision = "deny",
        "egress request rejected"
    );
    let rejected = Rejected {
        via,
        target,
        reason: reason.to_owned(),
        task_id: shared.ctx.task_id.clone(),
        principal: shared.ctx.principal.clone(),
    };
    shared.decider.reject(&rejected).await;
}
