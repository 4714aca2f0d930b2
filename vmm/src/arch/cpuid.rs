//! The CPUID a guest sees: what `KVM_GET_SUPPORTED_CPUID` offers, filtered per vCPU and
//! optionally narrowed by a template.
//!
//! The filter always:
//! - leaf 0x1: puts the vCPU's APIC id in EBX bits 31..24, the logical CPU count in EBX bits
//!   23..16, a 64-byte CLFLUSH line in EBX bits 15..8, sets HTT when there is more than one
//!   vCPU, and sets the hypervisor bit (ECX bit 31);
//! - leaves 0xb and 0x1f: put the vCPU's x2APIC id in EDX;
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
        0xb | 0x1f => entry.edx = u32::from(cpu),
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
    fn topology_leaves_get_the_x2apic_id() {
        let mut e = leaf(0xb, 1);
        filter_entry(&mut e, 7, 8, CpuTemplate::None);
        assert_eq!(e.edx, 7);
    }
}
