//! x86-64 machine layout and boot-time CPU and memory set-up.
//!
//! - [`layout`]: where everything lives in guest-physical memory.
//! - [`regs`]: long-mode registers, GDT, identity page tables, FPU, MSRs, LAPIC LINTs.
//! - [`cpuid`]: the CPUID the guest sees, filtered from `KVM_GET_SUPPORTED_CPUID`.
//! - [`mptable`]: the Intel MP table that tells the guest its CPUs and interrupt routing.
//! - [`boot`]: loading the kernel (ELF vmlinux or bzImage), initrd, command line, zero page.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

use vm_memory::GuestAddress;

/// The guest RAM ranges for `mem_size` bytes of memory: everything below the MMIO gap
/// first, the rest from 4 GiB up.
pub fn memory_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let gap = layout::MMIO_GAP_START;
    if mem_size <= gap {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), gap),
            (GuestAddress(layout::HIGH_RAM_START), mem_size - gap),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_and_large_memory_skips_the_gap() {
        assert_eq!(memory_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = memory_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), layout::MMIO_GAP_START));
        assert_eq!(r[1].0, GuestAddress(1 << 32));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }
}
