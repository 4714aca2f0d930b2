//! blockdp against its anchors, side by side in one run, with one client.
//!
//! 4 KiB random reads and writes at queue depth 1 and 32 on the same 1 GiB file through:
//! (a) io_uring directly on the file with O_DIRECT (the limit of this machine),
//! (b) blockdp's vhost-user-blk export of the file,
//! (c) qemu-storage-daemon's vhost-user-blk export of the file.
//! All three are driven by libblkio's Rust core (`blockdp::client`). Cells run in
//! rotation (each round starting one target later), several rounds, and the median round
//! is reported, with ratios.
//!
//! `BENCH_SECS` (default 2) sets the length of one cell, `BENCH_ROUNDS` (default 5) the
//! rounds, `BENCH_DIR` where the 1 GiB file lives (default `target/bench-data`);
//! `BENCH_POLL_US` blockdp's poll time (default: the daemon's default);
//! `BENCH_VARIANTS` adds blockdp exports with other settings as extra rows, for A/B runs
//! inside one run: a comma-separated list of variants, each `+`-joined `key=value`s among
//! `poll` (us), `ring` (`plain`, `coop`, `defer`) and `fixed` (`0`/`1`, registered files),
//! e.g. `BENCH_VARIANTS="ring=plain+fixed=0"`; each row gets its IOPS and p99 ratio to the
//! default blockdp;
//! `BENCH_ONLY` and `BENCH_WORKLOAD` (e.g. `randread qd32`) narrow the run for profiling.
//!
//! At queue depth 1 every vhost-user backend pays what the file does not: the driver's kick
//! wakes the backend's thread and the backend's notification wakes the driver's. The run
//! ends by measuring that floor on this machine (two threads passing a token through two
//! eventfds, the way a kick and a call travel), both threads left to the scheduler and both
//! on one CPU, and prints the best QD1 ratio to the file that any such backend could reach.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Summary, ratio};
use blockdp::client::{Client, Options, Target};
use blockdp::vhost::backend::{BlockBackend, RingSetup, Tuning, VolumeIo};
use blockdp::vhost::export::Export;

const FILE_SIZE: u64 = 1 << 30;
const BLOCK: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Workload {
    write: bool,
    depth: usize,
}

impl Workload {
    fn name(&self) -> String {
        format!(
            "rand{} qd{}",
            if self.write { "write" } else { "read" },
            self.depth
        )
    }
}

struct Cell {
    iops: f64,
    lat: Summary,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: do a tiny run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick {
        0.2
    } else {
        env_u64("BENCH_SECS", 2) as f64
    };
    let rounds = if quick { 1 } else { env_u64("BENCH_ROUNDS", 5) };
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let file = dir.join("volume-1g.img");
    prepare_file(&file);

    // (b) blockdp, in this process on its own threads; BENCH_POLL_US may list several
    // poll times (e.g. "50,0,200"): the first is the one compared, the others are extra
    // rows for tuning.
    let polls: Vec<u64> = std::env::var("BENCH_POLL_US")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| vec![blockdp::config::DEFAULT_POLL_US]);
    let mut settings: Vec<(String, u64, Tuning)> = polls
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let name = if i == 0 {
                "blockdp (vhost-user)".to_string()
            } else {
                format!("blockdp poll={p}us")
            };
            (name, p, Tuning::default())
        })
        .collect();
    let default_poll = polls[0];
    for v in std::env::var("BENCH_VARIANTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        settings.push(variant(v, default_poll));
    }
    let mut exports = Vec::new();
    for (i, (_, poll, ring)) in settings.iter().enumerate() {
        let mut io = VolumeIo::open(&file, "bench", false, 1, Duration::from_micros(*poll))
            .expect("open volume");
        io.tuning = *ring;
        let sock = dir.join(format!("blockdp-{i}.sock"));
        let backend = Arc::new(BlockBackend::new(Arc::new(io)).expect("backend"));
        exports.push((
            Export::start("bench", &sock, backend).expect("export"),
            sock,
        ));
    }

    // (c) qemu-storage-daemon.
    let qsd_sock = dir.join("qsd.sock");
    let qsd = start_qsd(&file, &qsd_sock);

    let vhost = |p: &Path| Target::VhostUser(p.to_string_lossy().into());
    let mut targets: Vec<(String, Target)> = vec![
        (
            "file (io_uring, O_DIRECT)".into(),
            Target::File {
                path: file.to_string_lossy().into(),
                direct: true,
            },
        ),
        (settings[0].0.clone(), vhost(&exports[0].1)),
    ];
    if qsd.is_some() {
        targets.push(("qemu-storage-daemon".into(), vhost(&qsd_sock)));
    } else {
        eprintln!("qemu-storage-daemon not available: comparing with the file only");
    }
    let first_extra = targets.len();
    for ((name, _, _), (_, sock)) in settings.iter().zip(&exports).skip(1) {
        targets.push((name.clone(), vhost(sock)));
    }
    let has_qsd = qsd.is_some();

    // BENCH_ONLY keeps the targets whose name contains it (rows only: the ratios need the
    // file, blockdp and qsd); BENCH_WORKLOAD keeps one workload, e.g. "randread qd32".
    let only = std::env::var("BENCH_ONLY").ok();
    if let Some(only) = &only {
        targets.retain(|(name, _)| name.contains(only.as_str()));
    }
    let workload_filter = std::env::var("BENCH_WORKLOAD").ok();
    let workloads: Vec<Workload> = [(false, 1), (false, 32), (true, 1), (true, 32)]
        .into_iter()
        .map(|(write, depth)| Workload { write, depth })
        .filter(|w| workload_filter.as_ref().is_none_or(|f| w.name() == *f))
        .collect();
    println!(
        "4 KiB random I/O on a 1 GiB file, {secs} s per cell, {rounds} round(s), median round"
    );
    println!(
        "{:<14} {:<27} {:>9} {:>10} {:>10}",
        "workload", "target", "IOPS", "p50 us", "p99 us"
    );
    let mut qd1_file = Vec::new();
    for w in workloads {
        let mut cells: Vec<Vec<Cell>> = targets.iter().map(|_| Vec::new()).collect();
        // Each round starts one target later, so that no target always runs in the same
        // place (the cell right after the file ran measurably slower at QD1 in quiet runs).
        let n = targets.len();
        for r in 0..rounds as usize {
            for k in 0..n {
                let i = (k + r) % n;
                cells[i].push(run(&targets[i].1, w, secs));
            }
        }
        let med: Vec<Cell> = cells
            .into_iter()
            .map(|mut v| {
                v.sort_by(|a, b| a.iops.total_cmp(&b.iops));
                v.swap_remove(v.len() / 2)
            })
            .collect();
        if w.depth == 1 && targets[0].0.starts_with("file") {
            qd1_file.push((w.name(), med[0].lat.p50));
        }
        for ((name, _), c) in targets.iter().zip(&med) {
            println!(
                "{:<14} {:<27} {:>9.0} {:>10.1} {:>10.1}",
                w.name(),
                name,
                c.iops,
                c.lat.p50.as_secs_f64() * 1e6,
                c.lat.p99.as_secs_f64() * 1e6
            );
        }
        if only.is_some() {
            continue;
        }
        let mut line = format!(
            "{:<14} blockdp/file {:.2}x",
            w.name(),
            ratio(med[1].iops, med[0].iops)
        );
        if has_qsd {
            line += &format!(
                ", blockdp/qsd {:.2}x IOPS, p99 {:.2}x of qsd's",
                ratio(med[1].iops, med[2].iops),
                med[1].lat.p99.as_secs_f64() / med[2].lat.p99.as_secs_f64()
            );
        }
        println!("{line}");
        for ((name, _), c) in targets.iter().zip(&med).skip(first_extra) {
            println!(
                "{:<14} {name} / blockdp {:.3}x IOPS, p99 {:.2}x",
                w.name(),
                ratio(c.iops, med[1].iops),
                c.lat.p99.as_secs_f64() / med[1].lat.p99.as_secs_f64()
            );
        }
    }

    drop(qsd);
    for (e, _) in exports {
        e.stop();
    }
    if only.is_none() && !qd1_file.is_empty() {
        wake_up_floor(&qd1_file);
    }
}

/// Measures an eventfd round trip between two threads (a kick one way, a call back: the
/// minimum a vhost-user request adds at queue depth 1, before any syscall of the backend's
/// own), and prints the QD1 ratio to the file that it alone allows.
fn wake_up_floor(qd1_file: &[(String, Duration)]) {
    let unpinned = eventfd_round_trip(None);
    let cpu = eventfd_round_trip(Some(0));
    println!(
        "wake-up floor: eventfd round trip between two threads p50 {:.1} us (scheduler's \
         choice of CPUs), {:.1} us (both on CPU 0)",
        unpinned.as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6
    );
    let best = unpinned.min(cpu);
    for (w, file) in qd1_file {
        let f = file.as_secs_f64();
        println!(
            "{w:<14} file p50 {:.1} us + the cheaper round trip: any vhost-user backend \
             reaches at most {:.2}x of the file",
            f * 1e6,
            f / (f + best.as_secs_f64())
        );
    }
}

/// Median time of 20000 eventfd ping-pongs between this thread and a peer; with `cpu`,
/// both threads are pinned to that CPU.
fn eventfd_round_trip(cpu: Option<usize>) -> Duration {
    const N: usize = 20_000;
    fn pin(cpu: Option<usize>) {
        if let Some(c) = cpu {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity
            // only read and write the set we own.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
    fn efd() -> std::fs::File {
        // SAFETY: eventfd returns a new descriptor that we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }
    fn pass(to: &std::fs::File, from: &std::fs::File) {
        use std::io::{Read, Write};
        (&*to)
            .write_all(&1u64.to_ne_bytes())
            .expect("eventfd write");
        let mut b = [0u8; 8];
        (&*from).read_exact(&mut b).expect("eventfd read");
    }
    let (kick, call) = (Arc::new(efd()), Arc::new(efd()));
    let (k, c) = (kick.clone(), call.clone());
    let peer = std::thread::spawn(move || {
        pin(cpu);
        let mut b = [0u8; 8];
        for _ in 0..N {
            std::io::Read::read_exact(&mut &*k, &mut b).expect("eventfd read");
            std::io::Write::write_all(&mut &*c, &1u64.to_ne_bytes()).expect("eventfd write");
        }
    });
    let mut samples = Vec::with_capacity(N);
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(cpu);
            for _ in 0..N {
                let t = Instant::now();
                pass(&kick, &call);
                samples.push(t.elapsed());
            }
        });
    });
    peer.join().expect("peer thread");
    samples.sort();
    samples[N / 2]
}

/// Parses one `BENCH_VARIANTS` entry (see the module docs) into a row name and settings.
fn variant(spec: &str, default_poll: u64) -> (String, u64, Tuning) {
    let mut poll = default_poll;
    let mut ring = Tuning::default();
    for kv in spec.split('+') {
        match kv.split_once('=') {
            Some(("poll", v)) => poll = v.parse().expect("BENCH_VARIANTS poll=<us>"),
            Some(("ring", "plain")) => ring.setup = RingSetup::Plain,
            Some(("ring", "coop")) => ring.setup = RingSetup::CoopTaskrun,
            Some(("ring", "defer")) => ring.setup = RingSetup::DeferTaskrun,
            Some(("fixed", v)) => ring.fixed_files = v != "0",
            _ => panic!(
                "BENCH_VARIANTS: cannot parse {kv:?} (poll=N, ring=plain|coop|defer, fixed=0|1)"
            ),
        }
    }
    (format!("blockdp {spec}"), poll, ring)
}

/// Writes the 1 GiB file with non-zero data once (holes would read faster than a disk).
fn prepare_file(path: &Path) {
    if std::fs::metadata(path)
        .map(|m| m.len() == FILE_SIZE)
        .unwrap_or(false)
    {
        return;
    }
    let f = std::fs::File::create(path).expect("create bench file");
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for i in 0..(FILE_SIZE >> 20) {
        f.write_all_at(&chunk, i << 20).expect("fill bench file");
    }
    f.sync_all().expect("sync bench file");
}

/// A child process killed when dropped, also when the benchmark panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_qsd(file: &Path, sock: &Path) -> Option<KillOnDrop> {
    let _ = std::fs::remove_file(sock);
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=on,aio=io_uring",
            file.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=1",
            sock.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(KillOnDrop)
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child)
}

/// xorshift64*: cheap, deterministic offsets.
struct Rng(u64);

impl Rng {
    fn block(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 16) % (FILE_SIZE / BLOCK as u64)
    }
}

fn run(target: &Target, w: Workload, secs: f64) -> Cell {
    let opts = Options {
        queues: 1,
        queue_size: 64,
        buffer: w.depth * BLOCK,
        ..Options::default()
    };
    let mut c = Client::connect(target, &opts).expect("connect");
    c.buffer_mut(0).fill(0x5a);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut started = vec![Instant::now(); w.depth];
    let mut lat = Vec::with_capacity(200_000);
    let submit = |c: &mut Client, rng: &mut Rng, tag: usize| {
        let off = rng.block() * BLOCK as u64;
        if w.write {
            c.submit_write(0, off, tag * BLOCK, BLOCK, tag);
        } else {
            c.submit_read(0, off, tag * BLOCK, BLOCK, tag);
        }
    };
    let t0 = Instant::now();
    for (tag, start) in started.iter_mut().enumerate() {
        *start = Instant::now();
        submit(&mut c, &mut rng, tag);
    }
    let mut done = Vec::with_capacity(w.depth);
    let end = t0 + Duration::from_secs_f64(secs);
    let mut completed = 0u64;
    let mut outstanding = w.depth;
    while outstanding > 0 {
        done.clear();
        c.complete(0, 1, &mut done).expect("complete");
        let now = Instant::now();
        for &(tag, ret) in &done {
            assert_eq!(ret, 0, "I/O failed on {target:?} ({})", w.name());
            lat.push(now - started[tag]);
            completed += 1;
            if now < end {
                started[tag] = now;
                submit(&mut c, &mut rng, tag);
            } else {
                outstanding -= 1;
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Cell {
        iops: completed as f64 / elapsed,
        lat: Summary::of(&mut lat).expect("samples"),
    }
}
