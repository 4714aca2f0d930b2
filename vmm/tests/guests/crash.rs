//! Prints `crashing`, then executes `ud2` with no usable IDT: a triple fault.
#![no_std]
#![no_main]

mod kit;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::print("crashing\n");
    // SAFETY: deliberately faulting our own guest.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
