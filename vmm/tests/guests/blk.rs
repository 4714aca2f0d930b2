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

use kit::virtio::{self, Desc, Dev, Rings, EMPTY, F_NEXT, F_WRITE};

const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

static mut RINGS: Rings = EMPTY;
/// The rings of the second initialisation (`reinit`).
static mut RINGS2: Rings = EMPTY;
/// The rings in use.
static mut CURRENT: *mut Rings = core::ptr::null_mut();
static mut HEADER: Header = Header { kind: 0, reserved: 0, sector: 0 };
static mut STATUS: u8 = 0xff;
#[repr(C, align(4096))]
struct Buf([u8; 4096]);
static mut BUF: Buf = Buf([0; 4096]);

/// The one block device, in the first slot.
const DEV: Dev = Dev(virtio::FIRST_SLOT);

fn rings() -> *mut Rings {
    // SAFETY: single-threaded guest; CURRENT is set by `init` before any request.
    unsafe { read_volatile(addr_of!(CURRENT)) }
}

fn init(r: *mut Rings) -> bool {
    // SAFETY: single-threaded guest.
    unsafe { write_volatile(addr_of_mut!(CURRENT), r) };
    if !DEV.is(virtio::BLOCK) || DEV.negotiate(0).is_none() || !DEV.queue(0, r) {
        return false;
    }
    DEV.driver_ok();
    true
}

fn capacity() -> u64 {
    DEV.config64(0)
}

/// Sends one request and polls for its completion; returns the status byte.
fn request(kind: u32, sector: u64, len: u32) -> u8 {
    let r = rings();
    // SAFETY: single-threaded guest; the device only touches these while the request is
    // in flight, and we wait for it to complete.
    unsafe {
        write_volatile(addr_of_mut!(HEADER), Header { kind, reserved: 0, sector });
        write_volatile(addr_of_mut!(STATUS), 0xff);
    }
    let status = Desc { addr: addr_of!(STATUS) as u64, len: 1, flags: F_WRITE, next: 0 };
    virtio::set_desc(r, 0, Desc { addr: addr_of!(HEADER) as u64, len: 16, flags: F_NEXT, next: 1 });
    if kind == REQ_FLUSH {
        virtio::set_desc(r, 1, status);
    } else {
        let flags = F_NEXT | if kind == REQ_IN { F_WRITE } else { 0 };
        virtio::set_desc(r, 1, Desc { addr: addr_of!(BUF) as u64, len, flags, next: 2 });
        virtio::set_desc(r, 2, status);
    }
    let done = virtio::publish(r, 0);
    DEV.notify(0);
    virtio::wait_used(r, done);
    // SAFETY: the request completed; the status byte is ours again.
    unsafe { read_volatile(addr_of!(STATUS)) }
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
    if !init(addr_of_mut!(RINGS)) {
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
        if !init(addr_of_mut!(RINGS2)) {
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
