//! Streaming HTTP/1.1 over one connection: [`Conn`] (write any bytes, read a head, a body
//! or chunks one at a time) and [`Client`] (keep-alive requests over a `Conn`).
//!
//! Invariants: a [`Conn`] always has read and write timeouts; a response is read exactly
//! by its framing (Content-Length, chunks, or to EOF when it has neither), so the next
//! response on a kept-alive connection starts where this one ended; [`Client`] reopens a
//! kept-alive connection at most once per request, and only when the server had closed
//! it (broken pipe, reset, EOF before a response).

use super::{parse_header_line, parse_status_line, Request, Response, CONNECT_TIMEOUT};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The head of a response read from a [`Conn`].
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub length: Option<usize>,
    pub chunked: bool,
    /// The server will close the connection after this response.
    pub close: bool,
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_string())
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One TCP connection to the service, read through a buffer: write any bytes, then read
/// a response head, its body, or its chunks one by one.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port` with `TCP_NODELAY` and both timeouts set.
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Conn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, s),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// The socket itself (e.g. to switch to non-blocking and drain it before closing).
    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn read_head(&mut self) -> io::Result<Head> {
        let r = &mut self.reader;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(eof("connection closed before a response"));
        }
        let status = parse_status_line(line.trim_end()).map_err(bad)?;
        let mut head = Head {
            status,
            headers: Vec::new(),
            length: None,
            chunked: false,
            close: line.starts_with("HTTP/1.0"),
        };
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(eof("connection closed inside the response head"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                return Ok(head);
            }
            let (k, v) = parse_header_line(l).map_err(bad)?;
            match k.as_str() {
                "content-length" => head.length = v.parse().ok(),
                "transfer-encoding" => head.chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => head.close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
            head.headers.push((k, v));
        }
    }

    /// Reads one chunk of a chunked body into `out`; false after the last (empty) chunk.
    pub fn read_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let r = &mut self.reader;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(eof("connection closed inside a chunked body"));
        }
        let size_text = line.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(false);
                }
            }
        }
        let start = out.len();
        out.resize(start + size, 0);
        r.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        Ok(true)
    }

    /// Reads the body `head` announces (marking `head.close` when it runs to EOF).
    pub fn read_body(&mut self, head: &mut Head) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        if head.chunked {
            while self.read_chunk(&mut body)? {}
        } else if let Some(n) = head.length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        } else if head.status != 204 && head.status != 304 {
            self.reader.read_to_end(&mut body)?;
            head.close = true;
        }
        Ok(body)
    }
}

/// A keep-alive client: one connection, one request at a time.
pub struct Client {
    port: u16,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            timeout: Duration::from_secs(120),
            conn: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `req` on the kept-alive connection (opening it if needed) and reads the whole
    /// response. A kept-alive connection the server had closed is reopened once.
    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.send_once(req) {
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::UnexpectedEof
                    ) =>
            {
                self.send_once(req)
            }
            other => other,
        }
    }

    fn send_once(&mut self, req: &Request) -> io::Result<Response> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(Conn::connect(self.port, self.timeout)?),
        };
        let result = (|| {
            conn.write_all(&req.wire(self.port, false))?;
            let mut head = conn.read_head()?;
            let body = conn.read_body(&mut head)?;
            Ok((head, body))
        })();
        match result {
            Ok((head, body)) => {
                if head.close {
                    self.conn = None;
                }
                Ok(Response {
                    status: head.status,
                    headers: head.headers,
                    body,
                })
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}
