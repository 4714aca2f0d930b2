//! A minimal polling virtio-mmio block driver: negotiates VERSION_1, sets up one queue of 8,
//! reads 4 KiB at sector 0 and reports its checksum, writes a pattern at sector 8, flushes,
//! reads it back, tries a read past the end, and resets (or, with `halt` on the command
//! line, halts with interrupts off so the VMM stays up for its metrics to be read).
//! With `reinit` on the command line it then resets the device and initialises its driver
//! again with rings at other addresses (as a rebooted guest's driver would), and reads the
//! pattern back once more.
#![no_std]
#![no_main]

mod kit;

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

const BASE: u64 = 0xd000_1000;
const QSIZE: usize = 8;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(4096))]
struct Rings {
    desc: [Desc; QSIZE],
    avail_flags: u16,
    avail_idx: u16,
    avail_ring: [u16; QSIZE],
    avail_event: u16,
    _pad: [u8; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
    used_flags: u16,
    used_idx: u16,
    used_ring: [[u32; 2]; QSIZE],
    used_event: u16,
}

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

const EMPTY_RINGS: Rings = Rings {
    desc: [Desc { addr: 0, len: 0, flags: 0, next: 0 }; QSIZE],
    avail_flags: 0,
    avail_idx: 0,
    avail_ring: [0; QSIZE],
    avail_event: 0,
    _pad: [0; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
    used_flags: 0,
    used_idx: 0,
    used_ring: [[0; 2]; QSIZE],
    used_event: 0,
};
static mut RINGS: Rings = EMPTY_RINGS;
/// The rings of the second initialisation (`reinit`).
static mut RINGS2: Rings = EMPTY_RINGS;
/// The rings in use.
static mut CURRENT: *mut Rings = core::ptr::null_mut();
static mut HEADER: Header = Header { kind: 0, reserved: 0, sector: 0 };
static mut STATUS: u8 = 0xff;
#[repr(C, align(4096))]
struct Buf([u8; 4096]);
static mut BUF: Buf = Buf([0; 4096]);

fn reg(off: u64) -> u32 {
    kit::mmio_read32(BASE + off)
}

fn set(off: u64, v: u32) {
    kit::mmio_write32(BASE + off, v)
}

fn rings() -> *mut Rings {
    // SAFETY: single-threaded guest; CURRENT is set by `init` before any request.
    unsafe { read_volatile(addr_of!(CURRENT)) }
}

fn init(r: *mut Rings) -> bool {
    // SAFETY: single-threaded guest.
    unsafe { write_volatile(addr_of_mut!(CURRENT), r) };
    if reg(0) != 0x7472_6976 || reg(4) != 2 || reg(8) != 2 {
        return false;
    }
    set(0x70, 0);
    set(0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    set(0x14, 1);
    if reg(0x10) & 1 == 0 {
        return false; // no VERSION_1
    }
    set(0x24, 0);
    set(0x20, 0);
    set(0x24, 1);
    set(0x20, 1);
    set(0x70, 1 | 2 | 8); // FEATURES_OK
    if reg(0x70) & 8 == 0 {
        return false;
    }
    set(0x30, 0);
    if (reg(0x34) as usize) < QSIZE {
        return false;
    }
    set(0x38, QSIZE as u32);
    let rings = r as u64;
    // SAFETY: only addresses inside the static are taken.
    let (avail, used) = unsafe { (addr_of!((*r).avail_flags) as u64, addr_of!((*r).used_flags) as u64) };
    set(0x80, rings as u32);
    set(0x84, (rings >> 32) as u32);
    set(0x90, avail as u32);
    set(0x94, (avail >> 32) as u32);
    set(0xa0, used as u32);
    set(0xa4, (used >> 32) as u32);
    set(0x44, 1);
    set(0x70, 1 | 2 | 8 | 4); // DRIVER_OK
    true
}

fn capacity() -> u64 {
    u64::from(reg(0x100)) | (u64::from(reg(0x104)) << 32)
}

/// Sends one request and polls for its completion; returns the status byte.
fn request(kind: u32, sector: u64, len: u32) -> u8 {
    // SAFETY: single-threaded guest; the device only touches these while the request is
    // in flight, and we wait for it to complete.
    unsafe {
        let r = rings();
        write_volatile(addr_of_mut!(HEADER), Header { kind, reserved: 0, sector });
        write_volatile(addr_of_mut!(STATUS), 0xff);
        let hdr = Desc { addr: addr_of!(HEADER) as u64, len: 16, flags: F_NEXT, next: 1 };
        let status = |next_free: usize| Desc { addr: addr_of!(STATUS) as u64, len: 1, flags: F_WRITE, next: next_free as u16 };
        write_volatile(addr_of_mut!((*r).desc[0]), hdr);
        if kind == REQ_FLUSH {
            write_volatile(addr_of_mut!((*r).desc[0].next), 1);
            write_volatile(addr_of_mut!((*r).desc[1]), status(0));
        } else {
            let flags = F_NEXT | if kind == REQ_IN { F_WRITE } else { 0 };
            write_volatile(addr_of_mut!((*r).desc[1]), Desc { addr: addr_of!(BUF) as u64, len, flags, next: 2 });
            write_volatile(addr_of_mut!((*r).desc[2]), status(0));
        }
        let idx = read_volatile(addr_of!((*r).avail_idx));
        write_volatile(addr_of_mut!((*r).avail_ring[usize::from(idx) % QSIZE]), 0);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*r).avail_idx), idx.wrapping_add(1));
        fence(Ordering::SeqCst);
        set(0x50, 0);
        while read_volatile(addr_of!((*r).used_idx)) != idx.wrapping_add(1) {
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        read_volatile(addr_of!(STATUS))
    }
}

fn buf() -> &'static mut [u8; 4096] {
    // SAFETY: single-threaded guest, no request in flight when this is used.
    unsafe { &mut (*addr_of_mut!(BUF)).0 }
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(zero_page: u64) -> ! {
    kit::boot_done();
    let halt = kit::ZeroPage(zero_page)
        .cmdline()
        .split(|b| *b == b' ')
        .any(|w| w == b"halt");
    let words = || kit::ZeroPage(zero_page).cmdline().split(|b| *b == b' ');
    let reinit = words().any(|w| w == b"reinit");
    // SAFETY: only the address of the static is taken.
    if !init(unsafe { addr_of_mut!(RINGS) }) {
        kit::print("no virtio-blk device\n");
        kit::reset();
    }
    let cap = capacity();
    kit::report_dec("capacity", cap);
    kit::report_dec("read_status", u64::from(request(REQ_IN, 0, 4096)));
    kit::report_hex("read_fnv", kit::fnv1a(buf()));
    for (i, b) in buf().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(5);
    }
    kit::report_dec("write_status", u64::from(request(REQ_OUT, 8, 4096)));
    kit::report_dec("flush_status", u64::from(request(REQ_FLUSH, 0, 0)));
    for b in buf().iter_mut() {
        *b = 0;
    }
    kit::report_dec("readback_status", u64::from(request(REQ_IN, 8, 4096)));
    kit::report_hex("readback_fnv", kit::fnv1a(buf()));
    kit::report_dec("oob_status", u64::from(request(REQ_IN, cap, 512)));
    if reinit {
        // SAFETY: only the address of the static is taken.
        if !init(unsafe { addr_of_mut!(RINGS2) }) {
            kit::print("reinit failed\n");
            kit::reset();
        }
        for b in buf().iter_mut() {
            *b = 0;
        }
        kit::report_dec("reinit_status", u64::from(request(REQ_IN, 8, 4096)));
        kit::report_hex("reinit_fnv", kit::fnv1a(buf()));
    }
    kit::print("done\n");
    if halt {
        loop {
            // SAFETY: halting in our own guest.
            unsafe { core::arch::asm!("cli; hlt") }
        }
    }
    kit::reset()
}
