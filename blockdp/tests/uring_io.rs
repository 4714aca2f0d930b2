//! The io_uring engine against a real file: bytes written are the bytes on disk.

use std::io::{Read, Seek, SeekFrom, Write};

use blockdp::io::uring::{UringError, UringFile};

#[test]
fn reads_what_is_on_disk_and_writes_land_on_disk() {
    if !caps::require(caps::Capability::IoUring) {
        return;
    }
    let mut file = tempfile::tempfile().expect("temp file");
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    file.write_all(&pattern).unwrap();
    let mut check = file.try_clone().unwrap();

    let mut engine = UringFile::new(file, 8).expect("ring");
    let mut buf = vec![0u8; 4096];
    engine.read_exact_at(&mut buf, 4096).expect("read");
    assert_eq!(buf, pattern[4096..]);

    engine.write_all_at(b"ferrostack", 100).expect("write");
    let mut on_disk = Vec::new();
    check.seek(SeekFrom::Start(0)).unwrap();
    check.read_to_end(&mut on_disk).unwrap();
    assert_eq!(&on_disk[100..110], b"ferrostack");
    assert_eq!(on_disk[..100], pattern[..100]);

    match engine.read_exact_at(&mut buf, 6144) {
        Err(UringError::Short {
            done: 2048,
            want: 4096,
            ..
        }) => {}
        other => panic!("read past EOF should be short, got {other:?}"),
    }
}
