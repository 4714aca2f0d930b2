//! The vhost-user-blk backend driven by a real client (libblkio's Rust core): bytes written
//! through the socket are the bytes in the volume file, and back.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdp::client::{Client, ClientError, Options, Target};
use blockdp::qos::QosLimits;
use blockdp::vhost::backend::{BlockBackend, RingSetup, Tuning, VolumeIo};
use blockdp::vhost::export::Export;

const SIZE: u64 = 64 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    export: Option<Export>,
    io: Arc<VolumeIo>,
}

impl Fixture {
    fn new(queues: u16, read_only: bool) -> Fixture {
        Self::with_poll(queues, read_only, Duration::from_micros(50))
    }

    fn with_poll(queues: u16, read_only: bool, poll: Duration) -> Fixture {
        Self::with_tuning(queues, read_only, poll, Tuning::default())
    }

    fn with_tuning(queues: u16, read_only: bool, poll: Duration, tuning: Tuning) -> Fixture {
        let dir = tempfile::tempdir_in(env_dir()).unwrap();
        let image = dir.path().join("vol.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(SIZE).unwrap();
        f.write_all_at(b"preexisting bytes", 1 << 20).unwrap();
        drop(f);
        let mut io =
            VolumeIo::open(&image, "vol-0123456789abcdef-xyz", read_only, queues, poll).unwrap();
        io.tuning = tuning;
        let io = Arc::new(io);
        let backend = Arc::new(BlockBackend::new(io.clone()).unwrap());
        let export = Export::start("test", &dir.path().join("vhost.sock"), backend).unwrap();
        Fixture {
            dir,
            export: Some(export),
            io,
        }
    }

    fn socket(&self) -> String {
        self.dir
            .path()
            .join("vhost.sock")
            .to_string_lossy()
            .into_owned()
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("vol.img")
    }

    fn client(&self, queues: usize) -> Client {
        let opts = Options {
            queues,
            ..Options::default()
        };
        Client::connect(&Target::VhostUser(self.socket()), &opts).expect("connect")
    }

    fn on_disk(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(self.image())
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(e) = self.export.take() {
            e.stop();
        }
    }
}

/// A directory on a real filesystem (O_DIRECT and hole punching need one; /tmp may be tmpfs).
fn env_dir() -> &'static Path {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(p).unwrap();
    p
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn ready() -> bool {
    caps::require(caps::Capability::IoUring)
}

#[test]
fn writes_land_in_the_file_and_read_back() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    assert_eq!(c.capacity().unwrap(), SIZE);

    // What was in the file before is what the client reads.
    assert_eq!(
        &c.read(0, 1 << 20, 512).unwrap()[..17],
        b"preexisting bytes"
    );

    for (i, (offset, len)) in [
        (0u64, 4096usize),
        (8192, 65536),
        (SIZE - 4096, 4096),
        (1 << 20, 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(i as u8, len);
        c.write(0, offset, &data).unwrap();
        assert_eq!(
            c.read(0, offset, len).unwrap(),
            data,
            "read back at {offset}"
        );
        assert_eq!(fx.on_disk(offset, len), data, "file bytes at {offset}");
    }
    c.flush(0).unwrap();
}

#[test]
fn memory_mapped_while_the_worker_polls_is_seen() {
    if !ready() {
        return;
    }
    // A worker that polls for a long time must still see buffers the frontend maps after
    // the queues started (blkio maps its buffer region after start).
    let fx = Fixture::with_poll(1, false, Duration::from_millis(300));
    for round in 0..3u8 {
        let mut c = fx.client(1);
        c.write(0, 0, &pattern(round, 4096)).unwrap();
        assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(round, 4096));
    }
}

#[test]
fn unaligned_buffers_go_through_the_page_cache_path() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    // 512-byte I/O from a buffer offset that is not 512-aligned.
    let data = pattern(9, 1024);
    c.buffer_mut(0)[100..1124].copy_from_slice(&data);
    c.submit_write(0, 4096, 100, 1024, 1);
    let mut out = Vec::new();
    c.complete(0, 1, &mut out).unwrap();
    assert_eq!(out, vec![(1, 0)]);
    assert_eq!(fx.on_disk(4096, 1024), data);
}

#[test]
fn discard_punches_holes_and_write_zeroes_zeroes() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    let mb = 1u64 << 20;
    c.write(0, 4 * mb, &pattern(1, 1 << 20)).unwrap();
    c.write(0, 8 * mb, &pattern(2, 1 << 20)).unwrap();
    c.flush(0).unwrap();
    let blocks_before = std::fs::metadata(fx.image()).unwrap().blocks();

    c.discard(0, 4 * mb, mb).unwrap();
    assert_eq!(c.read(0, 4 * mb, 4096).unwrap(), vec![0u8; 4096]);
    let blocks_after = std::fs::metadata(fx.image()).unwrap().blocks();
    assert!(
        blocks_after + 2048 - 64 <= blocks_before,
        "discard should free ~1 MiB: {blocks_before} -> {blocks_after} blocks"
    );

    c.write_zeroes(0, 8 * mb + 4096, 8192, false).unwrap();
    let got = c.read(0, 8 * mb, 16384).unwrap();
    let mut want = pattern(2, 16384);
    want[4096..12288].fill(0);
    assert_eq!(got, want);
    assert_eq!(fx.on_disk(8 * mb, 16384), want);
    assert_eq!(
        std::fs::metadata(fx.image()).unwrap().len(),
        SIZE,
        "size kept"
    );
}

#[test]
fn four_queues_work_in_parallel_on_their_own_ranges() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(4, false);
    let mut c = fx.client(4);
    assert_eq!(c.num_queues(), 4);
    // Queue many writes on every queue before waiting on any.
    for q in 0..4 {
        for i in 0..16usize {
            let off = i * 4096;
            c.buffer_mut(q)[off..off + 4096].copy_from_slice(&pattern((q * 16 + i) as u8, 4096));
            c.submit_write(q, ((q * 16 + i) * 4096) as u64, off, 4096, i);
        }
    }
    for q in 0..4 {
        let mut out = Vec::new();
        while out.len() < 16 {
            c.complete(q, 1, &mut out).unwrap();
        }
        assert!(out.iter().all(|(_, r)| *r == 0), "queue {q}: {out:?}");
    }
    for n in 0..64usize {
        assert_eq!(
            fx.on_disk((n * 4096) as u64, 4096),
            pattern(n as u8, 4096),
            "block {n}"
        );
    }
    let per_queue: Vec<u64> = fx.io.stats.queues.iter().map(|s| s.writes()).collect();
    assert_eq!(
        per_queue,
        vec![16, 16, 16, 16],
        "each queue served its own requests"
    );
}

#[test]
fn a_second_connection_works_after_the_first_disconnects() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(2, false);
    {
        let mut c = fx.client(2);
        c.write(1, 0, &pattern(5, 4096)).unwrap();
    }
    for round in 0..3u8 {
        let mut c = fx.client(1);
        assert_eq!(
            c.read(0, 0, 4096).unwrap(),
            pattern(5, 4096),
            "round {round}"
        );
        c.write(0, 4096, &pattern(round, 512)).unwrap();
    }
    assert_eq!(fx.on_disk(4096, 512), pattern(2, 512));
}

/// Every ring setup, with and without registered files: each connection's new worker
/// threads recreate their rings where needed (a `SINGLE_ISSUER` ring refuses submissions
/// from other threads) and serve both queues, with every byte landing and reading back.
#[test]
fn every_ring_setup_serves_across_reconnects_on_new_threads() {
    if !ready() {
        return;
    }
    for setup in [
        RingSetup::Plain,
        RingSetup::CoopTaskrun,
        RingSetup::DeferTaskrun,
    ] {
        for fixed_files in [false, true] {
            let tuning = Tuning { setup, fixed_files };
            let fx = Fixture::with_tuning(2, false, Duration::ZERO, tuning);
            for round in 0..3u8 {
                let mut c = fx.client(2);
                for q in 0..2usize {
                    let offset = (usize::from(round) * 2 + q) as u64 * 8192;
                    let data = pattern(round * 2 + q as u8, 8192);
                    c.write(q, offset, &data).unwrap();
                    assert_eq!(
                        c.read(q, offset, 8192).unwrap(),
                        data,
                        "{tuning:?} round {round} queue {q}"
                    );
                    c.flush(q).unwrap();
                }
            }
            for n in 0..6u8 {
                assert_eq!(
                    fx.on_disk(u64::from(n) * 8192, 8192),
                    pattern(n, 8192),
                    "{tuning:?} block {n}"
                );
            }
        }
    }
}

#[test]
fn read_only_volumes_refuse_writes_and_still_read() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, true);
    let opts = Options {
        read_only: true,
        ..Options::default()
    };
    let mut c = Client::connect(&Target::VhostUser(fx.socket()), &opts).unwrap();
    assert_eq!(
        &c.read(0, 1 << 20, 512).unwrap()[..17],
        b"preexisting bytes"
    );
    // blkio refuses writes itself on a read-only device; a raw write request must fail too.
    c.submit_write(0, 0, 0, 512, 7);
    let mut out = Vec::new();
    c.complete(0, 1, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_ne!(out[0].1, 0, "write to a read-only volume must fail");
    assert_eq!(fx.on_disk(0, 512), vec![0u8; 512]);
}

#[test]
fn bad_requests_fail_and_the_backend_keeps_serving() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    // Past the end of the device.
    assert!(matches!(
        c.read(0, SIZE, 4096),
        Err(ClientError::Request(_))
    ));
    // One segment larger than SIZE_MAX (1 MiB): blkio sends it as one descriptor.
    assert!(matches!(
        c.read(0, 0, 2 << 20),
        Err(ClientError::Request(_))
    ));
    // And the device still works.
    c.write(0, 0, &pattern(3, 4096)).unwrap();
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(3, 4096));
}

#[test]
fn qos_iops_limit_is_honoured_within_ten_percent() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    let limit = 400u64;
    fx.io.throttle.set(QosLimits {
        iops: Some(limit),
        bytes_per_sec: None,
    });
    // Drain the burst, then time a fixed number of I/Os at queue depth 8.
    for i in 0..(limit / 10) {
        c.read(0, i * 4096, 4096).unwrap();
    }
    let ops = 400usize;
    let start = Instant::now();
    let mut done = 0;
    let mut issued = 0;
    let mut out = Vec::new();
    while done < ops {
        while issued < ops && issued - done < 8 {
            c.submit_read(
                0,
                (issued as u64 % 1024) * 4096,
                (issued % 8) * 4096,
                4096,
                issued,
            );
            issued += 1;
        }
        out.clear();
        c.complete(0, 1, &mut out).unwrap();
        assert!(out.iter().all(|(_, r)| *r == 0));
        done += out.len();
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    assert!(
        (rate - limit as f64).abs() <= limit as f64 * 0.10,
        "measured {rate:.0} IOPS against a limit of {limit}"
    );
    // Lifting the limit lifts the pacing.
    fx.io.throttle.set(QosLimits::default());
    let start = Instant::now();
    for i in 0..200u64 {
        c.read(0, i * 4096, 4096).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "still throttled: {:?}",
        start.elapsed()
    );
}

#[test]
fn qos_bandwidth_limit_is_honoured_within_ten_percent() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    let limit = 4u64 << 20; // 4 MiB/s
    fx.io.throttle.set(QosLimits {
        iops: None,
        bytes_per_sec: Some(limit),
    });
    let chunk = 64 * 1024;
    // Drain the burst (a tenth of a second's worth), then time 4 MiB of reads.
    for i in 0..((limit / 10) / chunk as u64) {
        c.read(0, i * chunk as u64, chunk).unwrap();
    }
    let start = Instant::now();
    let total = 4u64 << 20;
    for i in 0..(total / chunk as u64) {
        c.read(0, (i % 512) * chunk as u64, chunk).unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    assert!(
        (rate - limit as f64).abs() <= limit as f64 * 0.10,
        "measured {:.2} MiB/s against a limit of 4 MiB/s",
        rate / (1 << 20) as f64
    );
}

#[test]
fn metrics_count_the_volume_io() {
    if !ready() {
        return;
    }
    let fx = Fixture::new(1, false);
    let mut c = fx.client(1);
    c.write(0, 0, &pattern(1, 8192)).unwrap();
    c.read(0, 0, 4096).unwrap();
    let mut text = String::new();
    blockdp::metrics::render(&mut text, &[(&fx.io.id, &fx.io.stats)]);
    let m = caps::prom::must_scrape("blockdp", &text);
    let l = |op| {
        [
            ("volume", "vol-0123456789abcdef-xyz"),
            ("queue", "0"),
            ("op", op),
        ]
    };
    assert_eq!(
        m.get("ferrostack_blockdp_io_requests_total", &l("write")),
        1.0
    );
    assert_eq!(
        m.get("ferrostack_blockdp_io_requests_total", &l("read")),
        1.0
    );
    assert_eq!(
        m.get("ferrostack_blockdp_io_bytes_total", &l("write")),
        8192.0
    );
    assert_eq!(
        m.get("ferrostack_blockdp_io_bytes_total", &l("read")),
        4096.0
    );
}
