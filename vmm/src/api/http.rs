//! A small HTTP/1.1 parser and writer: enough for API clients (curl, Firecracker's SDKs,
//! hyper), with bounded header and body sizes. Bodies need `Content-Length`; chunked
//! request bodies are refused.

/// Largest header block accepted.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a request could not be parsed; the connection is answered 400 (or 413/501) and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line or a header is malformed.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Headers or body exceed the limits.
    #[error("request too large")]
    TooLarge,
    /// A transfer encoding we do not implement.
    #[error("unsupported transfer encoding")]
    Unsupported,
}

impl HttpError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::TooLarge => 413,
            HttpError::Unsupported => 501,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The body.
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses one request from the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the request and how many bytes it used.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(end) = find_header_end(buf) else {
        return if buf.len() > MAX_HEADER_BYTES {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEADER_BYTES {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not utf-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("method"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HttpError::Malformed("version")),
    };
    let mut length = 0usize;
    let mut close = http10;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed("header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| HttpError::Malformed("content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Unsupported);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close")
                || (http10 && !value.eq_ignore_ascii_case("keep-alive"));
        }
    }
    if length > MAX_BODY_BYTES {
        return Err(HttpError::TooLarge);
    }
    let body_start = end + 4;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Some((
        Request {
            method: method.to_string(),
            path,
            body: buf[body_start..body_start + length].to_vec(),
            close,
        },
        body_start + length,
    )))
}

/// Whether the request at the front of `buf` has all its headers, asks for
/// `Expect: 100-continue` (curl does for bodies over 1 KiB), and still lacks its body: the
/// server should then answer `100 Continue` so the client sends the body at once.
pub fn wants_continue(buf: &[u8]) -> bool {
    let Some(end) = find_header_end(buf) else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return false;
    };
    let mut expect = false;
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("expect") {
                expect = value.trim().eq_ignore_ascii_case("100-continue");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    expect && buf.len() < end + 4 + length
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// Serializes a response with `body` of `content_type` (empty body for 204).
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: Firecracker API\r\n",
        reason(status)
    );
    if status != 204 {
        out.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if status != 204 {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_put_with_body_and_pipelined_requests() {
        let raw = b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n";
        let (r, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/actions"));
        assert_eq!(r.body, b"{}");
        let (r2, used2) = parse_request(&raw[used..]).unwrap().unwrap();
        assert_eq!(
            (r2.method.as_str(), r2.path.as_str(), used + used2),
            ("GET", "/", raw.len())
        );
    }

    #[test]
    fn incomplete_requests_wait_and_bad_ones_fail() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Ok(None)
        );
        assert!(parse_request(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_request(b"GET  HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Unsupported)
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HttpError::TooLarge)
        );
        assert_eq!(
            parse_request(&[b'a'; MAX_HEADER_BYTES + 1]),
            Err(HttpError::TooLarge)
        );
    }

    #[test]
    fn expect_continue_is_seen_until_the_body_arrives() {
        let head = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(wants_continue(head));
        let mut full = head.to_vec();
        full.extend_from_slice(b"abc");
        assert!(!wants_continue(&full));
        assert!(!wants_continue(
            b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!wants_continue(
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\n"
        ));
    }

    #[test]
    fn no_content_responses_have_no_body() {
        let r = response(204, "application/json", b"ignored");
        assert!(r.ends_with(b"\r\n\r\n"));
        assert!(!String::from_utf8(r).unwrap().contains("Content-Length"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_overrun(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((req, used))) = parse_request(&buf) {
                prop_assert!(used <= buf.len());
                prop_assert!(req.body.len() <= MAX_BODY_BYTES);
            }
        }

        #[test]
        fn well_formed_requests_round_trip(
            path in "/[a-z0-9/_-]{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut raw = format!("PUT {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            raw.extend_from_slice(&body);
            let (req, used) = parse_request(&raw).unwrap().unwrap();
            prop_assert_eq!(used, raw.len());
            prop_assert_eq!(req.path, path);
            prop_assert_eq!(req.body, body);
        }
    }
}
