//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern" register layout).
//!
//! - [`mmio`]: the transport: registers, feature negotiation, queue set-up, interrupt status;
//!   queue notifications arrive through an ioeventfd and are served on the device's own
//!   thread, interrupts leave through an irqfd.
//! - [`block`]: virtio-blk on a local file.
//! - [`net`]: virtio-net on a tap ([`tap`]), served in userspace.
//! - [`vhost_user_block`]: virtio-blk served by a vhost-user backend in another process.

pub mod block;
pub mod mmio;
pub mod net;
pub mod tap;
pub mod vhost_user_block;

use std::sync::{Arc, Mutex};

use linux_loader::cmdline::Cmdline;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout;
use crate::devices::bus::Bus;
use crate::machine::{DriveSpec, MachineError, NetSpec};
use crate::vstate::Vm;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device id of a block device.
pub const TYPE_BLOCK: u32 = 2;

/// A change to a running device.
#[derive(Debug, Clone)]
pub enum DeviceUpdate {
    /// A drive: a new backing file and/or rate limiter.
    Drive {
        /// New backing file.
        path: Option<std::path::PathBuf>,
        /// New rate limiter.
        rate_limiter: Option<crate::config::RateLimiter>,
    },
    /// An interface: new rate limiters.
    Net {
        /// New receive limiter.
        rx: Option<crate::config::RateLimiter>,
        /// New transmit limiter.
        tx: Option<crate::config::RateLimiter>,
    },
}

/// The running virtio devices by id, for runtime updates.
pub type Devices = Vec<(String, Arc<Mutex<mmio::MmioTransport>>)>;

/// What a device behind the transport implements.
pub trait VirtioDevice: Send {
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// The features offered.
    fn features(&self) -> u64;
    /// Max size of each queue (the length is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Serves queue `index`; returns true when used buffers were added (interrupt needed).
    fn process_queue(&mut self, mem: &GuestMemoryMmap, index: usize, queue: &mut Queue) -> bool;
    /// Applies a runtime update (`PATCH /drives`, `PATCH /network-interfaces`); true when the
    /// device's configuration space changed.
    fn update(&mut self, _update: &DeviceUpdate) -> Result<bool, String> {
        Err("this device cannot be updated".into())
    }
    /// The driver set DRIVER_OK having acknowledged `features` (a subset of [`features`]).
    ///
    /// [`features`]: VirtioDevice::features
    fn activate(&mut self, _features: u64) {}
    /// Like [`activate`](VirtioDevice::activate), with the queues as the driver set them up
    /// (for devices whose queues are served elsewhere).
    fn activate_queues(&mut self, _features: u64, _mem: &GuestMemoryMmap, _queues: &[Queue]) {}
    /// The driver reset the device (wrote 0 to the status register): forget the queues; a
    /// later DRIVER_OK activates the device again.
    fn reset(&mut self) {}
    /// True for devices whose queues a backend serves directly: they take the kick and call
    /// eventfds instead of the VMM serving notifications.
    fn uses_backend_eventfds(&self) -> bool {
        false
    }
    /// Hands such a device its kick (the `QueueNotify` ioeventfd) and call (the irqfd).
    fn backend_eventfds(
        &mut self,
        _kick: vmm_sys_util::eventfd::EventFd,
        _call: vmm_sys_util::eventfd::EventFd,
    ) {
    }
    /// After `process_queue`: if a rate limiter held requests back, how long until the queue
    /// should be served again (taken: the next call returns `None` until throttled again).
    fn take_retry(&mut self) -> Option<std::time::Duration> {
        None
    }
}

/// Attaches one virtio-blk device per drive, then one virtio-net device per interface, on
/// the MMIO bus, each with its own IRQ and threads, and announces them on the kernel command
/// line (`virtio_mmio.device=`).
pub fn attach_devices(
    vm: &Vm,
    mmio_bus: &mut Bus,
    cmdline: &mut Cmdline,
    drives: &[DriveSpec],
    nets: &[NetSpec],
    workers: &mut crate::devices::workers::Workers,
) -> Result<Devices, MachineError> {
    let mut slot = 0u32;
    let mut devices = Devices::new();
    let mut place = |id: &str,
                     device: Box<dyn VirtioDevice>,
                     rx_fds: Vec<std::os::fd::RawFd>|
     -> Result<(), MachineError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Virtio {
            id: id.to_string(),
            source,
        };
        let irq = layout::VIRTIO_IRQ_BASE + slot;
        let base = layout::VIRTIO_MMIO_START + u64::from(slot) * layout::VIRTIO_MMIO_SIZE;
        if irq > layout::IRQ_MAX {
            return Err(err("too many virtio devices".into()));
        }
        slot += 1;
        let mut device = device;
        let irq_line = crate::machine::irq_line(vm, irq)?;
        let backend = device.uses_backend_eventfds();
        if backend {
            let kick = mmio::register_kick(vm, base).map_err(|e| err(e.into()))?;
            let call = irq_line.eventfd().try_clone().map_err(|e| err(e.into()))?;
            device.backend_eventfds(kick, call);
        }
        let transport = mmio::MmioTransport::new(device, vm.memory().clone(), irq_line);
        let transport = Arc::new(Mutex::new(transport));
        if !backend {
            mmio::spawn_notifier(vm, base, id, transport.clone(), workers)
                .map_err(|e| err(e.into()))?;
            // Only devices served here are rate limited (a backend limits its own queues).
            mmio::spawn_retry_timer(id, transport.clone(), workers).map_err(|e| err(e.into()))?;
        }
        for (pair, fd) in rx_fds.into_iter().enumerate() {
            net::spawn_rx_poller(id, fd, pair as u32 * 2, transport.clone(), workers)
                .map_err(|e| err(e.into()))?;
        }
        mmio_bus.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        devices.push((id.to_string(), transport));
        cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| err(e.to_string().into()))
    };
    for drive in drives {
        let virtio_err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Virtio {
            id: drive.id.clone(),
            source,
        };
        let device: Box<dyn VirtioDevice> = match &drive.socket {
            Some(socket) => Box::new(
                vhost_user_block::VhostUserBlock::connect(socket)
                    .map_err(|e| virtio_err(e.into()))?,
            ),
            None => {
                let device = block::Block::open(&drive.path, drive.read_only)
                    .map_err(|e| virtio_err(e.into()))?
                    .with_rate_limiter(drive.rate_limiter.as_ref())
                    .with_stats(crate::metrics::METRICS.drive(&drive.id));
                Box::new(if drive.io_uring {
                    device.with_io_uring().map_err(|e| virtio_err(e.into()))?
                } else {
                    device
                })
            }
        };
        place(&drive.id, device, Vec::new())?;
    }
    for n in nets {
        let taps =
            tap::Tap::open_queues(&n.tap, n.queue_pairs).map_err(|e| MachineError::Virtio {
                id: n.id.clone(),
                source: e.into(),
            })?;
        let device = net::Net::multi_queue(taps, n.mac)
            .with_rate_limiters(n.rx_rate_limiter.as_ref(), n.tx_rate_limiter.as_ref())
            .with_stats(crate::metrics::METRICS.net(&n.id));
        let fds = device.tap_fds();
        place(&n.id, Box::new(device), fds)?;
    }
    Ok(devices)
}
