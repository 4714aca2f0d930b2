//! The virtio-mmio transport (virtio 1.x register layout, version 2).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;
use crate::devices::workers::{Wake, Workers};
use crate::vstate::Vm;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4645_5252; // "FERR"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of the queue notification register (served by an ioeventfd).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;
const INT_USED_RING: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// A virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    retry: Option<std::sync::mpsc::Sender<(u32, std::time::Duration)>>,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`, which reads and writes `mem` and interrupts through `irq`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: IrqLine) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            retry: None,
            config_generation: 0,
        }
    }

    fn reset(&mut self) {
        if self.status != 0 {
            self.device.reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        // Queue set-up is only valid before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Applies a runtime update to the device; a configuration change is announced to the
    /// driver (new generation, configuration-change interrupt).
    pub fn update(&mut self, update: &super::DeviceUpdate) -> Result<(), String> {
        if self.device.update(update)? {
            self.config_generation = self.config_generation.wrapping_add(1);
            if self.status & STATUS_DRIVER_OK != 0 {
                self.interrupt_status |= INT_CONFIG_CHANGE;
                let _ = self.irq.trigger();
            }
        }
        Ok(())
    }

    /// Serves a notification for queue `index` (from the ioeventfd or a trapped write).
    pub fn notify(&mut self, index: u32) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_FAILED != 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !queue.ready() || !queue.is_valid(&self.mem) {
            return;
        }
        if self.device.process_queue(&self.mem, index as usize, queue) {
            self.interrupt_status |= INT_USED_RING;
            let _ = self.irq.trigger();
        }
        if let (Some(wait), Some(retry)) = (self.device.take_retry(), &self.retry) {
            let _ = retry.send((index, wait));
        }
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => {
                let f = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            // A backend signals used buffers straight through the irqfd, without setting our
            // status: report the used-ring bit so drivers look at their queues.
            REG_INTERRUPT_STATUS if self.device.uses_backend_eventfds() => {
                self.interrupt_status | INT_USED_RING
            }
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                let offered = self.device.features() | VIRTIO_F_VERSION_1;
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
                self.driver_features &= offered;
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => self.notify(v),
            REG_INTERRUPT_ACK => self.interrupt_status &= !v,
            REG_STATUS => {
                if v == 0 {
                    self.reset();
                } else if v & STATUS_FEATURES_OK != 0
                    && self.driver_features & VIRTIO_F_VERSION_1 == 0
                {
                    // A legacy driver: refuse FEATURES_OK, as the spec says.
                    self.status = v & !STATUS_FEATURES_OK;
                } else {
                    if v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
                        self.device.activate(self.driver_features);
                        self.device
                            .activate_queues(self.driver_features, &self.mem, &self.queues);
                    }
                    self.status = v;
                }
            }
            REG_QUEUE_DESC_LOW => self.set_addr(|q, v| q.set_desc_table_address(Some(v), None), v),
            REG_QUEUE_DESC_HIGH => self.set_addr(|q, v| q.set_desc_table_address(None, Some(v)), v),
            REG_QUEUE_AVAIL_LOW => self.set_addr(|q, v| q.set_avail_ring_address(Some(v), None), v),
            REG_QUEUE_AVAIL_HIGH => {
                self.set_addr(|q, v| q.set_avail_ring_address(None, Some(v)), v)
            }
            REG_QUEUE_USED_LOW => self.set_addr(|q, v| q.set_used_ring_address(Some(v), None), v),
            REG_QUEUE_USED_HIGH => self.set_addr(|q, v| q.set_used_ring_address(None, Some(v)), v),
            _ => {}
        }
    }

    fn set_addr(&mut self, f: impl FnOnce(&mut Queue, u32), v: u32) {
        if let Some(q) = self.selected() {
            f(q, v);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read32(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < REG_CONFIG && data.len() == 4 && offset.is_multiple_of(4) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write32(offset, v);
        }
    }
}

/// Registers an ioeventfd on the device's `QueueNotify` register and serves it on a new
/// worker, so notifications do not exit to userspace on the vCPU thread.
pub fn spawn_notifier(
    vm: &Vm,
    base: u64,
    id: &str,
    transport: Arc<Mutex<MmioTransport>>,
    workers: &mut Workers,
) -> std::io::Result<()> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    let addr = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
    // Queue 0 only: the devices here have one queue; other queues' writes still trap.
    vm.fd()
        .register_ioevent(&evt, &addr, 0u32)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    workers.spawn(format!("virtio-{id}"), move |stop| {
        while stop.wait(Some(evt.as_raw_fd()), None) != Wake::Stop {
            if evt.read().is_ok() {
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notify(0);
            }
        }
    })
}

/// Serves queues again once a rate limiter's wait is over: a worker that sleeps for the
/// wait a device reported and then notifies the queue.
pub fn spawn_retry_timer(
    id: &str,
    transport: Arc<Mutex<MmioTransport>>,
    workers: &mut Workers,
) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<(u32, std::time::Duration)>();
    transport.lock().unwrap_or_else(|e| e.into_inner()).retry = Some(tx);
    let weak = Arc::downgrade(&transport);
    // Closing the channel ends the worker's wait for the next retry.
    let closer = weak.clone();
    workers.on_stop(move || {
        if let Some(t) = closer.upgrade() {
            t.lock().unwrap_or_else(|e| e.into_inner()).retry = None;
        }
    });
    drop(transport);
    workers.spawn(format!("virtio-{id}-rl"), move |stop| {
        while let Ok((mut queue, mut wait)) = rx.recv() {
            // Coalesce retries queued meanwhile; serve the longest wait.
            while let Ok((q, w)) = rx.try_recv() {
                queue = q;
                wait = wait.max(w);
            }
            if stop.wait(None, Some(wait)) == Wake::Stop {
                return;
            }
            let Some(t) = weak.upgrade() else { return };
            t.lock().unwrap_or_else(|e| e.into_inner()).notify(queue);
        }
    })
}

/// Registers an ioeventfd on a device's `QueueNotify` (queue 0) and returns it, for a backend
/// to use as its kick.
pub fn register_kick(vm: &Vm, base: u64) -> std::io::Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.fd()
        .register_ioevent(&evt, &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY), 0u32)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(evt)
}
