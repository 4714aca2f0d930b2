//! A minimal polling virtio-net driver: negotiates VERSION_1, MAC, GUEST_CSUM and GUEST_TSO4, posts receive buffers,
//! sends one broadcast frame (ethertype 0x88b5) with a greeting, then waits for a 0x88b5
//! frame from the host, reports its payload, and resets.
#![no_std]
#![no_main]

mod kit;

use core::ptr::addr_of_mut;

use kit::virtio::{self, Desc, Dev, Rings, EMPTY, F_WRITE, QSIZE};

const BUF: usize = 2048;
const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

static mut RX: Rings = EMPTY;
static mut TX: Rings = EMPTY;
#[repr(C, align(4096))]
struct Bufs([[u8; BUF]; QSIZE + 1]);
static mut BUFS: Bufs = Bufs([[0; BUF]; QSIZE + 1]);

/// The one network device, in the first slot.
const DEV: Dev = Dev(virtio::FIRST_SLOT);

fn buf(i: usize) -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(BUFS.0[i]) as *mut u8 }
}

/// Makes buffer `i` available to the device through descriptor `i` of `rings`.
fn post(rings: *mut Rings, i: usize, len: u32, flags: u16) {
    virtio::set_desc(rings, i, Desc { addr: buf(i) as u64, len, flags, next: 0 });
    virtio::publish(rings, i as u16);
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    if !DEV.is(virtio::NET) {
        kit::print("no virtio-net device\n");
        kit::reset();
    }
    let (rx, tx) = (addr_of_mut!(RX), addr_of_mut!(TX));
    // MAC, and receive checksum and TCPv4 segmentation offload (GUEST_CSUM, GUEST_TSO4)
    // when offered: the frames this driver sends are complete, and the only frames it
    // receives here are small raw ones.
    if DEV.negotiate((1 << 5) | (1 << 1) | (1 << 7)).is_none() || !DEV.queue(0, rx) || !DEV.queue(1, tx) {
        kit::print("virtio-net setup failed\n");
        kit::reset();
    }
    DEV.driver_ok();

    let mac = DEV.mac();
    kit::print("mac=");
    kit::print_mac(&mac);
    kit::print("\n");

    for i in 0..4 {
        post(rx, i, BUF as u32, F_WRITE);
    }
    DEV.notify(0);

    // One frame: vnet header (zero), broadcast destination, our MAC, ethertype, greeting.
    let greeting = b"ferrostack guest says hello";
    let frame_len = HDR + 14 + 46;
    // SAFETY: buffer QSIZE is ours alone until the device reads it.
    let b = unsafe { core::slice::from_raw_parts_mut(buf(QSIZE), BUF) };
    b[..frame_len].fill(0);
    b[HDR..HDR + 6].fill(0xff);
    b[HDR + 6..HDR + 12].copy_from_slice(&mac);
    b[HDR + 12..HDR + 14].copy_from_slice(&ETHERTYPE);
    b[HDR + 14..HDR + 14 + greeting.len()].copy_from_slice(greeting);
    virtio::set_desc(tx, 0, Desc { addr: buf(QSIZE) as u64, len: frame_len as u32, flags: 0, next: 0 });
    let sent = virtio::publish(tx, 0);
    DEV.notify(1);
    virtio::wait_used(tx, sent);
    kit::print("sent\n");

    let mut seen: u16 = 0;
    loop {
        while virtio::used_idx(rx) == seen {
            core::hint::spin_loop();
        }
        let (id, len) = virtio::used(rx, seen);
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
        DEV.notify(0);
    }
}
