//! The io_uring engine: positioned reads and writes on one file through one ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

/// Errors from the io_uring engine.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed.
    #[error("set up io_uring with {entries} entries")]
    Setup {
        /// Ring size asked for.
        entries: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `io_uring_enter` failed.
    #[error("submit to io_uring")]
    Submit(#[source] io::Error),
    /// The kernel completed the operation with an error.
    #[error("{op} at offset {offset}")]
    Op {
        /// `read` or `write`.
        op: &'static str,
        /// File offset of the request.
        offset: u64,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A read or write moved fewer bytes than asked (end of file).
    #[error("{op} at offset {offset}: {done} of {want} bytes")]
    Short {
        /// `read` or `write`.
        op: &'static str,
        /// File offset of the request.
        offset: u64,
        /// Bytes moved.
        done: usize,
        /// Bytes asked for.
        want: usize,
    },
}

/// One io_uring bound to one file.
pub struct UringFile {
    ring: IoUring,
    file: File,
}

impl UringFile {
    /// Sets up a ring of `entries` submission slots for `file`.
    pub fn new(file: File, entries: u32) -> Result<Self, UringError> {
        let ring = IoUring::new(entries).map_err(|source| UringError::Setup { entries, source })?;
        Ok(UringFile { ring, file })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), UringError> {
        let sqe = opcode::Read::new(
            types::Fd(self.file.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .offset(offset)
        .build();
        // SAFETY: `buf` is borrowed mutably for this whole call and `complete_one` waits for
        // the completion, so the kernel never touches the buffer after it is released.
        let done = unsafe { self.complete_one(sqe) }.map_err(|e| e.with("read", offset))?;
        check_len("read", offset, done, buf.len())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), UringError> {
        let sqe = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            buf.as_ptr(),
            buf.len() as u32,
        )
        .offset(offset)
        .build();
        // SAFETY: as in `read_exact_at`: the buffer outlives the wait for its completion.
        let done = unsafe { self.complete_one(sqe) }.map_err(|e| e.with("write", offset))?;
        check_len("write", offset, done, buf.len())
    }

    /// Submits one entry and waits for its completion; returns the byte count.
    ///
    /// # Safety
    /// Any buffer `sqe` points at must stay valid until this returns.
    unsafe fn complete_one(&mut self, sqe: io_uring::squeue::Entry) -> Result<usize, OpFailure> {
        // SAFETY: the caller guarantees the entry's buffers outlive this call, which waits
        // for the completion before returning.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| OpFailure::Submit(io::Error::other("submission queue full")))?;
        self.ring.submit_and_wait(1).map_err(OpFailure::Submit)?;
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| OpFailure::Submit(io::Error::other("no completion after wait")))?;
        let res = cqe.result();
        if res < 0 {
            Err(OpFailure::Errno(io::Error::from_raw_os_error(-res)))
        } else {
            Ok(res as usize)
        }
    }
}

/// Why one submission failed, before the operation name is attached.
enum OpFailure {
    Submit(io::Error),
    Errno(io::Error),
}

impl OpFailure {
    fn with(self, op: &'static str, offset: u64) -> UringError {
        match self {
            OpFailure::Submit(e) => UringError::Submit(e),
            OpFailure::Errno(source) => UringError::Op { op, offset, source },
        }
    }
}

fn check_len(op: &'static str, offset: u64, done: usize, want: usize) -> Result<(), UringError> {
    if done == want {
        Ok(())
    } else {
        Err(UringError::Short {
            op,
            offset,
            done,
            want,
        })
    }
}
