//! A block client on libblkio's Rust core (the `blkio` crate), for tests and benchmarks.
//!
//! The same code drives a vhost-user-blk socket (blockdp, qemu-storage-daemon) and a plain
//! file through blkio's io_uring driver, so benchmarks compare the targets with one client.
//! Every I/O buffer lives in a memory region registered with the driver (for vhost-user it
//! is shared with the backend as a memfd, exactly like guest RAM).

use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A libblkio call failed.
    #[error("blkio {call}: {message}")]
    Blkio {
        /// The call.
        call: &'static str,
        /// libblkio's message.
        message: String,
    },
    /// A request completed with an error (`-errno`).
    #[error("request failed with errno {0}")]
    Request(i32),
    /// No completion arrived in time (a dead backend).
    #[error("timed out waiting for completions")]
    Timeout,
    /// The buffer region is too small for the request.
    #[error("request of {0} bytes does not fit the buffer region")]
    TooLarge(usize),
}

fn blk(call: &'static str) -> impl FnOnce(blkio::Error) -> ClientError {
    move |e| ClientError::Blkio {
        call,
        message: e.message().to_string(),
    }
}

/// What to connect to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A vhost-user-blk socket.
    VhostUser(String),
    /// A file or block device, through io_uring.
    File {
        /// Its path.
        path: String,
        /// Bypass the page cache.
        direct: bool,
    },
}

/// Options for [`Client::connect`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of queues.
    pub queues: usize,
    /// Entries per queue (a power of two).
    pub queue_size: i32,
    /// Bytes of buffer memory per queue.
    pub buffer: usize,
    /// Open read-only.
    pub read_only: bool,
    /// How long a wait for completions may take.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queues: 1,
            queue_size: 256,
            buffer: 4 << 20,
            read_only: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A connected client: its queues and one buffer region per queue.
pub struct Client {
    // Field order matters: queues go before the instance that owns the regions.
    queues: Vec<Blkioq>,
    regions: Vec<MemoryRegion>,
    blkio: Blkio,
    timeout: Duration,
}

impl Client {
    /// Connects, starts the queues and maps buffer memory.
    pub fn connect(target: &Target, opts: &Options) -> Result<Self, ClientError> {
        let (driver, path, direct) = match target {
            Target::VhostUser(p) => ("virtio-blk-vhost-user", p.as_str(), false),
            Target::File { path, direct } => ("io_uring", path.as_str(), *direct),
        };
        let mut b = Blkio::new(driver).map_err(blk("new"))?;
        b.set_str("path", path).map_err(blk("set path"))?;
        if opts.read_only {
            b.set_bool("read-only", true)
                .map_err(blk("set read-only"))?;
        }
        if direct {
            b.set_bool("direct", true).map_err(blk("set direct"))?;
        }
        b.connect().map_err(blk("connect"))?;
        b.set_i32("num-queues", opts.queues as i32)
            .map_err(blk("set num-queues"))?;
        let size_prop = if driver == "io_uring" {
            "num-entries"
        } else {
            "queue-size"
        };
        b.set_i32(size_prop, opts.queue_size)
            .map_err(blk("set queue size"))?;
        let started = b.start().map_err(blk("start"))?;
        let mut regions = Vec::new();
        for _ in 0..opts.queues {
            let r = b
                .alloc_mem_region(opts.buffer)
                .map_err(blk("alloc_mem_region"))?;
            b.map_mem_region(&r).map_err(blk("map_mem_region"))?;
            regions.push(r);
        }
        Ok(Client {
            queues: started.queues,
            regions,
            blkio: b,
            timeout: opts.timeout,
        })
    }

    /// Device capacity in bytes.
    pub fn capacity(&self) -> Result<u64, ClientError> {
        self.blkio.get_u64("capacity").map_err(blk("get capacity"))
    }

    /// Number of started queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The buffer of queue `q`, as a pointer and length.
    pub fn buffer(&self, q: usize) -> (*mut u8, usize) {
        (self.regions[q].addr as *mut u8, self.regions[q].len)
    }

    /// The buffer of queue `q` as a byte slice.
    pub fn buffer_mut(&mut self, q: usize) -> &mut [u8] {
        let (ptr, len) = self.buffer(q);
        // SAFETY: the region is mapped by us for the client's lifetime and no request is in
        // flight while the caller holds this `&mut self` borrow.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Reads `len` bytes at `offset` through queue `q` into the start of its buffer.
    pub fn read(&mut self, q: usize, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        let (ptr, cap) = self.buffer(q);
        if len > cap {
            return Err(ClientError::TooLarge(len));
        }
        self.queues[q].read(offset, ptr, len, 0, ReqFlags::empty());
        self.wait_one(q)?;
        Ok(self.buffer_mut(q)[..len].to_vec())
    }

    /// Writes `data` at `offset` through queue `q`.
    pub fn write(&mut self, q: usize, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        if data.len() > self.buffer(q).1 {
            return Err(ClientError::TooLarge(data.len()));
        }
        self.buffer_mut(q)[..data.len()].copy_from_slice(data);
        let ptr = self.buffer(q).0;
        self.queues[q].write(offset, ptr, data.len(), 0, ReqFlags::empty());
        self.wait_one(q)
    }

    /// Flushes through queue `q`.
    pub fn flush(&mut self, q: usize) -> Result<(), ClientError> {
        self.queues[q].flush(0, ReqFlags::empty());
        self.wait_one(q)
    }

    /// Discards `len` bytes at `offset`.
    pub fn discard(&mut self, q: usize, offset: u64, len: u64) -> Result<(), ClientError> {
        self.queues[q].discard(offset, len, 0, ReqFlags::empty());
        self.wait_one(q)
    }

    /// Writes zeroes over `len` bytes at `offset`; `unmap` lets the device deallocate them.
    pub fn write_zeroes(
        &mut self,
        q: usize,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), ClientError> {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        self.queues[q].write_zeroes(offset, len, 0, flags);
        self.wait_one(q)
    }

    /// Queues a read of `len` bytes at `offset` into buffer offset `buf_off` (no wait).
    pub fn submit_read(&mut self, q: usize, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let ptr = self.buffer(q).0.wrapping_add(buf_off);
        self.queues[q].read(offset, ptr, len, tag, ReqFlags::empty());
    }

    /// Queues a write of `len` bytes at `offset` from buffer offset `buf_off` (no wait).
    pub fn submit_write(&mut self, q: usize, offset: u64, buf_off: usize, len: usize, tag: usize) {
        let ptr = self.buffer(q).0.wrapping_add(buf_off);
        self.queues[q].write(offset, ptr, len, tag, ReqFlags::empty());
    }

    /// Submits what is queued and waits for at least `min` completions; returns
    /// `(tag, result)` pairs.
    pub fn complete(
        &mut self,
        q: usize,
        min: usize,
        out: &mut Vec<(usize, i32)>,
    ) -> Result<(), ClientError> {
        let mut comps: Vec<std::mem::MaybeUninit<Completion>> =
            (0..256).map(|_| std::mem::MaybeUninit::uninit()).collect();
        let mut timeout = self.timeout;
        let n = self.queues[q]
            .do_io(&mut comps, min, Some(&mut timeout), None)
            .map_err(|e| {
                if e.errno() == blkio::Errno::TIME {
                    ClientError::Timeout
                } else {
                    blk("do_io")(e)
                }
            })?;
        if n < min {
            return Err(ClientError::Timeout);
        }
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_ref() };
            out.push((c.user_data, c.ret));
        }
        Ok(())
    }

    fn wait_one(&mut self, q: usize) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(1);
        self.complete(q, 1, &mut out)?;
        match out.first() {
            Some((_, 0)) => Ok(()),
            Some((_, ret)) => Err(ClientError::Request(*ret)),
            None => Err(ClientError::Timeout),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.queues.clear();
        for r in &self.regions {
            self.blkio.unmap_mem_region(r);
            self.blkio.free_mem_region(r);
        }
    }
}
