//! Benchmark guest: prints `X` as its first instruction-level act and exits. Enters through
//! the 64-bit Linux boot protocol (our VMM) or PVH (QEMU's `-kernel` for an ELF with a PVH
//! note); leaves through QEMU's isa-debug-exit port 0xf4 or the i8042 reset (ours).
#![no_std]
#![no_main]

mod kit;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::outb(kit::COM1, b'X');
    kit::boot_done();
    kit::outb(0xf4, 0);
    kit::reset()
}
