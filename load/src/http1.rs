//! A minimal HTTP/1.1 keep-alive client: one request at a time per connection, no
//! pipelining. Hand-written so that the load generator spends its CPU on the
//! workload (handshake crypto), not on a client stack, and so that every response is
//! seen byte for byte (status, `content-length` or chunked body).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Decoded body.
    pub body: Vec<u8>,
}

/// A request template: method, path, host and extra headers rendered once.
#[derive(Debug, Clone)]
pub struct Template {
    head: Vec<u8>,
}

impl Template {
    /// `extra` headers are full `name: value` lines without CRLF.
    pub fn new(method: &str, path: &str, host: &str, extra: &[String]) -> Self {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("content-length: ");
        Self { head: head.into_bytes() }
    }

    /// Writes head + body into `out` (cleared first).
    pub fn render(&self, body: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.head);
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }
}

/// A keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects with `TCP_NODELAY` (as a real client would for small messages).
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(4096), out: Vec::with_capacity(1024) })
    }

    /// Sends one request built from `template` and `body`, and reads the answer.
    pub async fn roundtrip(&mut self, template: &Template, body: &[u8]) -> Result<Response, String> {
        template.render(body, &mut self.out);
        self.stream.write_all(&self.out).await.map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let (status, framing) = parse_head(&self.buf[..head_end])?;
        let body = match framing {
            Framing::Length(len) => {
                while self.buf.len() < head_end + len {
                    self.fill().await?;
                }
                self.buf[head_end..head_end + len].to_vec()
            }
            Framing::Chunked => self.read_chunked(head_end).await?,
        };
        Ok(Response { status, body })
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by server".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_chunked(&mut self, mut pos: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                    break pos + p;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[pos..line_end]).map_err(|_| "chunk size not text")?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
            pos = line_end + 2;
            while self.buf.len() < pos + size + 2 {
                self.fill().await?;
            }
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

fn parse_head(head: &[u8]) -> Result<(u16, Framing), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut framing = Framing::Length(0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.trim().parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked;
        }
    }
    Ok((status, framing))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `http://host:port[/...]` → socket address.
pub fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// Blocking one-shot GET (connection: close), for set-up outside the timed loop.
pub fn get_blocking(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let head_end = find(&raw, b"\r\n\r\n").ok_or("no response head")? + 4;
    let (status, framing) = parse_head(&raw[..head_end])?;
    let body = match framing {
        Framing::Length(n) => raw.get(head_end..head_end + n).ok_or("short body")?.to_vec(),
        Framing::Chunked => return Err("chunked set-up responses are not supported".into()),
    };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_length() {
        let (s, f) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(s, 200);
        assert!(matches!(f, Framing::Length(12)));
        let (_, f) = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(f, Framing::Chunked));
        assert!(parse_head(b"HTTP/1.0 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn template_renders_length() {
        let t = Template::new("POST", "/x", "h", &["a: b".into()]);
        let mut out = Vec::new();
        t.render(b"abc", &mut out);
        assert_eq!(out, b"POST /x HTTP/1.1\r\nhost: h\r\na: b\r\ncontent-length: 3\r\n\r\nabc");
    }
}
