//! The Intel MultiProcessor Specification 1.4 table: a floating pointer at the start of the
//! EBDA and a configuration table after it listing one processor entry per vCPU, an ISA bus,
//! the I/O APIC, one interrupt assignment per ISA/virtio IRQ and the two local interrupts.
//!
//! Built as plain bytes so the layout is explicit and testable without guest memory.

use super::layout;

/// Errors from building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the VMM supports.
    #[error("{0} vcpus is more than the mp table supports")]
    TooManyCpus(u8),
    /// Writing the table into guest memory failed.
    #[error("write mp table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Floating pointer structure size.
const FLOATING_SIZE: usize = 16;
/// Configuration table header size.
const HEADER_SIZE: usize = 44;

fn checksum_fix(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The MP table bytes for `cpus` vCPUs, to be placed at guest address `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > layout::MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU and APIC).
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&((1u32 << 0) | (1u32 << 9)).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&layout::IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=layout::IRQ_MAX as u8 {
        let kind = if irq == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_addr = base + FLOATING_SIZE as u64;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    header.push(MPC_SPEC_REV);
    header.push(0); // checksum, fixed below
    header.extend_from_slice(b"FERROSTK");
    header.extend_from_slice(b"VMM 0.1     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&layout::LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.extend_from_slice(&[0, 0]); // extended checksum, reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut floating = Vec::with_capacity(FLOATING_SIZE);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(MPC_SPEC_REV);
    floating.push(0); // checksum
    floating.extend_from_slice(&[0; 5]); // feature bytes: configuration table present
    floating[10] = checksum_fix(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &vm_memory::GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    use vm_memory::Bytes;
    let bytes = build(cpus, layout::EBDA_START)?;
    mem.write_slice(&bytes, vm_memory::GuestAddress(layout::EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero_and_pointer_points_at_table() {
        for cpus in [1u8, 2, 32] {
            let t = build(cpus, layout::EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, layout::EBDA_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            let processors = usize::from(cpus);
            assert_eq!(usize::from(count), processors + 2 + 24 + 2);
            assert!(t.len() <= 1024, "fits the first KiB of the EBDA");
        }
    }

    #[test]
    fn zero_or_too_many_cpus_are_refused() {
        assert!(build(0, 0).is_err());
        assert!(build(33, 0).is_err());
    }
}
