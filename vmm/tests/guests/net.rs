//! A minimal polling virtio-net driver: negotiates VERSION_1, MAC, GUEST_CSUM and GUEST_TSO4, posts receive buffers,
//! sends one broadcast frame (ethertype 0x88b5) with a greeting, then waits for a 0x88b5
//! frame from the host, reports its payload, and resets.
#![no_std]
#![no_main]

mod kit;

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

const BASE: u64 = 0xd000_1000;
const QSIZE: usize = 8;
const F_WRITE: u16 = 2;
const BUF: usize = 2048;
const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

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

const EMPTY: Rings = Rings {
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
static mut RX: Rings = EMPTY;
static mut TX: Rings = EMPTY;
#[repr(C, align(4096))]
struct Bufs([[u8; BUF]; QSIZE + 1]);
static mut BUFS: Bufs = Bufs([[0; BUF]; QSIZE + 1]);

fn reg(off: u64) -> u32 {
    kit::mmio_read32(BASE + off)
}

fn set(off: u64, v: u32) {
    kit::mmio_write32(BASE + off, v)
}

fn setup_queue(index: u32, rings: *mut Rings) -> bool {
    set(0x30, index);
    if (reg(0x34) as usize) < QSIZE {
        return false;
    }
    set(0x38, QSIZE as u32);
    // SAFETY: only addresses are taken.
    let (d, a, u) = unsafe {
        (
            addr_of!((*rings).desc) as u64,
            addr_of!((*rings).avail_flags) as u64,
            addr_of!((*rings).used_flags) as u64,
        )
    };
    set(0x80, d as u32);
    set(0x84, (d >> 32) as u32);
    set(0x90, a as u32);
    set(0x94, (a >> 32) as u32);
    set(0xa0, u as u32);
    set(0xa4, (u >> 32) as u32);
    set(0x44, 1);
    true
}

fn buf(i: usize) -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(BUFS.0[i]) as *mut u8 }
}

/// Makes descriptor `i` (buffer `i`) available on `rings`.
fn post(rings: *mut Rings, i: usize, len: u32, flags: u16) {
    // SAFETY: single-threaded guest; the device reads these only after the index update.
    unsafe {
        write_volatile(addr_of_mut!((*rings).desc[i]), Desc { addr: buf(i) as u64, len, flags, next: 0 });
        let idx = read_volatile(addr_of!((*rings).avail_idx));
        write_volatile(addr_of_mut!((*rings).avail_ring[usize::from(idx) % QSIZE]), i as u16);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*rings).avail_idx), idx.wrapping_add(1));
        fence(Ordering::SeqCst);
    }
}

fn hex(b: u8) -> [u8; 2] {
    let h = b"0123456789abcdef";
    [h[usize::from(b >> 4)], h[usize::from(b & 0xf)]]
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    if reg(0) != 0x7472_6976 || reg(4) != 2 || reg(8) != 1 {
        kit::print("no virtio-net device\n");
        kit::reset();
    }
    set(0x70, 0);
    set(0x70, 1 | 2);
    set(0x14, 0);
    // MAC, and receive checksum and TCPv4 segmentation offload (GUEST_CSUM, GUEST_TSO4)
    // when offered: the frames this driver sends are complete, and the only frames it
    // receives here are small raw ones.
    let acked = reg(0x10) & ((1 << 5) | (1 << 1) | (1 << 7));
    set(0x24, 0);
    set(0x20, acked);
    set(0x24, 1);
    set(0x20, 1); // VERSION_1
    set(0x70, 1 | 2 | 8);
    // SAFETY: only addresses are taken.
    let (rx, tx) = unsafe { (addr_of_mut!(RX), addr_of_mut!(TX)) };
    if reg(0x70) & 8 == 0 || !setup_queue(0, rx) || !setup_queue(1, tx) {
        kit::print("virtio-net setup failed\n");
        kit::reset();
    }
    set(0x70, 1 | 2 | 8 | 4);

    let lo = reg(0x100).to_le_bytes();
    let hi = reg(0x104).to_le_bytes();
    let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
    kit::print("mac=");
    for (i, b) in mac.iter().enumerate() {
        kit::print_bytes(&hex(*b));
        kit::print(if i == 5 { "\n" } else { ":" });
    }

    for i in 0..4 {
        post(rx, i, BUF as u32, F_WRITE);
    }
    set(0x50, 0);

    // One frame: vnet header (zero), broadcast destination, our MAC, ethertype, greeting.
    let greeting = b"ferrostack guest says hello";
    let frame_len = HDR + 14 + 46;
    // SAFETY: buffer QSIZE is ours alone until the device reads it.
    unsafe {
        let b = core::slice::from_raw_parts_mut(buf(QSIZE), BUF);
        b[..frame_len].fill(0);
        b[HDR..HDR + 6].fill(0xff);
        b[HDR + 6..HDR + 12].copy_from_slice(&mac);
        b[HDR + 12..HDR + 14].copy_from_slice(&ETHERTYPE);
        b[HDR + 14..HDR + 14 + greeting.len()].copy_from_slice(greeting);
        write_volatile(addr_of_mut!((*tx).desc[0]), Desc { addr: buf(QSIZE) as u64, len: frame_len as u32, flags: 0, next: 0 });
        write_volatile(addr_of_mut!((*tx).avail_ring[0]), 0);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*tx).avail_idx), 1);
        fence(Ordering::SeqCst);
    }
    set(0x50, 1);
    // SAFETY: reading the device-written used index.
    while unsafe { read_volatile(addr_of!((*tx).used_idx)) } != 1 {
        core::hint::spin_loop();
    }
    kit::print("sent\n");

    let mut seen: u16 = 0;
    loop {
        // SAFETY: reading device-written ring entries after the used index covers them.
        let (id, len) = unsafe {
            while read_volatile(addr_of!((*rx).used_idx)) == seen {
                core::hint::spin_loop();
            }
            fence(Ordering::SeqCst);
            let e = read_volatile(addr_of!((*rx).used_ring[usize::from(seen) % QSIZE]));
            (e[0] as usize, e[1] as usize)
        };
        seen = seen.wrapping_add(1);
        // SAFETY: the device wrote `len` bytes into buffer `id`, which is back in our hands.
        let frame = unsafe { core::slice::from_raw_parts(buf(id % QSIZE), len.min(BUF)) };
        if frame.len() > HDR + 14 && frame[HDR + 12..HDR + 14] == ETHERTYPE {
            kit::report_dec("rx_len", (len - HDR) as u64);
            kit::print("rx_payload=");
            let payload = &frame[HDR + 14..];
            let end = payload.iter().position(|b| *b == 0).unwrap_or(payload.len());
            kit::print_bytes(&payload[..end]);
            kit::print("\n");
            kit::reset();
        }
        // Something else (the host's own chatter): give the buffer back.
        post(rx, id % QSIZE, BUF as u32, F_WRITE);
        set(0x50, 0);
    }
}
