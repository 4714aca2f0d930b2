//! Legacy PC devices: the 8250 UART on COM1, the i8042 controller, and the boot-time device.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::Instant;

use vm_superio::Serial;

use super::IrqLine;
use super::bus::BusDevice;
use crate::arch::layout;
use crate::machine::VmEvent;
use crate::metrics::METRICS;

/// Where the serial console's output goes.
pub type SerialSink = Box<dyn Write + Send>;

/// The 8250 UART at COM1 (vm-superio), its interrupt wired to IRQ 4.
pub struct SerialDevice {
    inner: Serial<IrqLine, vm_superio::serial::NoEvents, SerialSink>,
}

impl SerialDevice {
    /// A UART writing to `out`, raising `irq`.
    pub fn new(irq: IrqLine, out: SerialSink) -> Self {
        SerialDevice {
            inner: Serial::new(irq, out),
        }
    }

    /// Queues bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.inner.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if offset == 0 {
                METRICS.serial_bytes_out.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                METRICS.serial_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = ?e, "serial write");
            }
        }
    }
}

const I8042_STATUS_OBF: u8 = 1;
const I8042_STATUS_SYSTEM: u8 = 1 << 2;
const I8042_CMD_READ_CTR: u8 = 0x20;
const I8042_CMD_WRITE_CTR: u8 = 0x60;
const I8042_CMD_SELF_TEST: u8 = 0xaa;
const I8042_CMD_KBD_TEST: u8 = 0xab;
const I8042_CMD_RESET_CPU: u8 = 0xfe;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
/// Ctrl+Alt+Del pressed and released, scancode set 2.
const CTRL_ALT_DEL: [u8; 10] = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0];

/// The i8042 keyboard controller: enough of it for Linux's driver to probe, for a guest to
/// reset the machine (command `0xfe` on port 0x64), and for the VMM to send Ctrl+Alt+Del.
pub struct I8042 {
    out: VecDeque<u8>,
    control: u8,
    expect_ctr: bool,
    irq: IrqLine,
    events: Sender<VmEvent>,
}

impl I8042 {
    /// A controller raising `irq` for key input and sending [`VmEvent::Reset`] on `events`.
    pub fn new(irq: IrqLine, events: Sender<VmEvent>) -> Self {
        I8042 {
            out: VecDeque::new(),
            control: 0x45,
            expect_ctr: false,
            irq,
            events,
        }
    }

    /// Queues the Ctrl+Alt+Del key sequence and raises the keyboard interrupt.
    pub fn send_ctrl_alt_del(&mut self) -> std::io::Result<()> {
        self.out.extend(CTRL_ALT_DEL);
        self.irq.trigger()
    }

    fn push(&mut self, byte: u8) {
        self.out.push_back(byte);
        if self.control & 1 != 0 {
            let _ = self.irq.trigger();
        }
    }
}

impl BusDevice for I8042 {
    /// Offset 0 is the data port (0x60), offset 4 the status port (0x64).
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => {
                let v = self.out.pop_front().unwrap_or(0);
                if !self.out.is_empty() && self.control & 1 != 0 {
                    let _ = self.irq.trigger();
                }
                v
            }
            4 => {
                I8042_STATUS_SYSTEM
                    | if self.out.is_empty() {
                        0
                    } else {
                        I8042_STATUS_OBF
                    }
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match (offset, v) {
            (4, I8042_CMD_RESET_CPU) => {
                METRICS.i8042_resets.fetch_add(1, Ordering::Relaxed);
                let _ = self.events.send(VmEvent::Reset);
            }
            (4, I8042_CMD_READ_CTR) => self.push(self.control),
            (4, I8042_CMD_WRITE_CTR) => self.expect_ctr = true,
            (4, I8042_CMD_SELF_TEST) => self.push(0x55),
            (4, I8042_CMD_KBD_TEST) => self.push(0x00),
            (0, v) if self.expect_ctr => {
                self.expect_ctr = false;
                self.control = v;
            }
            (0, KBD_RESET) => {
                self.push(KBD_ACK);
                self.push(0xaa);
            }
            (0, _) => self.push(KBD_ACK),
            _ => {}
        }
    }
}

/// The boot-time device: when the guest writes [`layout::BOOT_TIME_MAGIC`] to offset 0, the
/// time since VM start is logged and recorded in the `boot_time_us` metric.
pub struct BootTimer {
    start: Instant,
    events: Sender<VmEvent>,
}

impl BootTimer {
    /// A timer counting from `start`.
    pub fn new(start: Instant, events: Sender<VmEvent>) -> Self {
        BootTimer { start, events }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&layout::BOOT_TIME_MAGIC) {
            let us = self.start.elapsed().as_micros() as u64;
            METRICS.boot_time_us.store(us, Ordering::Relaxed);
            tracing::info!(boot_time_us = us, "guest boot complete");
            let _ = self.events.send(VmEvent::Booted(us));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn i8042_resets_answers_probes_and_sends_ctrl_alt_del() {
        let (tx, rx) = channel();
        let mut dev = I8042::new(IrqLine::new().unwrap(), tx);
        let mut b = [0u8];
        dev.read(4, &mut b);
        assert_eq!(b[0] & I8042_STATUS_OBF, 0);
        dev.write(4, &[I8042_CMD_SELF_TEST]);
        dev.read(4, &mut b);
        assert_eq!(b[0] & I8042_STATUS_OBF, 1);
        dev.read(0, &mut b);
        assert_eq!(b[0], 0x55);
        dev.write(4, &[I8042_CMD_WRITE_CTR]);
        dev.write(0, &[0x47]);
        dev.write(4, &[I8042_CMD_READ_CTR]);
        dev.read(0, &mut b);
        assert_eq!(b[0], 0x47);
        dev.send_ctrl_alt_del().unwrap();
        let mut keys = vec![];
        loop {
            dev.read(4, &mut b);
            if b[0] & I8042_STATUS_OBF == 0 {
                break;
            }
            dev.read(0, &mut b);
            keys.push(b[0]);
        }
        assert_eq!(keys, CTRL_ALT_DEL);
        assert!(rx.try_recv().is_err());
        dev.write(4, &[I8042_CMD_RESET_CPU]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset)));
    }

    #[test]
    fn boot_timer_only_fires_on_the_magic_value() {
        let (tx, rx) = channel();
        let mut t = BootTimer::new(Instant::now(), tx);
        t.write(0, &[1]);
        t.write(1, &[layout::BOOT_TIME_MAGIC]);
        assert!(rx.try_recv().is_err());
        t.write(0, &[layout::BOOT_TIME_MAGIC]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Booted(_))));
    }
}
