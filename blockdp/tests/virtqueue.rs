//! The backend fed hand-built virtqueues: GET_ID, malformed chains, and arbitrary chains
//! (property test). Whatever a frontend puts in the ring, every chain gets a used entry,
//! status bytes are valid, and the backend keeps serving.

use std::sync::Arc;
use std::time::Duration;

use blockdp::vhost::backend::{BlockBackend, VolumeIo};
use proptest::prelude::*;
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};
use vmm_sys_util::epoll::EventSet;

const MEM: usize = 4 << 20;
const QSIZE: u16 = 64;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const ID: &str = "0123456789abcdefghij-and-more";
const VOL_SIZE: u64 = 1 << 20;

struct Rig {
    _dir: tempfile::TempDir,
    mem: GuestMemoryMmap,
    atomic: GuestMemoryAtomic<GuestMemoryMmap>,
    backend: BlockBackend,
    vring: VringMutex,
    desc_base: GuestAddress,
    avail_base: GuestAddress,
    used_base: GuestAddress,
    next_desc: std::sync::atomic::AtomicU16,
}

impl Rig {
    fn new(read_only: bool) -> Rig {
        Self::with_poll(read_only, Duration::ZERO)
    }

    fn with_poll(read_only: bool, poll: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(VOL_SIZE)
            .unwrap();
        let io = VolumeIo::open(&path, ID, read_only, 1, poll).unwrap();
        let backend = BlockBackend::new(Arc::new(io)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let q = MockSplitQueue::new(&mem, QSIZE);
        let (desc, avail, used) = (q.desc_table_addr(), q.avail_addr(), q.used_addr());
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = VringMutex::new(atomic.clone(), 1024).unwrap();
        vring.set_queue_size(QSIZE);
        vring.set_queue_info(desc.0, avail.0, used.0).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        backend.update_memory(atomic.clone()).unwrap();
        Rig {
            _dir: dir,
            mem,
            atomic,
            backend,
            vring,
            desc_base: desc,
            avail_base: avail,
            used_base: used,
            next_desc: std::sync::atomic::AtomicU16::new(0),
        }
    }

    /// Puts a chain in the descriptor table and the avail ring, as a driver would.
    fn push(&self, descs: &[(u64, u32, u16)]) {
        let start = self.next_desc.load(std::sync::atomic::Ordering::Relaxed);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (start + i as u16) % QSIZE;
            let last = i == descs.len() - 1;
            let flags = if last {
                flags & !F_NEXT
            } else {
                flags | F_NEXT
            };
            let at = self.desc_base.unchecked_add(16 * u64::from(idx));
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem
                .write_obj((idx + 1) % QSIZE, at.unchecked_add(14))
                .unwrap();
        }
        let avail_idx: u16 = self.mem.read_obj(self.avail_base.unchecked_add(2)).unwrap();
        let slot = self
            .avail_base
            .unchecked_add(4 + 2 * u64::from(avail_idx % QSIZE));
        self.mem.write_obj(start, slot).unwrap();
        self.mem
            .write_obj(avail_idx.wrapping_add(1), self.avail_base.unchecked_add(2))
            .unwrap();
        self.next_desc.store(
            (start + descs.len() as u16) % QSIZE,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn run(&self) -> std::io::Result<()> {
        self.backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0)
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.used_base.unchecked_add(2))
            .unwrap()
    }

    /// (head, len) of used element `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let base = self.used_base.unchecked_add(4 + 8 * u64::from(i % QSIZE));
        (
            self.mem.read_obj(base).unwrap(),
            self.mem.read_obj(base.unchecked_add(4)).unwrap(),
        )
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

fn ready() -> bool {
    caps::require(caps::Capability::IoUring)
}

#[test]
fn get_id_answers_the_volume_id() {
    if !ready() {
        return;
    }
    let rig = Rig::new(false);
    rig.header(HDR, 8, 0);
    rig.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    rig.push(&[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)]);
    rig.run().unwrap();
    assert_eq!(rig.status(STATUS), 0);
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, &ID.as_bytes()[..20]);
    assert_eq!(rig.used_idx(), 1);
    assert_eq!(rig.used(0), (0, 21));
}

#[test]
fn the_driver_can_switch_to_write_through_and_writes_still_land() {
    if !ready() {
        return;
    }
    let rig = Rig::new(false);
    assert_eq!(
        rig.backend.get_config(32, 1),
        vec![1],
        "writeback by default"
    );
    rig.backend.set_config(32, &[0]).unwrap();
    assert_eq!(rig.backend.get_config(32, 1), vec![0]);
    assert!(rig.backend.set_config(58, &[0; 4]).is_err(), "past the end");
    // Writes go out with RWF_DSYNC now; through both the O_DIRECT and the buffered path.
    rig.mem
        .write_slice(&[0x5a; 1024], GuestAddress(DATA))
        .unwrap();
    rig.header(HDR, 1, 2);
    rig.push(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
    rig.header(HDR + 0x100, 1, 4);
    rig.push(&[
        (HDR + 0x100, 16, 0),
        (DATA + 3, 512, 0),
        (STATUS + 16, 1, F_WRITE),
    ]);
    rig.run().unwrap();
    assert_eq!((rig.status(STATUS), rig.status(STATUS + 16)), (0, 0));
    let on_disk = std::fs::read(rig._dir.path().join("v.img")).unwrap();
    assert_eq!(&on_disk[1024..1536], &[0x5a; 512][..]);
    assert_eq!(&on_disk[2048..2560], &[0x5a; 512][..]);
}

#[test]
fn malformed_and_invalid_requests_fail_one_by_one() {
    if !ready() {
        return;
    }
    let rig = Rig::new(true);
    let s = |n: u64| STATUS + n * 16;
    // 0: header only 8 bytes long.
    rig.push(&[(HDR, 8, 0), (s(0), 1, F_WRITE)]);
    // 1: no writable status descriptor at all.
    rig.push(&[(HDR + 0x100, 16, 0), (DATA, 512, 0)]);
    // 2: read past the end of the volume.
    rig.header(HDR + 0x200, 0, VOL_SIZE / 512);
    rig.push(&[
        (HDR + 0x200, 16, 0),
        (DATA, 512, F_WRITE),
        (s(2), 1, F_WRITE),
    ]);
    // 3: unknown request type.
    rig.header(HDR + 0x300, 42, 0);
    rig.push(&[(HDR + 0x300, 16, 0), (s(3), 1, F_WRITE)]);
    // 4: write to a read-only volume.
    rig.header(HDR + 0x400, 1, 0);
    rig.push(&[(HDR + 0x400, 16, 0), (DATA, 512, 0), (s(4), 1, F_WRITE)]);
    // 5: data buffer outside guest memory.
    rig.header(HDR + 0x500, 0, 0);
    rig.push(&[
        (HDR + 0x500, 16, 0),
        (1 << 40, 512, F_WRITE),
        (s(5), 1, F_WRITE),
    ]);
    // 6: a good read, after all that.
    rig.header(HDR + 0x600, 0, 0);
    rig.mem
        .write_slice(&[0xaa; 512], GuestAddress(DATA))
        .unwrap();
    rig.push(&[
        (HDR + 0x600, 16, 0),
        (DATA, 512, F_WRITE),
        (s(6), 1, F_WRITE),
    ]);
    for n in 0..7 {
        rig.mem.write_obj(0xffu8, GuestAddress(s(n))).unwrap();
    }

    rig.run().unwrap();
    assert_eq!(rig.used_idx(), 7, "every chain completed");
    assert_eq!(rig.status(s(0)), 1, "short header: IOERR");
    assert_eq!(rig.used(1).1, 0, "no status byte: empty used entry");
    assert_eq!(rig.status(s(2)), 1, "out of range: IOERR");
    assert_eq!(rig.status(s(3)), 2, "unknown type: UNSUPP");
    assert_eq!(rig.status(s(4)), 1, "read-only: IOERR");
    assert_eq!(rig.status(s(5)), 1, "unmapped buffer: IOERR");
    assert_eq!(rig.status(s(6)), 0, "good read");
    let mut buf = [0u8; 512];
    rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, [0u8; 512], "read the (zero) volume into the buffer");
    assert_eq!(rig.used(6).1, 513);
}

#[test]
fn memory_added_while_the_worker_polls_is_used() {
    if !ready() {
        return;
    }
    let rig = Rig::with_poll(false, Duration::from_millis(300));
    // A first request gets the worker into its polling loop.
    rig.header(HDR, 0, 0);
    rig.push(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]);
    const NEW: u64 = 0x100_0000;
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| rig.run());
        std::thread::sleep(Duration::from_millis(50));
        // The frontend adds a region (as ADD_MEM_REG does) and uses it at once.
        let region = GuestRegionMmap::from_range(GuestAddress(NEW), 1 << 20, None).unwrap();
        let grown = rig.mem.insert_region(Arc::new(region)).unwrap();
        grown.write_slice(&[0xaa; 512], GuestAddress(NEW)).unwrap();
        rig.atomic.lock().unwrap().replace(grown.clone());
        rig.header(HDR + 0x100, 0, 0);
        rig.mem
            .write_obj(0xffu8, GuestAddress(STATUS + 16))
            .unwrap();
        rig.push(&[
            (HDR + 0x100, 16, 0),
            (NEW, 512, F_WRITE),
            (STATUS + 16, 1, F_WRITE),
        ]);
        worker.join().unwrap().unwrap();
        let mut buf = [0xffu8; 512];
        grown.read_slice(&mut buf, GuestAddress(NEW)).unwrap();
        assert_eq!(buf, [0u8; 512], "the read landed in the new region");
    });
    assert_eq!(rig.used_idx(), 2);
    assert_eq!(rig.status(STATUS + 16), 0);
}

/// A call eventfd on the rig's vring; `notifications` reads (and resets) its counter.
fn watch_calls(rig: &Rig) -> vmm_sys_util::eventfd::EventFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let fd = efd.try_clone().unwrap().into_raw_fd();
    // SAFETY: `fd` is a fresh duplicate that nothing else owns.
    rig.vring
        .set_call(Some(unsafe { std::fs::File::from_raw_fd(fd) }));
    efd
}

fn notifications(efd: &vmm_sys_util::eventfd::EventFd) -> u64 {
    match efd.read() {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("reading the call eventfd: {e}"),
    }
}

/// Pushes `n` GET_ID requests (answered on the spot, so they finish in one batch).
fn push_get_ids(rig: &Rig, first: u64, n: u64) {
    for i in first..first + n {
        let hdr = HDR + 0x100 * i;
        rig.header(hdr, 8, 0);
        rig.push(&[
            (hdr, 16, 0),
            (DATA + 0x100 * i, 20, F_WRITE),
            (STATUS + 16 * i, 1, F_WRITE),
        ]);
    }
}

#[test]
fn a_batch_of_completions_sends_one_notification() {
    if !ready() {
        return;
    }
    let rig = Rig::new(false);
    let calls = watch_calls(&rig);
    push_get_ids(&rig, 0, 8);
    rig.run().unwrap();
    assert_eq!(rig.used_idx(), 8);
    assert_eq!((0..8).map(|i| rig.status(STATUS + 16 * i)).max(), Some(0));
    assert_eq!(notifications(&calls), 1, "one notification for the batch");
}

#[test]
fn with_event_idx_the_driver_is_notified_only_past_used_event() {
    if !ready() {
        return;
    }
    let rig = Rig::new(false);
    rig.vring.set_queue_event_idx(true);
    let calls = watch_calls(&rig);
    // used_event (after the avail ring): "interrupt me once used idx goes past 5".
    rig.mem
        .write_obj(5u16, rig.avail_base.unchecked_add(4 + 2 * u64::from(QSIZE)))
        .unwrap();
    push_get_ids(&rig, 0, 3);
    rig.run().unwrap();
    assert_eq!(rig.used_idx(), 3);
    assert_eq!(
        notifications(&calls),
        0,
        "used idx 3 has not passed used_event 5"
    );
    push_get_ids(&rig, 3, 3);
    rig.run().unwrap();
    assert_eq!(rig.used_idx(), 6);
    assert_eq!(notifications(&calls), 1, "used idx 6 passed used_event 5");
    // A driver that moved used_event ahead again is left alone.
    rig.mem
        .write_obj(
            20u16,
            rig.avail_base.unchecked_add(4 + 2 * u64::from(QSIZE)),
        )
        .unwrap();
    push_get_ids(&rig, 6, 2);
    rig.run().unwrap();
    assert_eq!(rig.used_idx(), 8);
    assert_eq!(notifications(&calls), 0);
}

fn any_desc() -> impl Strategy<Value = (u64, u32, u16)> {
    let addr = prop_oneof![
        0x10_0000u64..0x3f_0000, // inside guest memory
        Just(MEM as u64 - 8),    // straddling its end
        any::<u64>(),            // anywhere
    ];
    (
        addr,
        prop_oneof![Just(1u32), Just(16), Just(512), 0u32..70_000],
        prop_oneof![Just(0u16), Just(F_WRITE)],
    )
}

fn any_header() -> impl Strategy<Value = (u32, u64)> {
    (
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(4),
            Just(8),
            Just(11),
            Just(13),
            any::<u32>()
        ],
        prop_oneof![0u64..2048, any::<u64>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_chains_each_get_a_used_entry(
        chains in prop::collection::vec((any_header(), prop::collection::vec(any_desc(), 1..5)), 1..12),
    ) {
        if !ready() {
            return Ok(());
        }
        let rig = Rig::new(false);
        for (i, ((kind, sector), descs)) in chains.iter().enumerate() {
            // Most chains start with a real header so they reach the I/O paths.
            let mut descs = descs.clone();
            let hdr = HDR + 0x1000 * i as u64;
            rig.header(hdr, *kind, *sector);
            if i % 3 != 0 {
                descs[0] = (hdr, 16, 0);
            }
            rig.push(&descs);
        }
        prop_assert!(rig.run().is_ok());
        prop_assert_eq!(rig.used_idx() as usize, chains.len());
        for i in 0..chains.len() as u16 {
            let (head, len) = rig.used(i);
            prop_assert!(head < u32::from(QSIZE));
            prop_assert!(len <= 70_000 * 4 + 1);
        }
    }
}
