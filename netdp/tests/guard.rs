//! The guard program loaded into the kernel and run on crafted frames with
//! `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun, TestRunOptions};
use netdp::guard::{Guard, Verdict};

/// `XDP_DROP` and `XDP_PASS` as the kernel numbers them.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn frame(src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn run(guard: &Guard, data: &[u8]) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(data),
        ..Default::default()
    };
    guard
        .program()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

#[test]
fn guard_passes_unicast_and_drops_runts_and_group_sources() {
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Bpf]) {
        return;
    }
    let guard = Guard::load().expect("load guard");

    assert_eq!(run(&guard, &frame([0x02, 0, 0, 0, 0, 0x01])), XDP_PASS);
    assert_eq!(run(&guard, &frame([0x02, 0, 0, 0, 0, 0x03])), XDP_PASS);
    assert_eq!(run(&guard, &frame([0x01, 0, 0x5e, 0, 0, 0x01])), XDP_DROP);
    assert_eq!(run(&guard, &frame([0xff; 6])), XDP_DROP);
    // Exactly an Ethernet header is enough (the kernel refuses XDP test runs shorter than
    // ETH_HLEN, so the runt branch is only reachable on a live interface).
    assert_eq!(
        run(&guard, &frame([0x02, 0, 0, 0, 0, 0x04])[..14]),
        XDP_PASS
    );

    assert_eq!(guard.count(Verdict::Pass).unwrap(), 3);
    assert_eq!(guard.count(Verdict::DropGroupSource).unwrap(), 2);
    assert_eq!(guard.count(Verdict::DropShort).unwrap(), 0);
}
