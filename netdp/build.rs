//! Compiles the C eBPF programs in `bpf/` with clang into `$OUT_DIR`.

use std::path::PathBuf;
use std::process::Command;

/// The programs to build: file stem, object name, extra clang flags. The `_uncounted`
/// twins compile the counters out; only `benches/` loads them, to measure what counting
/// costs.
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("guard", "guard", &[]),
    ("switch_tc", "switch_tc", &[]),
    ("switch_xdp", "switch_xdp", &[]),
    ("pktgen", "pktgen", &[]),
    ("switch_tc", "switch_tc_uncounted", &["-DNETDP_NO_COUNTERS"]),
    (
        "switch_xdp",
        "switch_xdp_uncounted",
        &["-DNETDP_NO_COUNTERS"],
    ),
];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    for (stem, name, flags) in PROGRAMS {
        let src = format!("bpf/{stem}.c");
        let obj = out.join(format!("{name}.o"));
        let status = Command::new("clang")
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .args(*flags)
            .args(["-I/usr/include/x86_64-linux-gnu", "-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run clang to build {src} ({e}); run ./scripts/setup first")
            });
        assert!(status.success(), "clang failed to build {src}: {status}");
    }
}
