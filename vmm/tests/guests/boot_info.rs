//! Reports what the VMM's boot path gave it: the protocol it was entered through, the
//! command line, the RAM total of the memory map, the processor entries of the MP table and an
//! initrd checksum; writes the boot-time device; resets. Under the 64-bit Linux boot protocol
//! these come from the zero page, under PVH from `hvm_start_info`.
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

/// Command line, RAM total and first module from PVH's `hvm_start_info`.
fn pvh(info: u64) -> (&'static [u8], u64, (u64, u64)) {
    let cmdline_addr: u64 = peek(info + 24);
    let mut len = 0;
    while peek::<u8>(cmdline_addr + len) != 0 && len < 2048 {
        len += 1;
    }
    // SAFETY: the VMM wrote a NUL-terminated command line there.
    let cmdline = unsafe { core::slice::from_raw_parts(cmdline_addr as *const u8, len as usize) };
    let memmap: u64 = peek(info + 40);
    let entries: u32 = peek(info + 48);
    let ram = (0..u64::from(entries))
        .map(|i| memmap + i * 24)
        .filter(|e| peek::<u32>(e + 16) == 1)
        .map(|e| peek::<u64>(e + 8))
        .sum();
    let modules: u32 = peek(info + 12);
    let initrd = if modules > 0 {
        let m: u64 = peek(info + 16);
        (peek(m), peek(m + 8))
    } else {
        (0, 0)
    };
    (cmdline, ram, initrd)
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(zero_page: u64) -> ! {
    kit::boot_done();
    let (cmdline, ram, (addr, size)) = match kit::pvh_start_info() {
        Some(info) => {
            kit::print("protocol=pvh\n");
            pvh(info)
        }
        None => {
            kit::print("protocol=linux64\n");
            let zp = ZeroPage(zero_page);
            let ram: u64 = zp.e820().filter(|e| e.2 == 1).map(|e| e.1).sum();
            (zp.cmdline(), ram, zp.initrd())
        }
    };
    kit::print("cmdline=");
    kit::print_bytes(cmdline);
    kit::print("\n");
    kit::report_dec("e820_ram_kib", ram >> 10);
    kit::report_dec("mp_cpus", u64::from(mp_processors()));
    if size > 0 {
        // SAFETY: the VMM loaded `size` initrd bytes at `addr`.
        let data = unsafe { core::slice::from_raw_parts(addr as *const u8, size as usize) };
        kit::report_hex("initrd_fnv", kit::fnv1a(data));
    }
    kit::print("bye\n");
    kit::reset()
}
