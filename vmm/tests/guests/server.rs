//! A "server" guest for the node agent's tests: it finds its virtio-mmio devices by probing
//! the slots, reads each disk (up to 1 MiB of each, up to 4 disks) and reports the FNV-1a of
//! the bytes (`disk_fnv=` for the first, the root disk; `disk1_fnv=`, ... for the others),
//! and, when it has a network card and the command line carries `ip=<addr>:...` (Linux's
//! syntax) and `probe=<addr>`, it asks for `probe`'s MAC with ARP, then pings it, and
//! reports both answers.
//! Every further virtio-blk disk is scanned as a config drive (up to 4 MiB): it reports the
//! FAT volume label when it is `config-2`, and the first text line holding an SSH public key
//! (`ssh-`) and the first holding `ferrostack-user-data`, as `config_key=` and
//! `config_user_data=` lines.
//! Then it stays up, polling the keyboard controller, until Ctrl+Alt+Del arrives: it prints
//! `shutdown` and resets, as a Linux guest with `reboot=k` would. With a network card and
//! an `ip=`, it meanwhile answers ARP requests for its address and ICMP echo requests to
//! it (so it can be pinged, e.g. through a floating IP), reporting the first few echoes.
#![no_std]
#![no_main]

mod kit;

use core::ptr::{addr_of, addr_of_mut, write_volatile};

use kit::virtio::{self, Desc, Dev, Rings, EMPTY, F_NEXT, F_WRITE, QSIZE};

const NET_BUF: usize = 2048;
const NET_HDR: usize = 12;
const MAX_DISK_SECTORS: u64 = 2048;
const MAX_SCAN_SECTORS: u64 = 8192;
const LINE: usize = 200;

const MAX_DISKS: usize = 4;
static mut BLK_RINGS: [Rings; MAX_DISKS] = [EMPTY, EMPTY, EMPTY, EMPTY];
static mut SCAN_RING: Rings = EMPTY;
static mut RX: Rings = EMPTY;
static mut TX: Rings = EMPTY;

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}
static mut HEADER: Header = Header { kind: 0, reserved: 0, sector: 0 };
static mut STATUS: u8 = 0xff;

#[repr(C, align(4096))]
struct Buf([u8; 4096]);
static mut DISK_BUF: Buf = Buf([0; 4096]);

#[repr(C, align(4096))]
struct NetBufs([[u8; NET_BUF]; QSIZE + 1]);
static mut NET_BUFS: NetBufs = NetBufs([[0; NET_BUF]; QSIZE + 1]);

/// Reads one 4 KiB block at `sector` into DISK_BUF through the rings `r`; returns the
/// status byte.
fn read_block(dev: Dev, r: *mut Rings, sector: u64) -> u8 {
    // SAFETY: single-threaded guest; the device touches these only while the request is in
    // flight, and we wait for it to complete.
    unsafe {
        write_volatile(addr_of_mut!(HEADER), Header { kind: 0, reserved: 0, sector });
        write_volatile(addr_of_mut!(STATUS), 0xff);
    }
    virtio::set_desc(r, 0, Desc { addr: addr_of!(HEADER) as u64, len: 16, flags: F_NEXT, next: 1 });
    virtio::set_desc(r, 1, Desc { addr: addr_of!(DISK_BUF) as u64, len: 4096, flags: F_NEXT | F_WRITE, next: 2 });
    virtio::set_desc(r, 2, Desc { addr: addr_of!(STATUS) as u64, len: 1, flags: F_WRITE, next: 0 });
    let done = virtio::publish(r, 0);
    dev.notify(0);
    virtio::wait_used(r, done);
    // SAFETY: the request completed; the status byte is ours again.
    unsafe { core::ptr::read_volatile(addr_of!(STATUS)) }
}

/// Writes `disk<n>_<key>=` (`disk_<key>=` for disk 0).
fn disk_key(n: usize, key: &str) {
    kit::print("disk");
    if n > 0 {
        kit::print_dec(n as u64);
    }
    kit::print("_");
    kit::print(key);
    kit::print("=");
}

/// Reads disk `n` from sector 0 (whole 4 KiB blocks, up to 1 MiB) and reports its checksum;
/// each disk has its own rings.
fn report_disk(dev: Dev, n: usize) {
    // SAFETY: only the address is taken; n < MAX_DISKS.
    let rings = unsafe { addr_of_mut!(BLK_RINGS[n]) };
    if dev.negotiate(0).is_none() || !dev.queue(0, rings) {
        kit::print("virtio-blk setup failed\n");
        return;
    }
    dev.driver_ok();
    let capacity = dev.config64(0);
    disk_key(n, "capacity");
    kit::print_dec(capacity);
    kit::print("\n");
    let sectors = (capacity & !7).min(MAX_DISK_SECTORS);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sector = 0;
    while sector < sectors {
        let status = read_block(dev, rings, sector);
        if status != 0 {
            disk_key(n, "read_error");
            kit::print_dec(u64::from(status));
            kit::print("\n");
            return;
        }
        // SAFETY: no request in flight.
        for b in unsafe { &(*addr_of!(DISK_BUF)).0 } {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        sector += 8;
    }
    disk_key(n, "read_sectors");
    kit::print_dec(sectors);
    kit::print("\n");
    disk_key(n, "fnv");
    kit::print_hex(h);
    kit::print("\n");
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Scans a further disk as a config drive: its label, the first line with an SSH key and
/// the first with the user-data marker. Text runs end at any byte that is not printable
/// ASCII, and at `"` (JSON strings), so a key inside `meta_data.json` is a run of its own.
fn scan_config_drive(dev: Dev) {
    // SAFETY: no request is in flight on the ring (a previous disk, if any, was reset).
    unsafe { write_volatile(addr_of_mut!(SCAN_RING), EMPTY) };
    if dev.negotiate(0).is_none() || !dev.queue(0, addr_of_mut!(SCAN_RING)) {
        kit::print("virtio-blk setup failed\n");
        return;
    }
    dev.driver_ok();
    let capacity = dev.config64(0);
    let sectors = (capacity & !7).min(MAX_SCAN_SECTORS);
    let mut line = [0u8; LINE];
    let mut len = 0;
    let (mut key, mut user_data) = (false, false);
    let mut sector = 0;
    while sector < sectors && !(key && user_data) {
        if read_block(dev, addr_of_mut!(SCAN_RING), sector) != 0 {
            kit::print("config_drive_read_error\n");
            break;
        }
        // SAFETY: no request in flight.
        let block = unsafe { &(*addr_of!(DISK_BUF)).0 };
        if sector == 0 && (&block[43..54] == b"config-2   " || &block[71..82] == b"config-2   ") {
            kit::print("config_drive_label=config-2\n");
        }
        for b in block {
            if (0x20..0x7f).contains(b) && *b != b'"' {
                if len < LINE {
                    line[len] = *b;
                    len += 1;
                }
                continue;
            }
            let text = &line[..len];
            if !key && contains(text, b"ssh-") {
                key = true;
                kit::print("config_key=");
                kit::print_bytes(text);
                kit::print("\n");
            }
            if !user_data && contains(text, b"ferrostack-user-data") {
                user_data = true;
                kit::print("config_user_data=");
                kit::print_bytes(text);
                kit::print("\n");
            }
            len = 0;
        }
        sector += 8;
    }
    // Done with it: reset, so the ring can serve the next disk.
    dev.set(0x70, 0);
}

fn net_buf(i: usize) -> *mut u8 {
    // SAFETY: only the address is taken.
    unsafe { addr_of_mut!(NET_BUFS.0[i]) as *mut u8 }
}

/// Makes network buffer `i` available to the device through descriptor `i` of `rings`.
fn post(rings: *mut Rings, i: usize, len: u32, flags: u16) {
    virtio::set_desc(rings, i, Desc { addr: net_buf(i) as u64, len, flags, next: 0 });
    virtio::publish(rings, i as u16);
}

/// The value of `key=` in the command line, if present.
fn cmdline_value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|b| *b == b' ')
        .find_map(|w| (w.len() > key.len() && &w[..key.len()] == key && w[key.len()] == b'=').then(|| &w[key.len() + 1..]))
}

/// Parses a dotted IPv4 address (stops at the first byte that is neither digit nor dot).
fn parse_ip(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut part = 0;
    let mut val: u32 = 0;
    let mut digits = 0;
    for b in s {
        match b {
            b'0'..=b'9' => {
                val = val * 10 + u32::from(b - b'0');
                digits += 1;
                if val > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 && part < 3 => {
                out[part] = val as u8;
                part += 1;
                val = 0;
                digits = 0;
            }
            _ => break,
        }
    }
    if part != 3 || digits == 0 {
        return None;
    }
    out[3] = val as u8;
    Some(out)
}

/// Transmits `len` bytes of frame (after the vnet header) from buffer QSIZE and waits for
/// the device to take them.
fn transmit(dev: Dev, len: usize, sent: &mut u16) {
    let tx = addr_of_mut!(TX);
    virtio::set_desc(tx, 0, Desc { addr: net_buf(QSIZE) as u64, len: (NET_HDR + len) as u32, flags: 0, next: 0 });
    *sent = virtio::publish(tx, 0);
    dev.notify(1);
    virtio::wait_used(tx, *sent);
}

/// The frame being built in buffer QSIZE (after the vnet header), zeroed.
fn tx_frame() -> &'static mut [u8] {
    // SAFETY: buffer QSIZE is only used for transmission, one frame at a time.
    let f = unsafe { core::slice::from_raw_parts_mut(net_buf(QSIZE).add(NET_HDR), NET_BUF - NET_HDR) };
    f[..NET_HDR + 128].fill(0);
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request(mac: &[u8; 6], ip: [u8; 4], target: [u8; 4]) -> usize {
    let e = tx_frame();
    e[0..6].fill(0xff);
    e[6..12].copy_from_slice(mac);
    e[12..14].copy_from_slice(&[0x08, 0x06]);
    e[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    e[22..28].copy_from_slice(mac);
    e[28..32].copy_from_slice(&ip);
    e[38..42].copy_from_slice(&target);
    60
}

fn echo_request(mac: &[u8; 6], dst_mac: &[u8; 6], ip: [u8; 4], dst: [u8; 4], seq: u16) -> usize {
    let e = tx_frame();
    e[0..6].copy_from_slice(dst_mac);
    e[6..12].copy_from_slice(mac);
    e[12..14].copy_from_slice(&[0x08, 0x00]);
    let payload = b"ferrostack server guest";
    let icmp_len = 8 + payload.len();
    let total = 20 + icmp_len;
    let ipv4 = &mut e[14..14 + 20];
    ipv4[0] = 0x45;
    ipv4[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ipv4[4..6].copy_from_slice(&seq.to_be_bytes());
    ipv4[8] = 64;
    ipv4[9] = 1;
    ipv4[12..16].copy_from_slice(&ip);
    ipv4[16..20].copy_from_slice(&dst);
    let c = checksum(ipv4);
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut e[34..34 + icmp_len];
    icmp[0] = 8;
    icmp[4..6].copy_from_slice(&0x4653u16.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    (14 + total).max(60)
}

/// Ctrl+Alt+Del pressed: report and reset.
fn check_keyboard() {
    if kit::inb(0x64) & 1 != 0 {
        kit::print("shutdown\n");
        kit::reset();
    }
}

/// Sends `frame()` now and then until `matches` accepts a received frame; returns its
/// result, or `None` after `attempts` sends.
fn exchange<T>(dev: Dev, seen: &mut u16, sent: &mut u16, attempts: u32, frame: &dyn Fn() -> usize, matches: &dyn Fn(&[u8]) -> Option<T>) -> Option<T> {
    let rx = addr_of_mut!(RX);
    for _ in 0..attempts {
        transmit(dev, frame(), sent);
        // Each keyboard-controller read is a VM exit: a crude clock (a fraction of a second
        // per attempt).
        for _ in 0..20_000 {
            check_keyboard();
            while virtio::used_idx(rx) != *seen {
                let (id, len) = virtio::used(rx, *seen);
                let id = id % QSIZE;
                *seen = seen.wrapping_add(1);
                // SAFETY: the device wrote `len` bytes into buffer `id`, back in our hands.
                let f = unsafe { core::slice::from_raw_parts(net_buf(id), len.min(NET_BUF)) };
                let found = if f.len() > NET_HDR { matches(&f[NET_HDR..]) } else { None };
                post(rx, id, NET_BUF as u32, F_WRITE);
                dev.notify(0);
                if found.is_some() {
                    return found;
                }
            }
        }
    }
    None
}

/// Sets the network card up (MAC only: the frames here are small and complete), with
/// every receive buffer posted; returns its MAC.
fn net_setup(dev: Dev) -> Option<[u8; 6]> {
    if dev.negotiate(1 << 5).is_none() || !dev.queue(0, addr_of_mut!(RX)) || !dev.queue(1, addr_of_mut!(TX)) {
        kit::print("virtio-net setup failed\n");
        return None;
    }
    dev.driver_ok();
    let mac = dev.mac();
    kit::print("net_mac=");
    kit::print_mac(&mac);
    kit::print("\n");
    let rx = addr_of_mut!(RX);
    for i in 0..QSIZE {
        post(rx, i, NET_BUF as u32, F_WRITE);
    }
    dev.notify(0);
    Some(mac)
}

/// The answer to a received frame, built in the transmit buffer: an ARP reply when asked
/// for `ip`, an echo reply to an echo request for `ip`. Returns its length.
fn answer(f: &[u8], mac: &[u8; 6], ip: [u8; 4]) -> Option<usize> {
    if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == ip {
        let e = tx_frame();
        e[0..6].copy_from_slice(&f[6..12]);
        e[6..12].copy_from_slice(mac);
        e[12..14].copy_from_slice(&[0x08, 0x06]);
        e[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        e[22..28].copy_from_slice(mac);
        e[28..32].copy_from_slice(&ip);
        e[32..42].copy_from_slice(&f[22..32]);
        return Some(60);
    }
    let is_echo = f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 1 && f[30..34] == ip && f[34] == 8;
    if !is_echo {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    if total < 28 || 14 + total > f.len() || 14 + total > NET_BUF - NET_HDR {
        return None;
    }
    let e = tx_frame();
    e[..14 + total].copy_from_slice(&f[..14 + total]);
    e[0..6].copy_from_slice(&f[6..12]);
    e[6..12].copy_from_slice(mac);
    e[26..30].copy_from_slice(&ip);
    e[30..34].copy_from_slice(&f[26..30]);
    e[22] = 64;
    e[24..26].fill(0);
    let c = checksum(&e[14..34]);
    e[24..26].copy_from_slice(&c.to_be_bytes());
    e[34] = 0;
    e[36..38].fill(0);
    let c = checksum(&e[34..14 + total]);
    e[36..38].copy_from_slice(&c.to_be_bytes());
    Some((14 + total).max(60))
}

/// Answers ARP and pings for `ip` until Ctrl+Alt+Del.
fn serve(dev: Dev, mac: [u8; 6], ip: [u8; 4], seen: &mut u16, sent: &mut u16) -> ! {
    let rx = addr_of_mut!(RX);
    let mut echoes = 0u64;
    loop {
        check_keyboard();
        while virtio::used_idx(rx) != *seen {
            let (id, len) = virtio::used(rx, *seen);
            let id = id % QSIZE;
            *seen = seen.wrapping_add(1);
            // SAFETY: the device wrote `len` bytes into buffer `id`, back in our hands until
            // it is posted again (after the answer is built from it).
            let f = unsafe { core::slice::from_raw_parts(net_buf(id), len.min(NET_BUF)) };
            let reply = if f.len() > NET_HDR { answer(&f[NET_HDR..], &mac, ip) } else { None };
            let echo = reply.is_some() && f.len() > NET_HDR + 14 && f[NET_HDR + 12..NET_HDR + 14] == [0x08, 0x00];
            post(rx, id, NET_BUF as u32, F_WRITE);
            dev.notify(0);
            if let Some(n) = reply {
                transmit(dev, n, sent);
                if echo {
                    echoes += 1;
                    if echoes <= 3 {
                        kit::report_dec("echo_replied", echoes);
                    }
                }
            }
        }
    }
}

/// Learns `probe`'s MAC with ARP, then pings it, reporting both answers.
fn net_probe(dev: Dev, mac: [u8; 6], ip: [u8; 4], probe: [u8; 4], seen: &mut u16, sent: &mut u16) {
    let peer = exchange(dev, seen, sent, 300, &|| arp_request(&mac, ip, probe), &|e| {
        let reply = e.len() >= 42 && e[12..14] == [0x08, 0x06] && e[20..22] == [0, 2] && e[28..32] == probe;
        reply.then(|| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&e[22..28]);
            m
        })
    });
    let Some(peer) = peer else {
        kit::print("arp_timeout\n");
        return;
    };
    kit::print("arp_reply=");
    kit::print_mac(&peer);
    kit::print("\n");
    let seq = core::cell::Cell::new(0u16);
    let pong = exchange(dev, seen, sent, 100, &|| {
        seq.set(seq.get() + 1);
        echo_request(&mac, &peer, ip, probe, seq.get())
    }, &|e| {
        let reply = e.len() >= 42 && e[12..14] == [0x08, 0x00] && e[23] == 1 && e[26..30] == probe && e[34] == 0;
        reply.then(|| u16::from_be_bytes([e[40], e[41]]))
    });
    match pong {
        Some(s) => kit::report_dec("ping_reply_seq", u64::from(s)),
        None => kit::print("ping_timeout\n"),
    }
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(zero_page: u64) -> ! {
    kit::boot_done();
    kit::print("server guest up\n");
    let mut disks = 0;
    for dev in (0..virtio::SLOTS).map(|i| Dev(virtio::FIRST_SLOT + i * 0x1000)) {
        if disks < MAX_DISKS && dev.is(virtio::BLOCK) {
            report_disk(dev, disks);
            disks += 1;
        }
    }
    if disks == 0 {
        kit::print("no disk\n");
    }
    let mut n = 1;
    while let Some(dev) = virtio::find(virtio::BLOCK, n) {
        scan_config_drive(dev);
        n += 1;
    }
    let cmdline = kit::ZeroPage(zero_page).cmdline();
    let ip = cmdline_value(cmdline, b"ip").and_then(parse_ip);
    let probe = cmdline_value(cmdline, b"probe").and_then(parse_ip);
    if let (Some(dev), Some(ip)) = (virtio::find(virtio::NET, 0), ip) {
        if let Some(mac) = net_setup(dev) {
            let (mut seen, mut sent) = (0u16, 0u16);
            if let Some(probe) = probe {
                net_probe(dev, mac, ip, probe, &mut seen, &mut sent);
            }
            kit::print("ready\n");
            serve(dev, mac, ip, &mut seen, &mut sent);
        }
    }
    kit::print("ready\n");
    loop {
        check_keyboard();
    }
}
