//! Loading a kernel the way Linux's 64-bit boot protocol expects: the image (ELF vmlinux or
//! bzImage) in high memory, the initrd at the top of low RAM, the command line, and the zero
//! page (`struct boot_params`) with the e820 map.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout;

/// Errors from loading the kernel and writing the boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file could not be opened or read.
    #[error("read {path}")]
    ReadFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither an ELF vmlinux nor a bzImage that fits in guest memory.
    #[error("load kernel image: not a loadable elf ({elf}) nor bzimage")]
    LoadKernel {
        /// Why the ELF loader refused it.
        elf: String,
        /// Why the bzImage loader refused it.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("write kernel command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// The initrd does not fit below the kernel's limit in low RAM.
    #[error("initrd of {size} bytes does not fit in guest memory")]
    InitrdTooBig {
        /// Its size.
        size: u64,
    },
    /// Writing the initrd into guest memory failed.
    #[error("write initrd into guest memory")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
    /// Writing the zero page failed.
    #[error("write zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

/// Which image format was loaded and where its 64-bit entry point is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte past the kernel.
    pub end: u64,
    /// True for a bzImage, false for an ELF vmlinux.
    pub bzimage: bool,
    /// The PVH entry point the ELF advertises in its `XEN_ELFNOTE_PHYS32_ENTRY` note, if any.
    pub pvh_entry: Option<GuestAddress>,
    /// The setup header of a bzImage, to carry into the zero page.
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads an ELF vmlinux (at its physical addresses) or a bzImage (at 1 MiB).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::ReadFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let himem = GuestAddress(layout::HIMEM_START);
    match Elf::load(mem, None, &mut file, Some(himem)) {
        Ok(r) => Ok(LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            bzimage: false,
            pvh_entry: match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a),
                _ => None,
            },
            setup_header: None,
        }),
        Err(elf) => {
            let elf = elf.to_string();
            let r = BzImage::load(mem, None, &mut file, Some(himem))
                .map_err(|source| BootError::LoadKernel { elf, source })?;
            Ok(LoadedKernel {
                // The 64-bit entry of a bzImage is 0x200 past its protected-mode start.
                entry: r.kernel_load.unchecked_add(0x200),
                end: r.kernel_end,
                bzimage: true,
                pvh_entry: None,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Where an initrd was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    /// Its guest address.
    pub addr: GuestAddress,
    /// Its size.
    pub size: u64,
}

/// Loads the initrd page-aligned at the top of low RAM (below the MMIO gap).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path) -> Result<Initrd, BootError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| BootError::ReadFile {
            path: path.display().to_string(),
            source,
        })?;
    let size = data.len() as u64;
    let low_end = mem.last_addr().raw_value().min(layout::MMIO_GAP_START - 1) + 1;
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= layout::HIMEM_START)
        .ok_or(BootError::InitrdTooBig { size })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(BootError::WriteInitrd)?;
    Ok(Initrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds a command line from `args`, checking it fits the boot protocol's limit.
pub fn cmdline(args: &str) -> Result<Cmdline, BootError> {
    Cmdline::try_from(args, layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The e820 map for guest memory: RAM below the EBDA, reserved EBDA-to-1 MiB, RAM from 1 MiB.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            layout::HIMEM_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for region in mem.iter() {
        use vm_memory::GuestMemoryRegion;
        let start = region.start_addr().raw_value().max(layout::HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Which boot protocol the VMM uses to enter the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux's 64-bit boot protocol: long mode, zero page in RSI (ELF vmlinux or bzImage).
    #[default]
    Linux64,
    /// PVH: 32-bit protected mode at the ELF's `XEN_ELFNOTE_PHYS32_ENTRY`, `hvm_start_info`
    /// in EBX. Only for ELF kernels carrying the note.
    Pvh,
}

/// Writes the command line and PVH's `hvm_start_info`, memory map and module list.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    use linux_loader::configurator::pvh::PvhBootConfigurator;
    use linux_loader::loader::elf::start_info::{
        hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
    };
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr.raw_value(),
            size: i.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = layout::PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::ZeroPage)
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *kind;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(BootError::ZeroPage)
}
