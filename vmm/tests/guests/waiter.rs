//! Says `ready`, then polls the i8042 and prints a `.` every few hundred polls until keys
//! arrive (Ctrl+Alt+Del from the VMM); prints them as `keys=<hex>` and resets.
#![no_std]
#![no_main]

mod kit;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    kit::print("ready\n");
    let mut polls: u64 = 0;
    loop {
        if kit::inb(0x64) & 1 != 0 {
            kit::print("keys=");
            while kit::inb(0x64) & 1 != 0 {
                let k = kit::inb(0x60);
                let hex = b"0123456789abcdef";
                kit::print_bytes(&[hex[usize::from(k >> 4)], hex[usize::from(k & 0xf)]]);
            }
            kit::print("\n");
            kit::reset();
        }
        polls += 1;
        if polls % 300 == 0 {
            kit::print(".");
        }
    }
}
