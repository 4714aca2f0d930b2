//! Calls to a node agent's HTTP API (`ferrostack-agent --listen`), JSON in and out, one
//! connection per call, every call under a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Errors talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent URL is not `http://host:port[/prefix]`.
    #[error("the agent URL {0:?} is not http://host:port")]
    Url(String),
    /// Connecting or the exchange failed.
    #[error("the agent at {0} did not answer: {1}")]
    Io(String, String),
    /// The call took longer than its deadline.
    #[error("the agent at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The agent answered with an error.
    #[error("the agent refused ({0}): {1}")]
    Status(StatusCode, String),
}

/// One call; returns the status and the JSON body (`Null` when empty). Error statuses
/// become [`AgentError::Status`] with the agent's message.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    deadline: Duration,
) -> Result<(StatusCode, Value), AgentError> {
    match tokio::time::timeout(deadline, call_inner(base, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Timeout(base.to_string(), deadline)),
    }
}

async fn call_inner(
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), AgentError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| AgentError::Url(base.to_string()))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(AgentError::Url(base.to_string()));
    }
    let io = |e: &dyn std::fmt::Display| AgentError::Io(base.to_string(), e.to_string());
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| io(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("host", authority);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| io(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
    let status = resp.status();
    let data = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| io(&e))?
        .to_bytes();
    let value: Value = if data.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()))
    };
    if status.is_success() {
        Ok((status, value))
    } else {
        let msg = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(AgentError::Status(status, msg))
    }
}
