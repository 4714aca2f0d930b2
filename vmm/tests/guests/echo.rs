//! Reads a line from the serial console (polling the UART's line status) and prints it back
//! as `echo=<line>`, then resets.
#![no_std]
#![no_main]

mod kit;

#[unsafe(no_mangle)]
extern "C" fn guest_main(_zero_page: u64) -> ! {
    kit::boot_done();
    kit::print("type a line\n");
    let mut line = [0u8; 64];
    let mut len = 0;
    loop {
        // LSR bit 0: data ready.
        if kit::inb(kit::COM1 + 5) & 1 == 0 {
            continue;
        }
        let b = kit::inb(kit::COM1);
        if b == b'\n' || len == line.len() {
            break;
        }
        line[len] = b;
        len += 1;
    }
    kit::print("echo=");
    kit::print_bytes(&line[..len]);
    kit::print("\n");
    kit::reset()
}
