//! Benchmark guest: writes the boot-time device, then does 20000 port-I/O writes to port
//! 0x80 (one exit each), then resets. The VMM-side time between the boot-time write and the
//! reset, divided by 20000, is the VMM's exit round trip.
#![no_std]
#![no_main]

mod kit;

/// How many exits the guest makes.
const EXITS: u32 = 20_000;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    for _ in 0..EXITS {
        kit::outb(0x80, 0);
    }
    kit::reset()
}
