//! Probe for what a Linux kernel needs early (SLUB's per-CPU freelists use it): prints
//! `cmpxchg16b`, executes `lock cmpxchg16b` on an aligned pair it owns, checks the swap took
//! place and prints `cmpxchg16b ok`, then resets. A KVM that cannot emulate the instruction
//! stops the guest after the first line with an internal error.
#![no_std]
#![no_main]

mod kit;

#[repr(C, align(16))]
struct Pair([u64; 2]);

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    let mut pair = Pair([1, 2]);
    kit::print("cmpxchg16b\n");
    let (lo, hi): (u64, u64);
    // SAFETY: `pair` is a 16-byte aligned local; rbx is saved and restored around the
    // instruction because the compiler may use it.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b [{p}]",
            "xchg {new_lo}, rbx",
            p = in(reg) pair.0.as_mut_ptr(),
            new_lo = inout(reg) 3u64 => _,
            in("rcx") 4u64,
            inout("rax") 1u64 => lo,
            inout("rdx") 2u64 => hi,
        );
    }
    let swapped = (lo, hi) == (1, 2) && {
        // SAFETY: reading our own local after the asm block wrote it.
        let v = unsafe { core::ptr::read_volatile(&pair.0) };
        v == [3, 4]
    };
    kit::print(if swapped { "cmpxchg16b ok\n" } else { "cmpxchg16b wrong\n" });
    kit::reset()
}
