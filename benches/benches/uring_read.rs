//! 4 KiB reads of a page-cached file: `pread(2)` and blockdp's io_uring engine side by side.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::io::Write;
use std::os::unix::fs::FileExt;

use blockdp::io::uring::UringFile;
use criterion::{Criterion, criterion_group, criterion_main};

const FILE_SIZE: u64 = 64 << 20;
const BLOCK: usize = 4096;

fn reads(c: &mut Criterion) {
    let mut file = tempfile::tempfile().expect("temp file");
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..(FILE_SIZE >> 20) {
        file.write_all(&chunk).unwrap();
    }
    let blocks = FILE_SIZE / BLOCK as u64;
    let mut group = c.benchmark_group("read_4k_cached");
    let mut buf = vec![0u8; BLOCK];

    let mut n = 0u64;
    group.bench_function("pread", |b| {
        b.iter(|| {
            n = (n + 7919) % blocks;
            file.read_exact_at(&mut buf, n * BLOCK as u64).unwrap();
        })
    });

    match UringFile::new(file.try_clone().unwrap(), 32) {
        Ok(mut engine) => {
            group.bench_function("io_uring", |b| {
                b.iter(|| {
                    n = (n + 7919) % blocks;
                    engine.read_exact_at(&mut buf, n * BLOCK as u64).unwrap();
                })
            });
        }
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    group.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
