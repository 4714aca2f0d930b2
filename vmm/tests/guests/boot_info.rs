//! Reports what the VMM's boot path gave it: the command line, the e820 RAM total, the
//! processor entries of the MP table and an initrd checksum; writes the boot-time device;
//! resets.
#![no_std]
#![no_main]

mod kit;

use kit::{peek, ZeroPage};

fn mp_processors() -> u32 {
    // The MP floating pointer is at the start of the EBDA.
    let base = 0x9fc00u64;
    if peek::<[u8; 4]>(base) != *b"_MP_" {
        return 0;
    }
    let table = u64::from(peek::<u32>(base + 4));
    if peek::<[u8; 4]>(table) != *b"PCMP" {
        return 0;
    }
    let count: u16 = peek(table + 34);
    let mut at = table + 44;
    let mut cpus = 0;
    for _ in 0..count {
        let kind: u8 = peek(at);
        if kind == 0 {
            cpus += 1;
            at += 20;
        } else {
            at += 8;
        }
    }
    cpus
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(zero_page: u64) -> ! {
    let zp = ZeroPage(zero_page);
    kit::boot_done();
    kit::print("cmdline=");
    kit::print_bytes(zp.cmdline());
    kit::print("\n");
    let ram: u64 = zp.e820().filter(|e| e.2 == 1).map(|e| e.1).sum();
    kit::report_dec("e820_ram_kib", ram >> 10);
    kit::report_dec("mp_cpus", u64::from(mp_processors()));
    let (addr, size) = zp.initrd();
    if size > 0 {
        // SAFETY: the VMM loaded `size` initrd bytes at `addr`.
        let data = unsafe { core::slice::from_raw_parts(addr as *const u8, size as usize) };
        kit::report_hex("initrd_fnv", kit::fnv1a(data));
    }
    kit::print("bye\n");
    kit::reset()
}
