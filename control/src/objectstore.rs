//! The image store client: objectd's Swift API over HTTP. Bodies are streamed both ways;
//! nothing holds a whole image. Authentication is a token control gives itself (objectd
//! checks it against control, `store-auth = "keystone"`) or a TempAuth login.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use md5::Digest;

use crate::api::BoxError;
use crate::config::{ImageConfig, StoreAuth};

/// Errors talking to objectd.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The configured URL is unusable.
    #[error("images.store-url must be http://host:port[/prefix]")]
    BadUrl,
    /// objectd could not be reached.
    #[error("cannot reach objectd at {0}")]
    Connect(String, #[source] std::io::Error),
    /// The HTTP exchange failed (including a client body that failed mid-stream).
    #[error("objectd request failed")]
    Http(#[source] hyper::Error),
    /// A request could not be built.
    #[error("cannot build the objectd request")]
    Request(#[source] http::Error),
    /// objectd answered an unexpected status.
    #[error("objectd answered {0} to {1}")]
    Status(StatusCode, &'static str),
    /// TempAuth gave no token or storage URL.
    #[error("objectd's TempAuth answer lacks a token or storage URL")]
    NoToken,
    /// No token could be made for the service user.
    #[error("cannot make a token for the image service: {0}")]
    ServiceToken(String),
}

/// Why a one-request HTTP exchange (see [`send_once`]) failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection (one that took longer than the timeout has kind `TimedOut`).
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    Http(hyper::Error),
}

/// Sends one request on a new HTTP/1.1 connection to `addr` (`host:port`), waiting at
/// most `connect_timeout` for the connection; the connection lives while the answer's
/// body is read.
pub async fn send_once<B>(
    addr: &str,
    connect_timeout: Option<Duration>,
    req: http::Request<B>,
) -> Result<http::Response<Incoming>, SendError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let connect = tokio::net::TcpStream::connect(addr);
    let stream = match connect_timeout {
        Some(t) => tokio::time::timeout(t, connect).await.map_err(|_| {
            SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting timed out",
            ))
        })?,
        None => connect.await,
    }
    .map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(SendError::Http)
}

/// Credentials for one account on objectd.
#[derive(Debug, Clone)]
pub struct Session {
    /// Path of the account, e.g. `/v1/AUTH_<project>`.
    pub account_path: String,
    /// Token to send as `X-Auth-Token`.
    pub token: String,
    /// When to get a new one.
    pub renew_at: Instant,
}

/// objectd as the image store.
pub struct ObjectStore {
    authority: String,
    prefix: String,
    auth: StoreAuth,
    user: String,
    key: String,
    /// The container holding image data.
    pub container: String,
    session: Mutex<Option<Session>>,
    container_ready: Mutex<bool>,
}

/// A streamed object body.
pub type Incoming = hyper::body::Incoming;

impl ObjectStore {
    /// A client for the configured objectd (no connection is made yet).
    pub fn new(cfg: &ImageConfig) -> Result<ObjectStore, ObjectStoreError> {
        let uri: http::Uri = cfg
            .store_url
            .parse()
            .map_err(|_| ObjectStoreError::BadUrl)?;
        let authority = uri.authority().ok_or(ObjectStoreError::BadUrl)?.to_string();
        Ok(ObjectStore {
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            auth: cfg.store_auth,
            user: cfg.store_user.clone(),
            key: cfg.store_key.clone(),
            container: cfg.container.clone(),
            session: Mutex::new(None),
            container_ready: Mutex::new(false),
        })
    }

    /// How this client authenticates.
    pub fn auth(&self) -> StoreAuth {
        self.auth
    }

    /// The objectd prefix (for building account paths).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cached session if still fresh.
    pub fn cached_session(&self) -> Option<Session> {
        self.session
            .lock()
            .expect("session")
            .clone()
            .filter(|s| s.renew_at > Instant::now())
    }

    /// Remembers a session.
    pub fn set_session(&self, s: Session) {
        *self.session.lock().expect("session") = Some(s);
    }

    /// Forgets the session (after objectd refused it).
    pub fn clear_session(&self) {
        *self.session.lock().expect("session") = None;
        *self.container_ready.lock().expect("container") = false;
    }

    async fn send<B>(
        &self,
        req: http::Request<B>,
    ) -> Result<http::Response<Incoming>, ObjectStoreError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        send_once(&self.authority, None, req)
            .await
            .map_err(|e| match e {
                SendError::Connect(e) => ObjectStoreError::Connect(self.authority.clone(), e),
                SendError::Http(e) => ObjectStoreError::Http(e),
            })
    }

    fn builder(&self, method: http::Method, path: &str, token: &str) -> http::request::Builder {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("x-auth-token", token)
    }

    /// Logs in with TempAuth.
    pub async fn tempauth_login(&self) -> Result<Session, ObjectStoreError> {
        let req = http::Request::get(format!("{}/auth/v1.0", self.prefix))
            .header("host", &self.authority)
            .header("x-auth-user", &self.user)
            .header("x-auth-key", &self.key)
            .body(Empty::<Bytes>::new())
            .map_err(ObjectStoreError::Request)?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(ObjectStoreError::Status(resp.status(), "TempAuth login"));
        }
        let h = resp.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (Some(token), Some(url)) = (get("x-auth-token"), get("x-storage-url")) else {
            return Err(ObjectStoreError::NoToken);
        };
        let account_path = url
            .parse::<http::Uri>()
            .map(|u| u.path().to_string())
            .map_err(|_| ObjectStoreError::NoToken)?;
        let ttl = get("x-auth-token-expires")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(3600);
        Ok(Session {
            account_path,
            token,
            renew_at: Instant::now() + Duration::from_secs(ttl.saturating_sub(300).max(30)),
        })
    }

    /// Creates the image container once per session.
    pub async fn ensure_container(&self, s: &Session) -> Result<(), ObjectStoreError> {
        if *self.container_ready.lock().expect("container") {
            return Ok(());
        }
        let req = self
            .builder(
                http::Method::PUT,
                &format!("{}/{}", s.account_path, self.container),
                &s.token,
            )
            .body(Empty::<Bytes>::new())
            .map_err(ObjectStoreError::Request)?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(ObjectStoreError::Status(resp.status(), "container create"));
        }
        *self.container_ready.lock().expect("container") = true;
        Ok(())
    }

    fn object_path(&self, s: &Session, name: &str) -> String {
        format!("{}/{}/{}", s.account_path, self.container, name)
    }

    /// Streams `body` into object `name`; returns objectd's ETag.
    pub async fn put<B>(&self, s: &Session, name: &str, body: B) -> Result<String, ObjectStoreError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut b = self
            .builder(http::Method::PUT, &self.object_path(s, name), &s.token)
            .header("content-type", "application/octet-stream");
        if let Some(n) = body.size_hint().exact() {
            b = b.header("content-length", n);
        } else {
            b = b.header("transfer-encoding", "chunked");
        }
        let req = b.body(body).map_err(ObjectStoreError::Request)?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_matches('"')
            .to_string();
        let _ = resp.into_body().collect().await;
        if status != StatusCode::CREATED {
            return Err(ObjectStoreError::Status(status, "object upload"));
        }
        Ok(etag)
    }

    /// Opens object `name` for streaming.
    pub async fn get(
        &self,
        s: &Session,
        name: &str,
    ) -> Result<http::Response<Incoming>, ObjectStoreError> {
        let req = self
            .builder(http::Method::GET, &self.object_path(s, name), &s.token)
            .body(Empty::<Bytes>::new())
            .map_err(ObjectStoreError::Request)?;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(ObjectStoreError::Status(resp.status(), "object download"));
        }
        Ok(resp)
    }

    /// Deletes object `name` (absent is fine).
    pub async fn delete(&self, s: &Session, name: &str) -> Result<(), ObjectStoreError> {
        let req = self
            .builder(http::Method::DELETE, &self.object_path(s, name), &s.token)
            .body(Empty::<Bytes>::new())
            .map_err(ObjectStoreError::Request)?;
        let resp = self.send(req).await?;
        let st = resp.status();
        let _ = resp.into_body().collect().await;
        if st.is_success() || st == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(ObjectStoreError::Status(st, "object delete"))
        }
    }
}

/// A file streamed as a body: a blocking reader feeds chunks through a small channel.
pub struct FileBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    len: u64,
}

impl FileBody {
    /// Chunk size read at a time.
    pub const CHUNK: usize = 256 * 1024;

    /// Opens `path` and starts reading it.
    pub async fn open(path: &std::path::Path) -> std::io::Result<FileBody> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file;
            loop {
                let mut buf = vec![0u8; FileBody::CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        Ok(FileBody { rx, len })
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Digests of a stream that went through a [`Hashing`] body.
#[derive(Debug, Clone, Default)]
pub struct Digests {
    /// Bytes seen.
    pub size: u64,
    /// MD5, hex.
    pub md5: String,
    /// SHA-512, hex.
    pub sha512: String,
}

/// Why a [`Hashing`] body stopped.
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// More bytes than allowed.
    #[error("image data exceeds the {0}-byte limit")]
    TooLarge(u64),
    /// The client's body failed.
    #[error("reading image data from the client failed")]
    Client(#[source] BoxError),
}

/// A body that passes frames through while computing size, MD5 and SHA-512, and stops
/// with an error past a size limit. The digests appear in `result` when the stream ends.
pub struct Hashing<B> {
    inner: B,
    md5: md5::Md5,
    sha: sha2::Sha512,
    size: u64,
    limit: u64,
    expected: Option<u64>,
    finished: bool,
    /// Filled in at the end of the stream.
    pub result: Arc<Mutex<Option<Digests>>>,
    /// Set when the limit was hit.
    pub too_large: Arc<Mutex<bool>>,
}

impl<B> Hashing<B> {
    /// Wraps `inner` with a size limit.
    pub fn new(inner: B, limit: u64) -> Hashing<B>
    where
        B: Body,
    {
        let expected = inner.size_hint().exact();
        Hashing {
            expected,
            finished: false,
            inner,
            md5: md5::Md5::new(),
            sha: sha2::Sha512::new(),
            size: 0,
            limit,
            result: Arc::new(Mutex::new(None)),
            too_large: Arc::new(Mutex::new(false)),
        }
    }
}

impl<B> Hashing<B> {
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let md5 = std::mem::take(&mut self.md5);
        let sha = std::mem::take(&mut self.sha);
        *self.result.lock().expect("digests") = Some(Digests {
            size: self.size,
            md5: hex::encode(md5.finalize()),
            sha512: hex::encode(sha.finalize()),
        });
    }
}

impl<B> Body for Hashing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = HashingError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HashingError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HashingError::Client(e.into())))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.size += d.len() as u64;
                    if this.size > this.limit {
                        *this.too_large.lock().expect("flag") = true;
                        return Poll::Ready(Some(Err(HashingError::TooLarge(this.limit))));
                    }
                    this.md5.update(d);
                    this.sha.update(d);
                    // A sender that knows the length stops polling after the last byte.
                    if Some(this.size) == this.expected {
                        this.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::collections::VecDeque;

    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn hashing_body_digests_and_limits() {
        let body = Hashing::new(Full::new(Bytes::from_static(b"hello")), 100);
        let result = body.result.clone();
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        let d = result.lock().unwrap().clone().unwrap();
        assert_eq!(d.size, 5);
        assert_eq!(d.md5, "5d41402abc4b2a76b9719d911017c592");
        assert!(d.sha512.starts_with("9b71d224bd62f378"));

        let chunks = Chunks((0..3).map(|_| Bytes::from_static(b"0123456789")).collect());
        let body = Hashing::new(chunks, 25);
        let flag = body.too_large.clone();
        let result = body.result.clone();
        assert!(matches!(
            body.collect().await,
            Err(HashingError::TooLarge(25))
        ));
        assert!(*flag.lock().unwrap());
        assert!(
            result.lock().unwrap().is_none(),
            "no digests for a cut stream"
        );
    }
}
