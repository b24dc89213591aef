//! The one HTTP/1.1 client of the tests and the tools: requests built byte by byte,
//! responses parsed strictly.
//!
//! Why hand-written and not a client crate (e.g. `ureq`): the tests must send what a
//! well-behaved client refuses to send — a foreign `Host`, bodies under an odd or missing
//! content type, a chunked body the server cuts off with 413 while it is still being
//! written, a request whose sender vanishes half-way — and read a response that arrives
//! after a failed write. A conforming client hides exactly those bytes; this one is ~400
//! lines over `std::net::TcpStream` and gives the caller every byte.
//!
//! Two ways to send, one encoder and one parser:
//! - [`Request::send`] / [`Request::try_send`]: one connection per request
//!   (`Connection: close`), the whole answer read to EOF and parsed by [`parse_response`];
//!   a failed write still yields the response when a complete one came back.
//! - [`Client`] (in `conn`): one keep-alive connection, one request at a time, answers
//!   read by their framing (length or chunks) through [`Conn`]; a kept-alive connection
//!   the server closed is reopened once. [`Conn`] is also the raw socket for half-sent
//!   requests and for reading a streamed answer chunk by chunk.
//!
//! Invariants: every connection has read and write timeouts (the request's, 30 s unless
//! set), so no caller can hang on a silent server; nothing here retries a request that
//! may have reached the server except the one reconnect of a stale keep-alive connection.

mod conn;

pub use conn::{Client, Conn, Head};

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Read/write timeout of a request unless [`Request::timeout`] says otherwise (longer
/// than any acquire wait the tests use).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as JSON, or `Null` when it is not (for callers that must not panic).
    pub fn json_or_null(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of a `{error: {code, message}}` body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {}: {}", self.status, self.text()))
            .to_string()
    }
}

/// One request. Fields are public so table-driven tests can label cases with them.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Replaces the default `Host: 127.0.0.1:PORT`.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    pub timeout: Duration,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            host: None,
            headers: Vec::new(),
            body: None,
            chunked: false,
            timeout: IO_TIMEOUT,
        }
    }
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }
    pub fn post(path: &str) -> Request {
        Request::new("POST", path)
    }
    pub fn delete(path: &str) -> Request {
        Request::new("DELETE", path)
    }
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Replaces the default `Host: 127.0.0.1:PORT`.
    pub fn host(mut self, host: &str) -> Request {
        self.host = Some(host.to_string());
        self
    }
    /// The user token, as the `X-Lockledger-Token` header.
    pub fn token(self, token: &str) -> Request {
        self.header("X-Lockledger-Token", token)
    }
    /// `Authorization: Bearer TOKEN`.
    pub fn bearer(self, token: &str) -> Request {
        self.header("Authorization", &format!("Bearer {token}"))
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }
    /// `Content-Type: application/json` and the value as the body.
    pub fn json(self, value: &Value) -> Request {
        self.json_text(value.to_string())
    }
    /// `Content-Type: application/json` and these bytes as the body.
    pub fn json_text(self, body: impl Into<Vec<u8>>) -> Request {
        self.header("Content-Type", "application/json").body(body)
    }
    /// `Content-Type: application/json` with an empty body (as the chat app sends).
    pub fn empty_json(self) -> Request {
        self.header("Content-Type", "application/json")
    }
    /// Sends the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub fn chunked(mut self) -> Request {
        self.chunked = true;
        self
    }
    /// Read/write timeout of this request's connection.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// The request as bytes on the wire. `close` adds `Connection: close`. A body goes
    /// with `Content-Length` (also an empty one for every method but GET) or in 8 KiB
    /// chunks.
    pub fn wire(&self, port: u16, close: bool) -> Vec<u8> {
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{port}"));
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, self.path);
        if close {
            head.push_str("Connection: close\r\n");
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = self.body.as_deref().unwrap_or_default();
        let mut wire = Vec::with_capacity(head.len() + body.len() + 64);
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            wire.extend_from_slice(head.as_bytes());
            for part in body.chunks(8192) {
                wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                wire.extend_from_slice(part);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            if self.body.is_some() || self.method != "GET" {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            wire.extend_from_slice(head.as_bytes());
            wire.extend_from_slice(body);
        }
        wire
    }

    /// Sends on a connection of its own; panics with everything that was seen when no
    /// complete response comes back.
    pub fn send(&self, port: u16) -> Response {
        self.try_send(port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends on a connection of its own; the error says what was seen.
    pub fn try_send(&self, port: u16) -> Result<Response, String> {
        let what = format!("{} {}", self.method, short(&self.path));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("{what}: cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("{what}: socket timeouts: {e}"))?;
        let _ = stream.set_nodelay(true);
        // The server may answer (413) and close before reading a large body: a failed
        // write is fine as long as a complete response comes back.
        let write_err = stream
            .write_all(&self.wire(port, true))
            .and_then(|_| stream.flush())
            .err();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let read_err = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e),
            }
        };
        parse_response(&buf).map_err(|why| {
            format!(
                "{what}: no complete response ({why}); write error: {write_err:?}; read error: \
                 {read_err:?}; received {} bytes: {:?}",
                buf.len(),
                String::from_utf8_lossy(&buf[..buf.len().min(500)])
            )
        })
    }
}

/// At most 80 characters of `s`, for messages.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a whole response (what a `Connection: close` exchange received): the head,
/// then a chunked, sized or read-to-end body. Incomplete input is an error.
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let end = find(buf, b"\r\n\r\n").ok_or("no end of the header block")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|e| format!("header block: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = parse_status_line(status_line)?;
    let mut headers = Vec::new();
    for line in lines {
        headers.push(parse_header_line(line)?);
    }
    let rest = &buf[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body =
        if get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            decode_chunked(rest)?
        } else if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad content-length {len:?}"))?;
            if rest.len() < len {
                return Err(format!("body has {} of {len} bytes", rest.len()));
            }
            rest[..len].to_vec()
        } else {
            rest.to_vec()
        };
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub(crate) fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(format!("bad status line {line:?}"));
    }
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))
}

pub(crate) fn parse_header_line(line: &str) -> Result<(String, String), String> {
    let (k, v) = line
        .split_once(':')
        .ok_or_else(|| format!("bad header line {line:?}"))?;
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

/// Decodes a complete chunked body (trailers, if any, are ignored).
pub fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("unterminated chunk size line")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|e| format!("chunk size: {e}"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(format!("short chunk: {} of {size} bytes", rest.len()));
        }
        out.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The parser, on hand-made responses (chunked included).
    #[test]
    fn parses_chunked_and_sized_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
              4\r\n{\"a\"\r\n5;x=y\r\n:[1]}\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"a": [1]}));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r =
            parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn encodes_lengths_chunks_and_hosts() {
        let w = Request::get("/x").wire(9, true);
        assert_eq!(
            w,
            b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n"
        );
        let w = Request::delete("/l").wire(9, false);
        assert!(String::from_utf8_lossy(&w).ends_with("Content-Length: 0\r\n\r\n"));
        let w = Request::post("/p")
            .host("evil.com")
            .body("abc")
            .chunked()
            .wire(9, true);
        let text = String::from_utf8_lossy(&w);
        assert!(text.contains("Host: evil.com\r\n"), "{text}");
        assert!(
            text.ends_with("Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}
