//! A polling virtio-net driver for a multi-queue device: negotiates VERSION_1, MAC, MQ and
//! CTRL_VQ, enables two queue pairs through the control queue, sends one frame on each
//! transmit queue, then waits on both receive queues for a 0x88b5 frame from the host.
#![no_std]
#![no_main]

mod kit;

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

const BASE: u64 = 0xd000_1000;
const QSIZE: usize = 8;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const BUF: usize = 2048;
const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const QUEUES: usize = 5; // rx0, tx0, rx1, tx1, ctrl

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
static mut RINGS: [Rings; QUEUES] = [EMPTY, EMPTY, EMPTY, EMPTY, EMPTY];
#[repr(C, align(4096))]
struct Bufs([[u8; BUF]; QSIZE]);
/// Buffers per queue: rx queues use 0..4, tx queues 4, the control queue 5..7.
static mut BUFS: [Bufs; QUEUES] = [
    Bufs([[0; BUF]; QSIZE]),
    Bufs([[0; BUF]; QSIZE]),
    Bufs([[0; BUF]; QSIZE]),
    Bufs([[0; BUF]; QSIZE]),
    Bufs([[0; BUF]; QSIZE]),
];

fn reg(off: u64) -> u32 {
    kit::mmio_read32(BASE + off)
}

fn set(off: u64, v: u32) {
    kit::mmio_write32(BASE + off, v)
}

fn rings(q: usize) -> *mut Rings {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(RINGS[q]) }
}

fn buf(q: usize, i: usize) -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(BUFS[q].0[i]) as *mut u8 }
}

fn setup_queue(q: usize) -> bool {
    set(0x30, q as u32);
    if (reg(0x34) as usize) < QSIZE {
        return false;
    }
    set(0x38, QSIZE as u32);
    let r = rings(q);
    // SAFETY: only addresses are taken.
    let (d, a, u) = unsafe {
        (addr_of!((*r).desc) as u64, addr_of!((*r).avail_flags) as u64, addr_of!((*r).used_flags) as u64)
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

/// Publishes the chain starting at descriptor `head` on queue `q` and notifies.
fn publish(q: usize, head: u16) {
    let r = rings(q);
    // SAFETY: single-threaded guest; the device reads the ring after the index update.
    unsafe {
        let idx = read_volatile(addr_of!((*r).avail_idx));
        write_volatile(addr_of_mut!((*r).avail_ring[usize::from(idx) % QSIZE]), head);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*r).avail_idx), idx.wrapping_add(1));
        fence(Ordering::SeqCst);
    }
    set(0x50, q as u32);
}

fn set_desc(q: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    // SAFETY: the descriptor is ours until published.
    unsafe { write_volatile(addr_of_mut!((*rings(q)).desc[i]), Desc { addr, len, flags, next }) };
}

fn used_idx(q: usize) -> u16 {
    // SAFETY: reading the device-written index.
    unsafe { read_volatile(addr_of!((*rings(q)).used_idx)) }
}

fn wait_used(q: usize, n: u16) {
    while used_idx(q) != n {
        core::hint::spin_loop();
    }
    fence(Ordering::SeqCst);
}

fn send(q: usize, mac: &[u8; 6], text: &[u8]) {
    let len = HDR + 14 + 46;
    // SAFETY: tx buffer 4 of this queue is ours until published.
    unsafe {
        let b = core::slice::from_raw_parts_mut(buf(q, 4), BUF);
        b[..len].fill(0);
        b[HDR..HDR + 6].fill(0xff);
        b[HDR + 6..HDR + 12].copy_from_slice(mac);
        b[HDR + 12..HDR + 14].copy_from_slice(&ETHERTYPE);
        b[HDR + 14..HDR + 14 + text.len()].copy_from_slice(text);
    }
    set_desc(q, 0, buf(q, 4) as u64, len as u32, 0, 0);
    let before = used_idx(q);
    publish(q, 0);
    wait_used(q, before.wrapping_add(1));
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    if reg(0) != 0x7472_6976 || reg(8) != 1 {
        kit::print("no virtio-net device\n");
        kit::reset();
    }
    set(0x70, 0);
    set(0x70, 1 | 2);
    set(0x14, 0);
    let offered = reg(0x10);
    let wanted = (1 << 5) | (1 << 17) | (1 << 22); // MAC, CTRL_VQ, MQ
    if offered & wanted != wanted {
        kit::print("no multi-queue offered\n");
        kit::reset();
    }
    set(0x24, 0);
    set(0x20, wanted);
    set(0x24, 1);
    set(0x20, 1);
    set(0x70, 1 | 2 | 8);
    let max_pairs = reg(0x108) & 0xffff;
    kit::report_dec("max_pairs", u64::from(max_pairs));
    for q in 0..QUEUES {
        if !setup_queue(q) {
            kit::print("queue setup failed\n");
            kit::reset();
        }
    }
    set(0x70, 1 | 2 | 8 | 4);
    let lo = reg(0x100).to_le_bytes();
    let hi = reg(0x104).to_le_bytes();
    let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];

    // Control queue: VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET 2, then the ack byte.
    let ctrl = 4;
    // SAFETY: control buffers 5..7 are ours until published.
    unsafe {
        let cmd = core::slice::from_raw_parts_mut(buf(ctrl, 5), 4);
        cmd.copy_from_slice(&[4, 0, 2, 0]);
        write_volatile(buf(ctrl, 6), 0xff);
    }
    set_desc(ctrl, 0, buf(ctrl, 5) as u64, 2, F_NEXT, 1);
    set_desc(ctrl, 1, buf(ctrl, 5) as u64 + 2, 2, F_NEXT, 2);
    set_desc(ctrl, 2, buf(ctrl, 6) as u64, 1, F_WRITE, 0);
    publish(ctrl, 0);
    wait_used(ctrl, 1);
    // SAFETY: the device wrote the ack.
    kit::report_dec("ctrl_ack", u64::from(unsafe { read_volatile(buf(ctrl, 6)) }));

    for rx in [0usize, 2] {
        for i in 0..4 {
            set_desc(rx, i, buf(rx, i) as u64, BUF as u32, F_WRITE, 0);
            publish(rx, i as u16);
        }
    }
    send(1, &mac, b"from queue pair 0");
    send(3, &mac, b"from queue pair 1");
    kit::print("sent\n");

    let mut seen = [0u16; 2];
    loop {
        for (k, rx) in [0usize, 2].into_iter().enumerate() {
            if used_idx(rx) == seen[k] {
                continue;
            }
            fence(Ordering::SeqCst);
            // SAFETY: the used entry is complete once the index covers it.
            let e = unsafe { read_volatile(addr_of!((*rings(rx)).used_ring[usize::from(seen[k]) % QSIZE])) };
            seen[k] = seen[k].wrapping_add(1);
            let (id, len) = (e[0] as usize % QSIZE, e[1] as usize);
            // SAFETY: the device wrote `len` bytes into that buffer, now ours again.
            let frame = unsafe { core::slice::from_raw_parts(buf(rx, id), len.min(BUF)) };
            if frame.len() > HDR + 14 && frame[HDR + 12..HDR + 14] == ETHERTYPE {
                kit::report_dec("rx_pair", k as u64);
                kit::print("rx_payload=");
                let p = &frame[HDR + 14..];
                let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
                kit::print_bytes(&p[..end]);
                kit::print("\n");
                kit::reset();
            }
            set_desc(rx, id, buf(rx, id) as u64, BUF as u32, F_WRITE, 0);
            publish(rx, id as u16);
        }
    }
}
