//! KVM for real: a tiny real-mode guest runs on a vCPU and talks to the VMM through port I/O.

use vm_memory::{Bytes, GuestAddress};
use vmm::vstate::{Exit, Vm};

/// Where the guest code is loaded.
const ENTRY: u16 = 0x1000;

/// Real-mode code: write 'O', 'K' and 3 + 4 to port 0x3f8, then halt.
const GUEST: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'O', // mov al, 'O'
    0xee, // out dx, al
    0xb0, b'K', // mov al, 'K'
    0xee, // out dx, al
    0xb0, 0x03, // mov al, 3
    0x04, 0x04, // add al, 4
    0xee, // out dx, al
    0xf4, // hlt
];

#[test]
fn real_mode_guest_writes_to_a_port_and_halts() {
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Kvm]) {
        return;
    }
    let vm = Vm::new(1 << 20).expect("create vm");
    vm.memory()
        .write_slice(GUEST, GuestAddress(u64::from(ENTRY)))
        .expect("load guest code");
    let mut vcpu = vm.create_vcpu(0).expect("create vcpu");
    vcpu.set_real_mode_entry(ENTRY).expect("set entry");

    let mut out = Vec::new();
    let exit = loop {
        match vcpu.run().expect("run") {
            Exit::IoOut { port: 0x3f8, data } => out.extend_from_slice(&data),
            other => break other,
        }
        assert!(out.len() <= 3, "guest kept writing: {out:?}");
    };
    assert_eq!(
        out, b"OK\x07",
        "the guest's port writes, in order, computed by the guest"
    );
    assert_eq!(exit, Exit::Hlt);
}
