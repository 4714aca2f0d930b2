//! The HTTP front: one hyper service that routes each request to the Swift API, the S3
//! API or the daemon's own endpoints (`/metrics`), and renders errors the way each API's
//! clients expect them (Swift: short HTML as Swift's proxy answers; S3: the `<Error>` XML).

pub mod body;
pub mod http;
pub mod s3;
pub mod swift;

use std::convert::Infallible;
use std::sync::Arc;

use ::http::{HeaderValue, StatusCode};
use bytes::Bytes;

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use body::RespBody;

/// Everything a request handler needs.
pub struct State {
    /// The store.
    pub store: Store,
    /// The validated configuration.
    pub config: Config,
    /// TempAuth tokens and S3 keys.
    pub auth: Auth,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Keystone token validation, when configured.
    pub keystone: Option<crate::keystone::Keystone>,
}

/// An incoming request.
pub type Request = ::http::Request<hyper::body::Incoming>;
/// An outgoing response.
pub type Response = ::http::Response<RespBody>;

/// Which API a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Swift API v1 and TempAuth.
    Swift,
    /// S3.
    S3,
    /// The daemon's own endpoints.
    Internal,
}

impl Api {
    /// Label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Api::Swift => "swift",
            Api::S3 => "s3",
            Api::Internal => "internal",
        }
    }
}

/// A request that failed: status, a stable code, and what was wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (S3's error codes, reused for Swift).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code,
            "the resource could not be found",
        )
    }

    /// 500.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            err.to_string(),
        )
    }

    /// Renders the error for the API's clients.
    pub fn render(&self, api: Api) -> Response {
        let (ctype, body) = match api {
            Api::S3 => (
                "application/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
                    self.code,
                    s3::xml::escape(&self.message),
                    crate::store::random_hex(8)
                ),
            ),
            Api::Swift => (
                "text/html; charset=UTF-8",
                format!(
                    "<html><h1>{}</h1><p>{}</p></html>",
                    self.status.canonical_reason().unwrap_or(""),
                    s3::xml::escape(&self.message)
                ),
            ),
            Api::Internal => (
                "application/json",
                serde_json::json!({"error": {"code": self.code, "message": self.message}})
                    .to_string(),
            ),
        };
        let mut resp = ::http::Response::new(RespBody::full(body));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static(ctype));
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NoContainer => ApiError::not_found("NoSuchBucket"),
            StoreError::NotEmpty => ApiError::new(
                StatusCode::CONFLICT,
                "BucketNotEmpty",
                "there was a conflict when trying to complete your request: the container is not empty",
            ),
            StoreError::NoUpload => ApiError::not_found("NoSuchUpload"),
            StoreError::NoArchive(c) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "VersionsContainerMissing",
                format!("the container's versions container {c} does not exist"),
            ),
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store failure");
                ApiError::internal(other)
            }
        }
    }
}

/// Decides which API a request is for.
pub fn classify(req: &Request) -> Api {
    classify_head(req.uri(), req.headers())
}

/// [`classify`] on the parts it looks at.
pub fn classify_head(uri: &::http::Uri, headers: &::http::HeaderMap) -> Api {
    let path = uri.path();
    let s3_auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-") || v.starts_with("AWS "))
        || uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature=") || q.contains("X-Amz-Credential="));
    if path == "/metrics" && !s3_auth {
        return Api::Internal;
    }
    if !s3_auth
        && (path == "/info"
            || path.starts_with("/auth/")
            || path.starts_with("/v1/")
            || path == "/v1")
    {
        return Api::Swift;
    }
    Api::S3
}

/// The service: routes, renders errors, counts.
pub async fn handle(state: Arc<State>, req: Request) -> Result<Response, Infallible> {
    let start = crate::metrics::clock();
    let api = classify(&req);
    let method = req.method().clone();
    let bytes_in = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let declares_body = declares_body(req.headers());
    let result = match api {
        Api::Internal => Ok(metrics_response(&state)),
        Api::Swift => swift::handle(&state, req).await,
        Api::S3 => s3::handle(&state, req).await,
    };
    let mut resp = result.unwrap_or_else(|e| {
        if e.status.is_server_error() {
            tracing::warn!(api = api.label(), code = e.code, message = %e.message, "request failed");
        }
        e.render(api)
    });
    if declares_body && !resp.status().is_success() {
        close_after(&mut resp);
    }
    let bytes_out = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    state.metrics.observe(
        api,
        method.as_str(),
        resp.status().as_u16(),
        start,
        bytes_in,
        if method == ::http::Method::HEAD {
            0
        } else {
            bytes_out
        },
    );
    Ok(resp)
}

/// Whether a request says a body follows it (control asks the same).
pub fn declares_body(headers: &::http::HeaderMap) -> bool {
    headers.contains_key(::http::header::TRANSFER_ENCODING)
        || header(headers, "content-length").is_some_and(|v| v.trim() != "0")
}

/// Marks an answer as the connection's last. An error can be answered before the request's
/// body is read (or, with `Expect: 100-continue`, before it is sent); hyper then closes the
/// connection after the answer, and a client that was not told so may send its next
/// request on it and get no answer.
fn close_after(resp: &mut Response) {
    resp.headers_mut().insert(
        ::http::header::CONNECTION,
        ::http::HeaderValue::from_static("close"),
    );
}

fn metrics_response(state: &State) -> Response {
    let mut resp = ::http::Response::new(RespBody::full(state.metrics.render()));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Builds a response with a status and a full body.
pub fn response(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let body: Bytes = body.into();
    let len = body.len();
    let mut resp = ::http::Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-length", HeaderValue::from(len));
    resp
}

/// Sets a header from a string, skipping values that are not valid header values.
pub fn set_header(resp: &mut Response, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        ::http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        resp.headers_mut().insert(n, v);
    }
}

/// Reads a header as a string.
pub fn header<'a>(headers: &'a ::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes a raw query string into pairs (percent-decoding, `+` as space).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_parts(method: &str, uri: &str, auth: Option<&str>) -> Api {
        // `classify` takes a hyper request; its logic only reads the URI and headers,
        // so it is exercised through the same rules on an `http::Request<()>`.
        let mut b = ::http::Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let req = b.body(()).unwrap();
        classify_head(req.uri(), req.headers())
    }

    #[test]
    fn requests_go_to_the_right_api() {
        assert_eq!(classify_parts("GET", "/metrics", None), Api::Internal);
        assert_eq!(classify_parts("GET", "/info", None), Api::Swift);
        assert_eq!(classify_parts("GET", "/auth/v1.0", None), Api::Swift);
        assert_eq!(classify_parts("PUT", "/v1/AUTH_a/c/o", None), Api::Swift);
        assert_eq!(classify_parts("GET", "/bucket/key", None), Api::S3);
        assert_eq!(
            classify_parts("GET", "/v1/key", Some("AWS4-HMAC-SHA256 Credential=x")),
            Api::S3
        );
        assert_eq!(
            classify_parts("GET", "/b/k?X-Amz-Signature=ab&X-Amz-Credential=x", None),
            Api::S3
        );
    }
}
