//! Guest-physical memory layout (the same map Linux's 64-bit boot protocol expects).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)             0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info, module list (0x6040), memory map (0x6080)
//! 0x0000_7000  zero page (boot_params)     0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (4 GiB identity map)
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  MP table (start of the EBDA; RAM below it, reserved above up to 1 MiB)
//! 0x0010_0000  kernel (ELF p_paddr or bzImage protected-mode code); initrd at the top of low RAM
//! 0xd000_0000  MMIO gap: boot-time device, then virtio-mmio devices 4 KiB apart
//! 0xfec0_0000  I/O APIC, 0xfee0_0000 local APICs
//! 0x1_0000_0000  RAM above the gap, when there is more than 3.25 GiB
//! ```

/// The GDT.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// PVH boot: `struct hvm_start_info`, whose address the kernel gets in EBX.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH boot: the module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH boot: the memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// The zero page (`struct boot_params`) whose address the kernel gets in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: where kernels load.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap (768 MiB below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// RAM beyond the gap starts here.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// The boot-time device: a guest write of [`BOOT_TIME_MAGIC`] at this address records the time
/// since VM start.
pub const BOOT_TIME_ADDR: u64 = MMIO_GAP_START;
/// The byte a guest writes to the boot-time device when it has booted.
pub const BOOT_TIME_MAGIC: u8 = 123;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI given to virtio-mmio devices (the ISA IRQs below are the legacy devices').
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI the I/O APIC routes.
pub const IRQ_MAX: u32 = 23;
/// I/O APIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Address KVM uses for its TSS pages (three pages, inside the gap).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// COM1's I/O port base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const COM1_IRQ: u32 = 4;
/// The i8042 controller's data port (its command/status port is 0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042's keyboard IRQ.
pub const I8042_IRQ: u32 = 1;
/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;
