//! Virtio devices over the virtio-mmio transport.

use linux_loader::cmdline::Cmdline;

use crate::devices::bus::Bus;
use crate::machine::{DriveSpec, MachineError};
use crate::vstate::Vm;

/// Attaches one virtio-blk device per drive on the MMIO bus and announces each on the
/// kernel command line (`virtio_mmio.device=`).
pub fn attach_drives(
    _vm: &Vm,
    _mmio: &mut Bus,
    _cmdline: &mut Cmdline,
    drives: &[DriveSpec],
) -> Result<(), MachineError> {
    match drives.first() {
        None => Ok(()),
        Some(d) => Err(MachineError::Virtio {
            id: d.id.clone(),
            source: "virtio-blk is not implemented yet".into(),
        }),
    }
}
