//! What counting costs on each data plane's hot path: metrics on vs off, side by side in
//! one run.
//!
//! "Off" is the same code with counting switched off, not a different build of the daemon:
//! - vmm, blockdp, objectd: a process-wide switch (`set_counting(false)`, a relaxed atomic
//!   load on the hot path) skips the counters *and* the clock reads that feed latency
//!   histograms; "on" pays for that load too, so the difference is what counting costs.
//! - netdp: the same C compiled with `-DNETDP_NO_COUNTERS` (every counting branch compiled
//!   away), loaded and populated exactly like the counted program.
//!
//! Each round interleaves short on and off slices (the order flipping slice by slice), so
//! both sides see the same machine load; the headline is the median of the per-round
//! ratios, with their range. Each section also
//! times the counting call alone in a tight loop (ns per call), which says the same thing
//! without the machine's noise: its share of one operation's time.
//!
//! (a) vmm: port-I/O exit round trip of a guest doing 20000 `out`s (per-exit time);
//! (b) blockdp: 4 KiB random reads at queue depth 1 through a vhost-user-blk export, driven
//!     by libblkio (IOPS);
//! (c) objectd: 4 KiB Swift GETs on one keep-alive connection (op/s);
//! (d) netdp: the tc program under BPF_PROG_TEST_RUN, L2 forward and routed frames of a
//!     tracked connection (ns per packet, as the kernel measures it), timed in pairs of
//!     short slices (counted and uncounted back to back); the headline is the median of
//!     all pairs' ratios (`BENCH_NETDP_SLICES` pairs a round, default 100);
//! (e) netdp live: 64-byte frames from a generator VM through veths and netdp's tc program
//!     (port security, security groups, conntrack) to a sink VM, in namespaces (packet rate).
//!
//! Run: `cargo bench -p benches --bench metrics_cost` (root, KVM, BPF for (a) and (d);
//! sections whose capability is missing are skipped). `BENCH_ROUNDS` (default 7) and
//! `BENCH_SECS` (default 1) set the rounds and the length of a timed cell.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const EXITS: u32 = 20_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `cell(on)` for `rounds` rounds, alternating which side goes first; returns the
/// per-round (off, on) figures.
fn alternate(rounds: u64, mut cell: impl FnMut(bool) -> f64) -> Vec<(f64, f64)> {
    (0..rounds)
        .map(|r| {
            if r % 2 == 0 {
                let off = cell(false);
                (off, cell(true))
            } else {
                let on = cell(true);
                (cell(false), on)
            }
        })
        .collect()
}

/// Runs `rounds` rounds of `slices` short slices each, alternating on and off slice by
/// slice (so both sides see the same machine load); `slice(on)` returns (operations,
/// seconds). Returns per-round (off, on) rates in operations per second.
fn interleave(
    rounds: u64,
    slices: u64,
    mut slice: impl FnMut(bool) -> (f64, f64),
) -> Vec<(f64, f64)> {
    (0..rounds)
        .map(|_| {
            let mut acc = [(0.0, 0.0); 2];
            for i in 0..slices {
                for on in if i % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                } {
                    let (ops, secs) = slice(on);
                    acc[usize::from(on)].0 += ops;
                    acc[usize::from(on)].1 += secs;
                }
            }
            (acc[0].0 / acc[0].1, acc[1].0 / acc[1].1)
        })
        .collect()
}

/// Prints one section's rounds and its headline: the median per-round cost of counting,
/// as a fraction of the "off" figure. `higher_is_better` for rates, not for times.
fn report(name: &str, unit: &str, rounds: &[(f64, f64)], higher_is_better: bool) -> f64 {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|(off, on)| {
            if higher_is_better {
                off / on - 1.0
            } else {
                on / off - 1.0
            }
        })
        .collect();
    let mut offs: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut ons: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let overhead = median(&mut ratios);
    println!(
        "{name}: metrics off {:.1} {unit}, on {:.1} {unit} (medians of {} rounds); \
         cost of counting {:+.2}% (median of per-round ratios, range {:+.2}% .. {:+.2}%)",
        median(&mut offs),
        median(&mut ons),
        rounds.len(),
        overhead * 100.0,
        ratios.first().unwrap_or(&0.0) * 100.0,
        ratios.last().unwrap_or(&0.0) * 100.0,
    );
    overhead
}

/// Prints a section measured in pairs of slices (ns per operation, counted vs uncounted):
/// the median of every pair's ratio with its interquartile range, and the spread of the
/// rounds' own medians.
fn report_pairs(name: &str, rounds: &[Vec<(f64, f64)>]) -> f64 {
    let ratio = |(off, on): &(f64, f64)| on / off - 1.0;
    let mut all: Vec<f64> = rounds.iter().flatten().map(ratio).collect();
    let overhead = median(&mut all);
    let (q1, q3) = (all[all.len() / 4], all[all.len() * 3 / 4]);
    let mut per_round: Vec<f64> = rounds
        .iter()
        .map(|r| median(&mut r.iter().map(ratio).collect::<Vec<_>>()))
        .collect();
    median(&mut per_round);
    let mut offs: Vec<f64> = rounds.iter().flatten().map(|p| p.0).collect();
    let mut ons: Vec<f64> = rounds.iter().flatten().map(|p| p.1).collect();
    println!(
        "{name}: metrics off {:.1} ns, on {:.1} ns (medians); cost of counting {:+.2}% \
         (median of {} pair ratios, IQR {:+.2}% .. {:+.2}%; round medians {:+.2}% .. {:+.2}%)",
        median(&mut offs),
        median(&mut ons),
        overhead * 100.0,
        all.len(),
        q1 * 100.0,
        q3 * 100.0,
        per_round.first().unwrap_or(&0.0) * 100.0,
        per_round.last().unwrap_or(&0.0) * 100.0,
    );
    overhead
}

/// Times `f` called `n` times; ns per call.
fn ns_per_call(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

// ---------------------------------------------------------------------------------- vmm --

fn vmm_exit(kernel: &Path) -> Duration {
    use vmm::machine::{Machine, VmEvent, VmSpec};
    let spec = VmSpec {
        vcpus: 1,
        mem_mib: 32,
        template: Default::default(),
        kernel: kernel.to_path_buf(),
        initrd: None,
        boot_args: "console=ttyS0".into(),
        drives: vec![],
        nets: vec![],
        protocol: Default::default(),
        serial_stdin: false,
    };
    let (tx, rx) = channel();
    let machine = Machine::start(&spec, Box::new(std::io::sink()), tx).expect("start VM");
    let mut booted = None;
    let elapsed = loop {
        match rx
            .recv_timeout(Duration::from_secs(60))
            .expect("guest event")
        {
            VmEvent::Booted(_) => booted = Some(Instant::now()),
            VmEvent::Reset => break booted.expect("boot before reset").elapsed(),
            VmEvent::Crashed { reason, .. } => panic!("guest crashed: {reason}"),
        }
    };
    machine.stop();
    elapsed / EXITS
}

fn section_vmm(rounds: u64) {
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Kvm]) {
        return;
    }
    let kernel = vmm::testkit::build_guest(
        "pio_loop",
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vmm_exit(&kernel); // warm-up
    // Four VMs per round (two each way); a VM's 20000 exits take ~0.2-0.5 s.
    let r: Vec<(f64, f64)> = interleave(rounds, 2, |on| {
        vmm::metrics::set_counting(on);
        (1.0, vmm_exit(&kernel).as_secs_f64())
    })
    .into_iter()
    .map(|(off, on)| (1e9 / off, 1e9 / on))
    .collect();
    vmm::metrics::set_counting(true);
    report("vmm PIO exit round trip", "ns", &r, false);
    let stats = vmm::metrics::VcpuStats::default();
    let call = ns_per_call(50_000_000, |_| {
        black_box(&stats).exit(vmm::metrics::ExitKind::IoOut)
    });
    let exit_ns = median(&mut r.iter().map(|x| x.0).collect::<Vec<_>>());
    println!(
        "  counting one exit alone: {call:.2} ns = {:.3}% of an exit",
        call / exit_ns * 100.0
    );
}

// ------------------------------------------------------------------------------ blockdp --

fn section_blockdp(rounds: u64, secs: f64) {
    use blockdp::client::{Client, Options, Target};
    use blockdp::vhost::backend::{BlockBackend, VolumeIo};
    use blockdp::vhost::export::Export;
    if !caps::require(caps::Capability::IoUring) {
        return;
    }
    const SIZE: u64 = 256 << 20;
    const BLOCK: usize = 4096;
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let file = dir.join("metrics-cost-256m.img");
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(SIZE) {
        let f = std::fs::File::create(&file).expect("create volume file");
        let chunk = vec![0x5au8; 1 << 20];
        let mut w = std::io::BufWriter::new(f);
        for _ in 0..SIZE >> 20 {
            w.write_all(&chunk).unwrap();
        }
        w.into_inner().unwrap().sync_all().unwrap();
    }
    let io = VolumeIo::open(&file, "bench", false, 1, Duration::from_micros(200)).expect("open");
    let stats = io.stats.clone();
    let sock = dir.join("metrics-cost-blockdp.sock");
    let backend = Arc::new(BlockBackend::new(Arc::new(io)).expect("backend"));
    let _export = Export::start("bench", &sock, backend).expect("export");
    let target = Target::VhostUser(sock.to_string_lossy().into());
    let opts = Options {
        queues: 1,
        queue_size: 64,
        buffer: BLOCK,
        ..Options::default()
    };
    let mut c = Client::connect(&target, &opts).expect("connect");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut cell = |secs: f64| {
        let t = Instant::now();
        let end = t + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut done = Vec::with_capacity(1);
        while Instant::now() < end {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (SIZE / BLOCK as u64)) * BLOCK as u64;
            c.submit_read(0, off, 0, BLOCK, 0);
            done.clear();
            c.complete(0, 1, &mut done).expect("complete");
            assert_eq!(done[0].1, 0, "read failed");
            n += 1;
        }
        (n as f64, t.elapsed().as_secs_f64())
    };
    cell(secs / 4.0); // warm-up
    let r = interleave(rounds, 10, |on| {
        blockdp::metrics::set_counting(on);
        cell(secs / 10.0)
    });
    blockdp::metrics::set_counting(true);
    report("blockdp 4 KiB randread QD1", "IOPS", &r, true);
    let q = &stats.queues[0];
    let call = ns_per_call(5_000_000, |_| {
        black_box(q).record(
            blockdp::metrics::IoKind::Read,
            4096,
            true,
            blockdp::metrics::clock(),
        )
    });
    let iops = median(&mut r.iter().map(|x| x.0).collect::<Vec<_>>());
    println!(
        "  counting one request alone (clock read, counters, histogram): {call:.1} ns = {:.3}% of a request",
        call * iops / 1e9 * 100.0
    );
}

// ------------------------------------------------------------------------------ objectd --

struct Conn(BufReader<TcpStream>);

impl Conn {
    fn get(&mut self, path: &str, token: &str) -> usize {
        let s = self.0.get_mut();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut len = 0usize;
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l
                .split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                len = v.1.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        len
    }
}

fn section_objectd(rounds: u64, secs: f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = objectd::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nauditor-interval-secs = 0\n\
         [[users]]\naccount = \"test\"\nuser = \"tester\"\nkey = \"testing\"\n",
        dir.path().display()
    ))
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(objectd::server::run(config)).unwrap();
    });
    let raw = |req: String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("objectd did not come up: {e}"),
            }
        };
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let auth = raw(
        "GET /auth/v1.0 HTTP/1.1\r\nHost: x\r\nX-Auth-User: test:tester\r\nX-Auth-Key: testing\r\nConnection: close\r\n\r\n"
            .into(),
    );
    let token = auth
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-auth-token"))
        })
        .map(|(_, v)| v.trim().to_string())
        .expect("token");
    let put = |path: &str, body: &[u8]| {
        let out = raw(format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        ));
        assert!(out.starts_with("HTTP/1.1 20"), "{out}");
    };
    put("/v1/AUTH_test/bench", b"");
    put("/v1/AUTH_test/bench/obj", &[b'x'; 4096]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut conn = Conn(BufReader::new(s));
    let mut cell = |secs: f64| {
        let t = Instant::now();
        let end = t + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            assert_eq!(conn.get("/v1/AUTH_test/bench/obj", &token), 4096);
            n += 1;
        }
        (n as f64, t.elapsed().as_secs_f64())
    };
    cell(secs / 4.0);
    let r = interleave(rounds, 10, |on| {
        objectd::metrics::set_counting(on);
        cell(secs / 10.0)
    });
    objectd::metrics::set_counting(true);
    report("objectd 4 KiB Swift GET, one connection", "op/s", &r, true);
    let m = objectd::metrics::Metrics::default();
    let call = ns_per_call(5_000_000, |_| {
        black_box(&m).observe(
            objectd::api::Api::Swift,
            "GET",
            200,
            objectd::metrics::clock(),
            0,
            4096,
        )
    });
    let ops = median(&mut r.iter().map(|x| x.0).collect::<Vec<_>>());
    println!(
        "  counting one request alone: {call:.1} ns = {:.3}% of a request",
        call * ops / 1e9 * 100.0
    );
}

// -------------------------------------------------------------------------------- netdp --

fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

fn section_netdp(rounds: u64, runs: u32) {
    use netdp::datapath::{Datapath, Direction, Hook, PortSpec, RuleSpec};
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Bpf]) {
        return;
    }
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
    const MAC_R1: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
    const MAC_R2: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
    let (a, b, c) = (10, 11, 20);
    let port = |ifindex, mac, ip: [u8; 4], net_id| PortSpec {
        ifindex,
        net_id,
        mac,
        ips: vec![Ipv4Addr::from(ip)],
        port_security: true,
        allowed_address_pairs: vec![],
        dhcp: false,
        // Test-run only: counting costs the same whichever redirect delivers.
        peer: false,
    };
    let rule = |id, direction, protocol, port_range| RuleSpec {
        id,
        direction,
        protocol,
        port_range,
        remote: None,
    };
    let setup = |dp: &mut Datapath| {
        dp.set_port(&port(a, MAC_A, [10, 0, 0, 10], 1)).unwrap();
        dp.set_port(&port(b, MAC_B, [10, 0, 0, 11], 1)).unwrap();
        dp.set_port(&port(c, MAC_C, [10, 0, 1, 20], 2)).unwrap();
        let gw = |x| Ipv4Addr::new(10, 0, x, 1);
        dp.add_router_interface(1, 1, MAC_R1, gw(0), (Ipv4Addr::new(10, 0, 0, 0), 24))
            .unwrap();
        dp.add_router_interface(1, 2, MAC_R2, gw(1), (Ipv4Addr::new(10, 0, 1, 0), 24))
            .unwrap();
        let allow = [
            rule(1, Direction::Egress, None, None),
            rule(2, Direction::Ingress, Some(17), Some((9, 9))),
        ];
        for p in [a, b, c] {
            dp.set_port_rules(p, &allow).unwrap();
        }
    };
    let mut counted = Datapath::load(Hook::Tc).expect("load netdp");
    let mut uncounted = Datapath::load_uncounted(Hook::Tc).expect("load uncounted netdp");
    setup(&mut counted);
    setup(&mut uncounted);
    let l2 = udp_frame(
        MAC_B,
        MAC_A,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 11),
    );
    let routed = udp_frame(
        MAC_R1,
        MAC_A,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 1, 20),
    );
    // Each round times `slices` pairs of short slices, one per program, back to back (the
    // order flipping pair by pair), so both programs of a pair see the same machine load;
    // a pair's ratio is its counting cost, and the headline is the median over every pair
    // of every round (a load spike spoils a few pairs, not the median).
    let slices = env_u64("BENCH_NETDP_SLICES", 100);
    let pairs = |slice: &dyn Fn(&Datapath) -> f64| -> Vec<Vec<(f64, f64)>> {
        (0..rounds)
            .map(|_| {
                (0..slices)
                    .map(|i| {
                        if i % 2 == 0 {
                            let off = slice(&uncounted);
                            (off, slice(&counted))
                        } else {
                            let on = slice(&counted);
                            (slice(&uncounted), on)
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let per_slice = (runs / slices as u32 / 10).max(10);
    for (name, frame) in [("netdp_tc L2 forward", &l2), ("netdp_tc routed", &routed)] {
        for dp in [&counted, &uncounted] {
            // Track the connection, then warm up.
            dp.test_run(frame, a).unwrap();
            dp.bench_run(frame, a, runs / 4).unwrap();
        }
        // One system call per run (a routed frame is rewritten: it cannot repeat in the
        // kernel's loop); the kernel times each run.
        let r =
            pairs(&|dp: &Datapath| dp.bench_run(frame, a, per_slice).unwrap().as_nanos() as f64);
        report_pairs(&format!("{name} (test-run, {per_slice} runs a slice)"), &r);
    }
    // The same L2 forward in the kernel's own loop (no system call between runs): warm
    // caches, one clock read per slice, so what is left is the counting itself.
    let repeat = (runs / slices as u32).max(100);
    let r = pairs(&|dp: &Datapath| dp.bench_repeat(&l2, a, repeat).unwrap().as_nanos() as f64);
    report_pairs(
        &format!("netdp_tc L2 forward (test-run, kernel loop of {repeat})"),
        &r,
    );
    println!(
        "  (a single run starts after a system call, with cold caches: it pays for the per-CPU \
         port values, one cache line more per port than the uncounted twin's inline values; \
         the kernel loop, caches warm, leaves the counting instructions alone)"
    );
    let moved = counted.port_counters(a).unwrap().0.rx_packets;
    let still = uncounted.port_counters(a).unwrap().0.rx_packets;
    assert!(
        moved > 0 && still == 0,
        "counted {moved}, uncounted {still}"
    );
}

/// Live packet rate through veths in namespaces: a generator VM sends 64-byte UDP frames
/// (XDP live-frame test-run), netdp forwards them on the node's tc ingress, a sink VM counts
/// arrivals. The counted and uncounted programs are attached in turn, same maps, same load.
fn section_netdp_live(rounds: u64, frames: u32) {
    use netdp::datapath::{Datapath, Direction, Hook, PortSpec, RuleSpec};
    use netdp::pktgen::{Generator, Sink};
    use tests::netns::{Netns, ip};
    if !caps::require_all(&[
        caps::Capability::Root,
        caps::Capability::Bpf,
        caps::Capability::Netns,
    ]) {
        return;
    }
    fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
                // SAFETY: setns on a valid namespace fd changes only this thread's network
                // namespace.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread panicked")
        })
    }
    fn ifindex(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }
    const MAC_G: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_S: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    let node = Netns::new("mc-node").unwrap();
    let gen_ns = Netns::new("mc-gen").unwrap();
    let sink_ns = Netns::new("mc-sink").unwrap();
    for (ns, tap, mac, addr) in [
        (&gen_ns, "tap-g", "02:00:00:00:00:0a", "10.0.0.10/24"),
        (&sink_ns, "tap-s", "02:00:00:00:00:0b", "10.0.0.11/24"),
    ] {
        let (n, nd) = (ns.name(), node.name());
        ip(&[
            "-n", nd, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])
        .unwrap();
        ip(&["-n", n, "link", "set", "eth0", "address", mac]).unwrap();
        ip(&["-n", n, "addr", "add", addr, "dev", "eth0"]).unwrap();
        ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
        ip(&["-n", nd, "link", "set", tap, "up"]).unwrap();
    }
    // XDP_TX out of the generator's eth0 needs NAPI on its peer.
    let out = node
        .exec(&["ethtool", "-K", "tap-g", "gro", "on"])
        .expect("ethtool");
    assert!(out.status.success(), "ethtool: {out:?}");
    let (tap_g, tap_s) = in_netns(node.name(), || (ifindex("tap-g"), ifindex("tap-s")));
    let port = |ifindex, mac, ip: [u8; 4]| PortSpec {
        ifindex,
        net_id: 1,
        mac,
        ips: vec![Ipv4Addr::from(ip)],
        port_security: true,
        allowed_address_pairs: vec![],
        dhcp: false,
        // As the daemon programs veth ports: delivered with bpf_redirect_peer, which the
        // sink (generic XDP) sees.
        peer: true,
    };
    let rule = |id, direction, protocol, port_range| RuleSpec {
        id,
        direction,
        protocol,
        port_range,
        remote: None,
    };
    let load = |counted: bool| {
        let mut dp = if counted {
            Datapath::load(Hook::Tc)
        } else {
            Datapath::load_uncounted(Hook::Tc)
        }
        .expect("load netdp");
        dp.set_port(&port(tap_g, MAC_G, [10, 0, 0, 10])).unwrap();
        dp.set_port(&port(tap_s, MAC_S, [10, 0, 0, 11])).unwrap();
        dp.set_port_rules(tap_g, &[rule(1, Direction::Egress, None, None)])
            .unwrap();
        dp.set_port_rules(
            tap_s,
            &[
                rule(2, Direction::Egress, None, None),
                rule(3, Direction::Ingress, Some(17), Some((9, 9))),
            ],
        )
        .unwrap();
        in_netns(node.name(), move || {
            let mut dp = dp;
            dp.attach_tc("tap-g").expect("attach");
            dp.attach_tc("tap-s").expect("attach");
            dp
        })
    };
    let frame = udp_frame(
        MAC_S,
        MAC_G,
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 11),
    );
    let sink = in_netns(sink_ns.name(), || {
        Sink::attach("eth0").expect("attach sink")
    });
    let generator = Generator::load().expect("load generator");
    let mut cell = |counted: bool| {
        let dp = load(counted);
        // One frame first so the connection is tracked, as in steady state.
        in_netns(gen_ns.name(), || {
            generator.send(ifindex("eth0"), &frame, 1000).expect("send")
        });
        std::thread::sleep(Duration::from_millis(20));
        let before = sink.packets().unwrap();
        let elapsed = in_netns(gen_ns.name(), || {
            generator
                .send(ifindex("eth0"), &frame, frames)
                .expect("live-frame test run")
        });
        std::thread::sleep(Duration::from_millis(50));
        let got = sink.packets().unwrap() - before;
        if got == 0 {
            let (g, s) = (
                dp.port_counters(tap_g).unwrap_or_default(),
                dp.port_counters(tap_s).unwrap_or_default(),
            );
            panic!(
                "the sink saw nothing (counted {counted}): generator port rx {} drops {:?}, \
                 sink port tx {}",
                g.0.rx_packets, g.0.drops, s.0.tx_packets
            );
        }
        drop(dp);
        got as f64 / elapsed.as_secs_f64() / 1e3
    };
    cell(true); // warm-up
    let r = alternate(rounds, &mut cell);
    report(
        "netdp live 64-byte frames through veths (tc)",
        "kpps",
        &r,
        true,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: a tiny run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 1 } else { env_u64("BENCH_ROUNDS", 7) };
    let secs = if quick {
        0.1
    } else {
        env_u64("BENCH_SECS", 1) as f64
    };
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    if want("vmm") {
        section_vmm(rounds);
    }
    if want("blockdp") {
        section_blockdp(rounds, secs);
    }
    if want("objectd") {
        section_objectd(rounds, secs);
    }
    if want("netdp") {
        section_netdp(rounds, if quick { 2_000 } else { 200_000 });
    }
    if want("netdp-live") {
        section_netdp_live(rounds, if quick { 20_000 } else { 1_000_000 });
    }
}
