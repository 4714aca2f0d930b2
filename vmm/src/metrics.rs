//! The VMM's counters: per vCPU (exits by kind, CPU time), per drive and per network
//! interface (requests, bytes, errors, rate-limiter throttles, latency), and process-wide
//! ones (serial, i8042, boot time, API).
//!
//! Two views of the same numbers: Prometheus text at `GET /metrics` (our extension to the
//! Firecracker API, names `ferrostack_vmm_*`), and Firecracker's `FlushMetrics`, which appends
//! one JSON line of process-wide totals to the file given with `PUT /metrics`.
//!
//! Cost on the hot paths: a vCPU owns its [`VcpuStats`] (one writer, its own cache lines),
//! so counting an exit is a relaxed load and store, no locked instruction and no lock. A
//! device's stats are written by whichever thread holds the device (one at a time), with
//! relaxed atomic adds. Registration (a vCPU or device created) takes a mutex; the hot
//! paths hold their own `Arc` and never touch it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const R: Ordering = Ordering::Relaxed;

/// Whether exits and I/Os are counted; on unless a benchmark turns it off.
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Turns counting of exits and device I/O on or off for the whole process. Off exists only
/// so that `benches/` can measure what counting costs on the exit path, side by side in
/// one run; the VMM never turns it off.
pub fn set_counting(on: bool) {
    COUNTING.store(on, R);
}

#[inline]
fn counting() -> bool {
    COUNTING.load(R)
}

/// Adds one to a counter only its owner thread writes: a plain load and store (no locked
/// read-modify-write); readers on other threads see a recent value.
#[inline]
fn bump_owned(c: &AtomicU64) {
    c.store(c.load(R).wrapping_add(1), R);
}

macro_rules! globals {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Process-wide counters.
        #[derive(Debug, Default)]
        pub struct Globals {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Globals {
            const fn new() -> Self {
                Globals { $($name: AtomicU64::new(0),)* }
            }

            fn json(&self, m: &mut serde_json::Map<String, serde_json::Value>) {
                $(m.insert(stringify!($name).into(), self.$name.load(R).into());)*
            }
        }
    };
}

globals! {
    /// Bytes the guest wrote to the serial console.
    serial_bytes_out,
    /// Serial writes that failed.
    serial_errors,
    /// Guest resets through the i8042.
    i8042_resets,
    /// Microseconds from VM start to the guest's boot-time write (0 until then).
    boot_time_us,
    /// API requests received.
    api_requests,
    /// API requests answered with an error.
    api_errors,
    /// Times the metrics were flushed.
    flushes,
}

/// Why `KVM_RUN` returned to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Port-I/O read.
    IoIn,
    /// Port-I/O write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// `HLT` without an in-kernel irqchip.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// A system event (reset, shutdown).
    SystemEvent,
    /// The entry to the guest failed.
    FailEntry,
    /// KVM could not handle something (often an instruction it cannot emulate).
    InternalError,
    /// `KVM_RUN` interrupted by a signal (a pause or a stop kicking the vCPU).
    Interrupted,
    /// Any other exit.
    Other,
}

impl ExitKind {
    /// Every kind, in label order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::InternalError => "internal_error",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// One vCPU's counters, written only by its thread.
#[derive(Debug)]
#[repr(align(128))]
pub struct VcpuStats {
    exits: [AtomicU64; ExitKind::ALL.len()],
    unhandled: AtomicU64,
    /// CPU time of the vCPU threads that ran this vCPU and have finished, in ns.
    cpu_done_ns: AtomicU64,
    /// The CPU-time clock of the running vCPU thread (0: none running).
    clock: AtomicI32,
}

impl Default for VcpuStats {
    fn default() -> Self {
        VcpuStats {
            exits: Default::default(),
            unhandled: AtomicU64::new(0),
            cpu_done_ns: AtomicU64::new(0),
            clock: AtomicI32::new(0),
        }
    }
}

impl VcpuStats {
    /// Counts one exit (on the vCPU's own thread).
    #[inline]
    pub fn exit(&self, kind: ExitKind) {
        if counting() {
            bump_owned(&self.exits[kind as usize]);
        }
    }

    /// Counts an access no device claimed (on the vCPU's own thread).
    #[inline]
    pub fn unhandled(&self) {
        if counting() {
            bump_owned(&self.unhandled);
        }
    }

    /// Exits of `kind` so far.
    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize].load(R)
    }

    /// Called by the vCPU thread when it starts: its CPU time becomes readable from other
    /// threads.
    pub fn thread_started(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the calling, live thread; `clock` is a valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        if rc == 0 {
            self.clock.store(clock, R);
        }
    }

    /// Called by the vCPU thread as it finishes: its CPU time is banked.
    pub fn thread_finished(&self) {
        let ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0);
        self.cpu_done_ns.fetch_add(ns, R);
        self.clock.store(0, R);
    }

    /// CPU time (guest and VMM) spent by the threads running this vCPU.
    pub fn cpu_time(&self) -> Duration {
        let running = match self.clock.load(R) {
            0 => 0,
            c => clock_ns(c).unwrap_or(0),
        };
        Duration::from_nanos(self.cpu_done_ns.load(R) + running)
    }
}

fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; an invalid clock (a thread that has exited) is
    // reported as an error, not undefined behaviour.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Upper bounds of the block latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// What a block request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Get-id, unsupported or malformed requests.
    Other,
}

impl BlockOp {
    const ALL: [BlockOp; 4] = [
        BlockOp::Read,
        BlockOp::Write,
        BlockOp::Flush,
        BlockOp::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            BlockOp::Read => "read",
            BlockOp::Write => "write",
            BlockOp::Flush => "flush",
            BlockOp::Other => "other",
        }
    }
}

/// One virtio-blk drive's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BlockStats {
    requests: [AtomicU64; 4],
    bytes: [AtomicU64; 2],
    errors: AtomicU64,
    throttled: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl BlockStats {
    /// The start of a request for [`BlockStats::request`] (`None` when counting is off).
    #[inline]
    pub fn clock() -> Option<Instant> {
        counting().then(Instant::now)
    }

    /// Counts one completed request: its bytes count only if it succeeded.
    pub fn request(&self, op: BlockOp, bytes: u64, ok: bool, started: Option<Instant>) {
        let Some(started) = started else {
            return;
        };
        let elapsed = started.elapsed();
        self.requests[op as usize].fetch_add(1, R);
        match op {
            BlockOp::Read if ok => {
                self.bytes[0].fetch_add(bytes, R);
            }
            BlockOp::Write if ok => {
                self.bytes[1].fetch_add(bytes, R);
            }
            _ => {}
        }
        if !ok {
            self.errors.fetch_add(1, R);
        }
        let us = elapsed.as_micros() as u64;
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            self.latency[i].fetch_add(1, R);
        }
        self.latency_count.fetch_add(1, R);
        self.latency_sum_ns.fetch_add(elapsed.as_nanos() as u64, R);
    }

    /// Counts a request held back by the rate limiter.
    pub fn throttled(&self) {
        if counting() {
            self.throttled.fetch_add(1, R);
        }
    }

    /// Requests counted for `op`.
    pub fn requests(&self, op: BlockOp) -> u64 {
        self.requests[op as usize].load(R)
    }
}

/// Direction of a network frame, from the guest's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the guest.
    Tx,
    /// Delivered to the guest.
    Rx,
}

impl Direction {
    const ALL: [Direction; 2] = [Direction::Tx, Direction::Rx];

    fn label(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }
}

/// One virtio-net interface's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct NetStats {
    frames: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    throttled: [AtomicU64; 2],
    errors: AtomicU64,
}

impl NetStats {
    /// Counts one frame of `bytes` (virtio-net header included) moved in `dir`.
    #[inline]
    pub fn frame(&self, dir: Direction, bytes: u64) {
        if counting() {
            self.frames[dir as usize].fetch_add(1, R);
            self.bytes[dir as usize].fetch_add(bytes, R);
        }
    }

    /// Counts a dropped frame or a failed device operation.
    pub fn error(&self) {
        if counting() {
            self.errors.fetch_add(1, R);
        }
    }

    /// Counts a queue held back by the rate limiter of `dir`.
    pub fn throttled(&self, dir: Direction) {
        if counting() {
            self.throttled[dir as usize].fetch_add(1, R);
        }
    }
}

/// The process's metrics: the globals and every registered vCPU and device.
#[derive(Debug)]
pub struct Metrics {
    /// Process-wide counters.
    pub globals: Globals,
    vcpus: Mutex<Vec<Arc<VcpuStats>>>,
    drives: Mutex<Vec<(String, Arc<BlockStats>)>>,
    nets: Mutex<Vec<(String, Arc<NetStats>)>>,
}

impl std::ops::Deref for Metrics {
    type Target = Globals;
    fn deref(&self) -> &Globals {
        &self.globals
    }
}

fn registered<T: Default>(list: &Mutex<Vec<(String, Arc<T>)>>, id: &str) -> Arc<T> {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = l.iter().find(|(i, _)| i == id) {
        return s.clone();
    }
    let s = Arc::new(T::default());
    l.push((id.to_string(), s.clone()));
    s
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            globals: Globals::new(),
            vcpus: Mutex::new(Vec::new()),
            drives: Mutex::new(Vec::new()),
            nets: Mutex::new(Vec::new()),
        }
    }

    /// The counters of vCPU `index` (created on first use; a rebooted VM keeps counting on
    /// the same ones, so every series only grows).
    pub fn vcpu(&self, index: u8) -> Arc<VcpuStats> {
        let mut l = self.vcpus.lock().unwrap_or_else(|e| e.into_inner());
        while l.len() <= usize::from(index) {
            l.push(Arc::new(VcpuStats::default()));
        }
        l[usize::from(index)].clone()
    }

    /// The counters of drive `id`.
    pub fn drive(&self, id: &str) -> Arc<BlockStats> {
        registered(&self.drives, id)
    }

    /// The counters of network interface `id`.
    pub fn net(&self, id: &str) -> Arc<NetStats> {
        registered(&self.nets, id)
    }

    /// Firecracker-style flat JSON of process-wide totals (`FlushMetrics`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let exits = |k: ExitKind| vcpus.iter().map(|v| v.exits(k)).sum::<u64>();
        m.insert("pio_reads".into(), exits(ExitKind::IoIn).into());
        m.insert("pio_writes".into(), exits(ExitKind::IoOut).into());
        m.insert("mmio_reads".into(), exits(ExitKind::MmioRead).into());
        m.insert("mmio_writes".into(), exits(ExitKind::MmioWrite).into());
        m.insert(
            "unhandled_accesses".into(),
            vcpus
                .iter()
                .map(|v| v.unhandled.load(R))
                .sum::<u64>()
                .into(),
        );
        self.globals.json(&mut m);
        let drives = self
            .drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sum_d = |f: &dyn Fn(&BlockStats) -> u64| drives.iter().map(|(_, d)| f(d)).sum::<u64>();
        m.insert(
            "block_requests".into(),
            sum_d(&|d| d.requests.iter().map(|c| c.load(R)).sum::<u64>() - d.errors.load(R)).into(),
        );
        m.insert("block_errors".into(), sum_d(&|d| d.errors.load(R)).into());
        m.insert(
            "block_throttled".into(),
            sum_d(&|d| d.throttled.load(R)).into(),
        );
        let nets = self.nets.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sum_n = |f: &dyn Fn(&NetStats) -> u64| nets.iter().map(|(_, n)| f(n)).sum::<u64>();
        m.insert(
            "net_tx_frames".into(),
            sum_n(&|n| n.frames[0].load(R)).into(),
        );
        m.insert(
            "net_rx_frames".into(),
            sum_n(&|n| n.frames[1].load(R)).into(),
        );
        m.insert("net_errors".into(), sum_n(&|n| n.errors.load(R)).into());
        serde_json::Value::Object(m)
    }

    /// The Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut o = String::new();
        let vcpus = self.vcpus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        family(
            &mut o,
            "ferrostack_vmm_vcpu_exits_total",
            "counter",
            "Exits from KVM_RUN handled by the VMM, by vCPU and kind.",
        );
        for (i, v) in vcpus.iter().enumerate() {
            for k in ExitKind::ALL {
                let _ = writeln!(
                    o,
                    "ferrostack_vmm_vcpu_exits_total{{vcpu=\"{i}\",kind=\"{}\"}} {}",
                    k.label(),
                    v.exits(k)
                );
            }
        }
        family(
            &mut o,
            "ferrostack_vmm_vcpu_unhandled_accesses_total",
            "counter",
            "Port-I/O and MMIO accesses no device claimed, by vCPU.",
        );
        for (i, v) in vcpus.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferrostack_vmm_vcpu_unhandled_accesses_total{{vcpu=\"{i}\"}} {}",
                v.unhandled.load(R)
            );
        }
        family(
            &mut o,
            "ferrostack_vmm_vcpu_cpu_seconds_total",
            "counter",
            "CPU time of the thread running each vCPU (guest and exit handling).",
        );
        for (i, v) in vcpus.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferrostack_vmm_vcpu_cpu_seconds_total{{vcpu=\"{i}\"}} {}",
                v.cpu_time().as_secs_f64()
            );
        }

        let drives = self
            .drives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        family(
            &mut o,
            "ferrostack_vmm_block_requests_total",
            "counter",
            "virtio-blk requests completed, by drive and operation.",
        );
        for (id, d) in &drives {
            for op in BlockOp::ALL {
                let _ = writeln!(
                    o,
                    "ferrostack_vmm_block_requests_total{{drive=\"{id}\",op=\"{}\"}} {}",
                    op.label(),
                    d.requests(op)
                );
            }
        }
        family(
            &mut o,
            "ferrostack_vmm_block_bytes_total",
            "counter",
            "Bytes moved by successful virtio-blk reads and writes, by drive and operation.",
        );
        for (id, d) in &drives {
            for (i, op) in ["read", "write"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ferrostack_vmm_block_bytes_total{{drive=\"{id}\",op=\"{op}\"}} {}",
                    d.bytes[i].load(R)
                );
            }
        }
        for (name, help, pick) in [
            (
                "ferrostack_vmm_block_errors_total",
                "virtio-blk requests answered with an error status, by drive.",
                (|d: &BlockStats| d.errors.load(R)) as fn(&BlockStats) -> u64,
            ),
            (
                "ferrostack_vmm_block_throttled_total",
                "Times a drive's rate limiter held its queue back, by drive.",
                |d: &BlockStats| d.throttled.load(R),
            ),
        ] {
            family(&mut o, name, "counter", help);
            for (id, d) in &drives {
                let _ = writeln!(o, "{name}{{drive=\"{id}\"}} {}", pick(d));
            }
        }
        family(
            &mut o,
            "ferrostack_vmm_block_latency_seconds",
            "histogram",
            "Time to serve a virtio-blk request once taken off the queue, by drive.",
        );
        for (id, d) in &drives {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += d.latency[i].load(R);
                let _ = writeln!(
                    o,
                    "ferrostack_vmm_block_latency_seconds_bucket{{drive=\"{id}\",le=\"{}\"}} {cumulative}",
                    *bound as f64 / 1e6
                );
            }
            let count = d.latency_count.load(R);
            let _ = writeln!(
                o,
                "ferrostack_vmm_block_latency_seconds_bucket{{drive=\"{id}\",le=\"+Inf\"}} {count}\n\
                 ferrostack_vmm_block_latency_seconds_sum{{drive=\"{id}\"}} {}\n\
                 ferrostack_vmm_block_latency_seconds_count{{drive=\"{id}\"}} {count}",
                d.latency_sum_ns.load(R) as f64 / 1e9
            );
        }

        let nets = self.nets.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, help, pick) in [
            (
                "ferrostack_vmm_net_frames_total",
                "Frames through virtio-net, by interface and direction (tx: from the guest).",
                (|n: &NetStats, d: usize| n.frames[d].load(R)) as fn(&NetStats, usize) -> u64,
            ),
            (
                "ferrostack_vmm_net_bytes_total",
                "Bytes of those frames (with the 12-byte virtio-net header), by interface and direction.",
                |n: &NetStats, d: usize| n.bytes[d].load(R),
            ),
            (
                "ferrostack_vmm_net_throttled_total",
                "Times an interface's rate limiter held a queue back, by interface and direction.",
                |n: &NetStats, d: usize| n.throttled[d].load(R),
            ),
        ] {
            family(&mut o, name, "counter", help);
            for (id, n) in &nets {
                for d in Direction::ALL {
                    let _ = writeln!(
                        o,
                        "{name}{{iface=\"{id}\",direction=\"{}\"}} {}",
                        d.label(),
                        pick(n, d as usize)
                    );
                }
            }
        }
        family(
            &mut o,
            "ferrostack_vmm_net_errors_total",
            "counter",
            "Frames dropped (malformed chains, oversize, tap errors, short buffers), by interface.",
        );
        for (id, n) in &nets {
            let _ = writeln!(
                o,
                "ferrostack_vmm_net_errors_total{{iface=\"{id}\"}} {}",
                n.errors.load(R)
            );
        }

        let g = &self.globals;
        for (name, help, v) in [
            (
                "ferrostack_vmm_serial_output_bytes_total",
                "Bytes the guest wrote to the serial console.",
                &g.serial_bytes_out,
            ),
            (
                "ferrostack_vmm_serial_errors_total",
                "Serial output writes that failed.",
                &g.serial_errors,
            ),
            (
                "ferrostack_vmm_i8042_resets_total",
                "Guest resets through the i8042 controller.",
                &g.i8042_resets,
            ),
            (
                "ferrostack_vmm_api_requests_total",
                "API requests received.",
                &g.api_requests,
            ),
            (
                "ferrostack_vmm_api_errors_total",
                "API requests answered with an error.",
                &g.api_errors,
            ),
            (
                "ferrostack_vmm_metrics_flushes_total",
                "FlushMetrics writes to the metrics file.",
                &g.flushes,
            ),
        ] {
            family(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {}", v.load(R));
        }
        family(
            &mut o,
            "ferrostack_vmm_boot_time_seconds",
            "gauge",
            "Time from VM start to the guest's boot-time write (0 until then).",
        );
        let _ = writeln!(
            o,
            "ferrostack_vmm_boot_time_seconds {}",
            g.boot_time_us.load(R) as f64 / 1e6
        );
        o
    }
}

/// Writes one family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_valid_prometheus_text() {
        let m = Metrics::new();
        let v = m.vcpu(1);
        v.exit(ExitKind::IoOut);
        v.exit(ExitKind::IoOut);
        v.unhandled();
        let d = m.drive("rootfs");
        d.request(
            BlockOp::Read,
            4096,
            true,
            Instant::now().checked_sub(Duration::from_micros(40)),
        );
        d.request(BlockOp::Write, 512, false, BlockStats::clock());
        d.throttled();
        let n = m.net("eth0");
        n.frame(Direction::Rx, 100);
        m.globals.serial_bytes_out.fetch_add(3, R);
        let p = caps::prom::must_scrape("vmm", &m.prometheus());
        let io = |vcpu| [("vcpu", vcpu), ("kind", "io_out")];
        assert_eq!(p.get("ferrostack_vmm_vcpu_exits_total", &io("1")), 2.0);
        assert_eq!(p.get("ferrostack_vmm_vcpu_exits_total", &io("0")), 0.0);
        assert_eq!(
            p.get(
                "ferrostack_vmm_vcpu_unhandled_accesses_total",
                &[("vcpu", "1")]
            ),
            1.0
        );
        let rd = [("drive", "rootfs"), ("op", "read")];
        assert_eq!(p.get("ferrostack_vmm_block_requests_total", &rd), 1.0);
        assert_eq!(p.get("ferrostack_vmm_block_bytes_total", &rd), 4096.0);
        let wr = [("drive", "rootfs"), ("op", "write")];
        assert_eq!(p.get("ferrostack_vmm_block_bytes_total", &wr), 0.0);
        assert_eq!(
            p.get("ferrostack_vmm_block_errors_total", &[("drive", "rootfs")]),
            1.0
        );
        assert_eq!(
            p.get(
                "ferrostack_vmm_block_latency_seconds_bucket",
                &[("drive", "rootfs"), ("le", "0.00005")]
            ),
            p.get(
                "ferrostack_vmm_block_latency_seconds_bucket",
                &[("drive", "rootfs"), ("le", "0.00001")]
            ) + 1.0
        );
        let rx = [("iface", "eth0"), ("direction", "rx")];
        assert_eq!(p.get("ferrostack_vmm_net_frames_total", &rx), 1.0);
        assert_eq!(p.get("ferrostack_vmm_net_bytes_total", &rx), 100.0);
        assert_eq!(p.get("ferrostack_vmm_serial_output_bytes_total", &[]), 3.0);
        let j = m.to_json();
        assert_eq!(j["pio_writes"], 2);
        assert_eq!(j["block_requests"], 1);
        assert_eq!(j["block_errors"], 1);
        assert_eq!(j["net_rx_frames"], 1);
    }

    #[test]
    fn vcpu_time_is_read_from_another_thread_and_banked_at_exit() {
        let m = Metrics::new();
        let v = m.vcpu(0);
        let (go, wait) = std::sync::mpsc::channel();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let t = {
            let v = v.clone();
            std::thread::spawn(move || {
                v.thread_started();
                // Burn 20 ms of this thread's own CPU time, however long that takes.
                let mut x = 0u64;
                while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap() < 20_000_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                go.send(()).unwrap();
                let _ = finished.recv();
                v.thread_finished();
            })
        };
        wait.recv().unwrap();
        let running = v.cpu_time();
        assert!(running >= Duration::from_millis(20), "{running:?}");
        done.send(()).unwrap();
        t.join().unwrap();
        assert!(v.cpu_time() >= running, "banked time never goes back");
    }
}
