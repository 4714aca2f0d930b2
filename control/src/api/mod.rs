//! The public HTTP API: one hyper server, routes by path prefix.
//!
//! `/` and `/v3/...` are Keystone v3 ([`identity`]), `/image/...` is Glance v2 ([`image`]).
//! JSON requests are read whole up to `max-request-body` (413 beyond) and handled on the
//! async worker when all they read is in memory, else on the blocking pool; password
//! checks run on the hashing pool ([`crate::identity::password`]); image data is streamed.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::Value;
use tracing::Instrument;

use crate::service::{Service, ServiceError};

pub mod compute;
pub mod identity;
pub mod image;
mod image_task;
mod instance_actions;
mod ip_availability;
pub mod network;
pub mod neutron;
mod neutron_quota;
mod openstack;
mod server_meta;
mod subnet_pool;
pub mod telemetry;
pub mod usage;
pub mod volume;

/// A response body: whole JSON or a stream of image bytes.
pub type Body = BoxBody<Bytes, BoxError>;
/// Errors a streamed body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response.
pub type Response = http::Response<Body>;

/// Which API's error shape to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `{"error": {"code", "title", "message"}}`.
    Keystone,
    /// `{"code", "title", "message"}` in Glance's (webob's) shape.
    Glance,
    /// `{"<kind>": {"code", "message"}}` in Nova's shape (`itemNotFound`, `badRequest`...).
    Nova,
}

/// An error answer: status, and what was wrong.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
    /// The service's name for the error, where its shape carries one (Neutron's `type`,
    /// such as `InvalidRoutes`); none: the shape's generic one.
    pub kind: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind: None,
        }
    }
    /// The same error, named `kind` where the service's shape names errors.
    pub fn kind(mut self, kind: &'static str) -> ApiError {
        self.kind = Some(kind);
        self
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// The response in the given API's shape.
    pub fn into_response(self, flavor: Flavor) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = match flavor {
            Flavor::Keystone => serde_json::json!({"error": {
                "code": self.status.as_u16(), "title": title, "message": self.message}}),
            Flavor::Glance => serde_json::json!({
                "code": format!("{} {}", self.status.as_u16(), title),
                "title": title, "message": self.message}),
            Flavor::Nova => {
                let kind = match self.status.as_u16() {
                    400 => "badRequest",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "itemNotFound",
                    405 => "badMethod",
                    409 => "conflictingRequest",
                    413 => "overLimit",
                    501 => "notImplemented",
                    _ => "computeFault",
                };
                serde_json::json!({kind: {"code": self.status.as_u16(), "message": self.message}})
            }
        };
        let mut r = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED && flavor == Flavor::Keystone {
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Keystone uri=\"/v3\""),
            );
        }
        r
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::Api(a) => a,
            // Only made up in cached-only mode, whose answer is thrown away.
            ServiceError::Store(crate::store::StoreError::WouldBlock)
            | ServiceError::Password(crate::identity::password::PasswordError::WouldBlock) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "retry")
            }
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the control log",
                )
            }
        }
    }
}

/// A whole-body response.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    if !content_type.is_empty() {
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
    }
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Response {
    full(status, "application/json", body.to_string())
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response {
    full(status, "", Bytes::new())
}

/// A parsed request with its body read.
#[derive(Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path segments after the API prefix, percent-decoded.
    pub segs: Vec<String>,
    /// Query pairs in order.
    pub query: Vec<(String, String)>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Request {
    /// The first value of a query parameter.
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The body as JSON of type `T`, or 400 saying why not.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("the request needs a JSON body"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a path into decoded segments (no empty ones).
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

/// Reads a body up to `limit` bytes; beyond that, 413.
pub async fn read_limited(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => {
            body_read();
            Ok(c.to_bytes())
        }
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the {limit}-byte limit"),
            ))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the body failed: {e}"
        ))),
    }
}

tokio::task_local! {
    /// Whether the request being answered on this task has had its body read to the end.
    static BODY_READ: std::cell::Cell<bool>;
}

/// Notes that the request being answered has had its body read to the end, so an error
/// answer may keep the connection (see [`handle`]). Outside a request's task: nothing.
pub fn body_read() {
    let _ = BODY_READ.try_with(|f| f.set(true));
}

/// Answers one request.
pub async fn handle(svc: Arc<Service>, req: http::Request<hyper::body::Incoming>) -> Response {
    let path = req.uri().path().to_string();
    let segs = segments(&path);
    let flavor = if segs.first().map(String::as_str) == Some("image") {
        Flavor::Glance
    } else {
        Flavor::Keystone
    };
    let started = std::time::Instant::now();
    let rid = instance_actions::new_request_id();
    let method = req.method().clone();
    // An error can be answered before the request's body is read (or, with `Expect:
    // 100-continue`, before it is sent); hyper then ends the connection after the answer,
    // and the answer must say so, or the client sends its next request on a closed
    // connection. A body read to its end (see `body_read`) keeps the connection.
    let declares_body = objectd::api::declares_body(req.headers());
    let first = segs.first().map(String::as_str);
    let api = match first {
        Some("image") => 1,
        Some("telemetry") => 2,
        Some("compute") => 3,
        Some("v1")
            if matches!(
                segs.get(1).map(String::as_str),
                Some("nodes" | "image-data")
            ) =>
        {
            3
        }
        Some("network") => 4,
        Some("metrics") if segs.len() == 1 => 5,
        Some("volume") => 6,
        _ => 0,
    };
    // Everything logged while answering (on this task, on the blocking pool, in tasks the
    // request starts) carries the id the client is given.
    let span = tracing::info_span!("request", id = %rid);
    let compute = first == Some("compute");
    let nova_rid = rid.clone();
    // An application credential with access rules may make only the requests they list.
    let refused = match req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| {
            crate::identity::token::methods_hint(t)
                .is_some_and(|m| m & crate::identity::token::method::APP_CREDENTIAL != 0)
        })
        .and_then(|t| Some((t.to_string(), rule_target(&path, &method)?)))
    {
        Some((token, (services, rel))) => {
            let m = method.to_string();
            cached_or_blocking(svc.clone(), move |svc| {
                svc.access_allowed(&token, services, &m, &rel)
                    .map_err(ApiError::from)
            })
            .await
            .err()
        }
        None => None,
    };
    let mut req = req;
    req.extensions_mut().insert(RequestId(rid.clone()));
    let handled = async move {
        if let Some(e) = refused {
            return e.into_response(flavor);
        }
        match api {
            1 => image::route(svc, req, segs[1..].to_vec())
                .await
                .unwrap_or_else(|e| e.into_response(flavor)),
            2 => {
                let segs = segs[1..].to_vec();
                let handler: Handler = |svc, r| telemetry::handle(svc, r).map_err(ApiError::from);
                json_route(svc, req, segs, handler, false)
                    .await
                    .unwrap_or_else(|e| e.into_response(flavor))
            }
            3 if compute => compute::route(svc, req, segs[1..].to_vec(), nova_rid).await,
            3 => compute::route_v1(svc, req, segs[1..].to_vec())
                .await
                .unwrap_or_else(|e| e.into_response(Flavor::Keystone)),
            4 => network::route(svc, req, segs[1..].to_vec()).await,
            6 => volume::route(svc, req, segs[1..].to_vec()).await,
            5 => full(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::telemetry::metrics::METRICS.render(),
            ),
            _ => identity::route_async(svc, req, segs)
                .await
                .unwrap_or_else(|e| e.into_response(flavor)),
        }
    }
    .instrument(span.clone());
    let (mut resp, read) = BODY_READ
        .scope(std::cell::Cell::new(false), async move {
            let resp = handled.await;
            (resp, BODY_READ.with(|f| f.get()))
        })
        .await;
    if declares_body && !read && !resp.status().is_success() {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Every OpenStack service answers with a request id (clients log it; for Nova it is
    // also the id of the instance actions the request records).
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-openstack-request-id", v);
    }
    let took = started.elapsed();
    crate::telemetry::metrics::METRICS.request(api, &method, resp.status().as_u16(), took);
    tracing::debug!(
        parent: &span,
        %method,
        path,
        status = resp.status().as_u16(),
        micros = took.as_micros() as u64,
        "answered"
    );
    resp
}

/// The id a request is answered under (`x-openstack-request-id`), in its extensions for
/// handlers that record it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What access rules see of a request: the catalog service types it goes to (none for
/// paths no catalog service has) and its path under their endpoint, as keystonemiddleware
/// sees it behind each service. `None` for what no rule governs: logins and token checks,
/// and version documents.
fn rule_target(path: &str, method: &Method) -> Option<(&'static [&'static str], String)> {
    let trimmed = path.trim_start_matches('/');
    let first = trimmed.split('/').next().unwrap_or("");
    let (services, rel): (&'static [&'static str], String) = match first {
        "v3" => (&["identity"], format!("/{trimmed}")),
        "image" => (&["image"], trimmed[first.len()..].to_string()),
        "compute" => (&["compute"], trimmed[first.len()..].to_string()),
        "network" => (&["network"], trimmed[first.len()..].to_string()),
        "volume" => (
            &["volumev3", "block-storage"],
            trimmed[first.len()..].to_string(),
        ),
        _ => (&[], format!("/{trimmed}")),
    };
    let depth = rel.split('/').filter(|s| !s.is_empty()).count();
    let login = first == "v3" && trimmed.split('/').nth(1) == Some("auth");
    let version_document = depth <= 1 && (*method == Method::GET || *method == Method::HEAD);
    if login || version_document || first.is_empty() {
        return None;
    }
    Some((services, rel))
}

type Handler = fn(&Service, &Request) -> Result<Response, ApiError>;

/// A JSON route: the body read whole, then the handler run on the async worker when
/// `inline` and all it reads is cached, else on the blocking pool.
async fn json_route(
    svc: Arc<Service>,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
    handler: Handler,
    inline: bool,
) -> Result<Response, ApiError> {
    let request = read_request(&svc, req, segs).await?;
    let head = request.method == Method::HEAD;
    let resp = if inline {
        cached_or_blocking(svc, move |svc| handler(svc, &request)).await?
    } else {
        blocking(svc, move |svc| handler(svc, &request)).await?
    };
    Ok(head_answer(head, resp))
}

/// Drops the body of an answer to HEAD (hyper strips it; keep the length honest).
pub fn head_answer(head: bool, mut resp: Response) -> Response {
    if head {
        *resp.body_mut() = Full::new(Bytes::new())
            .map_err(|never: Infallible| match never {})
            .boxed();
    }
    resp
}

/// A request with its body read whole, up to `max-request-body` (413 beyond).
pub async fn read_request(
    svc: &Service,
    req: http::Request<hyper::body::Incoming>,
    segs: Vec<String>,
) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > svc.config.raw.max_request_body as u64
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the {}-byte limit",
                svc.config.raw.max_request_body
            ),
        ));
    }
    let body = read_limited(body, svc.config.raw.max_request_body).await?;
    let request = Request {
        method: parts.method,
        segs,
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    Ok(request)
}

/// How many handlers may block at once: a few per core, so a burst of requests queues
/// (fairly, in arrival order) instead of starting a thread each and sharing the cores
/// between all of them.
fn blocking_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        tokio::sync::Semaphore::new((4 * cores).max(8))
    })
}

/// Runs blocking work (store, hashing) on the blocking pool, a bounded number at a time.
pub async fn blocking<T: Send + 'static>(
    svc: Arc<Service>,
    f: impl FnOnce(&Service) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = blocking_slots()
        .acquire()
        .await
        .expect("the slots are never closed");
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| f(&svc)))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("handler failed: {e}"),
            )
        })?
}

/// Runs `f` right here on the async worker if everything it needs is in memory (see
/// [`crate::store::snapshot::cached_only`]), else on the blocking pool.
pub async fn cached_or_blocking<T: Send + 'static>(
    svc: Arc<Service>,
    f: impl Fn(&Service) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if let Some(done) = crate::store::snapshot::cached_only(|| f(&svc)) {
        return done;
    }
    blocking(svc, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules_see_the_path_under_the_service() {
        let get = Method::GET;
        let t = |p: &str, m: &Method| rule_target(p, m).map(|(s, r)| (s.to_vec(), r));
        assert_eq!(
            t("/compute/v2.1/servers/x", &get),
            Some((vec!["compute"], "/v2.1/servers/x".into()))
        );
        assert_eq!(
            t("/image/v2/images", &get),
            Some((vec!["image"], "/v2/images".into()))
        );
        assert_eq!(
            t("/v3/users/u", &Method::DELETE),
            Some((vec!["identity"], "/v3/users/u".into()))
        );
        assert_eq!(
            t("/volume/v3/p/volumes", &get),
            Some((vec!["volumev3", "block-storage"], "/v3/p/volumes".into()))
        );
        assert_eq!(t("/v1/nodes/n", &get), Some((vec![], "/v1/nodes/n".into())));
        for free in [
            "/",
            "/v3",
            "/v3/auth/tokens",
            "/image",
            "/image/versions",
            "/compute/v2.1/",
        ] {
            assert_eq!(t(free, &get), None, "{free}");
        }
        assert_eq!(t("/v3/auth/tokens", &Method::POST), None);
        assert!(t("/v3", &Method::POST).is_some());
    }

    #[test]
    fn segments_decode() {
        assert_eq!(segments("/v3//users/a%20b/"), ["v3", "users", "a b"]);
        assert_eq!(segments("/x/%zz%4"), ["x", "%zz%4"]);
        assert!(segments("/").is_empty());
    }
}
