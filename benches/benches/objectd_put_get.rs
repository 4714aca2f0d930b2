//! objectd against OpenStack Swift, side by side in one run, with the same load generator.
//!
//! Both are driven through the Swift API with TempAuth: `C` keep-alive connections each
//! PUT then GET 4 KiB objects (operations per second, median latency), then one connection
//! PUTs and GETs a large object (MB/s). The reference is a single-node Swift (proxy,
//! account, container and object servers from Debian's packages, one replica, tempauth,
//! memcached) set up in a temporary directory on loopback. Before every large PUT the
//! disk's own sequential write+fsync rate (a new file on the same filesystem, renamed
//! into place: what a PUT does; the better of buffered and `O_DIRECT`) is measured as
//! the limit, and the rate of MD5 over the
//! same body on one core as the ceiling of any PUT that answers with its MD5 ETag; that
//! file read back from the device (cached pages dropped) is the limit of a large GET; the
//! ratios printed are medians of the per-round ratios, so all three see the same load. Without
//! the Swift packages the Swift rows are skipped and said so.
//!
//! Knobs (environment): `OBJECTD_BENCH_OPS` (small ops per phase, default 2000),
//! `OBJECTD_BENCH_CONNS` (default 4), `OBJECTD_BENCH_LARGE_MIB` (default 256),
//! `OBJECTD_BENCH_LARGE_REPS` (large PUT+GET rounds, median reported; default 3; as many
//! rounds of `C` large PUTs at once, the aggregate rate against the disk and against MD5
//! on as many cores as those streams can use),
//! `OBJECTD_BENCH_SWIFT=0` (objectd's rows only, e.g. to profile it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benches::{Summary, ratio};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::with_capacity(1 << 20, s),
            host: format!("127.0.0.1:{port}"),
        }
    }

    /// Sends a request; returns status, headers and the body length read.
    fn req(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, u64) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = self.r.get_mut();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut hs = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                hs.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: u64 = if method == "HEAD" {
            0
        } else {
            hs.iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0)
        };
        let mut left = len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = self
                .r
                .read(&mut buf[..(left.min(1 << 20)) as usize])
                .unwrap();
            assert!(n > 0, "connection closed mid-body");
            left -= n as u64;
        }
        (status, hs, len)
    }
}

/// A Swift-API endpoint with a logged-in token.
#[derive(Clone)]
struct Endpoint {
    name: &'static str,
    port: u16,
    token: String,
    account_path: String,
}

fn login(name: &'static str, port: u16) -> Option<Endpoint> {
    let mut c = Conn::open(port);
    let (status, hs, _) = c.req(
        "GET",
        "/auth/v1.0",
        &[("X-Auth-User", "test:tester"), ("X-Auth-Key", "testing")],
        b"",
    );
    if status != 200 {
        return None;
    }
    let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let url = get("x-storage-url")?;
    let path = url.split_once("/v1/").map(|(_, p)| format!("/v1/{p}"))?;
    Some(Endpoint {
        name,
        port,
        token: get("x-auth-token")?,
        account_path: path,
    })
}

struct Phase {
    ops_per_sec: f64,
    latency: Summary,
}

/// `conns` connections, each doing `ops / conns` requests of `method` on distinct objects.
fn small_phase(
    ep: &Endpoint,
    method: &'static str,
    conns: usize,
    ops: usize,
    body: &[u8],
) -> Phase {
    let per = ops / conns;
    let start = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let ep = ep.clone();
            let body = body.to_vec();
            std::thread::spawn(move || {
                let mut conn = Conn::open(ep.port);
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let path = format!("{}/bench/obj-{c}-{i}", ep.account_path);
                    let t = Instant::now();
                    let payload: &[u8] = if method == "PUT" { &body } else { b"" };
                    let (status, _, n) =
                        conn.req(method, &path, &[("X-Auth-Token", &ep.token)], payload);
                    lat.push(t.elapsed());
                    assert!(status < 300, "{} {method} {path}: {status}", ep.name);
                    if method == "GET" {
                        assert_eq!(n, body.len() as u64);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    Phase {
        ops_per_sec: all.len() as f64 / secs,
        latency: Summary::of(&mut all).unwrap(),
    }
}

/// The large-object rounds of one endpoint: medians of each rate, and of the per-round
/// ratios of the PUT to the disk and MD5 rates measured just before it.
struct Large {
    put: f64,
    get: f64,
    disk: f64,
    md5: f64,
    put_vs_disk: f64,
    put_vs_md5: f64,
    /// The disk's cold sequential read rate, the limit of a large GET.
    read: f64,
    get_vs_read: f64,
}

/// `reps` rounds of: the disk's write+fsync rate and the MD5 rate over `body` (both
/// measured right before the PUT, so that all three see the same machine load), a PUT
/// of `body` and a GET of it.
fn large(ep: &Endpoint, body: &[u8], reps: usize, scratch: &Path) -> Large {
    let mut c = Conn::open(ep.port);
    let (mut puts, mut gets, mut disks, mut md5s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut vs_disk, mut vs_md5) = (Vec::new(), Vec::new());
    let (mut reads, mut vs_read) = (Vec::new(), Vec::new());
    for i in 0..reps.max(1) {
        let (buffered, direct, read) = disk_limit(scratch, body);
        let disk = buffered.max(direct);
        let md5 = md5_rate(body);
        let path = format!("{}/bench/large-{i}", ep.account_path);
        let t = Instant::now();
        let (s, _, _) = c.req("PUT", &path, &[("X-Auth-Token", &ep.token)], body);
        assert!(s < 300, "{} large PUT: {s}", ep.name);
        let put = body.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (s, _, n) = c.req("GET", &path, &[("X-Auth-Token", &ep.token)], b"");
        assert!(
            s < 300 && n == body.len() as u64,
            "{} large GET: {s}",
            ep.name
        );
        let get = body.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
        gets.push(get);
        println!(
            "{:>8}: round {i}: disk {buffered:.1} MB/s buffered, {direct:.1} MB/s O_DIRECT, cold read {read:.1} MB/s; md5 {md5:.1} MB/s; PUT {put:.1} MB/s ({:.2}x disk, {:.2}x md5); GET {get:.1} MB/s ({:.2}x the read)",
            ep.name,
            ratio(put, disk),
            ratio(put, md5),
            ratio(get, read)
        );
        reads.push(read);
        vs_read.push(ratio(get, read));
        vs_disk.push(ratio(put, disk));
        vs_md5.push(ratio(put, md5));
        puts.push(put);
        disks.push(disk);
        md5s.push(md5);
    }
    Large {
        put: median(&mut puts),
        get: median(&mut gets),
        disk: median(&mut disks),
        md5: median(&mut md5s),
        put_vs_disk: median(&mut vs_disk),
        put_vs_md5: median(&mut vs_md5),
        read: median(&mut reads),
        get_vs_read: median(&mut vs_read),
    }
}

/// `reps` rounds of `conns` connections each PUTting its own copy of `body` at the same
/// time; the median aggregate rate (all bytes over the wall time of the round). One
/// stream's MD5 cannot be split across cores, but several streams can use them all.
fn large_parallel(ep: &Endpoint, body: &[u8], conns: usize, reps: usize) -> f64 {
    let mut rates = Vec::new();
    for i in 0..reps.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for c in 0..conns {
                s.spawn(move || {
                    let mut conn = Conn::open(ep.port);
                    let path = format!("{}/bench/parallel-{i}-{c}", ep.account_path);
                    let (st, _, _) = conn.req("PUT", &path, &[("X-Auth-Token", &ep.token)], body);
                    assert!(st < 300, "{} parallel large PUT: {st}", ep.name);
                });
            }
        });
        let rate = (conns * body.len()) as f64 / 1e6 / t.elapsed().as_secs_f64();
        println!(
            "{:>8}: round {i}: {conns} large PUTs at once: {rate:.1} MB/s together",
            ep.name
        );
        rates.push(rate);
    }
    median(&mut rates)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Results {
    put: Phase,
    get: Phase,
    large: Large,
    /// Aggregate MB/s of `parallel_conns` large PUTs at once.
    parallel: f64,
    parallel_conns: usize,
}

fn run_all(
    ep: &Endpoint,
    conns: usize,
    ops: usize,
    large_body: &[u8],
    reps: usize,
    scratch: &Path,
) -> Results {
    // Swift's servers come up one by one: retry until a container and an object PUT work.
    let deadline = Instant::now() + Duration::from_secs(60);
    for path in [
        format!("{}/bench", ep.account_path),
        format!("{}/bench/probe", ep.account_path),
    ] {
        loop {
            let mut c = Conn::open(ep.port);
            let (s, _, _) = c.req("PUT", &path, &[("X-Auth-Token", &ep.token)], b"probe");
            if s < 300 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: PUT {path} keeps failing: {s}",
                ep.name
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let small = vec![0x5au8; 4096];
    // Warm up both the server and the connection pool a little.
    small_phase(ep, "PUT", conns, conns * 10, &small);
    let put = small_phase(ep, "PUT", conns, ops, &small);
    let get = small_phase(ep, "GET", conns, ops, &small);
    let large = large(ep, large_body, reps, scratch);
    let parallel = large_parallel(ep, large_body, conns, reps);
    Results {
        put,
        get,
        large,
        parallel,
        parallel_conns: conns,
    }
}

/// Kills (with their forked workers: each runs in its own process group) and reaps its
/// processes when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sets up and starts a single-node Swift in `dir`; the proxy port and the processes.
fn start_swift(dir: &Path) -> Option<(u16, Procs)> {
    for cmd in [
        "swift-proxy-server",
        "swift-object-server",
        "swift-container-server",
        "swift-account-server",
        "swift-ring-builder",
        "memcached",
    ] {
        if !have(cmd) {
            println!(
                "SKIP: reference Swift unavailable ({cmd} missing; apt-get install swift-proxy swift-object swift-container swift-account memcached)"
            );
            return None;
        }
    }
    let d = dir.display();
    std::fs::create_dir_all(dir.join("srv/d1")).unwrap();
    std::fs::write(
        dir.join("swift.conf"),
        "[swift-hash]\nswift_hash_path_suffix = ferrostack-bench\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n",
    )
    .unwrap();
    let mut procs = Procs(Vec::new());
    for (name, workers) in [("account", 1), ("container", 1), ("object", 2)] {
        let port = free_port();
        let builder = dir.join(format!("{name}.builder"));
        for args in [
            vec!["create", "8", "1", "1"],
            vec!["add", &format!("r1z1-127.0.0.1:{port}/d1"), "1"],
            vec!["rebalance"],
        ] {
            let out = Command::new("swift-ring-builder")
                .arg(&builder)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.code().unwrap_or(2) < 2,
                "swift-ring-builder {args:?} failed"
            );
        }
        let conf = dir.join(format!("{name}-server.conf"));
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nuser = root\nbind_ip = 127.0.0.1\nbind_port = {port}\ndevices = {d}/srv\nmount_check = false\nswift_dir = {d}\nworkers = {workers}\n\
                 [pipeline:main]\npipeline = {name}-server\n[app:{name}-server]\nuse = egg:swift#{name}\n"
            ),
        )
        .unwrap();
        procs
            .0
            .push(spawn_quiet(&format!("swift-{name}-server"), &[&conf]));
    }
    let mc = free_port();
    procs.0.push(spawn_quiet(
        "memcached",
        &[
            Path::new("-p"),
            Path::new(&mc.to_string()),
            Path::new("-l"),
            Path::new("127.0.0.1"),
            Path::new("-u"),
            Path::new("root"),
            Path::new("-U"),
            Path::new("0"),
        ],
    ));
    let proxy_port = free_port();
    let conf = dir.join("proxy-server.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nuser = root\nbind_ip = 127.0.0.1\nbind_port = {proxy_port}\nswift_dir = {d}\nworkers = 2\n\
             [pipeline:main]\npipeline = catch_errors cache tempauth proxy-server\n\
             [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\
             [filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = testing .admin\n\
             [filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{mc}\n\
             [filter:catch_errors]\nuse = egg:swift#catch_errors\n"
        ),
    )
    .unwrap();
    procs.0.push(spawn_quiet("swift-proxy-server", &[&conf]));
    Some((proxy_port, procs))
}

fn spawn_quiet(cmd: &str, args: &[&Path]) -> Child {
    Command::new(cmd)
        .args(args)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} does not start: {e}"))
}

fn wait_login(name: &'static str, port: u16) -> Endpoint {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && let Some(ep) = login(name, port)
        {
            // Swift creates the account lazily; make sure a container PUT works.
            return ep;
        }
        assert!(Instant::now() < deadline, "{name} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_objectd(dir: &Path) -> u16 {
    let port = free_port();
    let config = objectd::config::Config::from_toml(&format!(
        "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nauditor-interval-secs = 0\n\
         [[users]]\naccount = \"test\"\nuser = \"tester\"\nkey = \"testing\"\n",
        dir.display()
    ))
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(objectd::server::run(config)).unwrap();
    });
    port
}

/// The disk's own rates (MB/s): for what a PUT does, a new file written sequentially,
/// fsync'd and renamed into place, the directory fsync'd, measured both through the page
/// cache (1 MiB writes) and with `O_DIRECT` (4 MiB aligned writes, as objectd does), the
/// higher being the limit; and for what a large GET does, that file read back from the
/// device (its cached pages dropped first) in 256 KiB reads, objectd's read size, through
/// the page cache with its read-ahead.
fn disk_limit(dir: &Path, body: &[u8]) -> (f64, f64, f64) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = dir.join("disk.tmp");
    let mut rates = [0.0; 2];
    for (direct, rate) in rates.iter_mut().enumerate() {
        let t = Instant::now();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if direct == 1 {
            opts.custom_flags(libc::O_DIRECT);
            let mut raw = vec![0u8; (4 << 20) + 4096];
            let start = raw.as_ptr().align_offset(4096);
            let stage = &mut raw[start..start + (4 << 20)];
            let mut f = opts.open(&tmp).unwrap();
            for c in body.chunks(4 << 20) {
                stage[..c.len()].copy_from_slice(c);
                f.write_all(&stage[..c.len()]).unwrap();
            }
            f.sync_all().unwrap();
        } else {
            let mut f = opts.open(&tmp).unwrap();
            for c in body.chunks(1 << 20) {
                f.write_all(c).unwrap();
            }
            f.sync_all().unwrap();
        }
        std::fs::rename(&tmp, dir.join("disk.bin")).unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
        *rate = body.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    }
    let read = cold_read(&dir.join("disk.bin"), body.len());
    let _ = std::fs::remove_file(dir.join("disk.bin"));
    (rates[0], rates[1], read)
}

/// Reads `len` bytes of the synced file at `path` from the device: its cached pages are
/// dropped first (`POSIX_FADV_DONTNEED` on clean pages), then it is read sequentially.
fn cold_read(path: &Path, len: usize) -> f64 {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path).unwrap();
    // SAFETY: advice on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    let mut buf = vec![0u8; 256 << 10];
    let t = Instant::now();
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, len, "short read of {}", path.display());
    n as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// MD5 of `body` in 1 MiB updates on this thread, with the implementation objectd hashes
/// large bodies with: the ceiling of any store that answers a PUT with the body's MD5 (a
/// single stream cannot be hashed in parallel).
fn md5_rate(body: &[u8]) -> f64 {
    let t = Instant::now();
    let mut h = objectd::store::BodyMd5::new().unwrap();
    for c in body.chunks(1 << 20) {
        h.update(c).unwrap();
    }
    std::hint::black_box(h.finish_hex().unwrap());
    body.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn print(r: &Results, name: &str) {
    println!(
        "{name:>8}: 4KiB PUT {:>8.0} op/s ({}) | 4KiB GET {:>8.0} op/s ({}) | large PUT {:>7.1} MB/s | large GET {:>7.1} MB/s",
        r.put.ops_per_sec,
        r.put.latency,
        r.get.ops_per_sec,
        r.get.latency,
        r.large.put,
        r.large.get
    );
    println!(
        "{name:>8}: large PUT {:.2}x the disk's write+fsync rate ({:.1} MB/s) and {:.2}x the MD5 rate ({:.1} MB/s), medians of per-round ratios",
        r.large.put_vs_disk, r.large.disk, r.large.put_vs_md5, r.large.md5
    );
    println!(
        "{name:>8}: large GET {:.2}x the disk's cold read rate ({:.1} MB/s), median of per-round ratios",
        r.large.get_vs_read, r.large.read
    );
    // With several streams the MD5 ceiling is one stream's rate times the cores they can use.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let streams = r.parallel_conns.min(cores) as f64;
    println!(
        "{name:>8}: {} large PUTs at once {:.1} MB/s together: {:.2}x the disk's rate, {:.2}x {streams} cores of MD5 ({:.1} MB/s)",
        r.parallel_conns,
        r.parallel,
        ratio(r.parallel, r.large.disk),
        ratio(r.parallel, r.large.md5 * streams),
        r.large.md5 * streams
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let ops = env_or("OBJECTD_BENCH_OPS", 2000);
    let conns = env_or("OBJECTD_BENCH_CONNS", 4);
    let large_mib = env_or("OBJECTD_BENCH_LARGE_MIB", 256);
    let reps = env_or("OBJECTD_BENCH_LARGE_REPS", 3);
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let large_body: Vec<u8> = (0..large_mib << 20)
        .map(|i| (i * 131 % 251) as u8)
        .collect();
    println!(
        "objectd vs OpenStack Swift: {conns} connections, {ops} ops per 4 KiB phase, {large_mib} MiB large objects (median of {reps}); load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let od_dir = tmp.path().join("objectd");
    let od = wait_login("objectd", start_objectd(&od_dir));
    let ours = run_all(&od, conns, ops, &large_body, reps, tmp.path());
    print(&ours, "objectd");

    if env_or("OBJECTD_BENCH_SWIFT", 1) == 0 {
        println!("SKIP: the Swift rows (OBJECTD_BENCH_SWIFT=0)");
        return;
    }
    let swift_dir = tmp.path().join("swift");
    let Some((port, _procs)) = start_swift(&swift_dir) else {
        return;
    };
    let sw = wait_login("swift", port);
    let theirs = run_all(&sw, conns, ops, &large_body, reps, tmp.path());
    print(&theirs, "swift");
    println!(
        " ratios: 4KiB PUT {:.1}x swift, 4KiB GET {:.1}x swift, large PUT {:.2}x swift, {:.2}x the disk limit and {:.2}x the MD5 rate, large GET {:.2}x swift and {:.2}x the disk's read rate, {conns} large PUTs at once {:.2}x swift",
        ratio(ours.put.ops_per_sec, theirs.put.ops_per_sec),
        ratio(ours.get.ops_per_sec, theirs.get.ops_per_sec),
        ratio(ours.large.put, theirs.large.put),
        ours.large.put_vs_disk,
        ours.large.put_vs_md5,
        ratio(ours.large.get, theirs.large.get),
        ours.large.get_vs_read,
        ratio(ours.parallel, theirs.parallel),
    );
}
