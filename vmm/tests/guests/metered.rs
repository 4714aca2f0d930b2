//! Metrics test guest: writes the boot-time device, then makes a known number of exits of
//! each kind, all to addresses no device claims (`PIO_OUT` port writes, `PIO_IN` port
//! reads, `MMIO_READ` and `MMIO_WRITE` 32-bit accesses), says `done`, and halts with
//! interrupts off, which the in-kernel irqchip keeps inside KVM: the VMM sees no further
//! exit and its API stays up for the test to read `/metrics`.
#![no_std]
#![no_main]

mod kit;

use core::arch::asm;

const PIO_OUT: u32 = 1000;
const PIO_IN: u32 = 500;
const MMIO_READ: u32 = 200;
const MMIO_WRITE: u32 = 100;
/// The POST-code port: no device behind it here.
const PORT: u16 = 0x80;
/// Unclaimed MMIO: the last page of the gap below the I/O APIC.
const TARGET: u64 = 0xfe00_0000;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    for i in 0..PIO_OUT {
        kit::outb(PORT, i as u8);
    }
    for _ in 0..PIO_IN {
        kit::inb(PORT);
    }
    for _ in 0..MMIO_READ {
        kit::mmio_read32(TARGET);
    }
    for i in 0..MMIO_WRITE {
        kit::mmio_write32(TARGET, i);
    }
    kit::print("done\n");
    loop {
        // SAFETY: halting in our own guest.
        unsafe { asm!("cli; hlt") }
    }
}
