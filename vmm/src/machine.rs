//! A running machine: builds the VM from a [`VmSpec`], starts one thread per vCPU, routes
//! their exits to the device buses, and pauses, resumes or stops them on request.
//!
//! vCPU threads run without taking any lock the API thread holds: they only lock the device
//! an exit is for. Pausing and stopping kick each vCPU out of `KVM_RUN` with a signal
//! (`SIGRTMIN`), repeated until the vCPU acknowledges, so a kick that lands just before a
//! vCPU enters the guest is never lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::{self, cpuid::CpuTemplate, layout};
use crate::devices::IrqLine;
use crate::devices::bus::{Bus, BusError, SharedDevice};
use crate::devices::legacy::{BootTimer, I8042, SerialDevice, SerialSink};
use crate::devices::workers::{Wake, Workers};
use crate::metrics::{ExitKind, METRICS, VcpuStats};
use crate::vstate::{Vcpu, VcpuBoot, Vm, VstateError};

/// Errors from building or starting a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Creating the VM, memory, irqchip or vCPUs failed.
    #[error("set up kvm state")]
    Vstate(#[from] VstateError),
    /// Writing the boot page tables or GDT failed.
    #[error("write boot tables")]
    Regs(#[from] arch::regs::RegsError),
    /// Loading the kernel, initrd or boot parameters failed.
    #[error("load kernel")]
    Boot(#[from] arch::boot::BootError),
    /// Writing the MP table failed.
    #[error("write mp table")]
    Mptable(#[from] arch::mptable::MptableError),
    /// Placing a device on a bus failed.
    #[error("place device")]
    Bus(#[from] BusError),
    /// Creating or registering an interrupt eventfd failed.
    #[error("wire interrupt {gsi}")]
    Irq {
        /// The GSI.
        gsi: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Spawning a vCPU thread or installing the kick signal handler failed.
    #[error("start vcpu thread")]
    Thread(#[source] std::io::Error),
    /// A virtio device could not be created.
    #[error("create virtio device {id}")]
    Virtio {
        /// The device id.
        id: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// PVH boot was asked for but the kernel has no PVH entry note.
    #[error("the kernel has no pvh entry point (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry,
    /// The requested vCPU count is out of range.
    #[error("vcpu count {0} is not between 1 and {max}", max = layout::MAX_VCPUS)]
    VcpuCount(u8),
}

/// Everything needed to build a machine.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Number of vCPUs (1 to 32).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: usize,
    /// CPUID template.
    pub template: CpuTemplate,
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub boot_args: String,
    /// Block devices, in attachment order.
    pub drives: Vec<DriveSpec>,
    /// Network devices, attached after the drives.
    pub nets: Vec<NetSpec>,
    /// How to enter the kernel.
    pub protocol: arch::boot::BootProtocol,
    /// Feed the process's stdin to the serial console's receiver.
    pub serial_stdin: bool,
}

/// A network interface to attach.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// The interface id (from the API).
    pub id: String,
    /// The host tap device.
    pub tap: String,
    /// The guest's MAC address, if configured.
    pub mac: Option<[u8; 6]>,
    /// Receive rate limiter.
    pub rx_rate_limiter: Option<crate::config::RateLimiter>,
    /// Transmit rate limiter.
    pub tx_rate_limiter: Option<crate::config::RateLimiter>,
    /// Queue pairs (tap queues); more than one needs a multi-queue tap.
    pub queue_pairs: u16,
}

/// A block device to attach.
#[derive(Debug, Clone)]
pub struct DriveSpec {
    /// The drive id (from the API).
    pub id: String,
    /// The backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Rate limiter.
    pub rate_limiter: Option<crate::config::RateLimiter>,
    /// A vhost-user-blk backend's socket, used instead of `path`.
    pub socket: Option<PathBuf>,
    /// Serve the file with io_uring (`io_engine: "Async"`).
    pub io_uring: bool,
}

/// Something a vCPU or device reports to the VMM thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked for a reset (i8042 command 0xfe or a KVM reset/shutdown system event).
    Reset,
    /// The guest wrote the boot-time device; microseconds since VM start.
    Booted(u64),
    /// The guest crashed (triple fault, failed entry, internal emulation error).
    Crashed {
        /// The vCPU that saw it.
        vcpu: u8,
        /// What KVM reported.
        reason: String,
    },
}

#[derive(Default)]
struct RunState {
    paused: bool,
    stop: bool,
    parked: u8,
    exited: u8,
}

/// State the VMM thread and vCPU threads share.
#[derive(Default)]
struct VcpuControl {
    /// Set while a pause or stop is requested: the only thing vCPUs check on every exit.
    attention: AtomicBool,
    state: Mutex<RunState>,
    changed: Condvar,
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The buses a vCPU routes its exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
}

/// A started machine.
pub struct Machine {
    vm: Vm,
    vcpus: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
    i8042: Arc<Mutex<I8042>>,
    started: Instant,
    count: u8,
    devices: crate::devices::virtio::Devices,
    workers: Workers,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), MachineError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(SIGRTMIN(), kick_handler)
            .map_err(|e| MachineError::Thread(std::io::Error::from_raw_os_error(e.errno())));
    });
    result
}

/// Creates an eventfd for `gsi` and registers it with KVM as an irqfd.
pub fn irq_line(vm: &Vm, gsi: u32) -> Result<IrqLine, MachineError> {
    let line = IrqLine::new().map_err(|source| MachineError::Irq { gsi, source })?;
    vm.fd()
        .register_irqfd(line.eventfd(), gsi)
        .map_err(|e| MachineError::Irq {
            gsi,
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    Ok(line)
}

impl Machine {
    /// Builds the VM, loads the kernel and starts every vCPU. Serial output goes to
    /// `serial`; reset, boot-time and crash reports go to `events`.
    pub fn start(
        spec: &VmSpec,
        serial: SerialSink,
        events: Sender<VmEvent>,
    ) -> Result<Machine, MachineError> {
        if spec.vcpus == 0 || spec.vcpus > layout::MAX_VCPUS {
            return Err(MachineError::VcpuCount(spec.vcpus));
        }
        install_kick_handler()?;
        let started = Instant::now();
        let vm = Vm::new(spec.mem_mib << 20)?;
        vm.setup_irqchip()?;
        let mem = vm.memory();

        let kernel = arch::boot::load_kernel(mem, &spec.kernel)?;
        let initrd = spec
            .initrd
            .as_deref()
            .map(|p| arch::boot::load_initrd(mem, p))
            .transpose()?;
        let mut cmdline = arch::boot::cmdline(&spec.boot_args)?;

        let mut workers = Workers::new().map_err(MachineError::Thread)?;
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial_dev = Arc::new(Mutex::new(SerialDevice::new(
            irq_line(&vm, layout::COM1_IRQ)?,
            serial,
        )));
        pio.insert(u64::from(layout::COM1_PORT), 8, serial_dev.clone())?;
        if spec.serial_stdin {
            spawn_stdin_reader(serial_dev, &mut workers).map_err(MachineError::Thread)?;
        }
        let i8042 = Arc::new(Mutex::new(I8042::new(
            irq_line(&vm, layout::I8042_IRQ)?,
            events.clone(),
        )));
        pio.insert(
            u64::from(layout::I8042_DATA_PORT),
            5,
            i8042.clone() as SharedDevice,
        )?;
        mmio.insert(
            layout::BOOT_TIME_ADDR,
            0x1000,
            Arc::new(Mutex::new(BootTimer::new(started, events.clone()))),
        )?;
        let devices = crate::devices::virtio::attach_devices(
            &vm,
            &mut mmio,
            &mut cmdline,
            &spec.drives,
            &spec.nets,
            &mut workers,
        )?;

        let pvh_entry = match spec.protocol {
            arch::boot::BootProtocol::Linux64 => None,
            arch::boot::BootProtocol::Pvh => {
                Some(kernel.pvh_entry.ok_or(MachineError::NoPvhEntry)?)
            }
        };
        arch::regs::write_boot_tables(mem)?;
        match pvh_entry {
            None => arch::boot::write_boot_params(mem, &kernel, &cmdline, initrd)?,
            Some(_) => arch::boot::write_pvh_start_info(mem, &cmdline, initrd)?,
        }
        arch::mptable::write(mem, spec.vcpus)?;

        let supported = vm.supported_cpuid()?;
        let control = Arc::new(VcpuControl::default());
        let buses = Buses { pio, mmio };
        let mut vcpus = Vec::new();
        let mut prepared = Vec::new();
        for index in 0..spec.vcpus {
            let vcpu = vm.create_vcpu(u64::from(index))?;
            vcpu.configure(
                &supported,
                mem,
                VcpuBoot {
                    index,
                    count: spec.vcpus,
                    template: spec.template,
                    entry: pvh_entry.unwrap_or(kernel.entry).0,
                    pvh: pvh_entry.is_some(),
                },
            )?;
            prepared.push(vcpu);
        }
        for (index, vcpu) in prepared.into_iter().enumerate() {
            let index = index as u8;
            let (control, buses, events) = (control.clone(), buses.clone(), events.clone());
            let handle = std::thread::Builder::new()
                .name(format!("fc_vcpu {index}"))
                .spawn(move || {
                    let stats = METRICS.vcpu(index);
                    run_vcpu(index, vcpu, &buses, &control, &events, &stats);
                })
                .map_err(MachineError::Thread)?;
            vcpus.push(handle);
        }
        tracing::info!(
            vcpus = spec.vcpus,
            mem_mib = spec.mem_mib,
            entry = format_args!("{:#x}", kernel.entry.0),
            bzimage = kernel.bzimage,
            pvh = pvh_entry.is_some(),
            template = ?spec.template,
            "vm started"
        );
        Ok(Machine {
            vm,
            vcpus,
            control,
            i8042,
            started,
            count: spec.vcpus,
            devices,
            workers,
        })
    }

    /// When the VM was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The VM (for its memory and fds).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn kick_until(&self, done: impl Fn(&RunState) -> bool) {
        loop {
            let state = self.control.lock();
            if done(&state) {
                return;
            }
            drop(state);
            for handle in &self.vcpus {
                if !handle.is_finished() {
                    let _ = handle.kill(SIGRTMIN());
                }
            }
            let state = self.control.lock();
            let _ = self
                .control
                .changed
                .wait_timeout_while(state, Duration::from_millis(2), |s| !done(s));
        }
    }

    /// Pauses every vCPU; returns once all are parked outside the guest.
    pub fn pause(&self) {
        self.control.lock().paused = true;
        self.control.attention.store(true, Ordering::SeqCst);
        let count = self.count;
        self.kick_until(|s| s.parked + s.exited >= count);
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        let mut state = self.control.lock();
        state.paused = false;
        self.control.attention.store(state.stop, Ordering::SeqCst);
        drop(state);
        self.control.changed.notify_all();
    }

    /// Applies `update` to the virtio device `id`.
    pub fn update_device(
        &self,
        id: &str,
        update: &crate::devices::virtio::DeviceUpdate,
    ) -> Result<(), String> {
        let (_, transport) = self
            .devices
            .iter()
            .find(|(d, _)| d == id)
            .ok_or_else(|| format!("No device with id {id}."))?;
        transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(update)
    }

    /// Queues Ctrl+Alt+Del on the i8042.
    pub fn send_ctrl_alt_del(&self) -> std::io::Result<()> {
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del()
    }

    /// Stops every vCPU and device worker and waits for their threads.
    pub fn stop(self) {
        drop(self);
    }

    /// Number of device worker threads running (notification servers, retry timers, tap
    /// pollers, serial input).
    pub fn worker_threads(&self) -> usize {
        self.workers.len()
    }

    fn stop_vcpus(&mut self) {
        self.control.lock().stop = true;
        self.control.attention.store(true, Ordering::SeqCst);
        self.control.changed.notify_all();
        let count = self.count;
        self.kick_until(|s| s.exited >= count);
        for handle in self.vcpus.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.vcpus.is_empty() {
            self.stop_vcpus();
        }
        // After the vCPUs: a vCPU may be inside a device a worker also serves.
        self.workers.stop();
    }
}

/// Copies stdin into the UART's receive FIFO, waiting while the FIFO is full; ends at EOF
/// or when the VM stops.
fn spawn_stdin_reader(
    serial: Arc<Mutex<SerialDevice>>,
    workers: &mut Workers,
) -> std::io::Result<()> {
    workers.spawn("fc_serial_in".into(), move |stop| {
        let mut buf = [0u8; 64];
        loop {
            // Read only once stdin has data, so a stop is never stuck behind a read.
            if stop.wait(Some(libc::STDIN_FILENO), None) == Wake::Stop {
                return;
            }
            // Unbuffered (std's stdin buffers ahead, which poll would not see).
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            let n = match usize::try_from(n) {
                Ok(0) => return,
                Ok(n) => n,
                Err(_)
                    if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted =>
                {
                    continue;
                }
                Err(_) => return,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let taken = serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(rest);
                rest = &rest[taken..];
                if !rest.is_empty() && stop.wait(None, Some(Duration::from_millis(1))) == Wake::Stop
                {
                    return;
                }
            }
        }
    })
}

/// Parks while paused; false when the vCPU must stop.
fn wait_while_paused(control: &VcpuControl) -> bool {
    if !control.attention.load(Ordering::Acquire) {
        return true;
    }
    let mut state = control.lock();
    if state.paused && !state.stop {
        state.parked += 1;
        control.changed.notify_all();
        while state.paused && !state.stop {
            state = control
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }
    !state.stop
}

fn run_vcpu(
    index: u8,
    mut vcpu: Vcpu,
    buses: &Buses,
    control: &VcpuControl,
    events: &Sender<VmEvent>,
    stats: &VcpuStats,
) {
    stats.thread_started();
    let crash = |reason: String| {
        tracing::error!(vcpu = index, %reason, "guest crashed");
        let _ = events.send(VmEvent::Crashed {
            vcpu: index,
            reason,
        });
    };
    while wait_while_paused(control) {
        match vcpu.fd_mut().run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.exit(ExitKind::IoIn);
                if !buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    stats.unhandled();
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.exit(ExitKind::IoOut);
                if !buses.pio.write(u64::from(port), data) {
                    stats.unhandled();
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.exit(ExitKind::MmioRead);
                if !buses.mmio.read(addr, data) {
                    stats.unhandled();
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.exit(ExitKind::MmioWrite);
                if !buses.mmio.write(addr, data) {
                    stats.unhandled();
                }
            }
            Ok(VcpuExit::Hlt) => {
                stats.exit(ExitKind::Hlt);
                // Only without the in-kernel irqchip; nothing will wake the vCPU.
                crash("halted with no irqchip to wake it".into());
                break;
            }
            Ok(VcpuExit::Shutdown) => {
                stats.exit(ExitKind::Shutdown);
                crash("triple fault (KVM_EXIT_SHUTDOWN)".into());
                break;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                stats.exit(ExitKind::SystemEvent);
                tracing::info!(vcpu = index, kind, "guest system event");
                let _ = events.send(VmEvent::Reset);
                break;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                stats.exit(ExitKind::FailEntry);
                crash(format!("entry failed: reason {reason:#x} on cpu {cpu}"));
                break;
            }
            Ok(VcpuExit::InternalError) => {
                stats.exit(ExitKind::InternalError);
                let fd = vcpu.fd_mut();
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the run area's union holds `internal`.
                let suberror = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = fd.get_regs().map(|r| r.rip).unwrap_or_default();
                crash(format!(
                    "kvm internal error {suberror} at rip {rip:#x} (an instruction kvm cannot emulate)"
                ));
                break;
            }
            Ok(other) => {
                stats.exit(ExitKind::Other);
                crash(format!("unexpected exit {other:?}"));
                break;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.exit(ExitKind::Interrupted);
                vcpu.fd_mut().set_kvm_immediate_exit(0);
            }
            Err(e) => {
                crash(format!("KVM_RUN failed: {e}"));
                break;
            }
        }
    }
    // Bank this thread's CPU time before the VMM may start a successor for this vCPU.
    stats.thread_finished();
    let mut state = control.lock();
    state.exited += 1;
    control.changed.notify_all();
}
