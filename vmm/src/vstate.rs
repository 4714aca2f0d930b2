//! VM and vCPU state: the KVM file descriptors, guest memory, and the run loop.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors from setting up or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VstateError {
    /// Opening `/dev/kvm` failed.
    #[error("open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("create vm")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Allocating guest memory failed.
    #[error("allocate guest memory")]
    GuestMemory(#[source] vm_memory::mmap::FromRangesError),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("register guest memory region {slot} with kvm")]
    SetMemoryRegion {
        /// The slot that failed.
        slot: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_CREATE_VCPU` failed.
    #[error("create vcpu {index}")]
    CreateVcpu {
        /// The vCPU index.
        index: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Reading or writing vCPU registers failed.
    #[error("access vcpu registers")]
    Registers(#[source] kvm_ioctls::Error),
    /// `KVM_RUN` failed.
    #[error("run vcpu")]
    Run(#[source] kvm_ioctls::Error),
}

/// A KVM virtual machine with its guest memory.
pub struct Vm {
    /// Kept open for the VM's lifetime: vCPU creation queries it.
    _kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates a VM whose guest memory is one region of `mem_size` bytes at guest address 0.
    pub fn new(mem_size: usize) -> Result<Self, VstateError> {
        let kvm = Kvm::new().map_err(VstateError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VstateError::CreateVm)?;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)])
            .map_err(VstateError::GuestMemory)?;
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let mem_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the mapping described by `mem_region` belongs to `memory`, which this
            // struct owns and keeps alive (and never unmaps) for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(|source| VstateError::SetMemoryRegion { slot, source })?;
        }
        Ok(Vm {
            _kvm: kvm,
            fd,
            memory,
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Creates vCPU `index`, left in its reset state (real mode at `f000:fff0`).
    pub fn create_vcpu(&self, index: u64) -> Result<Vcpu, VstateError> {
        let fd = self
            .fd
            .create_vcpu(index)
            .map_err(|source| VstateError::CreateVcpu { index, source })?;
        Ok(Vcpu { fd })
    }
}

/// What a vCPU exit asks the VMM to do, with the data copied out of the run area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest wrote `data` to I/O port `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// The guest read `len` bytes from I/O port `port` (answered with zeroes for now).
    IoIn {
        /// The port.
        port: u16,
        /// The access width.
        len: usize,
    },
    /// The guest wrote `data` to guest-physical `addr` outside RAM.
    MmioWrite {
        /// The address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// The guest read `len` bytes of MMIO at `addr` (answered with zeroes for now).
    MmioRead {
        /// The address.
        addr: u64,
        /// The access width.
        len: usize,
    },
    /// The guest executed `HLT` (only seen without the in-kernel irqchip).
    Hlt,
    /// The guest asked for shutdown (triple fault or reset).
    Shutdown,
    /// Any other exit, by its KVM name.
    Other(String),
}

/// One virtual CPU.
pub struct Vcpu {
    fd: VcpuFd,
}

impl Vcpu {
    /// Points the vCPU at real-mode code: `CS = 0`, `IP = entry`, flags with only bit 1.
    pub fn set_real_mode_entry(&self, entry: u16) -> Result<(), VstateError> {
        let mut sregs = self.fd.get_sregs().map_err(VstateError::Registers)?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.fd.set_sregs(&sregs).map_err(VstateError::Registers)?;
        let mut regs = self.fd.get_regs().map_err(VstateError::Registers)?;
        regs.rip = u64::from(entry);
        regs.rflags = 0x2;
        self.fd.set_regs(&regs).map_err(VstateError::Registers)?;
        Ok(())
    }

    /// Runs the vCPU until its next exit to userspace.
    pub fn run(&mut self) -> Result<Exit, VstateError> {
        let exit = self.fd.run().map_err(VstateError::Run)?;
        Ok(match exit {
            VcpuExit::IoOut(port, data) => Exit::IoOut {
                port,
                data: data.to_vec(),
            },
            VcpuExit::IoIn(port, data) => {
                let len = data.len();
                data.fill(0);
                Exit::IoIn { port, len }
            }
            VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite {
                addr,
                data: data.to_vec(),
            },
            VcpuExit::MmioRead(addr, data) => {
                let len = data.len();
                data.fill(0);
                Exit::MmioRead { addr, len }
            }
            VcpuExit::Hlt => Exit::Hlt,
            VcpuExit::Shutdown => Exit::Shutdown,
            other => Exit::Other(format!("{other:?}")),
        })
    }
}
