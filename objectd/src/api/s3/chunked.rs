//! The `aws-chunked` content encoding, decoded incrementally (sans I/O).
//!
//! ```text
//! <hex-size>[;chunk-signature=<sig>]\r\n<data>\r\n ... 0[;chunk-signature=<sig>]\r\n
//! [<trailer-name>:<value>\r\n ...]\r\n
//! ```

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Why an `aws-chunked` body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk header is not `<hex>[;ext]`.
    #[error("malformed chunk header")]
    BadHeader,
    /// Chunk data is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// A header or trailer line is too long.
    #[error("line too long")]
    LineTooLong,
    /// A trailer line has no colon.
    #[error("malformed trailer")]
    BadTrailer,
    /// Bytes after the end of the body.
    #[error("data after the final chunk")]
    TrailingData,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEvent {
    /// A chunk header: its size and signature, if any.
    Header {
        /// Data bytes in the chunk.
        size: u64,
        /// The `chunk-signature` extension.
        signature: Option<String>,
    },
    /// Decoded data.
    Data(Bytes),
    /// A trailer after the last chunk.
    Trailer(String, String),
    /// The body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// The decoder: [`feed`](ChunkDecoder::feed) bytes, then drain [`next_event`](ChunkDecoder::next_event).
#[derive(Debug)]
pub struct ChunkDecoder {
    buf: BytesMut,
    state: State,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> ChunkDecoder {
        ChunkDecoder {
            buf: BytesMut::new(),
            state: State::Header,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn line(&mut self) -> Result<Option<String>, ChunkError> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(pos) => {
                let line = self.buf.split_to(pos);
                self.buf.advance(2);
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            None if self.buf.len() > MAX_LINE => Err(ChunkError::LineTooLong),
            None => Ok(None),
        }
    }

    /// The next event, or `None` if more input is needed.
    pub fn next_event(&mut self) -> Result<Option<ChunkEvent>, ChunkError> {
        match self.state {
            State::Header => {
                let Some(line) = self.line()? else {
                    return Ok(None);
                };
                let (size, ext) = match line.split_once(';') {
                    Some((s, e)) => (s, Some(e)),
                    None => (line.as_str(), None),
                };
                let size = size.trim();
                if size.is_empty() || size.len() > 16 {
                    return Err(ChunkError::BadHeader);
                }
                let size = u64::from_str_radix(size, 16).map_err(|_| ChunkError::BadHeader)?;
                let signature = match ext {
                    Some(e) => Some(
                        e.trim()
                            .strip_prefix("chunk-signature=")
                            .ok_or(ChunkError::BadHeader)?
                            .to_owned(),
                    ),
                    None => None,
                };
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::Data(size)
                };
                Ok(Some(ChunkEvent::Header { size, signature }))
            }
            State::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                let data = self.buf.split_to(n).freeze();
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCrlf
                } else {
                    State::Data(left)
                };
                Ok(Some(ChunkEvent::Data(data)))
            }
            State::DataCrlf => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(ChunkError::MissingCrlf);
                }
                self.buf.advance(2);
                self.state = State::Header;
                self.next_event()
            }
            State::Trailers => {
                let Some(line) = self.line()? else {
                    return Ok(None);
                };
                if line.is_empty() {
                    self.state = State::Done;
                    return Ok(Some(ChunkEvent::End));
                }
                let (k, v) = line.split_once(':').ok_or(ChunkError::BadTrailer)?;
                Ok(Some(ChunkEvent::Trailer(
                    k.trim().to_ascii_lowercase(),
                    v.trim().to_owned(),
                )))
            }
            State::Done => {
                if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ChunkError::TrailingData)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Vec<ChunkEvent>), ChunkError> {
        let mut d = ChunkDecoder::new();
        let mut data = Vec::new();
        let mut other = Vec::new();
        for piece in input.chunks(split.max(1)) {
            d.feed(piece);
            while let Some(ev) = d.next_event()? {
                match ev {
                    ChunkEvent::Data(b) => data.extend_from_slice(&b),
                    e => other.push(e),
                }
            }
        }
        Ok((data, other))
    }

    fn encode(data: &[u8], chunk: usize, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            out.extend_from_slice(format!("{:x};chunk-signature=ab\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0;chunk-signature=ab\r\n");
        if trailer {
            out.extend_from_slice(b"x-amz-checksum-crc32:AAAAAA==\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn unsigned_with_trailer() {
        let body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n";
        let (data, ev) = decode_all(body, 3).unwrap();
        assert_eq!(data, b"hello");
        assert!(ev.contains(&ChunkEvent::Trailer(
            "x-amz-checksum-crc32".into(),
            "NhCmhg==".into()
        )));
        assert_eq!(ev.last(), Some(&ChunkEvent::End));
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(decode_all(b"zz\r\n", 100), Err(ChunkError::BadHeader));
        assert_eq!(decode_all(b"2\r\nabXY", 100), Err(ChunkError::MissingCrlf));
        assert_eq!(
            decode_all(b"0\r\n\r\nextra", 100),
            Err(ChunkError::TrailingData)
        );
        assert_eq!(decode_all(&[b'1'; 5000], 100), Err(ChunkError::LineTooLong));
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..3000),
                       chunk in 1usize..700, split in 1usize..500, trailer: bool) {
            let enc = encode(&data, chunk, trailer);
            let (got, ev) = decode_all(&enc, split).unwrap();
            prop_assert_eq!(got, data);
            prop_assert_eq!(ev.last(), Some(&ChunkEvent::End));
        }

        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..500), split in 1usize..50) {
            let _ = decode_all(&input, split);
        }
    }
}
