//! Bodies: responses streamed from blob files (checksummed on full reads), and request
//! bodies streamed to disk, optionally through the `aws-chunked` decoder.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::ApiError;
use super::s3::chunked::{ChunkDecoder, ChunkEvent};
use crate::store::{Blob, BlobWriter, Store};

/// Bodies up to this size are read in one go; larger ones are streamed.
const SMALL_BODY: u64 = 64 * 1024;
/// Read size when streaming a blob.
const READ_CHUNK: usize = 256 * 1024;

/// A response body: a buffer, or a stream fed by a reader task.
pub enum RespBody {
    /// All bytes at once.
    Full(Option<Bytes>),
    /// Chunks from a reader task; an `Err` aborts the response.
    Stream {
        /// Chunks.
        rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
        /// Bytes not yet sent.
        remaining: u64,
    },
}

impl RespBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        let b = b.into();
        RespBody::Full(if b.is_empty() { None } else { Some(b) })
    }

    /// No body.
    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Stream { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    *remaining = remaining.saturating_sub(b.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body cut short",
                )))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// A byte range of one blob.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The blob.
    pub blob: Blob,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Selects the pieces of `blobs` (concatenated) covering `[start, end)`.
pub fn pieces(blobs: &[Blob], start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for b in blobs {
        let (bs, be) = (off, off + b.size);
        off = be;
        let s = start.max(bs);
        let e = end.min(be);
        if s < e {
            out.push(Piece {
                blob: b.clone(),
                start: s - bs,
                end: e - bs,
            });
        }
    }
    out
}

fn corrupt(id: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("blob {id} failed its checksum"),
    )
}

/// Reads the pieces into a body. A piece covering its whole blob is checked against the
/// blob's MD5; on mismatch the blob is quarantined and the response aborted.
pub async fn stream_pieces(store: &Store, pieces: Vec<Piece>) -> Result<RespBody, ApiError> {
    let total: u64 = pieces.iter().map(|p| p.end - p.start).sum();
    if pieces.len() == 1 && total <= SMALL_BODY {
        let p = pieces.into_iter().next().expect("one piece");
        let data = store
            .read_range(&p.blob, p.start, p.end)
            .await
            .map_err(ApiError::internal)?;
        let mut check = p.blob.verifier();
        check.update(&data);
        if p.start == 0 && p.end == p.blob.size && !check.matches() {
            let _ = store.quarantine(p.blob.id.clone()).await;
            return Err(ApiError::new(
                ::http::StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the object failed its checksum and was quarantined",
            ));
        }
        return Ok(RespBody::full(data));
    }
    Ok(stream_parts(
        store,
        pieces.into_iter().map(Part::Piece).collect(),
    ))
}

/// A part of a streamed response body.
#[derive(Debug, Clone)]
pub enum Part {
    /// Bytes sent as they are (such as a multipart boundary and part headers).
    Literal(Bytes),
    /// A range of a blob.
    Piece(Piece),
}

/// Streams the parts from a reader task. A piece covering its whole blob is checked as in
/// [`stream_pieces`].
pub fn stream_parts(store: &Store, parts: Vec<Part>) -> RespBody {
    let total: u64 = parts
        .iter()
        .map(|p| match p {
            Part::Literal(b) => b.len() as u64,
            Part::Piece(p) => p.end - p.start,
        })
        .sum();
    let (tx, rx) = mpsc::channel(4);
    let store = store.clone();
    tokio::spawn(async move {
        for part in parts {
            let p = match part {
                Part::Literal(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Part::Piece(p) => p,
            };
            if let Err(e) = send_piece(&store, &p, &tx).await {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let _ = store.quarantine(p.blob.id.clone()).await;
                }
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    });
    RespBody::Stream {
        rx,
        remaining: total,
    }
}

async fn send_piece(
    store: &Store,
    p: &Piece,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> std::io::Result<()> {
    let verify = p.start == 0 && p.end == p.blob.size;
    let mut check = p.blob.verifier();
    let mut off = p.start;
    while off < p.end {
        let end = (off + READ_CHUNK as u64).min(p.end);
        let buf = store.read_range(&p.blob, off, end).await?;
        if buf.len() as u64 != end - off {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "blob shorter than its record",
            ));
        }
        off = end;
        if verify {
            check.update(&buf);
        }
        // Hold back the last chunk until the checksum is known.
        if off == p.end && verify && !check.matches() {
            return Err(corrupt(&p.blob.id));
        }
        if tx.send(Ok(buf)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Copies the concatenated content of `blobs` into a new durable blob (server-side copy;
/// blobs are never shared between objects).
pub async fn copy_into_blob(store: &Store, blobs: &[Blob]) -> Result<Blob, ApiError> {
    let total = blobs.iter().map(|b| b.size).sum();
    copy_pieces(store, pieces(blobs, 0, total)).await
}

/// Copies byte ranges of blobs into a new durable blob.
pub async fn copy_pieces(store: &Store, pieces: Vec<Piece>) -> Result<Blob, ApiError> {
    let mut w = store.blob_writer().await?;
    for p in pieces {
        let mut off = p.start;
        while off < p.end {
            let end = (off + READ_CHUNK as u64).min(p.end);
            let data = store
                .read_range(&p.blob, off, end)
                .await
                .map_err(ApiError::internal)?;
            if data.len() as u64 != end - off {
                return Err(ApiError::internal("source blob shorter than its record"));
            }
            w.write_bytes(data).await?;
            off = end;
        }
    }
    Ok(w.finish().await?)
}

/// Which extra digests to compute over a request body.
#[derive(Default)]
pub struct Digests {
    /// CRC32 (for `x-amz-checksum-crc32`).
    pub crc32: Option<crc32fast::Hasher>,
    /// SHA-256 (for a signed `x-amz-content-sha256` or `x-amz-checksum-sha256`).
    pub sha256: Option<sha2::Sha256>,
    /// CRC32C (for `x-amz-checksum-crc32c`), running value.
    pub crc32c: Option<u32>,
    /// CRC64/NVME (for `x-amz-checksum-crc64nvme`).
    pub crc64nvme: Option<crc64fast_nvme::Digest>,
}

/// Verifies signed `aws-chunked` chunks (see [`super::s3::sigv4::ChunkVerifier`]).
pub type ChunkCheck = super::s3::sigv4::ChunkVerifier;

/// A request body being read: plain, or `aws-chunked`.
pub struct Source {
    body: hyper::body::Incoming,
    chunked: Option<(ChunkDecoder, Option<ChunkCheck>)>,
    pending: VecDeque<Bytes>,
    done: bool,
    /// Digests computed over the decoded bytes.
    pub digests: Digests,
    /// Trailers from an `aws-chunked` body.
    pub trailers: Vec<(String, String)>,
}

impl Source {
    /// A plain body.
    pub fn plain(body: hyper::body::Incoming) -> Source {
        Source {
            body,
            chunked: None,
            pending: VecDeque::new(),
            done: false,
            digests: Digests::default(),
            trailers: Vec::new(),
        }
    }

    /// An `aws-chunked` body, with chunk signatures checked when `check` is given.
    pub fn chunked(body: hyper::body::Incoming, check: Option<ChunkCheck>) -> Source {
        let mut s = Source::plain(body);
        s.chunked = Some((ChunkDecoder::new(), check));
        s
    }

    /// The next decoded bytes, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                if let Some(c) = &mut self.digests.crc32 {
                    c.update(&b);
                }
                if let Some(s) = &mut self.digests.sha256 {
                    sha2::Digest::update(s, &b);
                }
                if let Some(c) = &mut self.digests.crc32c {
                    *c = crc32c::crc32c_append(*c, &b);
                }
                if let Some(c) = &mut self.digests.crc64nvme {
                    c.write(&b);
                }
                return Ok(Some(b));
            }
            if self.done {
                return Ok(None);
            }
            if let Some((dec, check)) = &mut self.chunked {
                match dec.next_event().map_err(|e| {
                    ApiError::bad_request("IncompleteBody", format!("bad aws-chunked body: {e}"))
                })? {
                    Some(ChunkEvent::Data(b)) => {
                        if let Some(c) = check {
                            c.data(&b);
                        }
                        self.pending.push_back(b);
                        continue;
                    }
                    Some(ChunkEvent::Header { signature, .. }) => {
                        if let Some(c) = check {
                            c.header(signature.as_deref())?;
                        }
                        continue;
                    }
                    Some(ChunkEvent::Trailer(k, v)) => {
                        self.trailers.push((k, v));
                        continue;
                    }
                    Some(ChunkEvent::End) => {
                        if let Some(c) = check {
                            c.finish()?;
                        }
                        self.done = true;
                        continue;
                    }
                    None => {}
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        match &mut self.chunked {
                            Some((dec, _)) => dec.feed(&data),
                            None => self.pending.push_back(data),
                        }
                    }
                }
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(
                        "IncompleteBody",
                        format!("the request body was cut short: {e}"),
                    ));
                }
                None => {
                    if self.chunked.is_some() {
                        return Err(ApiError::bad_request(
                            "IncompleteBody",
                            "the aws-chunked body ended before its final chunk",
                        ));
                    }
                    self.done = true;
                }
            }
        }
    }

    /// Reads a small body (XML, JSON manifests) fully, refusing more than `max` bytes.
    pub async fn read_all(&mut self, max: usize) -> Result<Bytes, ApiError> {
        let mut out = BytesMut::new();
        while let Some(b) = self.next().await? {
            if out.len() + b.len() > max {
                return Err(ApiError::bad_request(
                    "MaxMessageLengthExceeded",
                    format!("request body longer than {max} bytes"),
                ));
            }
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }

    /// Streams the body into a new durable blob, refusing more than `max` bytes.
    /// `expected_len` (Content-Length or x-amz-decoded-content-length) must match.
    pub async fn to_blob(
        &mut self,
        store: &Store,
        max: u64,
        expected_len: Option<u64>,
    ) -> Result<(BlobWriter, u64), ApiError> {
        let mut w = store.blob_writer().await?;
        while let Some(b) = self.next().await? {
            let after = w.size() + b.len() as u64;
            if after > max {
                return Err(ApiError::new(
                    ::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "EntityTooLarge",
                    format!("your proposed upload exceeds the maximum allowed size of {max} bytes"),
                ));
            }
            if let Some(n) = expected_len
                && after > n
            {
                return Err(ApiError::bad_request(
                    "IncompleteBody",
                    format!("the body holds more than the {n} bytes announced"),
                ));
            }
            w.write_bytes(b).await?;
        }
        let size = w.size();
        if let Some(n) = expected_len
            && n != size
        {
            return Err(ApiError::bad_request(
                "IncompleteBody",
                format!("you did not provide the number of bytes specified: {size} of {n}"),
            ));
        }
        Ok((w, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: &str, size: u64) -> Blob {
        Blob {
            id: id.into(),
            size,
            md5: String::new(),
            crc32: None,
            inline: false,
            data: None,
        }
    }

    #[test]
    fn pieces_cover_ranges_across_blobs() {
        let blobs = [blob("a", 10), blob("b", 5), blob("c", 10)];
        let p = pieces(&blobs, 8, 17);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.blob.id.as_str(), p.start, p.end))
            .collect();
        assert_eq!(got, [("a", 8, 10), ("b", 0, 5), ("c", 0, 2)]);
        assert_eq!(pieces(&blobs, 0, 25).len(), 3);
        assert!(pieces(&blobs, 25, 25).is_empty());
    }
}
