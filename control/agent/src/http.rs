//! A small HTTP/1.1 JSON client over Unix sockets (the data planes' APIs) and TCP (control,
//! image URLs): one connection per request, a deadline on every call.
//!
//! The error bodies of the three daemons differ (`{"error": {"message"}}` for blockdp,
//! `{"NeutronError": {"message"}}` for netdp, `{"fault_message"}` for vmm):
//! [`error_message`] reads any of them, so callers can report what the daemon said.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Errors of one HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket or address could not be reached.
    #[error("connect to {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, send, or reading the body).
    #[error("{method} {path} on {endpoint}")]
    Exchange {
        /// Where.
        endpoint: String,
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{method} {path} on {endpoint}: no answer within {timeout:?}")]
    Timeout {
        /// Where.
        endpoint: String,
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The server answered with an error status.
    #[error("{method} {path} answered {status}: {message}")]
    Status {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The answer is not the JSON expected.
    #[error("{method} {path}: unexpected answer body")]
    Decode {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The URL cannot be used.
    #[error("invalid URL {0:?}: only http://host[:port]/path is supported")]
    Url(String),
}

impl HttpError {
    /// The HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp(String, u16),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Splits `http://host[:port][/path]` into an endpoint and a path.
pub fn parse_http_url(url: &str) -> Result<(Endpoint, String), HttpError> {
    let bad = || HttpError::Url(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((Endpoint::Tcp(host.to_string(), port), path.to_string()))
}

/// An answer: status and body bytes.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    headers: Vec<(String, String)>,
}

impl Client {
    /// A client of the server on Unix socket `path`.
    pub fn unix(path: impl AsRef<Path>, timeout: Duration) -> Client {
        Client {
            endpoint: Endpoint::Unix(path.as_ref().to_path_buf()),
            timeout,
            headers: Vec::new(),
        }
    }

    /// A client of `endpoint`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Client {
        Client {
            endpoint,
            timeout,
            headers: Vec::new(),
        }
    }

    /// Adds a header to every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends a request with an optional JSON body; any status is returned.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        let endpoint = self.endpoint.to_string();
        let exchange = async {
            let io_err = |source| HttpError::Connect {
                endpoint: endpoint.clone(),
                source,
            };
            let ex_err = |source| HttpError::Exchange {
                endpoint: endpoint.clone(),
                method: method.clone(),
                path: path.to_string(),
                source,
            };
            let host = match &self.endpoint {
                Endpoint::Unix(_) => "localhost".to_string(),
                Endpoint::Tcp(h, p) => format!("{h}:{p}"),
            };
            let mut req = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, host)
                .header(hyper::header::ACCEPT, "application/json");
            for (k, v) in &self.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| HttpError::Connect {
                    endpoint: endpoint.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?;
            let resp = match &self.endpoint {
                Endpoint::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await.map_err(io_err)?;
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(ex_err)?;
                    tokio::spawn(conn);
                    tx.send_request(req).await.map_err(ex_err)?
                }
                Endpoint::Tcp(h, port) => {
                    let s = tokio::net::TcpStream::connect((h.as_str(), *port))
                        .await
                        .map_err(io_err)?;
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(ex_err)?;
                    tokio::spawn(conn);
                    tx.send_request(req).await.map_err(ex_err)?
                }
            };
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(ex_err)?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                endpoint: endpoint.clone(),
                method: method.clone(),
                path: path.to_string(),
                timeout: self.timeout,
            })?
    }

    /// Sends a request and fails unless the status is 2xx; returns the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Bytes, HttpError> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("request bodies serialize"));
        let a = self.send(method.clone(), path, bytes).await?;
        if !(200..300).contains(&a.status) {
            return Err(HttpError::Status {
                method,
                path: path.to_string(),
                status: a.status,
                message: error_message(&a.body),
            });
        }
        Ok(a.body)
    }

    /// Like [`Client::call`], decoding the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, HttpError> {
        let bytes = self.call(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| HttpError::Decode {
            method,
            path: path.to_string(),
            source,
        })
    }
}

/// No request body.
pub const NO_BODY: Option<&()> = None;

/// What an error body says, whichever daemon wrote it.
pub fn error_message(body: &[u8]) -> String {
    let text = || String::from_utf8_lossy(body).trim().to_string();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return text();
    };
    let candidates = [
        v.pointer("/error/message"),
        v.pointer("/NeutronError/message"),
        v.pointer("/fault_message"),
        v.pointer("/badRequest/message"),
        v.pointer("/itemNotFound/message"),
        v.pointer("/conflictingRequest/message"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_endpoint_and_path() {
        assert_eq!(
            parse_http_url("http://10.0.0.1:8080/v1/nodes?x=1").unwrap(),
            (
                Endpoint::Tcp("10.0.0.1".into(), 8080),
                "/v1/nodes?x=1".into()
            )
        );
        assert_eq!(
            parse_http_url("http://images").unwrap(),
            (Endpoint::Tcp("images".into(), 80), "/".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:9/k").unwrap(),
            (Endpoint::Tcp("::1".into(), 9), "/k".into())
        );
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://h:99999/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_bodies_of_each_daemon_are_read() {
        assert_eq!(
            error_message(br#"{"error": {"code": "x", "message": "no volume"}}"#),
            "no volume"
        );
        assert_eq!(
            error_message(br#"{"NeutronError": {"type": "x", "message": "no net"}}"#),
            "no net"
        );
        assert_eq!(error_message(br#"{"fault_message": "bad"}"#), "bad");
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }
}
