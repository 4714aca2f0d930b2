//! Compiles the C eBPF programs in `bpf/` with clang into `$OUT_DIR`.

use std::path::PathBuf;
use std::process::Command;

/// The programs to build, by file stem.
const PROGRAMS: &[&str] = &["guard", "switch_tc", "switch_xdp", "pktgen"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    for stem in PROGRAMS {
        let src = format!("bpf/{stem}.c");
        let obj = out.join(format!("{stem}.o"));
        let status = Command::new("clang")
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run clang to build {src} ({e}); run ./scripts/setup first")
            });
        assert!(status.success(), "clang failed to build {src}: {status}");
    }
}
