//! The test-guest kit: entry point, serial output, boot-time write, reset, and the zero page.
//!
//! `_start` is entered in long mode as Linux's 64-bit boot protocol defines it (paging on,
//! flat segments, RSI = zero page). It switches to the kit's own stack, enables SSE, and calls
//! the guest's `guest_main(zero_page: u64)`.
#![allow(dead_code)]

use core::arch::{asm, global_asm};

const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

#[unsafe(no_mangle)]
static mut KIT_STACK: Stack = Stack([0; STACK_SIZE]);

global_asm!(
    ".section .text._start,\"ax\"",
    ".global _start",
    "_start:",
    "lea rsp, [rip + {stack} + {size}]",
    "mov rdi, rsi",
    // CR0: clear EM, set MP; CR4: OSFXSR | OSXMMEXCPT, so SSE code runs.
    "mov rax, cr0",
    "and rax, ~4",
    "or rax, 2",
    "mov cr0, rax",
    "mov rax, cr4",
    "or rax, 0x600",
    "mov cr4, rax",
    "call guest_main",
    "2: hlt",
    "jmp 2b",
    stack = sym KIT_STACK,
    size = const STACK_SIZE,
);

/// Identity page tables for the PVH entry: PML4, PDPT and four page directories (4 GiB).
#[repr(C, align(4096))]
struct PageTables([u64; 512 * 6]);

#[unsafe(no_mangle)]
static mut KIT_PVH_PAGES: PageTables = PageTables([0; 512 * 6]);

/// The `hvm_start_info` address the PVH entry received in EBX (0 when booted otherwise).
#[unsafe(no_mangle)]
static mut KIT_PVH_INFO: u32 = 0;

/// The PVH `hvm_start_info` address, if the guest was entered through PVH.
pub fn pvh_start_info() -> Option<u64> {
    // SAFETY: written once by the PVH entry before any Rust code runs.
    let info = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(KIT_PVH_INFO)) };
    (info != 0).then_some(u64::from(info))
}

// The PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`), used by loaders that boot an ELF through PVH
// (QEMU's `-kernel`): 32-bit protected mode, paging off, EBX = hvm_start_info. It builds
// identity page tables for the first 4 GiB, enters long mode, and joins `_start` with no
// zero page (RSI = 0).
global_asm!(
    ".pushsection .note.Xen,\"a\",@note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long kit_pvh_start32",
    ".popsection",
    ".pushsection .rodata.kit_gdt,\"a\"",
    ".balign 16",
    "kit_gdt64:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "kit_gdt64_ptr:",
    ".word 23",
    ".long kit_gdt64",
    ".popsection",
    ".pushsection .text.kit_pvh,\"ax\"",
    ".code32",
    ".global kit_pvh_start32",
    "kit_pvh_start32:",
    "cld",
    "movl %ebx, {info}",
    "movl ${pages}, %edi",
    // PML4[0] -> PDPT (pages + 0x1000)
    "leal 0x1003(%edi), %eax",
    "movl %eax, (%edi)",
    // PDPT[i] -> PD i (pages + 0x2000 + i * 0x1000)
    "xorl %ecx, %ecx",
    "1:",
    "movl %ecx, %eax",
    "shll $12, %eax",
    "leal 0x2003(%edi,%eax), %eax",
    "movl %eax, 0x1000(%edi,%ecx,8)",
    "incl %ecx",
    "cmpl $4, %ecx",
    "jne 1b",
    // 2048 PD entries, 2 MiB each: entry n maps n << 21; the high dword holds n >> 11.
    "xorl %ecx, %ecx",
    "2:",
    "movl %ecx, %eax",
    "shll $21, %eax",
    "orl $0x83, %eax",
    "movl %eax, 0x2000(%edi,%ecx,8)",
    "movl %ecx, %eax",
    "shrl $11, %eax",
    "movl %eax, 0x2004(%edi,%ecx,8)",
    "incl %ecx",
    "cmpl $2048, %ecx",
    "jne 2b",
    "movl %cr4, %eax",
    "orl $0x20, %eax",
    "movl %eax, %cr4",
    "movl %edi, %cr3",
    "movl $0xc0000080, %ecx",
    "rdmsr",
    "orl $0x100, %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "orl $0x80000001, %eax",
    "movl %eax, %cr0",
    "lgdt kit_gdt64_ptr",
    "ljmp $0x08, $kit_pvh_start64",
    ".code64",
    "kit_pvh_start64:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "xorl %esi, %esi",
    "jmp _start",
    ".popsection",
    pages = sym KIT_PVH_PAGES,
    info = sym KIT_PVH_INFO,
    options(att_syntax),
);

/// COM1.
pub const COM1: u16 = 0x3f8;
/// The boot-time device.
pub const BOOT_TIME_ADDR: u64 = 0xd000_0000;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O in ring 0 of our own guest.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O in ring 0 of our own guest.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) }
    v
}

/// Writes a 32-bit value to MMIO.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: the address is device memory the VMM emulates.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Reads a 32-bit value from MMIO.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the address is device memory the VMM emulates.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Reads a value from guest-physical memory (identity-mapped).
pub fn peek<T: Copy>(addr: u64) -> T {
    // SAFETY: the first 4 GiB are identity-mapped; the caller names an address it knows.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Writes a string to the serial console.
///
/// The kit formats numbers itself: this KVM emulates guest instructions in software and
/// cannot emulate the SSE code in `core::fmt`'s integer formatting.
pub fn print(s: &str) {
    print_bytes(s.as_bytes());
}

/// Writes bytes to the serial console.
pub fn print_bytes(s: &[u8]) {
    for b in s {
        outb(COM1, *b);
    }
}

/// Writes `v` in decimal.
pub fn print_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    print_bytes(&buf[i..]);
}

/// Writes `v` as 16 hex digits.
pub fn print_hex(v: u64) {
    for shift in (0..16).rev() {
        let d = ((v >> (shift * 4)) & 0xf) as u8;
        outb(COM1, if d < 10 { b'0' + d } else { b'a' + d - 10 });
    }
}

/// Writes `key=value\n` with a decimal value.
pub fn report_dec(key: &str, v: u64) {
    print(key);
    print("=");
    print_dec(v);
    print("\n");
}

/// Writes `key=value\n` with a 16-digit hex value.
pub fn report_hex(key: &str, v: u64) {
    print(key);
    print("=");
    print_hex(v);
    print("\n");
}

/// Tells the VMM the guest has booted (the boot-time device).
pub fn boot_done() {
    // SAFETY: the boot-time device's MMIO address.
    unsafe { core::ptr::write_volatile(BOOT_TIME_ADDR as *mut u8, 123) }
}

/// Resets the machine through the i8042 controller; the VMM exits with code 0.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting in our own guest.
        unsafe { asm!("cli; hlt") }
    }
}

/// The zero page (`struct boot_params`) the VMM filled.
pub struct ZeroPage(pub u64);

impl ZeroPage {
    /// The kernel command line.
    pub fn cmdline(&self) -> &'static [u8] {
        let ptr: u32 = peek(self.0 + 0x228);
        let len: u32 = peek(self.0 + 0x238);
        // SAFETY: the VMM wrote `len` command-line bytes at `ptr`.
        unsafe { core::slice::from_raw_parts(ptr as u64 as *const u8, len as usize) }
    }

    /// The e820 entries: (address, size, type).
    pub fn e820(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        let n: u8 = peek(self.0 + 0x1e8);
        (0..u64::from(n)).map(move |i| {
            let e = self.0 + 0x2d0 + i * 20;
            (peek(e), peek(e + 8), peek(e + 16))
        })
    }

    /// The initrd's address and size (zero when there is none).
    pub fn initrd(&self) -> (u64, u64) {
        let addr: u32 = peek(self.0 + 0x218);
        let size: u32 = peek(self.0 + 0x21c);
        (u64::from(addr), u64::from(size))
    }
}

/// FNV-1a over bytes: what guests report so tests can check them against the host's copy.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    print("guest panic\n");
    reset()
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract for memcpy.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: forward copy is safe for these overlaps.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag, restored after.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract for memset.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract for memcmp.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core` (built with unwinding); never called with panic=abort.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
