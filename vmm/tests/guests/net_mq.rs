//! A polling virtio-net driver for a multi-queue device: negotiates VERSION_1, MAC, MQ and
//! CTRL_VQ, enables two queue pairs through the control queue, sends one frame on each
//! transmit queue, then waits on both receive queues for a 0x88b5 frame from the host.
#![no_std]
#![no_main]

mod kit;

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use kit::virtio::{self, Desc, Dev, Rings, EMPTY, F_NEXT, F_WRITE, QSIZE};

const BUF: usize = 2048;
const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const QUEUES: usize = 5; // rx0, tx0, rx1, tx1, ctrl

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

/// The one network device, in the first slot.
const DEV: Dev = Dev(virtio::FIRST_SLOT);

fn rings(q: usize) -> *mut Rings {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(RINGS[q]) }
}

fn buf(q: usize, i: usize) -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(BUFS[q].0[i]) as *mut u8 }
}

/// Publishes the chain starting at descriptor `head` on queue `q` and notifies; returns the
/// new available index.
fn publish(q: usize, head: u16) -> u16 {
    let idx = virtio::publish(rings(q), head);
    DEV.notify(q as u32);
    idx
}

fn set_desc(q: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    virtio::set_desc(rings(q), i, Desc { addr, len, flags, next });
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
    let before = virtio::used_idx(rings(q));
    publish(q, 0);
    virtio::wait_used(rings(q), before.wrapping_add(1));
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    if !DEV.is(virtio::NET) {
        kit::print("no virtio-net device\n");
        kit::reset();
    }
    let wanted = (1 << 5) | (1 << 17) | (1 << 22); // MAC, CTRL_VQ, MQ
    if DEV.negotiate(wanted) != Some(wanted) {
        kit::print("no multi-queue offered\n");
        kit::reset();
    }
    let max_pairs = DEV.config32(8) & 0xffff;
    kit::report_dec("max_pairs", u64::from(max_pairs));
    for q in 0..QUEUES {
        if !DEV.queue(q as u32, rings(q)) {
            kit::print("queue setup failed\n");
            kit::reset();
        }
    }
    DEV.driver_ok();
    let mac = DEV.mac();

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
    let done = publish(ctrl, 0);
    virtio::wait_used(rings(ctrl), done);
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
            if virtio::used_idx(rings(rx)) == seen[k] {
                continue;
            }
            let (id, len) = virtio::used(rings(rx), seen[k]);
            seen[k] = seen[k].wrapping_add(1);
            let id = id % QSIZE;
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
