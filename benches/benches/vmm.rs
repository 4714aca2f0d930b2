//! The VMM side by side with its lower bound and its reference, in one run:
//!
//! (a) port-I/O exit round trip: a bare `KVM_RUN` loop written with kvm-ioctls alone vs the
//!     VMM's vCPU thread (bus dispatch, metrics) running a guest doing 20000 `out`s;
//! (b) process start to API socket ready, API `InstanceStart` to the guest's first serial
//!     byte, and process start to first serial byte, vs QEMU `-M microvm` booting the same
//!     test guest through its PVH note (QMP ready; QMP `cont` of a VM made with `-S`, whose
//!     kernel is already loaded; process start to first byte), with `qemu-system-x86_64` and,
//!     when it sits beside it, Debian's microvm-only build `qemu-system-x86_64-microvm`;
//! (c) VMM RSS excluding guest memory (guest RAM is a memfd, so it shows up as RssShmem), of
//!     the deployed build (`--profile vmm`, glibc static; (b) uses it too) and of the plain
//!     release build.
//!
//! Run: `cargo bench -p benches --bench vmm` (as root, with /dev/kvm; QEMU optional: the one
//! `scripts/setup` installs, or `$FERROSTACK_QEMU`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use benches::Summary;
use kvm_ioctls::VcpuExit;
use vmm::machine::{Machine, VmEvent, VmSpec};

const EXITS: u32 = 20_000;
const ROUNDS: usize = 9;
/// Rounds of (a): many short back-to-back pairs, so the median ratio holds under the load of
/// a shared machine (the per-round spread here is wide).
const EXIT_ROUNDS: usize = 21;

/// The 1-minute load average, to quote with the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn guest(name: &str) -> PathBuf {
    vmm::testkit::build_guest(name, &Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Per-exit time of a bare KVM_RUN loop running the same loop guest: the VM, memory
/// and boot state are set up with the VMM's own functions, then a loop written with
/// kvm-ioctls alone counts the `out`s. Only the exit path differs from [`vmm_exit`].
fn raw_kvm_exit(kernel: &Path) -> Duration {
    use vmm::arch;
    let vm = vmm::vstate::Vm::new(32 << 20).unwrap();
    vm.setup_irqchip().unwrap();
    let mem = vm.memory();
    let loaded = arch::boot::load_kernel(mem, kernel).unwrap();
    let cmdline = arch::boot::cmdline("console=ttyS0").unwrap();
    arch::boot::write_boot_params(mem, &loaded, &cmdline, None).unwrap();
    arch::regs::write_boot_tables(mem).unwrap();
    arch::mptable::write(mem, 1).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let boot = vmm::vstate::VcpuBoot {
        index: 0,
        count: 1,
        template: Default::default(),
        entry: loaded.entry.0,
        pvh: false,
    };
    vcpu.configure(&vm.supported_cpuid().unwrap(), mem, boot)
        .unwrap();
    let fd = vcpu.fd_mut();
    let mut n = 0u32;
    let mut start = None;
    loop {
        let counted = match fd.run().unwrap() {
            VcpuExit::IoOut(0x80, _) => true,
            VcpuExit::MmioWrite(0xfe00_0000, _) => true,
            VcpuExit::IoOut(0x64, _) => break,
            _ => false,
        };
        if counted {
            n += 1;
            if n == 1 {
                start = Some(Instant::now());
            }
        }
    }
    assert_eq!(n, EXITS);
    start.unwrap().elapsed() / (EXITS - 1)
}

/// Per-exit time of the VMM's vCPU loop: a loop guest booted through the VMM's
/// boot path, timed from its boot-time write to its reset.
fn vmm_exit(kernel: &Path) -> Duration {
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
    let machine = Machine::start(&spec, Box::new(std::io::sink()), tx).unwrap();
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

/// The release `vmm` binary (dynamically linked, unwinding), built if needed.
fn vmm_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "vmm", "--bin", "vmm"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "cargo build of vmm failed");
    dir.join("vmm")
}

/// Host target triple the deployed binary is built for (an explicit `--target` keeps the
/// static-linking flag off build scripts and proc macros).
const DEPLOY_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `vmm` binary as deployed (README): the `vmm` profile (no unwinding, LTO, size-optimised
/// dependencies, stripped), glibc linked statically.
fn vmm_deployed_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--profile",
            "vmm",
            "-p",
            "vmm",
            "--bin",
            "vmm",
        ])
        .args(["--target", DEPLOY_TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .unwrap()
        .success();
    assert!(ok, "cargo build --profile vmm of vmm failed");
    target.join(DEPLOY_TARGET).join("vmm").join("vmm")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until `byte`; the time it arrived.
fn wait_byte(child: &mut Child, byte: u8) -> Instant {
    let out = child.stdout.as_mut().unwrap();
    let mut b = [0u8];
    loop {
        assert_eq!(out.read(&mut b).unwrap(), 1, "stdout closed before {byte}");
        if b[0] == byte {
            return Instant::now();
        }
    }
}

fn http(sock: &Path, method: &str, path: &str, body: &str) -> u16 {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split(' ').nth(1).unwrap().parse().unwrap()
}

fn wait_socket(sock: &Path, start: Instant) -> Duration {
    loop {
        if UnixStream::connect(sock).is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socket never came up"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// (process start -> API ready, InstanceStart -> first guest byte, RSS without guest RAM).
fn vmm_api_boot(bin: &Path, kernel: &Path, dir: &Path) -> (Duration, Duration, u64) {
    let sock = dir.join("vmm.sock");
    let start = Instant::now();
    let mut child = Killed(
        Command::new(bin)
            .stdin(Stdio::null())
            .arg("--api-sock")
            .arg(&sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = wait_socket(&sock, start);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", &boot), 204);
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    assert_eq!(http(&sock, "PUT", "/machine-config", mc), 204);
    let t0 = Instant::now();
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#
        ),
        204
    );
    let first = wait_byte(&mut child.0, b'X') - t0;
    let rss = rss_without_guest(child.0.id()).unwrap_or(0);
    (ready, first, rss)
}

/// Process start -> first guest byte, our VMM from a config file.
fn vmm_cold_boot(bin: &Path, kernel: &Path, dir: &Path) -> Duration {
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Killed(
        Command::new(bin)
            .stdin(Stdio::null())
            .args(["--no-api", "--config-file"])
            .arg(&cfg)
            .arg("--api-sock")
            .arg(dir.join("unused.sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_byte(&mut child.0, b'X') - start
}

/// Where `scripts/setup` unpacks QEMU when the system's packages cannot hold it (README).
const QEMU_PREFIX: &str = "/opt/ferrostack/qemu";

/// The QEMU binary (b) compares against, and the data directory to pass it with `-L` (where
/// its firmware, qboot's `bios-microvm.bin`, lives) when that is not its built-in one:
/// `$FERROSTACK_QEMU`, else `qemu-system-x86_64` on PATH, else the private prefix
/// `scripts/setup` installs. None when none of them runs.
struct Qemu {
    bin: PathBuf,
    data_dir: Option<PathBuf>,
    version: String,
    /// Whether it has `isa-debug-exit` (the microvm-only build has no ISA debug devices).
    debug_exit: bool,
}

impl Qemu {
    fn find() -> Option<Qemu> {
        let path_bin = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        });
        std::env::var_os("FERROSTACK_QEMU")
            .map(PathBuf::from)
            .into_iter()
            .chain(path_bin)
            .chain([Path::new(QEMU_PREFIX).join("usr/bin/qemu-system-x86_64")])
            .find_map(|bin| Qemu::probe(bin, true))
    }

    /// Debian's microvm-only build (`qemu-system-x86_64-microvm`, smaller and quicker to
    /// start) next to `self`, if there is one.
    fn microvm_build(&self) -> Option<Qemu> {
        let bin = self.bin.with_file_name("qemu-system-x86_64-microvm");
        bin.is_file().then(|| Qemu::probe(bin, false)).flatten()
    }

    fn probe(bin: PathBuf, debug_exit: bool) -> Option<Qemu> {
        // A binary unpacked under <prefix>/usr/bin reads its data from <prefix>/usr/share/qemu.
        let data_dir = bin
            .parent()
            .and_then(Path::parent)
            .filter(|usr| usr.ends_with("usr") && *usr != Path::new("/usr"))
            .map(|usr| usr.join("share/qemu"))
            .filter(|d| d.join("bios-microvm.bin").exists());
        let out = Command::new(&bin).arg("--version").output().ok()?;
        if !out.status.success() {
            return None;
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        Some(Qemu {
            bin,
            data_dir,
            version,
            debug_exit,
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        if let Some(d) = &self.data_dir {
            cmd.arg("-L").arg(d);
        }
        cmd
    }
}

/// QEMU's arguments for `kernel`: the smallest microvm (no option ROMs, RTC, PIT; the ISA
/// serial port the guest writes to), stopped with `-S` when `stopped`.
fn qemu_args(qemu: &Qemu, kernel: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,rtc=off,pit=off,isa-serial=on",
        "-enable-kvm",
        "-m",
        "32",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if qemu.debug_exit {
        args.extend(["-device".into(), "isa-debug-exit,iobase=0xf4".into()]);
    }
    args.extend(["-kernel".into(), kernel.display().to_string()]);
    args
}

/// Process start -> first guest byte, QEMU microvm booting the same guest through PVH.
fn qemu_cold_boot(qemu: &Qemu, kernel: &Path) -> Duration {
    let start = Instant::now();
    let mut child = Killed(
        qemu.command()
            .args(qemu_args(qemu, kernel))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_byte(&mut child.0, b'X') - start
}

/// QEMU's side of the API figures: process start -> QMP socket accepting, and QMP `cont` (of
/// a VM created stopped with `-S`, kernel already loaded) -> the guest's first serial byte.
fn qemu_api_boot(qemu: &Qemu, kernel: &Path, dir: &Path) -> (Duration, Duration) {
    use std::io::{BufRead, BufReader};
    let sock = dir.join("qmp.sock");
    let start = Instant::now();
    let mut child = Killed(
        qemu.command()
            .args(qemu_args(qemu, kernel))
            .args(["-S", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = wait_socket(&sock, start);
    let qmp = UnixStream::connect(&sock).unwrap();
    let mut lines = BufReader::new(qmp.try_clone().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap(); // greeting
    (&qmp)
        .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    line.clear();
    lines.read_line(&mut line).unwrap();
    let t0 = Instant::now();
    (&qmp).write_all(b"{\"execute\": \"cont\"}\n").unwrap();
    let first = wait_byte(&mut child.0, b'X') - t0;
    let _ = std::fs::remove_file(&sock);
    (ready, first)
}

/// VmRSS minus RssShmem (guest RAM) of `pid`, in KiB.
fn rss_without_guest(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("VmRSS:")? - field("RssShmem:")?)
}

fn summary(mut samples: Vec<Duration>) -> Summary {
    Summary::of(&mut samples).expect("samples")
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Kvm]) {
        return;
    }
    // `cargo bench` passes --bench; a filter argument that is not ours skips this harness.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"vmm".contains(a.as_str()))
    {
        return;
    }
    let pio = guest("pio_loop");
    let mmio = guest("mmio_loop");
    let first = guest("first_out");

    for (kind, kernel) in [("port-I/O", &pio), ("MMIO", &mmio)] {
        println!(
            "(a) {kind} exit round trip, {EXITS} exits per round, {EXIT_ROUNDS} rounds, \
             load average {} at start",
            load_average()
        );
        let (mut raw, mut ours) = (vec![], vec![]);
        // Alternate which side goes first, so drift in machine load hits both alike.
        for round in 0..EXIT_ROUNDS {
            if round % 2 == 0 {
                raw.push(raw_kvm_exit(kernel));
                ours.push(vmm_exit(kernel));
            } else {
                ours.push(vmm_exit(kernel));
                raw.push(raw_kvm_exit(kernel));
            }
        }
        let (raw_min, ours_min) = (*raw.iter().min().unwrap(), *ours.iter().min().unwrap());
        // Each round runs both back to back, so a per-round ratio compares runs under the
        // same load; the median of those is the headline.
        let mut ratios: Vec<f64> = raw
            .iter()
            .zip(&ours)
            .map(|(r, o)| us(*o) / us(*r))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let (raw, ours) = (summary(raw), summary(ours));
        println!(
            "  bare KVM_RUN loop (kvm-ioctls): {raw} min={:.1}us",
            us(raw_min)
        );
        println!(
            "  vmm vCPU thread:                {ours} min={:.1}us",
            us(ours_min)
        );
        println!(
            "  vmm / bare, median of per-round ratios = {:.3}x (range {:.3}x-{:.3}x); \
             {:.3}x at p50, {:.3}x at min (target <= 1.05x); load average {} at end",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            us(ours.p50) / us(raw.p50),
            us(ours_min) / us(raw_min),
            load_average()
        );
    }

    // Built after (a), which does not need them, so (a) starts right away.
    let release_bin = vmm_binary();
    let bin = vmm_deployed_binary();
    let dir = tempfile::tempdir().unwrap();
    println!("(b) start-up, {ROUNDS} rounds");
    let (mut ready, mut start_to_out, mut cold, mut rss) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (r, s, m) = vmm_api_boot(&bin, &first, dir.path());
        ready.push(r);
        start_to_out.push(s);
        rss.push(m);
        cold.push(vmm_cold_boot(&bin, &first, dir.path()));
    }
    let ready = summary(ready);
    let cold = summary(cold);
    let start_to_out = summary(start_to_out);
    println!("  vmm process start -> API ready:            {ready}");
    println!("  vmm InstanceStart -> guest first output:    {start_to_out}");
    println!("  vmm process start -> guest first output:    {cold}");
    let qemus: Vec<(&str, Qemu)> = match Qemu::find() {
        Some(q) => {
            let microvm = q.microvm_build();
            std::iter::once(("qemu-system-x86_64", q))
                .chain(microvm.map(|m| ("qemu-system-x86_64-microvm", m)))
                .collect()
        }
        None => vec![],
    };
    if qemus.is_empty() {
        println!(
            "  no runnable qemu-system-x86_64 ($FERROSTACK_QEMU, PATH, {QEMU_PREFIX}): \
             no QEMU comparison; scripts/setup installs one"
        );
    }
    for (name, qemu) in &qemus {
        println!(
            "  {name}: {} ({}{})",
            qemu.bin.display(),
            qemu.version,
            qemu.data_dir
                .as_ref()
                .map(|d| format!(", -L {}", d.display()))
                .unwrap_or_default()
        );
        let (mut q_ready, mut q_cont, mut q_cold) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let (r, c) = qemu_api_boot(qemu, &first, dir.path());
            q_ready.push(r);
            q_cont.push(c);
            q_cold.push(qemu_cold_boot(qemu, &first));
        }
        let (q_ready, q_cont, q_cold) = (summary(q_ready), summary(q_cont), summary(q_cold));
        println!("    start -> QMP ready:                      {q_ready}");
        println!("    QMP cont (-S, loaded) -> first output:   {q_cont}");
        println!("    start -> guest first output:             {q_cold}");
        println!(
            "    {name} / vmm at p50: API ready {:.1}x, process start -> first output {:.1}x, \
             InstanceStart vs cont -> first output {:.1}x (target >= 2x)",
            us(q_ready.p50) / us(ready.p50),
            us(q_cold.p50) / us(cold.p50),
            us(q_cont.p50) / us(start_to_out.p50)
        );
    }
    rss.sort_unstable();
    let mut release_rss: Vec<u64> = (0..ROUNDS)
        .map(|_| vmm_api_boot(&release_bin, &first, dir.path()).2)
        .collect();
    release_rss.sort_unstable();
    println!(
        "(c) vmm RSS without guest memory (VmRSS - RssShmem) after InstanceStart, median: \
         {} KiB deployed build (`--profile vmm`, static) (target < 3072 KiB); \
         {} KiB plain release build (dynamic glibc)",
        rss[rss.len() / 2],
        release_rss[release_rss.len() / 2]
    );
}
