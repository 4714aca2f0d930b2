//! virtio-blk on a local file: read, write, flush and get-id requests, served with positioned
//! I/O through a bounce buffer (`Sync` engine) or with io_uring straight between the file and
//! guest memory (`Async` engine: all data descriptors of a request submitted at once). Every field of a request comes from the guest and is checked before
//! use: descriptor directions and sizes, and sector ranges against the disk's capacity.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{TYPE_BLOCK, VirtioDevice};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::{BlockOp, BlockStats};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const REQ_GET_ID: u32 = 8;
const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;
/// Longest device id string.
const ID_BYTES: usize = 20;
/// Largest data transfer accepted in one request.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// Errors opening the backing file.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file could not be opened or sized.
    #[error("open block backing file {path}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why a request was refused (answered with an error status, never a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Too few descriptors, wrong directions, or a header or status of the wrong size.
    MalformedChain,
    /// The sector range runs past the end of the disk, or the transfer is too large.
    OutOfRange,
    /// A write to a read-only disk.
    ReadOnly,
    /// A request type this device does not implement.
    Unsupported,
    /// Guest memory or file I/O failed.
    Io,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    queue_sizes: [u16; 1],
    limiter: RateLimiter,
    retry: Option<Duration>,
    ring: Option<io_uring::IoUring>,
    stats: Arc<BlockStats>,
    /// The operation of the request being executed, for the counters.
    op: BlockOp,
}

/// One descriptor of a request, copied out of the chain.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    write_only: bool,
}

impl Block {
    /// Opens `path` as the disk (read-only if asked); its size rounds down to whole sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let mut id = [0u8; ID_BYTES];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Block {
            file,
            capacity_sectors: len / SECTOR_SIZE,
            read_only,
            id,
            queue_sizes: [QUEUE_SIZE],
            limiter: RateLimiter::default(),
            retry: None,
            ring: None,
            stats: Arc::default(),
            op: BlockOp::Other,
        })
    }

    /// Counts this drive's requests in `stats` (the drive's entry in the VMM's metrics).
    pub fn with_stats(mut self, stats: Arc<BlockStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Serves data transfers with io_uring (Firecracker's `Async` engine).
    pub fn with_io_uring(mut self) -> Result<Self, std::io::Error> {
        self.ring = Some(io_uring::IoUring::new(u32::from(QUEUE_SIZE))?);
        Ok(self)
    }

    /// Moves the data of one request between the file at `offset` and the descriptors.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        data: &[Desc],
        offset: u64,
        to_guest: bool,
    ) -> Result<(), RequestError> {
        let Some(ring) = &mut self.ring else {
            let mut offset = offset;
            for d in data {
                let mut buf = vec![0u8; d.len as usize];
                if to_guest {
                    self.file
                        .read_exact_at(&mut buf, offset)
                        .map_err(|_| RequestError::Io)?;
                    mem.write_slice(&buf, d.addr)
                        .map_err(|_| RequestError::Io)?;
                } else {
                    mem.read_slice(&mut buf, d.addr)
                        .map_err(|_| RequestError::Io)?;
                    self.file
                        .write_all_at(&buf, offset)
                        .map_err(|_| RequestError::Io)?;
                }
                offset += u64::from(d.len);
            }
            return Ok(());
        };
        use io_uring::{opcode, types};
        use std::os::fd::AsRawFd;
        use vm_memory::GuestMemoryBackend;
        let fd = types::Fd(self.file.as_raw_fd());
        // Every buffer must lie inside one guest memory region; the guards keep the mappings
        // referenced until the kernel is done with them.
        let slices = data
            .iter()
            .map(|d| mem.get_slice(d.addr, d.len as usize))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| RequestError::Io)?;
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut at = offset;
        for (i, (d, g)) in data.iter().zip(&guards).enumerate() {
            let sqe = if to_guest {
                opcode::Read::new(fd, g.as_ptr(), d.len).offset(at).build()
            } else {
                opcode::Write::new(fd, g.as_ptr(), d.len).offset(at).build()
            }
            .user_data(i as u64);
            at += u64::from(d.len);
            // SAFETY: each buffer is a live mapping of guest memory (held by `guards`) of the
            // length given, and this function waits for every completion before returning.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| RequestError::Io)?;
        }
        ring.submit_and_wait(data.len())
            .map_err(|_| RequestError::Io)?;
        let mut ok = true;
        let mut reaped = 0;
        while reaped < data.len() {
            let Some(cqe) = ring.completion().next() else {
                ring.submit_and_wait(data.len() - reaped)
                    .map_err(|_| RequestError::Io)?;
                continue;
            };
            reaped += 1;
            let want = data
                .get(cqe.user_data() as usize)
                .map_or(0, |d| d.len as i32);
            ok &= cqe.result() == want;
        }
        drop(guards);
        if ok { Ok(()) } else { Err(RequestError::Io) }
    }

    /// Limits the drive's requests and bytes.
    pub fn with_rate_limiter(mut self, cfg: Option<&crate::config::RateLimiter>) -> Self {
        self.limiter = RateLimiter::new(cfg, Instant::now());
        self
    }

    /// The disk size in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Executes one request given as its descriptors; returns the status byte's address (if
    /// the chain has a usable one), the status, and how many bytes were written to the guest.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
    ) -> (Option<GuestAddress>, u8, u32) {
        let status_desc = descs
            .last()
            .filter(|d| d.write_only && d.len >= 1 && descs.len() >= 2);
        let Some(status_desc) = status_desc else {
            return (None, STATUS_IOERR, 0);
        };
        let status_addr = status_desc.addr;
        match self.request(mem, &descs[..descs.len() - 1]) {
            Ok(written) => (Some(status_addr), STATUS_OK, written),
            Err(RequestError::Unsupported) => (Some(status_addr), STATUS_UNSUPP, 0),
            Err(_) => (Some(status_addr), STATUS_IOERR, 0),
        }
    }

    fn request(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> Result<u32, RequestError> {
        let (header, data) = descs.split_first().ok_or(RequestError::MalformedChain)?;
        if header.write_only || header.len < 16 {
            return Err(RequestError::MalformedChain);
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, header.addr)
            .map_err(|_| RequestError::Io)?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
        let total: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        let in_range = || {
            total <= MAX_REQUEST_BYTES
                && sector
                    .checked_mul(SECTOR_SIZE)
                    .and_then(|start| start.checked_add(total))
                    .is_some_and(|end| end <= self.capacity_sectors * SECTOR_SIZE)
        };
        self.op = match kind {
            REQ_IN => BlockOp::Read,
            REQ_OUT => BlockOp::Write,
            REQ_FLUSH => BlockOp::Flush,
            _ => BlockOp::Other,
        };
        match kind {
            REQ_IN => {
                if data.iter().any(|d| !d.write_only) {
                    return Err(RequestError::MalformedChain);
                }
                if !in_range() {
                    return Err(RequestError::OutOfRange);
                }
                self.transfer(mem, data, sector * SECTOR_SIZE, true)?;
                Ok(total as u32)
            }
            REQ_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                if data.iter().any(|d| d.write_only) {
                    return Err(RequestError::MalformedChain);
                }
                if !in_range() {
                    return Err(RequestError::OutOfRange);
                }
                self.transfer(mem, data, sector * SECTOR_SIZE, false)?;
                Ok(0)
            }
            REQ_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| RequestError::Io)?;
                }
                Ok(0)
            }
            REQ_GET_ID => {
                let d = data
                    .first()
                    .filter(|d| d.write_only)
                    .ok_or(RequestError::MalformedChain)?;
                let n = (d.len as usize).min(ID_BYTES);
                mem.write_slice(&self.id[..n], d.addr)
                    .map_err(|_| RequestError::Io)?;
                Ok(n as u32)
            }
            _ => Err(RequestError::Unsupported),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: capacity (le64) first; everything else reads as zero.
        let config = self.capacity_sectors.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn take_retry(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn update(&mut self, update: &super::DeviceUpdate) -> Result<bool, String> {
        let super::DeviceUpdate::Drive { path, rate_limiter } = update else {
            return Err("not a drive update".into());
        };
        let mut changed = false;
        if let Some(path) = path {
            let new = Block::open(path, self.read_only).map_err(|e| {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                format!("{e}: {}", cause.unwrap_or_default())
            })?;
            changed = new.capacity_sectors != self.capacity_sectors;
            self.file = new.file;
            self.capacity_sectors = new.capacity_sectors;
            self.id = new.id;
        }
        if let Some(cfg) = rate_limiter {
            self.limiter = RateLimiter::new(Some(cfg), Instant::now());
        }
        Ok(changed)
    }

    fn process_queue(&mut self, mem: &GuestMemoryMmap, _index: usize, queue: &mut Queue) -> bool {
        let mut used_any = false;
        let mut descs = Vec::with_capacity(4);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            descs.clear();
            // The chain iterator stops at the queue size, so a looping chain ends too.
            descs.extend(chain.map(|d| Desc {
                addr: d.addr(),
                len: d.len(),
                write_only: d.is_write_only(),
            }));
            // Data bytes: everything between the header and the status byte.
            let bytes: u64 = descs
                .iter()
                .skip(1)
                .take(descs.len().saturating_sub(2))
                .map(|d| u64::from(d.len))
                .sum();
            if let Err(wait) = self.limiter.try_consume(bytes, Instant::now()) {
                queue.go_to_previous_position();
                self.retry = Some(wait);
                self.stats.throttled();
                break;
            }
            let started = BlockStats::clock();
            self.op = BlockOp::Other;
            let (status_addr, status, written) = self.execute(mem, &descs);
            let mut used_len = written;
            if let Some(addr) = status_addr
                && mem.write_obj(status, addr).is_ok()
            {
                used_len = written.saturating_add(1);
            }
            let ok = status == STATUS_OK;
            if queue.add_used(mem, head, used_len).is_err() {
                self.stats.request(self.op, 0, false, started);
                break;
            }
            self.stats.request(self.op, bytes, ok, started);
            used_any = true;
        }
        used_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestAddress;

    const MEM: usize = 64 * 1024;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn disk(len: usize, read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), data).unwrap();
        let b = Block::open(f.path(), read_only).unwrap();
        (f, b)
    }

    /// Writes a 3-descriptor request (header, data, status) and makes it available.
    fn post(
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_write: bool,
        slot: u16,
    ) {
        let hdr = 0x4000u64;
        let data = 0x5000u64;
        let status = 0x4100u64;
        mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        let descs: [(u64, u32, u16, u16); 3] = [
            (hdr, 16, 1, 1),
            (data, data_len, 1 | if data_write { 2 } else { 0 }, 2),
            (status, 1, 2, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let at = DESC + i as u64 * 16;
            mem.write_obj(*addr, GuestAddress(at)).unwrap();
            mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(*flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(*next, GuestAddress(at + 14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(AVAIL + 4 + u64::from(slot) * 2))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(AVAIL + 2)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(0x4100)).unwrap()
    }

    #[test]
    fn reads_writes_and_refuses_bad_requests_with_a_status() {
        requests_with_engine(false);
    }

    #[test]
    fn the_io_uring_engine_behaves_the_same() {
        requests_with_engine(true);
    }

    fn requests_with_engine(io_uring: bool) {
        let m = mem();
        let (f, b) = disk(8192, false);
        let mut b = if io_uring {
            b.with_io_uring().unwrap()
        } else {
            b
        };
        let mut q = queue(8, DESC, AVAIL, USED);
        assert_eq!(b.capacity_sectors(), 16);

        post(&m, REQ_IN, 1, 512, true, 0);
        assert!(b.process_queue(&m, 0, &mut q));
        assert_eq!(status(&m), STATUS_OK);
        let mut got = [0u8; 512];
        m.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
        let want: Vec<u8> = (512..1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(&got[..], &want[..]);
        let used_len: u32 = m.read_obj(GuestAddress(USED + 4 + 4)).unwrap();
        assert_eq!(used_len, 513);

        m.write_slice(&[0xab; 1024], GuestAddress(0x5000)).unwrap();
        post(&m, REQ_OUT, 14, 1024, false, 1);
        b.process_queue(&m, 0, &mut q);
        assert_eq!(status(&m), STATUS_OK);
        assert_eq!(
            &std::fs::read(f.path()).unwrap()[14 * 512..],
            &[0xab; 1024][..]
        );

        // Past the end, overflowing sector arithmetic, wrong direction, unknown type.
        for (i, (kind, sector, write, want)) in [
            (REQ_OUT, 15, false, STATUS_IOERR),
            (REQ_IN, u64::MAX / 2, true, STATUS_IOERR),
            (REQ_IN, 0, false, STATUS_IOERR),
            (99, 0, true, STATUS_UNSUPP),
        ]
        .into_iter()
        .enumerate()
        {
            post(&m, kind, sector, 1024, write, 2 + i as u16);
            b.process_queue(&m, 0, &mut q);
            assert_eq!(status(&m), want, "request {i}");
        }
        assert_eq!(
            std::fs::metadata(f.path()).unwrap().len(),
            8192,
            "never extended"
        );
    }

    #[test]
    fn a_new_backing_file_changes_capacity_and_contents() {
        let m = mem();
        let (_f, mut b) = disk(4096, false);
        let bigger = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bigger.path(), vec![7u8; 8192]).unwrap();
        let update = super::super::DeviceUpdate::Drive {
            path: Some(bigger.path().to_path_buf()),
            rate_limiter: None,
        };
        assert_eq!(b.update(&update), Ok(true), "capacity changed");
        assert_eq!(b.capacity_sectors(), 16);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        let mut q = queue(8, DESC, AVAIL, USED);
        post(&m, REQ_IN, 15, 512, true, 0);
        b.process_queue(&m, 0, &mut q);
        assert_eq!(status(&m), STATUS_OK);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 7);
        let missing = super::super::DeviceUpdate::Drive {
            path: Some("/nonexistent/disk".into()),
            rate_limiter: None,
        };
        assert!(b.update(&missing).is_err());
        assert_eq!(b.capacity_sectors(), 16, "a failed update changes nothing");
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let m = mem();
        let (f, mut b) = disk(4096, true);
        let mut q = queue(8, DESC, AVAIL, USED);
        post(&m, REQ_OUT, 0, 512, false, 0);
        b.process_queue(&m, 0, &mut q);
        assert_eq!(status(&m), STATUS_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the guest puts in its rings and descriptors, the device neither panics,
        /// nor hangs, nor grows the file, nor completes more requests than were offered.
        #[test]
        fn arbitrary_guest_memory_is_handled_safely(
            bytes in proptest::collection::vec(any::<u8>(), 0x4000..0x4001),
            size_log2 in 0u32..9,
            desc in 0u64..(MEM as u64),
            avail in 0u64..(MEM as u64),
            used in 0u64..(MEM as u64),
            avail_idx in any::<u16>(),
        ) {
            let m = mem();
            // Random descriptors, rings and requests everywhere the queue may look.
            for chunk in 0..(MEM / bytes.len()) {
                m.write_slice(&bytes, GuestAddress((chunk * bytes.len()) as u64)).unwrap();
            }
            let size = 1u16 << size_log2;
            let (desc, avail, used) = (desc & !15, avail & !1, used & !3);
            m.write_obj(avail_idx, GuestAddress(avail + 2)).ok();
            let (f, mut b) = disk(4096, false);
            let mut q = queue(size, desc, avail, used);
            if q.is_valid(&m) {
                b.process_queue(&m, 0, &mut q);
                prop_assert!(q.next_used() <= avail_idx && q.next_used() <= size);
            }
            prop_assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 4096);
        }
    }
}
