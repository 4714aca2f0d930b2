//! Benchmark guest: writes the boot-time device, then does 20000 32-bit MMIO writes to an
//! address in the MMIO gap that no device claims (one exit each), then resets.
#![no_std]
#![no_main]

mod kit;

/// How many exits the guest makes.
const EXITS: u32 = 20_000;
/// Unclaimed MMIO: the last page of the gap below the I/O APIC.
const TARGET: u64 = 0xfe00_0000;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    for i in 0..EXITS {
        kit::mmio_write32(TARGET, i);
    }
    kit::reset()
}
