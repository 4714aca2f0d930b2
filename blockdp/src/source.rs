//! Image sources for new volumes: a local raw file, or a raw image over `http://`.
//!
//! The HTTP body is streamed (never held whole in memory): the blocking volume code reads
//! it through [`HttpBody`], which pulls one frame at a time from the async client.

use std::fs::File;
use std::io::{self, Read};

use http_body_util::BodyExt;
use hyper::body::{Buf, Incoming};
use hyper_util::rt::TokioIo;
use tokio::runtime::Handle;

use crate::volume::manager::{ManagerError, Source};

/// Opens a source as a byte stream; `(reader, length if announced)`.
pub fn open(
    handle: &Handle,
    src: &Source,
) -> Result<(Box<dyn Read + Send>, Option<u64>), ManagerError> {
    match src {
        Source::Path(p) => {
            let f = File::open(p).map_err(|source| ManagerError::Source {
                source_desc: p.display().to_string(),
                source,
            })?;
            let len = f.metadata().ok().map(|m| m.len());
            Ok((Box::new(f), len))
        }
        Source::Url(url) => {
            let (body, len) = handle
                .block_on(get(url))
                .map_err(|source| ManagerError::Source {
                    source_desc: url.clone(),
                    source,
                })?;
            Ok((
                Box::new(HttpBody {
                    handle: handle.clone(),
                    body,
                    pending: None,
                }),
                len,
            ))
        }
        Source::SnapshotId(_) => Err(ManagerError::Invalid(
            "a snapshot is not an image source".into(),
        )),
    }
}

/// `GET url`, following nothing; fails on anything but 200.
async fn get(url: &str) -> io::Result<(Incoming, Option<u64>)> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only http:// URLs are supported",
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(io::Error::other(format!(
            "server answered {}",
            resp.status()
        )));
    }
    let len = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((resp.into_body(), len))
}

/// A blocking reader over a streaming HTTP body.
struct HttpBody {
    handle: Handle,
    body: Incoming,
    pending: Option<hyper::body::Bytes>,
}

impl Read for HttpBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(buf) = self.pending.as_mut().filter(|b| b.has_remaining()) {
                let n = buf.remaining().min(out.len());
                out[..n].copy_from_slice(&buf[..n]);
                buf.advance(n);
                return Ok(n);
            }
            match self.handle.block_on(self.body.frame()) {
                None => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => self.pending = frame.into_data().ok(),
            }
        }
    }
}
