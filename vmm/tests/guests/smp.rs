//! Starts the application processors the MP table lists with INIT-SIPI-SIPI through the local
//! APIC. Each AP runs a real-mode trampoline that atomically counts itself in and prints `A`;
//! the boot processor reports how many came up and resets.
#![no_std]
#![no_main]

mod kit;

use kit::peek;

const TRAMPOLINE: u64 = 0x30000;
const COUNTER: u64 = TRAMPOLINE + 0x100;
const LAPIC: u64 = 0xfee0_0000;

/// Real-mode code run by each AP at 3000:0000.
const AP_CODE: [u8; 21] = [
    0xfa, // cli
    0xb8, 0x00, 0x30, // mov ax, 0x3000
    0x8e, 0xd8, // mov ds, ax
    0xf0, 0xff, 0x06, 0x00, 0x01, // lock inc word [0x100]
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'A', // mov al, 'A'
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
    0x90,
];

fn mp_processors() -> u64 {
    let base = 0x9fc00u64;
    if peek::<[u8; 4]>(base) != *b"_MP_" {
        return 0;
    }
    let table = u64::from(peek::<u32>(base + 4));
    let count: u16 = peek(table + 34);
    let mut at = table + 44;
    let mut cpus = 0;
    for _ in 0..count {
        if peek::<u8>(at) == 0 {
            cpus += 1;
            at += 20;
        } else {
            at += 8;
        }
    }
    cpus
}

fn delay(n: u32) {
    for _ in 0..n {
        core::hint::spin_loop();
    }
}

fn icr(low: u32) {
    kit::mmio_write32(LAPIC + 0x310, 0);
    kit::mmio_write32(LAPIC + 0x300, low);
    // Wait for the delivery status bit to clear.
    while kit::mmio_read32(LAPIC + 0x300) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    // SAFETY: identity-mapped RAM below 1 MiB that nothing else uses.
    unsafe {
        core::ptr::copy_nonoverlapping(AP_CODE.as_ptr(), TRAMPOLINE as *mut u8, AP_CODE.len());
        core::ptr::write_volatile(COUNTER as *mut u16, 0);
    }
    let aps = mp_processors().saturating_sub(1);
    kit::report_dec("cpus", aps + 1);
    // INIT, then two STARTUPs at vector 0x30 (0x30000), to all but ourselves.
    icr(0x000c_4500);
    delay(2000);
    for _ in 0..2 {
        icr(0x000c_4600 | (TRAMPOLINE >> 12) as u32);
        delay(200);
    }
    let mut waited = 0u64;
    // SAFETY: the APs increment this counter with a locked instruction.
    while u64::from(unsafe { core::ptr::read_volatile(COUNTER as *const u16) }) < aps {
        waited += 1;
        if waited > 2_000_000_000 {
            break;
        }
        core::hint::spin_loop();
    }
    delay(1000);
    // SAFETY: as above.
    let up = unsafe { core::ptr::read_volatile(COUNTER as *const u16) };
    kit::print("\n");
    kit::report_dec("aps_up", u64::from(up));
    kit::reset()
}
