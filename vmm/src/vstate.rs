//! VM and vCPU state: the KVM file descriptors, memfd-backed guest memory, the in-kernel
//! irqchip and PIT, and the vCPU run loop turned into typed exits.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch;

/// Errors from setting up or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VstateError {
    /// Opening `/dev/kvm` failed.
    #[error("open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("create vm")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Creating or sizing the memfd behind guest memory failed.
    #[error("create guest memory memfd")]
    Memfd(#[source] std::io::Error),
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
    /// Setting up the in-kernel irqchip, PIT or TSS failed.
    #[error("set up {what}")]
    Irqchip {
        /// Which part.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("get supported cpuid")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
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
    /// `KVM_SET_CPUID2` failed.
    #[error("set vcpu cpuid")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Setting the boot registers failed.
    #[error("set vcpu boot state")]
    BootRegs(#[source] arch::regs::RegsError),
    /// `KVM_RUN` failed.
    #[error("run vcpu")]
    Run(#[source] kvm_ioctls::Error),
}

/// A KVM virtual machine with its guest memory.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
    memfd: File,
}

fn memfd(size: u64) -> Result<File, VstateError> {
    // SAFETY: the name is a NUL-terminated literal; the call has no other memory effects.
    let raw = unsafe { libc::memfd_create(c"ferrostack-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(VstateError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a freshly created fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(raw) };
    file.set_len(size).map_err(VstateError::Memfd)?;
    Ok(file)
}

impl Vm {
    /// Creates a VM with `mem_size` bytes of guest RAM laid out per [`arch::memory_ranges`],
    /// backed by one memfd (so vhost-user backends can map it).
    pub fn new(mem_size: usize) -> Result<Self, VstateError> {
        let kvm = Kvm::new().map_err(VstateError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VstateError::CreateVm)?;
        let memfd = memfd(mem_size as u64)?;
        let mut offset = 0;
        let mut ranges = Vec::new();
        for (addr, len) in arch::memory_ranges(mem_size as u64) {
            let file = memfd.try_clone().map_err(VstateError::Memfd)?;
            ranges.push((addr, len as usize, Some(FileOffset::new(file, offset))));
            offset += len;
        }
        let memory =
            GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(VstateError::GuestMemory)?;
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
            kvm,
            fd,
            memory,
            memfd,
        })
    }

    /// Creates the in-kernel irqchip (PIC, I/O APIC, local APICs) and PIT.
    pub fn setup_irqchip(&self) -> Result<(), VstateError> {
        let err = |what| move |source| VstateError::Irqchip { what, source };
        self.fd
            .set_tss_address(arch::layout::KVM_TSS_ADDR)
            .map_err(err("tss address"))?;
        self.fd.create_irq_chip().map_err(err("irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(err("pit"))
    }

    /// The CPUID entries KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VstateError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VstateError::SupportedCpuid)
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The memfd behind guest memory (regions at consecutive offsets, in address order).
    pub fn memfd(&self) -> &File {
        &self.memfd
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
    /// The guest read `len` bytes from I/O port `port` (answered with zeroes).
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
    /// The guest read `len` bytes of MMIO at `addr` (answered with zeroes).
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

/// How a vCPU boots: which of how many, with which CPUID template, entering where.
#[derive(Debug, Clone, Copy)]
pub struct VcpuBoot {
    /// This vCPU's index (and APIC id).
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// The CPUID template.
    pub template: arch::cpuid::CpuTemplate,
    /// The entry point: 64-bit entry, or the PVH entry when `pvh` is set.
    pub entry: u64,
    /// Enter through PVH (32-bit protected mode) instead of the 64-bit Linux boot protocol.
    pub pvh: bool,
}

impl Vcpu {
    /// The KVM vCPU fd (for the run loop).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Sets CPUID, MSRs, FPU, LAPIC LINTs and, on the boot vCPU, long-mode registers at the
    /// kernel entry. Application processors keep their reset state: they wait for INIT/SIPI
    /// from the boot vCPU, as on hardware.
    pub fn configure(
        &self,
        supported: &CpuId,
        mem: &GuestMemoryMmap,
        boot: VcpuBoot,
    ) -> Result<(), VstateError> {
        let cpuid = arch::cpuid::for_vcpu(supported, boot.index, boot.count, boot.template);
        self.fd.set_cpuid2(&cpuid).map_err(VstateError::SetCpuid)?;
        arch::regs::setup_msrs(&self.fd).map_err(VstateError::BootRegs)?;
        arch::regs::setup_lints(&self.fd).map_err(VstateError::BootRegs)?;
        if boot.index == 0 && boot.pvh {
            arch::regs::setup_fpu(&self.fd).map_err(VstateError::BootRegs)?;
            arch::regs::setup_pvh(&self.fd, mem, boot.entry).map_err(VstateError::BootRegs)?;
        } else if boot.index == 0 {
            arch::regs::setup_fpu(&self.fd).map_err(VstateError::BootRegs)?;
            arch::regs::setup_sregs(&self.fd).map_err(VstateError::BootRegs)?;
            arch::regs::setup_regs(&self.fd, boot.entry).map_err(VstateError::BootRegs)?;
        }
        Ok(())
    }

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
