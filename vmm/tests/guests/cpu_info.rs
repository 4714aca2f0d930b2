//! Reports what the VMM set up for the boot vCPU: CPUID leaf 1 (APIC id, logical count,
//! hypervisor, XSAVE and CMPXCHG16B bits), the MISC_ENABLE MSR, and the control registers.
#![no_std]
#![no_main]

mod kit;

use core::arch::asm;

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid has no memory effects; rbx is saved around it (LLVM reserves it).
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") 0 => c,
            out("edx") d,
        );
    }
    (a, b, c, d)
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR the VMM sets, in ring 0.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    let (_, ebx, ecx, _) = cpuid(1);
    kit::report_dec("apic_id", u64::from(ebx >> 24));
    kit::report_dec("logical_cpus", u64::from((ebx >> 16) & 0xff));
    kit::report_dec("hypervisor", u64::from(ecx >> 31));
    kit::report_dec("xsave", u64::from((ecx >> 26) & 1));
    kit::report_dec("cx16", u64::from((ecx >> 13) & 1));
    kit::report_dec("fast_strings", rdmsr(0x1a0) & 1);
    let efer = rdmsr(0xc000_0080);
    kit::report_dec("long_mode_active", (efer >> 10) & 1);
    kit::reset()
}
