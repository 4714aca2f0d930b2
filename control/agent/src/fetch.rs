//! Kernels and initrds given by URL are downloaded (streamed to a temporary file, fsynced,
//! renamed), since the VMM loads them from a host path. [`cached`] keeps one copy per URL
//! (Glance's image data never changes under an id), so the servers of one image share it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::http::{Endpoint, HttpError, parse_http_url};

/// Errors downloading an image.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is unusable or the server unreachable.
    #[error("fetch {url}")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: HttpError,
    },
    /// The server did not answer 200.
    #[error("fetch {url}: server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The transfer broke off.
    #[error("fetch {url}: transfer failed: {reason}")]
    Transfer {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Writing the file failed.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It took too long.
    #[error("fetch {url}: not done within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// The cached copy of `url` in `cache_dir`, downloaded first if absent.
pub async fn cached(url: &str, cache_dir: &Path, timeout: Duration) -> Result<PathBuf, FetchError> {
    use sha2::Digest;
    let name = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    let path = cache_dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(|source| FetchError::Write {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    download(url, &path, timeout).await?;
    Ok(path)
}

/// Downloads `url` to `dest`; returns the number of bytes.
pub async fn download(url: &str, dest: &Path, timeout: Duration) -> Result<u64, FetchError> {
    tokio::time::timeout(timeout, fetch(url, dest))
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_string(),
            timeout,
        })?
}

async fn fetch(url: &str, dest: &Path) -> Result<u64, FetchError> {
    let http = |source| FetchError::Http {
        url: url.to_string(),
        source,
    };
    let transfer = |reason: String| FetchError::Transfer {
        url: url.to_string(),
        reason,
    };
    let (endpoint, path) = parse_http_url(url).map_err(http)?;
    let Endpoint::Tcp(host, port) = endpoint else {
        unreachable!("parse_http_url gives TCP endpoints");
    };
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| {
            http(HttpError::Connect {
                endpoint: format!("{host}:{port}"),
                source,
            })
        })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transfer(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| transfer(e.to_string()))?;
    let mut resp = tx
        .send_request(req)
        .await
        .map_err(|e| transfer(e.to_string()))?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let write = |source| FetchError::Write {
        path: dest.to_path_buf(),
        source,
    };
    // A private temporary name: concurrent downloads of one URL each finish their own file
    // and the last rename wins with identical bytes.
    let tmp = dest.with_extension(format!("part-{}", uuid::Uuid::new_v4()));
    let mut file = std::fs::File::create(&tmp).map_err(write)?;
    let mut total = 0u64;
    let body = async {
        while let Some(frame) = resp.body_mut().frame().await {
            let frame = frame.map_err(|e| transfer(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).map_err(write)?;
                total += data.len() as u64;
            }
        }
        file.sync_all().map_err(write)?;
        std::fs::rename(&tmp, dest).map_err(write)
    };
    if let Err(e) = body.await {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(total)
}
