//! The CPUID a guest sees: what `KVM_GET_SUPPORTED_CPUID` offers, filtered per vCPU and
//! optionally narrowed by a template.
//!
//! The filter always:
//! - leaf 0x1: puts the vCPU's APIC id in EBX bits 31..24, the logical CPU count in EBX bits
//!   23..16, a 64-byte CLFLUSH line in EBX bits 15..8, sets HTT when there is more than one
//!   vCPU, and sets the hypervisor bit (ECX bit 31);
//! - leaf 0x4: reports `count` cores per package (EAX bits 31..26);
//! - leaves 0xb and 0x1f: describe a flat topology, one thread per core and `count` cores
//!   (subleaf 0 the SMT level, subleaf 1 the core level, the rest invalid), with the vCPU's
//!   x2APIC id in EDX;
//! - leaf 0xa: reports no architectural PMU (the VMM exposes none).
//!
//! Templates (`cpu_template` in `/machine-config`):
//! - `None`: the filtered host set above.
//! - `Minimal`: additionally hides what a software-assisted (nested) KVM cannot emulate
//!   reliably: CMPXCHG16B, XSAVE/OSXSAVE and everything that needs XSAVE (AVX, AVX2, AVX-512,
//!   FMA, F16C), MONITOR/MWAIT, VMX, PDCM, and PCID/INVPCID.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};
use serde::{Deserialize, Serialize};

/// A CPUID template: which features beyond the host's are hidden.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// The host-supported set, filtered per vCPU.
    #[default]
    None,
    /// A conservative set that hides XSAVE/AVX, CMPXCHG16B and friends.
    Minimal,
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF1_ECX_MINIMAL_MASK: u32 = (1 << 3)   // MONITOR
    | (1 << 5)   // VMX
    | (1 << 12)  // FMA
    | (1 << 13)  // CMPXCHG16B
    | (1 << 15)  // PDCM
    | (1 << 17)  // PCID
    | (1 << 26)  // XSAVE
    | (1 << 27)  // OSXSAVE
    | (1 << 28)  // AVX
    | (1 << 29); // F16C
const LEAF7_EBX_MINIMAL_MASK: u32 = (1 << 5)   // AVX2
    | (1 << 10)  // INVPCID
    | (1 << 16)  // AVX512F
    | (1 << 17)  // AVX512DQ
    | (1 << 21)  // AVX512IFMA
    | (1 << 28)  // AVX512CD
    | (1 << 30)  // AVX512BW
    | (1 << 31); // AVX512VL

/// Applies the per-vCPU filter and `template` to one entry.
pub fn filter_entry(entry: &mut kvm_cpuid_entry2, cpu: u8, cpu_count: u8, template: CpuTemplate) {
    let minimal = template == CpuTemplate::Minimal;
    match entry.function {
        0x1 => {
            entry.ebx = (u32::from(cpu) << 24)
                | (u32::from(cpu_count) << 16)
                | (8 << 8)
                | (entry.ebx & 0xff);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if cpu_count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
            if minimal {
                entry.ecx &= !LEAF1_ECX_MINIMAL_MASK;
            }
        }
        0x7 if entry.index == 0 && minimal => {
            entry.ebx &= !LEAF7_EBX_MINIMAL_MASK;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xa => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0x4 => {
            let cores = u32::from(cpu_count.max(1)) - 1;
            entry.eax = (entry.eax & 0x03ff_ffff) | (cores.min(63) << 26);
        }
        0xb | 0x1f => {
            // Bits of x2APIC id that select a core: enough for `cpu_count`.
            let core_bits = u32::BITS - (u32::from(cpu_count.max(1)) - 1).leading_zeros();
            let (eax, ebx, ecx) = match entry.index {
                0 => (0, 1, 1 << 8),
                1 => (core_bits, u32::from(cpu_count), (2 << 8) | 1),
                n => (0, 0, n & 0xff),
            };
            entry.eax = eax;
            entry.ebx = ebx;
            entry.ecx = ecx;
            entry.edx = u32::from(cpu);
        }
        0xd if minimal => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

/// The CPUID for vCPU `cpu` of `cpu_count`, from the host-supported set.
pub fn for_vcpu(supported: &CpuId, cpu: u8, cpu_count: u8, template: CpuTemplate) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, cpu, cpu_count, template);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_cpu_count_and_hypervisor_bit() {
        let mut e = leaf(1, 0);
        e.ecx = 0;
        filter_entry(&mut e, 3, 4, CpuTemplate::None);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
        let mut single = leaf(1, 0);
        filter_entry(&mut single, 0, 1, CpuTemplate::None);
        assert_eq!(single.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn minimal_template_hides_xsave_and_cx16() {
        let mut e = leaf(1, 0);
        filter_entry(&mut e, 0, 1, CpuTemplate::Minimal);
        assert_eq!(e.ecx & ((1 << 26) | (1 << 13) | (1 << 28)), 0);
        let mut none = leaf(1, 0);
        filter_entry(&mut none, 0, 1, CpuTemplate::None);
        assert_ne!(none.ecx & (1 << 26), 0);
    }

    #[test]
    fn topology_leaves_describe_count_cores_and_the_x2apic_id() {
        let mut smt = leaf(0xb, 0);
        filter_entry(&mut smt, 7, 8, CpuTemplate::None);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 7));
        let mut core = leaf(0xb, 1);
        filter_entry(&mut core, 7, 8, CpuTemplate::None);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 8, 2, 7));
        let mut end = leaf(0x1f, 2);
        filter_entry(&mut end, 0, 8, CpuTemplate::None);
        assert_eq!(
            (end.ebx, end.ecx >> 8 & 0xff),
            (0, 0),
            "invalid level ends the list"
        );
        let mut one = leaf(0xb, 1);
        filter_entry(&mut one, 0, 1, CpuTemplate::None);
        assert_eq!((one.eax, one.ebx), (0, 1));
        let mut five = leaf(0xb, 1);
        filter_entry(&mut five, 0, 5, CpuTemplate::None);
        assert_eq!(five.eax, 3, "5 cores need 3 id bits");
    }

    #[test]
    fn cache_leaf_counts_the_cores() {
        let mut e = leaf(4, 0);
        filter_entry(&mut e, 0, 4, CpuTemplate::None);
        assert_eq!(e.eax >> 26, 3);
        assert_eq!(e.eax & 0x03ff_ffff, 0x03ff_ffff, "cache fields kept");
    }
}
