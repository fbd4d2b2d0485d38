//! The body of a forwarded HTTP request: how long its head says it is, and
//! relaying exactly that much. What a client sends after it is never
//! relayed, so a second (pipelined) request cannot ride on a connection
//! the proxy vetted for the first one.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Trailer fields a chunked body may end with, at most.
const MAX_TRAILERS: usize = 64;

/// How a request's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No `Content-Length` or `Transfer-Encoding`: no body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The framing of a request with `headers`. Anything two parsers could
/// read differently (both headers, several of either, a coding other than
/// plain `chunked`, a length that is not plain digits) is refused: the
/// upstream must see the body end exactly where the proxy does.
pub(crate) fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    let mut length = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).unwrap_or_default();
            let n = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| format!("malformed Content-Length {value:?}"))?;
            if length.replace(n).is_some() {
                return Err("more than one Content-Length".to_owned());
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(
                    "only one Transfer-Encoding, \"chunked\", is accepted in a request".to_owned(),
                );
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err("both Content-Length and Transfer-Encoding".to_owned()),
        (Some(n), false) => Ok(Framing::Length(n)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::Empty),
    }
}

/// Relays the body framed by `framing` from `buf` (bytes already read)
/// and then `r` to `w`, and nothing after it. `limit` bounds a chunk-size
/// line and the trailer section. Fails on a malformed chunked body or an
/// early end of stream.
pub(crate) async fn send_body<R, W>(
    r: &mut R,
    buf: &mut Vec<u8>,
    w: &mut W,
    framing: Framing,
    limit: usize,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => relay_exact(r, buf, w, n).await,
        Framing::Chunked => relay_chunked(r, buf, w, limit).await,
    }
}

/// Reads more into `buf`; an end of stream is an error (the body is not
/// complete).
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = r.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(())
}

/// Writes the first `n` bytes of `buf` and removes them.
async fn emit<W: AsyncWrite + Unpin>(w: &mut W, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    w.write_all(buf.get(..n).unwrap_or_default()).await?;
    buf.drain(..n.min(buf.len()));
    Ok(())
}

async fn relay_exact<R, W>(r: &mut R, buf: &mut Vec<u8>, w: &mut W, mut n: u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        if buf.is_empty() {
            fill(r, buf).await?;
        }
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        emit(w, buf, take).await?;
        n -= take as u64;
    }
    Ok(())
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

/// A chunk-size line the way every parser reads it: hex digits first, an
/// optional extension of visible characters and tabs, CRLF.
fn strict_size_line(line: &[u8]) -> bool {
    let body = line.strip_suffix(b"\r\n").unwrap_or_default();
    body.first().is_some_and(u8::is_ascii_hexdigit)
        && body
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

async fn relay_chunked<R, W>(
    r: &mut R,
    buf: &mut Vec<u8>,
    w: &mut W,
    limit: usize,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (used, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(v)) => break v,
                Ok(httparse::Status::Partial) if buf.len() > limit => {
                    return Err(malformed("chunk-size line too long"));
                }
                Ok(httparse::Status::Partial) => fill(r, buf).await?,
                Err(_) => return Err(malformed("bad chunk size")),
            }
        };
        if !strict_size_line(buf.get(..used).unwrap_or_default()) {
            return Err(malformed("bad chunk-size line"));
        }
        emit(w, buf, used).await?;
        if size == 0 {
            break;
        }
        relay_exact(r, buf, w, size).await?;
        while buf.len() < 2 {
            fill(r, buf).await?;
        }
        if buf.get(..2) != Some(b"\r\n") {
            return Err(malformed("chunk data not followed by CRLF"));
        }
        emit(w, buf, 2).await?;
    }
    // The trailer section, ended by an empty line; every line ends in CRLF.
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, _))) => {
                let section = buf.get(..used).unwrap_or_default();
                let bare_lf = section
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\n' && (i == 0 || section.get(i - 1) != Some(&b'\r')));
                if bare_lf {
                    return Err(malformed("trailer line not ended by CRLF"));
                }
                return emit(w, buf, used).await;
            }
            Ok(httparse::Status::Partial) if buf.len() > limit => {
                return Err(malformed("trailer section too large"));
            }
            Ok(httparse::Status::Partial) => fill(r, buf).await?,
            Err(_) => return Err(malformed("bad trailer field")),
        }
    }
}
