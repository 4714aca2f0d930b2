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

/// Writes a byte as two lowercase hex digits.
pub fn hex_byte(b: u8) -> [u8; 2] {
    let h = b"0123456789abcdef";
    [h[usize::from(b >> 4)], h[usize::from(b & 0xf)]]
}

/// Writes a MAC address as `xx:xx:xx:xx:xx:xx`.
pub fn print_mac(mac: &[u8]) {
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            print(":");
        }
        print_bytes(&hex_byte(*b));
    }
}

/// The guests' own minimal virtio-mmio driver: probing the slots, feature negotiation, queue
/// set-up and polled split rings of [`QSIZE`] descriptors, shared by the block and network
/// guests. Rings live in the guests' statics and are passed as raw pointers, since the device
/// writes them behind the compiler's back; every access is volatile.
pub mod virtio {
    use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
    use core::sync::atomic::{fence, Ordering};

    /// The first virtio-mmio slot the VMM places devices in, and how many slots there are.
    pub const FIRST_SLOT: u64 = 0xd000_1000;
    pub const SLOTS: u64 = 8;
    /// Device IDs.
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    /// Descriptors per queue.
    pub const QSIZE: usize = 8;
    /// Descriptor flags.
    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;

    /// One split-ring descriptor.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Desc {
        pub addr: u64,
        pub len: u32,
        pub flags: u16,
        pub next: u16,
    }

    /// A queue's descriptor table and available ring, then its used ring on the next page.
    #[repr(C, align(4096))]
    pub struct Rings {
        pub desc: [Desc; QSIZE],
        pub avail_flags: u16,
        pub avail_idx: u16,
        pub avail_ring: [u16; QSIZE],
        pub avail_event: u16,
        _pad: [u8; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
        pub used_flags: u16,
        pub used_idx: u16,
        pub used_ring: [[u32; 2]; QSIZE],
        pub used_event: u16,
    }

    /// Rings with nothing in them, to initialise statics.
    pub const EMPTY: Rings = Rings {
        desc: [Desc { addr: 0, len: 0, flags: 0, next: 0 }; QSIZE],
        avail_flags: 0,
        avail_idx: 0,
        avail_ring: [0; QSIZE],
        avail_event: 0,
        _pad: [0; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
        used_flags: 0,
        used_idx: 0,
        used_ring: [[0; 2]; QSIZE],
        used_event: 0,
    };

    /// A virtio-mmio device at a slot's base address.
    #[derive(Clone, Copy)]
    pub struct Dev(pub u64);

    impl Dev {
        /// Reads a register.
        pub fn reg(self, off: u64) -> u32 {
            super::mmio_read32(self.0 + off)
        }

        /// Writes a register.
        pub fn set(self, off: u64, v: u32) {
            super::mmio_write32(self.0 + off, v)
        }

        /// Whether a version-2 (modern) device of `device_id` sits here.
        pub fn is(self, device_id: u32) -> bool {
            self.reg(0) == 0x7472_6976 && self.reg(4) == 2 && self.reg(8) == device_id
        }

        /// Resets the device and negotiates the offered subset of `features` (low word) plus
        /// VERSION_1, up to FEATURES_OK. The features acknowledged, or None if the device
        /// offers no VERSION_1 or refuses the set.
        pub fn negotiate(self, features: u32) -> Option<u32> {
            self.set(0x70, 0);
            self.set(0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
            self.set(0x14, 1);
            if self.reg(0x10) & 1 == 0 {
                return None;
            }
            self.set(0x14, 0);
            let acked = self.reg(0x10) & features;
            self.set(0x24, 0);
            self.set(0x20, acked);
            self.set(0x24, 1);
            self.set(0x20, 1); // VERSION_1
            self.set(0x70, 1 | 2 | 8); // FEATURES_OK
            (self.reg(0x70) & 8 != 0).then_some(acked)
        }

        /// Sets up queue `index` on `rings` ([`QSIZE`] entries); false if it is smaller.
        pub fn queue(self, index: u32, rings: *mut Rings) -> bool {
            self.set(0x30, index);
            if (self.reg(0x34) as usize) < QSIZE {
                return false;
            }
            self.set(0x38, QSIZE as u32);
            // SAFETY: only addresses are taken.
            let (d, a, u) = unsafe {
                (
                    addr_of!((*rings).desc) as u64,
                    addr_of!((*rings).avail_flags) as u64,
                    addr_of!((*rings).used_flags) as u64,
                )
            };
            self.set(0x80, d as u32);
            self.set(0x84, (d >> 32) as u32);
            self.set(0x90, a as u32);
            self.set(0x94, (a >> 32) as u32);
            self.set(0xa0, u as u32);
            self.set(0xa4, (u >> 32) as u32);
            self.set(0x44, 1);
            true
        }

        /// DRIVER_OK: the device may use the queues.
        pub fn driver_ok(self) {
            self.set(0x70, 1 | 2 | 8 | 4);
        }

        /// Tells the device queue `index` has new buffers.
        pub fn notify(self, index: u32) {
            self.set(0x50, index);
        }

        /// A 32-bit word of the device's configuration space.
        pub fn config32(self, off: u64) -> u32 {
            self.reg(0x100 + off)
        }

        /// A 64-bit value of the configuration space (a block device's capacity at 0).
        pub fn config64(self, off: u64) -> u64 {
            u64::from(self.config32(off)) | (u64::from(self.config32(off + 4)) << 32)
        }

        /// A network device's MAC address (configuration offset 0).
        pub fn mac(self) -> [u8; 6] {
            let lo = self.config32(0).to_le_bytes();
            let hi = self.config32(4).to_le_bytes();
            [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]]
        }
    }

    /// The `n`th (from 0) device of `device_id` in slot order.
    pub fn find(device_id: u32, n: usize) -> Option<Dev> {
        (0..SLOTS)
            .map(|i| Dev(FIRST_SLOT + i * 0x1000))
            .filter(|d| d.is(device_id))
            .nth(n)
    }

    /// Writes descriptor `i` of `rings`.
    pub fn set_desc(rings: *mut Rings, i: usize, desc: Desc) {
        // SAFETY: the descriptor is the driver's until it is published.
        unsafe { write_volatile(addr_of_mut!((*rings).desc[i % QSIZE]), desc) };
    }

    /// Publishes the chain starting at descriptor `head` in the available ring (the caller
    /// notifies); returns the new available index.
    pub fn publish(rings: *mut Rings, head: u16) -> u16 {
        // SAFETY: single-threaded guest; the device reads the entry after the index update.
        unsafe {
            let idx = read_volatile(addr_of!((*rings).avail_idx));
            write_volatile(addr_of_mut!((*rings).avail_ring[usize::from(idx) % QSIZE]), head);
            fence(Ordering::SeqCst);
            let next = idx.wrapping_add(1);
            write_volatile(addr_of_mut!((*rings).avail_idx), next);
            fence(Ordering::SeqCst);
            next
        }
    }

    /// The device's used index.
    pub fn used_idx(rings: *mut Rings) -> u16 {
        // SAFETY: reading the device-written index.
        unsafe { read_volatile(addr_of!((*rings).used_idx)) }
    }

    /// Polls until the used index reaches `n`.
    pub fn wait_used(rings: *mut Rings, n: u16) {
        while used_idx(rings) != n {
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
    }

    /// Used entry number `n` (counting from the start): (descriptor head, bytes written).
    /// Only valid once the used index has passed `n`.
    pub fn used(rings: *mut Rings, n: u16) -> (usize, usize) {
        fence(Ordering::SeqCst);
        // SAFETY: the device completed this entry before moving the used index past it.
        let e = unsafe { read_volatile(addr_of!((*rings).used_ring[usize::from(n) % QSIZE])) };
        (e[0] as usize, e[1] as usize)
    }
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
