//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern" register layout).
//!
//! - [`mmio`]: the transport: registers, feature negotiation, queue set-up, interrupt status;
//!   queue notifications arrive through an ioeventfd and are served on the device's own
//!   thread, interrupts leave through an irqfd.
//! - [`block`]: virtio-blk on a local file.

pub mod block;
pub mod mmio;

use std::sync::{Arc, Mutex};

use linux_loader::cmdline::Cmdline;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout;
use crate::devices::bus::Bus;
use crate::machine::{DriveSpec, MachineError};
use crate::vstate::Vm;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device id of a block device.
pub const TYPE_BLOCK: u32 = 2;

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
}

/// Attaches one virtio-blk device per drive on the MMIO bus, each with its own IRQ and
/// worker thread, and announces them on the kernel command line (`virtio_mmio.device=`).
pub fn attach_drives(
    vm: &Vm,
    mmio_bus: &mut Bus,
    cmdline: &mut Cmdline,
    drives: &[DriveSpec],
) -> Result<(), MachineError> {
    for (i, drive) in drives.iter().enumerate() {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Virtio {
            id: drive.id.clone(),
            source,
        };
        let irq = layout::VIRTIO_IRQ_BASE + i as u32;
        let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
        if irq > layout::IRQ_MAX {
            return Err(err("too many virtio devices".into()));
        }
        let device = block::Block::open(&drive.path, drive.read_only).map_err(|e| err(e.into()))?;
        let transport = mmio::MmioTransport::new(
            Box::new(device),
            vm.memory().clone(),
            crate::machine::irq_line(vm, irq)?,
        );
        let transport = Arc::new(Mutex::new(transport));
        mmio::spawn_notifier(vm, base, &drive.id, transport.clone()).map_err(|e| err(e.into()))?;
        mmio_bus.insert(base, layout::VIRTIO_MMIO_SIZE, transport)?;
        cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| err(e.to_string().into()))?;
    }
    Ok(())
}
