//! virtio-net on a tap, in userspace: one receive and one transmit queue per queue pair (one
//! tap queue each; several pairs need a multi-queue tap and bring a control queue for
//! `VQ_PAIRS_SET`), frames carried with their 12-byte vnet header unchanged between guest
//! buffers and the tap. Checksum and TSO offloads are offered; what the driver acknowledges
//! for its receive side is passed to the tap with `TUNSETOFFLOAD`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::VirtioDevice;
use super::mmio::MmioTransport;
use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::{Direction, NetStats};

/// Device id of a network device.
pub const TYPE_NET: u32 = 1;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Offloads offered: checksum and TSO in both directions. Frames keep their vnet header
/// end to end, so whatever the guest or the host kernel left undone travels with the frame.
const OFFLOADS: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6;

/// The tap offloads matching the features a driver acknowledged: what the host kernel may
/// leave undone in frames the guest receives.
pub fn tap_offloads(features: u64) -> u32 {
    use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
    let mut flags = 0;
    if features & VIRTIO_NET_F_GUEST_CSUM != 0 {
        flags |= TUN_F_CSUM;
        // TSO without checksum offload is not allowed by the tap.
        if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
            flags |= TUN_F_TSO4;
        }
        if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
            flags |= TUN_F_TSO6;
        }
    }
    flags
}
/// Largest frame plus header handled (no TSO: one MTU-sized frame).
const MAX_FRAME: usize = 65562;
const RX: usize = 0;
#[cfg(test)]
const TX: usize = 1;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const CTRL_QUEUE_SIZE: u16 = 64;
const CTRL_CLASS_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;

/// A virtio-net device.
pub struct Net {
    pairs: Vec<Pair>,
    mac: Option<[u8; 6]>,
    queue_sizes: Vec<u16>,
    buf: Vec<u8>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    retry: Option<Duration>,
    /// Queue pairs the driver enabled through the control queue.
    active_pairs: u16,
    stats: Arc<NetStats>,
}

/// One receive/transmit queue pair and its tap queue.
struct Pair {
    tap: Tap,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the tap into `rx_buf` but not yet delivered.
    rx_pending: Option<usize>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Net {
    /// A device on `tap`, with `mac` offered to the guest if given.
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> Net {
        Net::multi_queue(vec![tap], mac)
    }

    /// A device with one queue pair per tap queue (`taps` opened with `IFF_MULTI_QUEUE` when
    /// there are several). With more than one pair it offers `VIRTIO_NET_F_MQ` and a control
    /// queue, which comes after the pairs.
    pub fn multi_queue(taps: Vec<Tap>, mac: Option<[u8; 6]>) -> Net {
        let pairs: Vec<Pair> = taps
            .into_iter()
            .map(|tap| Pair {
                tap,
                rx_buf: vec![0; MAX_FRAME],
                rx_pending: None,
            })
            .collect();
        let mut queue_sizes = vec![QUEUE_SIZE; pairs.len() * 2];
        if pairs.len() > 1 {
            queue_sizes.push(CTRL_QUEUE_SIZE);
        }
        Net {
            pairs,
            mac,
            queue_sizes,
            buf: vec![0; MAX_FRAME],
            rx_limiter: RateLimiter::default(),
            tx_limiter: RateLimiter::default(),
            retry: None,
            active_pairs: 1,
            stats: Arc::default(),
        }
    }

    /// Counts this interface's frames in `stats` (its entry in the VMM's metrics).
    pub fn with_stats(mut self, stats: Arc<NetStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Limits received and transmitted frames and bytes.
    pub fn with_rate_limiters(
        mut self,
        rx: Option<&crate::config::RateLimiter>,
        tx: Option<&crate::config::RateLimiter>,
    ) -> Self {
        self.rx_limiter = RateLimiter::new(rx, Instant::now());
        self.tx_limiter = RateLimiter::new(tx, Instant::now());
        self
    }

    /// Each tap queue's fd, for the receive pollers (pair `i` is queues `2i` and `2i + 1`).
    pub fn tap_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.pairs.iter().map(|p| p.tap.raw_fd()).collect()
    }

    /// Serves the control queue: `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` is acknowledged when the
    /// count is between 1 and the pairs offered; every other command is refused.
    fn control(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let mut ack = CTRL_ERR;
            let mut readable = Vec::new();
            for d in descs.iter().filter(|d| !d.is_write_only()) {
                let n = (d.len() as usize).min(64);
                let mut part = vec![0u8; n];
                if mem.read_slice(&mut part, d.addr()).is_err() {
                    break;
                }
                readable.extend_from_slice(&part);
            }
            if let [CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, lo, hi, ..] = readable[..] {
                let n = u16::from_le_bytes([lo, hi]);
                if n >= 1 && usize::from(n) <= self.pairs.len() {
                    self.active_pairs = n;
                    ack = CTRL_OK;
                }
            }
            let status = descs
                .iter()
                .rev()
                .find(|d| d.is_write_only() && d.len() >= 1);
            let mut len = 0;
            if let Some(d) = status
                && mem.write_obj(ack, d.addr()).is_ok()
            {
                len = 1;
            }
            if queue.add_used(mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    fn transmit(&mut self, mem: &GuestMemoryMmap, pair: usize, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for d in chain {
                let n = d.len() as usize;
                if d.is_write_only() || len + n > self.buf.len() {
                    ok = false;
                    break;
                }
                if mem
                    .read_slice(&mut self.buf[len..len + n], d.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
                len += n;
            }
            if ok && let Err(wait) = self.tx_limiter.try_consume(len as u64, Instant::now()) {
                queue.go_to_previous_position();
                self.retry = Some(wait);
                self.stats.throttled(Direction::Tx);
                break;
            }
            if ok && len > VNET_HDR_LEN {
                match self.pairs[pair].tap.write_frame(&self.buf[..len]) {
                    Ok(_) => self.stats.frame(Direction::Tx, len as u64),
                    Err(_) => self.stats.error(),
                };
            } else {
                self.stats.error();
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    fn receive(&mut self, mem: &GuestMemoryMmap, pair: usize, queue: &mut Queue) -> bool {
        let mut used = false;
        let Self {
            pairs,
            rx_limiter,
            stats,
            ..
        } = self;
        let Pair {
            tap,
            rx_buf,
            rx_pending,
        } = &mut pairs[pair];
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match *rx_pending {
                Some(len) => len,
                None => match tap.read_frame(rx_buf) {
                    Ok(n) => n,
                    Err(_) => {
                        // Nothing queued (or the tap failed): give the buffer back.
                        queue.go_to_previous_position();
                        break;
                    }
                },
            };
            *rx_pending = Some(len);
            if let Err(wait) = rx_limiter.try_consume(len as u64, Instant::now()) {
                queue.go_to_previous_position();
                self.retry = Some(wait);
                stats.throttled(Direction::Rx);
                break;
            }
            *rx_pending = None;
            if len >= VNET_HDR_LEN {
                // One buffer per frame: num_buffers = 1.
                rx_buf[10] = 1;
                rx_buf[11] = 0;
            }
            let mut written = 0usize;
            for d in chain {
                if written == len || !d.is_write_only() {
                    break;
                }
                let n = (d.len() as usize).min(len - written);
                if mem
                    .write_slice(&rx_buf[written..written + n], d.addr())
                    .is_err()
                {
                    break;
                }
                written += n;
            }
            if written < len {
                stats.error();
            } else {
                stats.frame(Direction::Rx, len as u64);
            }
            if queue.add_used(mem, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        let mut f = OFFLOADS;
        if self.mac.is_some() {
            f |= VIRTIO_NET_F_MAC;
        }
        if self.pairs.len() > 1 {
            f |= VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
        }
        f
    }

    fn activate(&mut self, features: u64) {
        let flags = tap_offloads(features);
        for pair in &self.pairs {
            if let Err(e) = pair.tap.set_offload(flags) {
                // Guest-triggered (each activation): counted, logged only at debug level.
                self.stats.error();
                tracing::debug!(error = %e, flags, "TUNSETOFFLOAD");
            }
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (le16, not offered), max_virtqueue_pairs (le16).
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        config[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn take_retry(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn update(&mut self, update: &super::DeviceUpdate) -> Result<bool, String> {
        let super::DeviceUpdate::Net { rx, tx } = update else {
            return Err("not a network interface update".into());
        };
        if let Some(rx) = rx {
            self.rx_limiter = RateLimiter::new(Some(rx), Instant::now());
        }
        if let Some(tx) = tx {
            self.tx_limiter = RateLimiter::new(Some(tx), Instant::now());
        }
        Ok(false)
    }

    fn process_queue(&mut self, mem: &GuestMemoryMmap, index: usize, queue: &mut Queue) -> bool {
        let pair = index / 2;
        if pair < self.pairs.len() {
            if index % 2 == RX {
                self.receive(mem, pair, queue)
            } else {
                self.transmit(mem, pair, queue)
            }
        } else if self.pairs.len() > 1 && index == self.pairs.len() * 2 {
            self.control(mem, queue)
        } else {
            false
        }
    }
}

/// Polls the tap and delivers frames into the receive queue whenever some are queued.
pub fn spawn_rx_poller(
    id: &str,
    tap_fd: std::os::fd::RawFd,
    rx_queue: u32,
    transport: Arc<Mutex<MmioTransport>>,
    workers: &mut crate::devices::workers::Workers,
) -> std::io::Result<()> {
    use crate::devices::workers::Wake;
    // The tap fd lives as long as the transport, which this worker keeps alive.
    workers.spawn(format!("virtio-{id}-rx{}", rx_queue / 2), move |stop| {
        loop {
            match stop.wait(Some(tap_fd), Some(std::time::Duration::from_millis(100))) {
                Wake::Stop => return,
                Wake::Timeout => continue,
                Wake::Ready => {}
            }
            transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .notify(rx_queue);
            // If the guest had no buffers, the frame stays queued on the tap: back off a
            // little instead of spinning until the guest posts some.
            if stop.wait(None, Some(std::time::Duration::from_micros(200))) == Wake::Stop {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::GuestAddress;

    const MEM: usize = 64 * 1024;

    /// A device whose "tap" is one end of a datagram socket pair; the other end is returned.
    fn net() -> (Net, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(a));
        (Net::new(Tap::from_file(file), None), b)
    }

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        q
    }

    #[test]
    fn frames_pass_between_guest_buffers_and_the_tap() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let (mut dev, peer) = net();
        // TX: one 12+60 byte buffer.
        let frame: Vec<u8> = (0..72u8).collect();
        mem.write_slice(&frame, GuestAddress(0x5000)).unwrap();
        mem.write_obj(0x5000u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(72u32, GuestAddress(0x1008)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x1000 + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        let mut tx = queue(8, 0x1000, 0x2000, 0x3000);
        assert!(dev.process_queue(&mem, TX, &mut tx));
        let mut got = [0u8; 128];
        assert_eq!(peer.recv(&mut got).unwrap(), 72);
        assert_eq!(&got[..72], &frame[..]);

        // RX: nothing queued gives the buffer back; a queued frame fills it.
        mem.write_obj(0x6000u64, GuestAddress(0x8000)).unwrap();
        mem.write_obj(2048u32, GuestAddress(0x8008)).unwrap();
        mem.write_obj(2u16, GuestAddress(0x8000 + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x9004)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x9002)).unwrap();
        let mut rx = queue(8, 0x8000, 0x9000, 0xa000);
        assert!(!dev.process_queue(&mem, RX, &mut rx));
        peer.send(&frame).unwrap();
        assert!(dev.process_queue(&mem, RX, &mut rx));
        let len: u32 = mem.read_obj(GuestAddress(0xa000 + 8)).unwrap();
        assert_eq!(len, 72);
        let mut delivered = [0u8; 72];
        mem.read_slice(&mut delivered, GuestAddress(0x6000))
            .unwrap();
        assert_eq!(delivered[10], 1, "num_buffers");
        assert_eq!(&delivered[12..], &frame[12..]);
    }

    #[test]
    fn the_tx_rate_limiter_holds_frames_back_and_asks_for_a_retry() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let (dev, peer) = net();
        let one_per_second = crate::config::RateLimiter {
            bandwidth: None,
            ops: Some(crate::config::TokenBucket {
                size: 1,
                one_time_burst: None,
                refill_time: 1000,
            }),
        };
        let mut dev = dev.with_rate_limiters(None, Some(&one_per_second));
        for i in 0..2u64 {
            let at = 0x1000 + i * 16;
            mem.write_obj(0x5000u64, GuestAddress(at)).unwrap();
            mem.write_obj(72u32, GuestAddress(at + 8)).unwrap();
            mem.write_obj(i as u16, GuestAddress(0x2004 + i * 2))
                .unwrap();
        }
        mem.write_obj(2u16, GuestAddress(0x2002)).unwrap();
        let mut tx = queue(8, 0x1000, 0x2000, 0x3000);
        assert!(dev.process_queue(&mem, TX, &mut tx));
        let mut buf = [0u8; 128];
        assert_eq!(peer.recv(&mut buf).unwrap(), 72, "the first frame goes out");
        assert!(peer.recv(&mut buf).is_err(), "the second is held back");
        let wait = dev.take_retry().expect("a retry is asked for");
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert_eq!(tx.next_used(), 1, "only one frame completed");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary rings and descriptors on both queues: no panic, no hang, and never more
        /// completions than the guest offered.
        #[test]
        fn arbitrary_guest_memory_is_handled_safely(
            bytes in proptest::collection::vec(any::<u8>(), 0x4000..0x4001),
            size_log2 in 0u32..9,
            desc in 0u64..(MEM as u64),
            avail in 0u64..(MEM as u64),
            used in 0u64..(MEM as u64),
            frames in 0usize..3,
        ) {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
            for chunk in 0..(MEM / bytes.len()) {
                mem.write_slice(&bytes, GuestAddress((chunk * bytes.len()) as u64)).unwrap();
            }
            // Two queue pairs, so the control queue (index 4) is exercised too.
            let (a, peer) = net();
            let (b, _peer_b) = net();
            let taps = [a, b].map(|n| n.pairs.into_iter().next().unwrap().tap).into();
            let mut dev = Net::multi_queue(taps, None);
            for _ in 0..frames {
                peer.send(&bytes[..200]).unwrap();
            }
            let size = 1u16 << size_log2;
            for index in 0..5 {
                let mut q = queue(size, desc & !15, avail & !1, used & !3);
                if q.is_valid(&mem) {
                    let avail_idx: u16 = mem.read_obj(GuestAddress((avail & !1) + 2)).unwrap();
                    dev.process_queue(&mem, index, &mut q);
                    prop_assert!(q.next_used() <= avail_idx && q.next_used() <= size);
                }
            }
        }
    }

    #[test]
    fn acknowledged_features_map_to_tap_offloads() {
        use crate::devices::virtio::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(
                VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6
            ),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4), 0, "tso needs csum");
        assert_eq!(tap_offloads(VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_CSUM), 0);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("06:00:ac:10:00:02"),
            Some([6, 0, 0xac, 0x10, 0, 2])
        );
        assert_eq!(parse_mac("06:00:ac:10:00"), None);
        assert_eq!(parse_mac("06:00:ac:10:00:02:03"), None);
        assert_eq!(parse_mac("zz:00:ac:10:00:02"), None);
    }
}
