//! A vhost-user-blk backend: one worker thread and one io_uring per virtqueue.
//!
//! The `vhost-user-backend` crate runs one epoll thread per entry of
//! [`VhostUserBackend::queues_per_thread`]; we give every queue its own thread and keep
//! that queue's state (its ring and in-flight requests) in a mutex only that thread takes,
//! so queues run in parallel. A worker takes every available request off its queue, turns
//! reads and writes into io_uring operations pointing straight at guest memory (no copy),
//! submits them in one system call, and completes them as the kernel finishes them, while
//! taking newly arrived requests. Finished requests go to the used ring in batches, under one
//! lock of the vring, with at most one notification per batch (none while the driver's
//! EVENT_IDX `used_event` says it does not want one). The request path reuses per-worker
//! buffers (chain segments, iovecs per slot, completions, used entries) and allocates
//! nothing once warm. While requests are in flight the worker sleeps in `io_uring_enter`;
//! when the queue runs dry it polls it for an adaptive window (none while requests come
//! back slower than the configured poll time) before re-enabling notifications, which saves
//! a kick/wake-up round trip at low queue depth without burning a core on an idle queue.
//! Rings are set up with `COOP_TASKRUN` by default (completion work waits for the worker's
//! next kernel entry instead of interrupting it) and have the volume's files registered.
//! `SINGLE_ISSUER | DEFER_TASKRUN` is available ([`RingSetup::DeferTaskrun`]); it binds a
//! ring to the thread that created it, and vhost-user-backend starts new threads for every
//! connection, so a worker recreates such a ring on the first event it serves on a new
//! thread. It is not the default: completions then reach the ring only when the worker
//! waits, so at queue depth 32 each wait took fewer of them (about twice the system calls
//! and context switches per I/O).

use std::fs::File;
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use tracing::warn;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringMutex, VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::metrics::{IoKind, VolumeStats};
use crate::qos::Throttle;
use crate::virtio::config::DeviceConfig;
use crate::virtio::request::{
    self, HEADER_LEN, Header, ID_BYTES, Limits, Op, RANGE_LEN, Segment, Status,
};

/// Guest memory as the vhost-user-backend crate hands it over.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Largest queue a frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// In-flight requests per queue (and io_uring submission slots).
const RING_ENTRIES: u32 = 256;
/// Smallest idle poll window once polling pays off (QEMU's adaptive polling starts at 4 us).
const MIN_POLL: Duration = Duration::from_micros(4);
/// `FALLOC_FL_KEEP_SIZE`.
const FALLOC_KEEP_SIZE: i32 = 0x01;
/// `FALLOC_FL_PUNCH_HOLE`.
const FALLOC_PUNCH_HOLE: i32 = 0x02;
/// `FALLOC_FL_ZERO_RANGE`.
const FALLOC_ZERO_RANGE: i32 = 0x10;

/// The files and settings of the volume a backend serves.
#[derive(Debug)]
pub struct VolumeIo {
    /// Volume id, returned by `GET_ID` (first 20 bytes).
    pub id: String,
    /// The file opened with `O_DIRECT`, when the filesystem supports it.
    pub direct: Option<File>,
    /// The file opened through the page cache (unaligned I/O, flush, fallocate).
    pub buffered: File,
    /// What the device advertises.
    pub config: DeviceConfig,
    /// Busy-poll an idle queue this long before sleeping.
    pub poll: Duration,
    /// Per-volume QoS.
    pub throttle: Arc<Throttle>,
    /// Per-queue counters.
    pub stats: Arc<VolumeStats>,
    /// The driver's cache mode: `false` (write-through) makes every write durable before
    /// it completes (`RWF_DSYNC`).
    pub writeback: std::sync::atomic::AtomicBool,
    /// How the queue workers set up their io_uring.
    pub tuning: Tuning,
}

/// How a queue worker sets up its io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Task-work mode of the ring.
    pub setup: RingSetup,
    /// Register the volume's files with the ring and address them by index.
    pub fixed_files: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            setup: RingSetup::CoopTaskrun,
            fixed_files: true,
        }
    }
}

/// When the kernel runs a ring's completion work (`io_uring_setup(2)` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingSetup {
    /// No flags: completions interrupt the worker wherever it runs.
    Plain,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: completions wait for the worker's next kernel entry
    /// (the default).
    CoopTaskrun,
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the worker waits for them
    /// (falls back to [`RingSetup::CoopTaskrun`], then [`RingSetup::Plain`], on kernels
    /// without it). Such a ring belongs to the thread that created it.
    DeferTaskrun,
}

impl VolumeIo {
    fn limits(&self) -> Limits {
        let c = &self.config;
        Limits {
            capacity: c.capacity,
            seg_max: c.seg_max,
            size_max: c.size_max,
            max_ranges: c.max_discard_seg.max(c.max_write_zeroes_seg),
            max_range_sectors: c.max_discard_sectors.min(c.max_write_zeroes_sectors),
            read_only: c.read_only,
        }
    }
}

/// The backend: device description plus one worker per queue.
pub struct BlockBackend {
    io: Arc<VolumeIo>,
    limits: Limits,
    workers: Vec<Mutex<Worker>>,
    memory: Mutex<Option<Memory>>,
    /// Bumped by every `update_memory`, so workers take the memory lock only when it changed.
    memory_gen: AtomicU64,
}

impl BlockBackend {
    /// Builds a backend with one io_uring per queue.
    pub fn new(io: Arc<VolumeIo>) -> io::Result<Self> {
        let n = usize::from(io.config.num_queues.max(1));
        let workers = (0..n)
            .map(|_| Worker::new(&io).map(Mutex::new))
            .collect::<io::Result<_>>()?;
        Ok(BlockBackend {
            limits: io.limits(),
            io,
            workers,
            memory: Mutex::new(None),
            memory_gen: AtomicU64::new(0),
        })
    }
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringMutex;

    fn num_queues(&self) -> usize {
        self.workers.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.io.config.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings carry the flag themselves; the worker loop is the same either way.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.io
            .config
            .read(offset, size, self.io.writeback.load(Ordering::Relaxed))
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        match crate::virtio::config::writeback_from_set_config(offset, buf) {
            Ok(Some(wb)) => {
                self.io.writeback.store(wb, Ordering::Relaxed);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "config write of {} bytes at {offset} is out of range",
                    buf.len()
                ),
            )),
        }
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        self.memory_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.workers.len()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per call: each connection gets new worker threads, and this is how
        // the export loop tells the previous connection's threads to end.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringMutex],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        // One queue per thread: the thread's index is the queue's, and `vrings` holds just
        // that thread's vring, with `device_event` indexing into it.
        let q = thread_id;
        let (Some(vring), Some(worker)) =
            (vrings.get(usize::from(device_event)), self.workers.get(q))
        else {
            return Err(io::Error::other(format!("event for unknown queue {q}")));
        };
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.memory_gen.load(Ordering::Acquire);
        if worker.memory.as_ref().is_none_or(|(g, _)| *g != generation) {
            let mem = self
                .memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            worker.memory = mem.map(|m| (generation, m));
        }
        let Some((_, mem)) = worker.memory.take() else {
            return Err(io::Error::other(
                "queue kicked before the memory table was set",
            ));
        };
        let res = worker.serve(vring, &mem, &self.io, &self.limits, q);
        worker.memory = Some((generation, mem));
        res
    }
}

/// One request in flight.
struct Inflight {
    head: u16,
    status: u64,
    used_len: u32,
    pending: u32,
    failed: bool,
    kind: IoKind,
    bytes: u64,
    /// When it was taken off the queue (`None` when counting is off).
    started: Option<Instant>,
}

/// Per-queue state: its ring and its in-flight requests, indexed by `user_data`.
///
/// Every buffer a request needs is kept here and reused, so the request path allocates
/// nothing once the queue has warmed up.
struct Worker {
    ring: IoUring,
    /// The thread that created `ring` ([`thread_tag`]); a `SINGLE_ISSUER` ring only takes
    /// submissions from it, and vhost-user-backend starts new threads on every connection.
    owner: u64,
    /// How `ring` was actually set up (after falling back).
    setup: RingSetup,
    /// The memory table handle as of `BlockBackend::memory_gen` (kept between events so
    /// they need not lock and clone it).
    memory: Option<(u64, Memory)>,
    /// The raw fds of the volume (direct, buffered) when the ring does not have them
    /// registered; `None` when it does (they are then indexes 0 and 1).
    fds: RingFiles,
    slots: Vec<Option<Inflight>>,
    /// The iovecs io_uring reads for the request in the slot of the same index. A slot's
    /// vector is only cleared and refilled while the slot is free, so its heap buffer stays
    /// put while the kernel may read it.
    iovecs: Vec<Vec<libc::iovec>>,
    free: Vec<usize>,
    inflight: usize,
    /// Entries pushed to the submission queue and not yet submitted.
    queued: u32,
    /// The descriptor chain being parsed, then its data segments.
    chain: Vec<Segment>,
    /// Completions taken off the completion queue.
    cqes: Vec<(u64, i32)>,
    /// Used-ring entries (head, length) not yet published to the driver.
    used: Vec<(u16, u32)>,
    /// The discard / write-zeroes ranges of the request being prepared.
    ranges: Vec<u8>,
    /// How long an idle queue is polled before sleeping (adapted between zero and the
    /// volume's `poll`).
    poll_for: Duration,
    /// When the worker last went to sleep on an idle queue.
    slept_at: Option<Instant>,
}

// SAFETY: the raw pointers inside `Worker::iovecs` point into guest memory that the worker
// only touches while holding the memory guard of the `serve` call that created them, and
// every request is completed before `serve` returns; moving the worker between threads
// carries no live borrow.
unsafe impl Send for Worker {}

/// The volume's raw fds (direct, buffered), or `None` when the ring has them registered
/// (as indexes 0 and 1).
type RingFiles = Option<(i32, i32)>;

/// See [`Worker::file`].
fn ring_file(fds: RingFiles, direct: bool) -> (types::Fd, squeue::Flags) {
    match fds {
        Some((d, b)) => (
            types::Fd(if direct { d } else { b }),
            squeue::Flags::empty(),
        ),
        None => (
            types::Fd(if direct { 0 } else { 1 }),
            squeue::Flags::FIXED_FILE,
        ),
    }
}

/// A number that identifies the calling thread for as long as the process lives (thread ids
/// are reused; these are not).
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TAG: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|t| *t)
}

/// Creates a worker's ring as `opts` asks, falling back to weaker task-work modes the
/// kernel does not know, and registers the volume's files with it if asked to. Returns the
/// ring, the mode it got, and the raw fds when the files are not registered.
fn new_ring(io: &VolumeIo, opts: Tuning) -> io::Result<(IoUring, RingSetup, RingFiles)> {
    let modes: &[RingSetup] = match opts.setup {
        RingSetup::DeferTaskrun => &[
            RingSetup::DeferTaskrun,
            RingSetup::CoopTaskrun,
            RingSetup::Plain,
        ],
        RingSetup::CoopTaskrun => &[RingSetup::CoopTaskrun, RingSetup::Plain],
        RingSetup::Plain => &[RingSetup::Plain],
    };
    let mut last = None;
    for &mode in modes {
        let mut b = IoUring::builder();
        match mode {
            RingSetup::DeferTaskrun => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            RingSetup::CoopTaskrun => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingSetup::Plain => {}
        }
        match b.build(RING_ENTRIES) {
            Ok(ring) => {
                let buffered = io.buffered.as_raw_fd();
                let direct = io.direct.as_ref().map_or(buffered, |f| f.as_raw_fd());
                let fds = if opts.fixed_files
                    && ring.submitter().register_files(&[direct, buffered]).is_ok()
                {
                    None
                } else {
                    Some((direct, buffered))
                };
                return Ok((ring, mode, fds));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

impl Worker {
    fn new(io: &VolumeIo) -> io::Result<Self> {
        let (ring, setup, fds) = new_ring(io, io.tuning)?;
        let slots = RING_ENTRIES as usize;
        Ok(Worker {
            ring,
            owner: thread_tag(),
            memory: None,
            setup,
            fds,
            slots: (0..slots).map(|_| None).collect(),
            iovecs: (0..slots).map(|_| Vec::new()).collect(),
            free: (0..slots).rev().collect(),
            inflight: 0,
            queued: 0,
            chain: Vec::new(),
            cqes: Vec::with_capacity(slots),
            used: Vec::with_capacity(MAX_QUEUE_SIZE),
            ranges: Vec::new(),
            poll_for: io.poll,
            slept_at: None,
        })
    }

    /// Makes sure the ring belongs to the calling thread: a `SINGLE_ISSUER` ring created on
    /// another thread (the one that built the backend, or the previous connection's worker)
    /// refuses our submissions, so it is replaced. Nothing is in flight between `serve`
    /// calls, so nothing is lost.
    fn own_ring(&mut self, io: &VolumeIo) -> io::Result<()> {
        let me = thread_tag();
        if self.owner == me || self.setup != RingSetup::DeferTaskrun {
            self.owner = me;
            return Ok(());
        }
        if self.inflight > 0 {
            // Only after an error left requests behind: their completions can only be
            // reaped by the old thread, which is gone. Forget them (their slots come back)
            // rather than wedge the queue.
            warn!(
                inflight = self.inflight,
                "queue moved to a new thread with requests in flight; dropping them"
            );
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if slot.take().is_some() {
                    self.free.push(i);
                }
            }
            self.inflight = 0;
        }
        let (ring, setup, fds) = new_ring(io, io.tuning)?;
        self.ring = ring;
        self.setup = setup;
        self.fds = fds;
        self.queued = 0;
        self.owner = me;
        Ok(())
    }

    /// The file to address in a submission (`direct` or buffered), and the flag that says
    /// it is an index into the registered files.
    fn file(&self, direct: bool) -> (types::Fd, squeue::Flags) {
        ring_file(self.fds, direct)
    }

    /// Serves the queue until it is empty, nothing is in flight and notifications are back on.
    ///
    /// While requests are in flight the worker sleeps in the kernel (`io_uring_enter` waiting
    /// for one completion, which also submits what was queued): it never spins on the
    /// completion queue. Once the queue is idle it polls the avail ring for at most
    /// [`Worker::poll_for`], a window adapted to how soon requests have been coming back
    /// (see [`Worker::adapt_poll`]), then re-enables notifications and returns to epoll.
    ///
    /// The frontend may change the memory table while we serve (libblkio maps its buffers
    /// after starting the queues; a VM may hot-plug memory): see [`MemView`].
    fn serve(
        &mut self,
        vring: &VringMutex,
        atomic: &Memory,
        io: &VolumeIo,
        limits: &Limits,
        q: usize,
    ) -> io::Result<()> {
        let stats = &io.stats.queues[q.min(io.stats.queues.len() - 1)];
        self.own_ring(io)?;
        if let Some(slept) = self.slept_at.take() {
            self.adapt_poll(slept.elapsed(), io.poll);
        }
        let mut view = MemView::new(atomic);
        vring.disable_notification().map_err(queue_err)?;
        loop {
            view.refresh(self.inflight);
            self.take_requests(vring, &mut view, io, limits, stats)?;
            let mem: &GuestMemoryMmap = &view.current;
            // Requests answered on the spot (errors, GET_ID) need not wait for the I/O.
            self.publish(vring, mem)?;
            if self.inflight > 0 {
                // Submit what is queued and sleep until something completes, in one system
                // call. Requests the driver adds meanwhile are taken with the next
                // completion, so they reach the kernel together.
                self.ring.submit_and_wait(1)?;
                self.queued = 0;
            } else if self.queued > 0 {
                // Entries of a request that failed while being prepared.
                self.ring.submit()?;
                self.queued = 0;
            }
            self.reap(mem, stats);
            self.publish(vring, mem)?;
            if self.inflight > 0 || has_avail(vring, mem) {
                continue;
            }
            if self.poll_avail(vring, mem) {
                continue;
            }
            // Sleep: re-enable notifications, and go on if a request slipped in meanwhile.
            if !vring.enable_notification().map_err(queue_err)? {
                self.slept_at = Some(Instant::now());
                return Ok(());
            }
            vring.disable_notification().map_err(queue_err)?;
        }
    }

    /// Adapts the idle poll window to the last sleep, which lasted `slept` (from giving up
    /// polling to the kick that woke us), as QEMU's adaptive polling does: a sleep longer
    /// than `max` means polling could not have caught the request, so stop polling; a
    /// shorter one means a longer poll would have, so double the window (up to `max`).
    fn adapt_poll(&mut self, slept: Duration, max: Duration) {
        self.poll_for = if slept > max {
            Duration::ZERO
        } else {
            (self.poll_for * 2).clamp(MIN_POLL.min(max), max)
        };
    }

    /// Polls the avail ring of an idle queue for up to [`Worker::poll_for`]; returns whether
    /// a request arrived.
    fn poll_avail(&self, vring: &VringMutex, mem: &GuestMemoryMmap) -> bool {
        if self.poll_for.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            for _ in 0..16 {
                if has_avail(vring, mem) {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= self.poll_for {
                return false;
            }
        }
    }

    /// Puts the finished requests in the used ring under one lock of the vring, then
    /// notifies the driver once if it asked to be (with EVENT_IDX, only when the used index
    /// passed its `used_event`).
    fn publish(&mut self, vring: &VringMutex, mem: &GuestMemoryMmap) -> io::Result<()> {
        if self.used.is_empty() {
            return Ok(());
        }
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        for &(head, len) in &self.used {
            queue.add_used(mem, head, len).map_err(queue_err)?;
        }
        self.used.clear();
        if queue.needs_notification(mem).map_err(queue_err)? {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// Takes every available request (while slots are free) and queues their I/O, which
    /// `serve` submits with its wait; requests answered on the spot go to `self.used`.
    fn take_requests(
        &mut self,
        vring: &VringMutex,
        view: &mut MemView<'_>,
        io: &VolumeIo,
        limits: &Limits,
        stats: &crate::metrics::QueueStats,
    ) -> io::Result<()> {
        // The chain buffer is moved out while `prepare` borrows the worker, and put back.
        let mut chain = std::mem::take(&mut self.chain);
        while let Some(slot) = self.free.last().copied() {
            chain.clear();
            let head = {
                let mut state = vring.get_mut();
                match state.get_queue_mut().pop_descriptor_chain(&*view.current) {
                    Some(c) => {
                        let head = c.head_index();
                        chain.extend(c.map(|d| Segment {
                            addr: d.addr().0,
                            len: d.len(),
                            device_writable: d.is_write_only(),
                        }));
                        head
                    }
                    None => break,
                }
            };
            // The request may use memory the frontend added after our last look (it waits
            // for our ack of ADD_MEM_REG before using it): look again now that we have it.
            view.refresh(self.inflight);
            let mem: &GuestMemoryMmap = &view.current;
            let started = crate::metrics::clock();
            let last = chain.last().copied();
            let ends = match request::split_in_place(&mut chain) {
                Ok(e) => e,
                Err(_) => {
                    // No trustworthy status byte: answer with an empty used entry.
                    if let Some(last) = last.filter(|s| s.device_writable && s.len > 0) {
                        let _ = mem.write_obj(
                            Status::IoErr as u8,
                            GuestAddress(last.addr + u64::from(last.len) - 1),
                        );
                    }
                    self.used.push((head, 0));
                    stats.record(IoKind::Other, 0, false, started);
                    continue;
                }
            };
            let mut req = Inflight {
                head,
                status: ends.status,
                used_len: 1,
                pending: 0,
                failed: false,
                kind: IoKind::Other,
                bytes: 0,
                started,
            };
            let header = match mem.read_obj::<[u8; HEADER_LEN]>(GuestAddress(ends.header)) {
                Ok(b) => Header::from_bytes(b),
                Err(_) => {
                    self.finish(mem, req, Status::IoErr, stats);
                    continue;
                }
            };
            let op = match request::validate(header, &chain, limits) {
                Ok(op) => op,
                Err(status) => {
                    self.finish(mem, req, status, stats);
                    continue;
                }
            };
            match self.prepare(op, &chain, mem, io, limits, &mut req, slot) {
                Ok(0) => self.finish(mem, req, Status::Ok, stats),
                Ok(_) => {
                    self.free.pop();
                    self.inflight += 1;
                    self.slots[slot] = Some(req);
                }
                Err(status) => self.finish(mem, req, status, stats),
            }
        }
        self.chain = chain;
        // What is queued goes to the kernel with `serve`'s wait, in the same system call.
        Ok(())
    }

    /// Queues one submission entry, submitting what is queued first if the ring is full.
    fn push(&mut self, e: &squeue::Entry) -> Result<(), Status> {
        // SAFETY: the entry points at `self.iovecs[slot]` (left alone until the request
        // completes) or at guest memory held by the caller's memory guard, which outlives
        // the request because `serve` completes every request before returning.
        while unsafe { self.ring.submission().push(e) }.is_err() {
            self.ring.submit().map_err(|_| Status::IoErr)?;
            self.queued = 0;
        }
        self.queued += 1;
        Ok(())
    }

    /// Turns a validated request into io_uring operations; returns how many were queued
    /// (zero when the request completed synchronously).
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        op: Op,
        data: &[Segment],
        mem: &GuestMemoryMmap,
        io: &VolumeIo,
        limits: &Limits,
        req: &mut Inflight,
        slot: usize,
    ) -> Result<u32, Status> {
        let user_data = slot as u64;
        let count = match op {
            Op::Read { offset, len } | Op::Write { offset, len } => {
                let is_read = matches!(op, Op::Read { .. });
                req.kind = if is_read { IoKind::Read } else { IoKind::Write };
                req.bytes = len;
                if is_read {
                    req.used_len = u32::try_from(len + 1).map_err(|_| Status::IoErr)?;
                }
                let iov = &mut self.iovecs[slot];
                iovecs(mem, data, iov)?;
                let aligned = iov.iter().all(|v| {
                    (v.iov_base as usize).is_multiple_of(512) && v.iov_len.is_multiple_of(512)
                });
                let (fd, fixed) = ring_file(self.fds, io.direct.is_some() && aligned);
                let wait = io.throttle.admit(len);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                let n = iov.len() as u32;
                // Write-through mode: each write is durable when it completes.
                let sync = if io.writeback.load(Ordering::Relaxed) {
                    0
                } else {
                    libc::RWF_DSYNC
                };
                let e = match (is_read, n) {
                    (true, 1) => opcode::Read::new(fd, iov[0].iov_base.cast(), len as u32)
                        .offset(offset)
                        .build(),
                    (false, 1) => opcode::Write::new(fd, iov[0].iov_base.cast(), len as u32)
                        .offset(offset)
                        .rw_flags(sync)
                        .build(),
                    (true, _) => opcode::Readv::new(fd, iov.as_ptr(), n)
                        .offset(offset)
                        .build(),
                    (false, _) => opcode::Writev::new(fd, iov.as_ptr(), n)
                        .offset(offset)
                        .rw_flags(sync)
                        .build(),
                };
                self.push(&e.flags(fixed).user_data(user_data))?;
                1
            }
            Op::Flush => {
                req.kind = IoKind::Flush;
                let (fd, fixed) = self.file(false);
                let e = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                self.push(&e.flags(fixed).user_data(user_data))?;
                1
            }
            Op::GetId => {
                let mut id = [0u8; ID_BYTES];
                let n = io.id.len().min(ID_BYTES);
                id[..n].copy_from_slice(&io.id.as_bytes()[..n]);
                let mut written = 0usize;
                for seg in data {
                    if written == ID_BYTES {
                        break;
                    }
                    let take = (seg.len as usize).min(ID_BYTES - written);
                    mem.write_slice(&id[written..written + take], GuestAddress(seg.addr))
                        .map_err(|_| Status::IoErr)?;
                    written += take;
                }
                req.used_len = written as u32 + 1;
                return Ok(0);
            }
            Op::Discard | Op::WriteZeroes => {
                req.kind = IoKind::Discard;
                // `validate` capped the total at `max_ranges` ranges.
                let mut raw = std::mem::take(&mut self.ranges);
                let total: usize = data.iter().map(|s| s.len as usize).sum();
                raw.clear();
                raw.resize(total, 0);
                let mut at = 0;
                let mut read = Ok(());
                for seg in data {
                    let end = at + seg.len as usize;
                    if mem
                        .read_slice(&mut raw[at..end], GuestAddress(seg.addr))
                        .is_err()
                    {
                        read = Err(Status::IoErr);
                        break;
                    }
                    at = end;
                }
                let queued = read.and_then(|()| {
                    let mut count = 0;
                    for chunk in raw.chunks_exact(RANGE_LEN) {
                        let mut b = [0u8; RANGE_LEN];
                        b.copy_from_slice(chunk);
                        let range = request::parse_range(b, limits)?;
                        if range.len == 0 {
                            continue;
                        }
                        let mode = if matches!(op, Op::Discard) || range.unmap {
                            FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE
                        } else {
                            FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE
                        };
                        let (fd, fixed) = self.file(false);
                        let e = opcode::Fallocate::new(fd, range.len)
                            .offset(range.offset)
                            .mode(mode)
                            .build();
                        self.push(&e.flags(fixed).user_data(user_data))?;
                        count += 1;
                    }
                    Ok(count)
                });
                self.ranges = raw;
                queued?
            }
        };
        req.pending = count;
        Ok(count)
    }

    /// Completes everything the kernel has finished, into `self.used`.
    fn reap(&mut self, mem: &GuestMemoryMmap, stats: &crate::metrics::QueueStats) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &cqes {
            let slot = user_data as usize;
            let Some(req) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                warn!(slot, "completion for an empty slot");
                continue;
            };
            let short =
                matches!(req.kind, IoKind::Read | IoKind::Write) && res as i64 != req.bytes as i64;
            if res < 0 || short {
                req.failed = true;
            }
            req.pending -= 1;
            if req.pending == 0 {
                let req = self.slots[slot].take().expect("checked above");
                self.free.push(slot);
                self.inflight -= 1;
                let status = if req.failed {
                    Status::IoErr
                } else {
                    Status::Ok
                };
                self.finish(mem, req, status, stats);
            }
        }
        self.cqes = cqes;
    }

    /// Writes the status byte and queues the used entry (see [`Worker::publish`]).
    fn finish(
        &mut self,
        mem: &GuestMemoryMmap,
        req: Inflight,
        status: Status,
        stats: &crate::metrics::QueueStats,
    ) {
        let ok = status == Status::Ok;
        let used_len = if ok { req.used_len } else { 1 };
        if mem
            .write_obj(status as u8, GuestAddress(req.status))
            .is_err()
        {
            self.used.push((req.head, 0));
        } else {
            self.used.push((req.head, used_len));
        }
        stats.record(req.kind, if ok { req.bytes } else { 0 }, ok, req.started);
    }
}

/// The memory table a worker translates guest addresses with.
///
/// It is reloaded after every request taken off the queue, so buffers in regions the
/// frontend just added resolve. Tables replaced while requests were in flight stay alive
/// (in `retired`) until no request is in flight, because io_uring still points into their
/// mappings.
struct MemView<'a> {
    atomic: &'a Memory,
    current: Arc<GuestMemoryMmap>,
    retired: Vec<Arc<GuestMemoryMmap>>,
}

impl<'a> MemView<'a> {
    fn new(atomic: &'a Memory) -> Self {
        MemView {
            atomic,
            current: atomic.memory().into_inner(),
            retired: Vec::new(),
        }
    }

    /// Switches to the latest table; `inflight` requests may still use the old one.
    fn refresh(&mut self, inflight: usize) {
        let latest = self.atomic.memory();
        if !std::ptr::eq(&*latest, &*self.current) {
            let old = std::mem::replace(&mut self.current, latest.into_inner());
            if inflight > 0 {
                self.retired.push(old);
            }
        }
        if inflight == 0 {
            self.retired.clear();
        }
    }
}

/// Fills `out` with the host iovecs for the data segments (a segment crossing memory
/// regions gives several).
fn iovecs(
    mem: &GuestMemoryMmap,
    data: &[Segment],
    out: &mut Vec<libc::iovec>,
) -> Result<(), Status> {
    out.clear();
    for seg in data {
        for slice in mem.get_slices(GuestAddress(seg.addr), seg.len as usize) {
            let slice = slice.map_err(|_| Status::IoErr)?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

/// Whether the driver has made requests available that we have not taken yet.
fn has_avail(vring: &VringMutex, mem: &GuestMemoryMmap) -> bool {
    let state = vring.get_ref();
    let queue: &virtio_queue::Queue = VringState::get_queue(&state);
    queue
        .avail_idx(mem, Ordering::Acquire)
        .map(|idx| idx != Wrapping(queue.next_avail()))
        .unwrap_or(false)
}

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

/// Device limits every blockdp volume advertises.
pub mod defaults {
    /// Largest segment: 1 MiB.
    pub const SIZE_MAX: u32 = 1 << 20;
    /// Most segments per request.
    pub const SEG_MAX: u32 = 126;
    /// Largest discard / write-zeroes range: 4 GiB in sectors.
    pub const MAX_RANGE_SECTORS: u32 = 1 << 23;
    /// Most ranges per discard / write-zeroes request.
    pub const MAX_RANGES: u32 = 32;
}

impl VolumeIo {
    /// Opens the volume file at `path` (with `O_DIRECT` too, where the filesystem allows).
    pub fn open(
        path: &std::path::Path,
        id: &str,
        read_only: bool,
        num_queues: u16,
        poll: Duration,
    ) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(!read_only);
        let buffered = opts.open(path)?;
        let direct = opts.custom_flags(libc::O_DIRECT).open(path).ok();
        let capacity = buffered.metadata()?.len() / request::SECTOR_SIZE * request::SECTOR_SIZE;
        let num_queues = num_queues.max(1);
        Ok(VolumeIo {
            id: id.to_string(),
            direct,
            buffered,
            config: DeviceConfig {
                capacity,
                size_max: defaults::SIZE_MAX,
                seg_max: defaults::SEG_MAX,
                blk_size: request::SECTOR_SIZE as u32,
                physical_block_exp: 3,
                num_queues,
                max_discard_sectors: defaults::MAX_RANGE_SECTORS,
                max_discard_seg: defaults::MAX_RANGES,
                discard_sector_alignment: 8,
                max_write_zeroes_sectors: defaults::MAX_RANGE_SECTORS,
                max_write_zeroes_seg: defaults::MAX_RANGES,
                read_only,
            },
            poll,
            throttle: Arc::new(Throttle::default()),
            stats: Arc::new(VolumeStats::new(usize::from(num_queues))),
            writeback: std::sync::atomic::AtomicBool::new(true),
            tuning: Tuning::default(),
        })
    }
}
