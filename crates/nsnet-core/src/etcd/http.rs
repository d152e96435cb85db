//! Just enough HTTP/1.1 for etcd's JSON gateway: `http://HOST:PORT` URLs, one POST per connection
//! (`Connection: close`), and a reply body framed by Content-Length, chunked transfer coding or the end of the
//! connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::EtcdError;

/// The most a status line plus headers, or one chunk-size line, may take: the gateway's are a few hundred bytes.
const MAX_HEAD: u64 = 64 * 1024;
/// The most a unary reply body may take (a range over a large prefix is the big one).
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// `http://HOST:PORT` (a trailing `/` is allowed) to `HOST:PORT`, IPv6 hosts in brackets.
pub(crate) fn parse_url(url: &str) -> Result<String, EtcdError> {
    let url = url.trim();
    let bad = |why: &str| Err(EtcdError::BadUrl(format!("bad etcd URL '{url}': {why}")));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("want http://HOST:PORT");
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(EtcdError::TlsUnsupported(url.to_string()));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return bad("only http:// is supported");
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return bad("want http://HOST:PORT with no path, query or user");
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((v6, port)) = bracketed.split_once(']') else {
            return bad("unclosed '[' in the host");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in the brackets");
        }
        (&rest[..v6.len() + 2], port.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let Some(port) = port else {
        return bad("no port (etcd's client port is usually 2379)");
    };
    if port.contains(':') {
        return bad("IPv6 addresses go in brackets: http://[ADDR]:PORT");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return bad("the port is not a number from 1 to 65535"),
    }
    let hostname_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !(host.starts_with('[') || host.parse::<IpAddr>().is_ok() || hostname_ok) {
        return bad("the host is not an IP address or a host name");
    }
    Ok(format!("{host}:{port}"))
}

/// Where an exchange failed, which decides whether another endpoint may be tried.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be made, so nothing reached the server: trying the next endpoint is safe.
    Connect(String),
    /// The connection was made but broke or timed out part way: the server may have acted on the request.
    Exchange(String),
}

/// A failure after connecting; a socket timeout (EAGAIN on Linux) said as such.
fn exchange(e: io::Error, timeout: Duration) -> Failure {
    Failure::Exchange(match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?}")
        }
        _ => e.to_string(),
    })
}

/// Connect to `HOST:PORT`, trying each address it resolves to, each for at most `timeout`.
pub(crate) fn connect(endpoint: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs = endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let mut why = String::from("resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => why = e.to_string(),
        }
    }
    Err(why)
}

/// Connect and send a JSON POST; the reply is left for [`read_head`]. The connect, and each read and write
/// after it, waits at most `timeout`.
pub(crate) fn send(
    endpoint: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let mut stream = connect(endpoint, timeout).map_err(Failure::Connect)?;
    let exchange = |e| exchange(e, timeout);
    stream.set_read_timeout(Some(timeout)).map_err(exchange)?;
    stream.set_write_timeout(Some(timeout)).map_err(exchange)?;
    // Head and body go out in one write; no need to wait for Nagle.
    stream.set_nodelay(true).map_err(exchange)?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).map_err(exchange)?;
    Ok(stream)
}

/// Send a POST and read the reply's status and headers; the body is left in the reader.
pub(crate) fn open(
    endpoint: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(Head, BufReader<TcpStream>), Failure> {
    let mut reader = BufReader::new(send(endpoint, path, body, timeout)?);
    let head = read_head(&mut reader).map_err(|e| exchange(e, timeout))?;
    Ok((head, reader))
}

/// One POST and its whole reply: (status, body).
pub(crate) fn post(
    endpoint: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), Failure> {
    let (head, reader) = open(endpoint, path, body, timeout)?;
    let body = read_body(reader, &head).map_err(|e| exchange(e, timeout))?;
    Ok((head.status, body))
}

/// Read a whole reply: status and body.
#[cfg(test)]
fn read_reply<R: BufRead>(mut r: R) -> io::Result<(u16, Vec<u8>)> {
    let head = read_head(&mut r)?;
    Ok((head.status, read_body(r, &head)?))
}

/// Read a reply's whole body, at most [`MAX_BODY`] bytes.
pub(crate) fn read_body<R: BufRead>(r: R, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    Body::new(r, head)
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)?;
    if u64::try_from(body.len()).map_or(true, |n| n > MAX_BODY) {
        return Err(io::Error::other(format!(
            "reply body is over {MAX_BODY} bytes"
        )));
    }
    Ok(body)
}

/// A reply's status line and the headers that frame its body.
#[derive(Debug, PartialEq)]
pub(crate) struct Head {
    pub status: u16,
    chunked: bool,
    length: Option<u64>,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One CRLF- (or LF-) terminated line, without its terminator; at most [`MAX_HEAD`] bytes.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    r.by_ref().take(MAX_HEAD).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if u64::try_from(line.len()).is_ok_and(|n| n >= MAX_HEAD) {
            invalid("a header line is too long".into())
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of a reply",
            )
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("a header line is not UTF-8".into()))
}

/// Read the status line and headers, up to the blank line.
pub(crate) fn read_head<R: BufRead>(r: &mut R) -> io::Result<Head> {
    let status_line = read_line(r)?;
    let mut words = status_line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(format!("not an HTTP/1.x status line: {status_line:.80}")))?;
    let mut head = Head {
        status,
        chunked: false,
        length: None,
    };
    let mut total = 0u64;
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(head);
        }
        total = total.saturating_add(u64::try_from(line.len()).unwrap_or(u64::MAX));
        if total > MAX_HEAD {
            return Err(invalid("the reply's headers are too long".into()));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("not a header line: {line:.80}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length: {value:.40}")))?;
            head.length = Some(n);
        }
    }
}

/// A reply body as a byte stream, however it is framed. Chunked wins over Content-Length (RFC 9112 6.3).
pub(crate) enum Body<R> {
    Chunked(Chunked<R>),
    Length(io::Take<R>),
    UntilClose(R),
}

impl<R: BufRead> Body<R> {
    pub(crate) fn new(r: R, head: &Head) -> Body<R> {
        match head {
            Head { chunked: true, .. } => Body::Chunked(Chunked::new(r)),
            Head {
                length: Some(n), ..
            } => Body::Length(r.take(*n)),
            _ => Body::UntilClose(r),
        }
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Chunked(c) => c.read(buf),
            Body::Length(t) => {
                let want = t.limit();
                let n = t.read(buf)?;
                if n == 0 && want > 0 && !buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before the whole body came",
                    ));
                }
                Ok(n)
            }
            Body::UntilClose(r) => r.read(buf),
        }
    }
}

/// Decodes chunked transfer coding: `SIZE-IN-HEX[;ext]\r\n DATA \r\n` ... `0\r\n [trailers] \r\n`.
pub(crate) struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: usize,
    /// A chunk's data just ended: its CRLF comes next.
    crlf_due: bool,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    pub(crate) fn new(inner: R) -> Chunked<R> {
        Chunked {
            inner,
            left: 0,
            crlf_due: false,
            done: false,
        }
    }

    /// Read the next chunk's size line (after the previous chunk's CRLF); at the last chunk, skip the trailers.
    fn next_chunk(&mut self) -> io::Result<()> {
        if self.crlf_due {
            if !read_line(&mut self.inner)?.is_empty() {
                return Err(invalid("chunk data runs past its size".into()));
            }
            self.crlf_due = false;
        }
        let line = read_line(&mut self.inner)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        self.left = usize::from_str_radix(hex, 16)
            .map_err(|_| invalid(format!("bad chunk size line: {line:.40}")))?;
        if self.left == 0 {
            // Trailers (the gateway sends Grpc-Trailer-Content-Type on error replies), then a blank line.
            while !read_line(&mut self.inner)?.is_empty() {}
            self.done = true;
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunk",
            ));
        }
        self.left -= n;
        self.crlf_due = self.left == 0;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_host_and_port() {
        for (url, want) in [
            ("http://127.0.0.1:2379", "127.0.0.1:2379"),
            ("  HTTP://10.0.0.1:23790/ ", "10.0.0.1:23790"),
            ("http://[::1]:2379", "[::1]:2379"),
            ("http://etcd-0.example:2379", "etcd-0.example:2379"),
        ] {
            assert_eq!(parse_url(url).expect(url), want);
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong_in_one_line() {
        for (url, says) in [
            ("127.0.0.1:2379", "want http://HOST:PORT"),
            ("ftp://1.2.3.4:5", "only http://"),
            ("http://1.2.3.4", "no port"),
            ("http://1.2.3.4:0", "1 to 65535"),
            ("http://1.2.3.4:99999", "1 to 65535"),
            ("http://1.2.3.4:x", "1 to 65535"),
            ("http://1.2.3.4:2379/v3", "no path"),
            ("http://u@1.2.3.4:2379", "no path, query or user"),
            ("http://::1:2379", "brackets"),
            ("http://[::1:2379", "unclosed"),
            ("http://[zz]:2379", "not an IPv6"),
            ("http://:2379", "not an IP address or a host name"),
            ("http://a_b:2379", "not an IP address or a host name"),
        ] {
            let e = parse_url(url).expect_err(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse_url("https://1.2.3.4:2379").expect_err("https");
        assert!(matches!(e, EtcdError::TlsUnsupported(_)), "{e}");
        assert!(e.to_string().contains("TLS"), "{e}");
    }

    /// A reply as the gateway sent it for a failed compaction (captured from etcd 3.4.23): chunked, with a
    /// trailer after the last chunk.
    const CHUNKED_ERROR: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
        Content-Type: application/json\r\n\
        Trailer: Grpc-Trailer-Content-Type\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        2c\r\n{\"error\":\"etcdserver: mvcc: required revisio\r\n\
        1c;ext=1\r\nn has been compacted\",\"code\"\r\n\
        4\r\n:11}\r\n\
        0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";

    #[test]
    fn chunked_replies_decode_with_extensions_and_trailers() {
        let want: &[u8] =
            b"{\"error\":\"etcdserver: mvcc: required revision has been compacted\",\"code\":11}";
        // Whole, and one byte at a time (every chunk and line boundary split).
        for cap in [8192, 1] {
            let (status, body) =
                read_reply(BufReader::with_capacity(cap, CHUNKED_ERROR)).expect("reply");
            assert_eq!(status, 400);
            assert_eq!(body, want);
        }
    }

    #[test]
    fn content_length_and_until_close_bodies() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(
            read_reply(&reply[..]).expect("reply"),
            (200, b"{}".to_vec())
        );
        let reply = b"HTTP/1.1 404 Not Found\nX: y\n\nNot Found\n";
        assert_eq!(
            read_reply(&reply[..]).expect("reply"),
            (404, b"Not Found\n".to_vec())
        );
    }

    #[test]
    fn truncated_or_garbled_replies_are_errors() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            let got = read_reply(reply);
            assert!(
                got.is_err(),
                "{:?}: {got:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }
}
