//! Devices and the buses that route vCPU exits to them.
//!
//! - [`bus`]: an address-range map from port-I/O or MMIO addresses to devices.
//! - [`legacy`]: the 8250 UART (vm-superio), the i8042 controller (reset and
//!   Ctrl+Alt+Del) and the boot-time device.
//! - [`rate_limiter`]: token buckets for drives and interfaces.
//! - [`virtio`]: the virtio-mmio transport, virtio-blk, vhost-user-blk and virtio-net.
//! - [`workers`]: a VM's device threads, stopped and joined with the VM.

pub mod bus;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;
pub mod workers;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an eventfd registered with KVM as an irqfd for one GSI.
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
}

impl IrqLine {
    /// Creates the eventfd; register it with `register_irqfd` before use.
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqLine {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd behind the line.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Raises the interrupt (edge).
    pub fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
