//! The VMM thread: owns the configuration and the running machine, and serves every
//! [`ApiRequest`] and [`VmEvent`] in arrival order. Nothing else mutates VM state.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use crate::api::{ActionType, ApiRequest, ApiResponse, VmState};
use crate::config::{ConfigError, LoggerConfig, MetricsConfig, VmConfig};
use crate::devices::legacy::SerialSink;
use crate::machine::{Machine, VmEvent};
use crate::metrics::METRICS;

/// The `vmm` binary's exit codes (Firecracker's where they overlap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest reset the machine (i8042 command 0xfe, e.g. after `SendCtrlAltDel` or
    /// `reboot=k`), or the API socket closed with no VM running.
    Ok = 0,
    /// The VMM failed (e.g. the VM could not be started under `--no-api`).
    GenericError = 1,
    /// The guest crashed: triple fault, failed VM entry, or an instruction KVM could not
    /// emulate. The VMM itself did not.
    GuestCrashed = 2,
    /// `--config-file` is not a valid configuration.
    BadConfiguration = 152,
    /// The command line could not be parsed.
    ArgParsing = 153,
}

/// What the VMM thread waits for.
#[derive(Debug)]
pub enum Event {
    /// An API request and where to send the answer.
    Api(Box<ApiRequest>, Sender<ApiResponse>),
    /// A report from a vCPU or device.
    Vm(VmEvent),
}

/// Makes a serial sink each time a VM starts.
pub type SerialFactory = Box<dyn FnMut() -> std::io::Result<SerialSink> + Send>;

/// Applies `PUT /logger` (installed by the binary, which owns the subscriber).
pub type LoggerHook = Box<dyn FnMut(&LoggerConfig) -> Result<(), String> + Send>;

/// The VMM thread's state.
pub struct Controller {
    id: String,
    config: VmConfig,
    machine: Option<Machine>,
    paused: bool,
    serial: SerialFactory,
    logger: Option<LoggerHook>,
    events: Sender<Event>,
    protocol: crate::arch::boot::BootProtocol,
    serial_stdin: bool,
    /// Forwards the machine's events into the controller's channel; ends with the machine.
    forwarder: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    /// A controller for instance `id` with a validated `config`. `events` is the sender side of
    /// the channel [`Controller::run`] reads (devices report through it).
    pub fn new(id: String, config: VmConfig, serial: SerialFactory, events: Sender<Event>) -> Self {
        Controller {
            id,
            config,
            machine: None,
            paused: false,
            serial,
            logger: None,
            events,
            protocol: Default::default(),
            serial_stdin: false,
            forwarder: None,
        }
    }

    /// Installs what `PUT /logger` calls.
    pub fn with_logger(mut self, hook: LoggerHook) -> Self {
        self.logger = Some(hook);
        self
    }

    /// Boots kernels with `protocol` (the 64-bit Linux boot protocol by default).
    pub fn with_boot_protocol(mut self, protocol: crate::arch::boot::BootProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Feeds stdin to the guest's serial console.
    pub fn with_serial_stdin(mut self) -> Self {
        self.serial_stdin = true;
        self
    }

    /// Whether a VM is running (or paused).
    pub fn started(&self) -> bool {
        self.machine.is_some()
    }

    /// Builds and starts the configured VM.
    pub fn start(&mut self) -> Result<(), String> {
        if self.machine.is_some() {
            return Err(ConfigError::AfterStart.to_string());
        }
        let mut spec = self.config.vm_spec().map_err(|e| e.to_string())?;
        spec.protocol = self.protocol;
        spec.serial_stdin = self.serial_stdin;
        let serial = (self.serial)().map_err(|e| format!("Cannot open serial output: {e}"))?;
        if let Some(previous) = self.forwarder.take() {
            // From a start that failed: its senders are gone, it has ended or is ending.
            let _ = previous.join();
        }
        let (vm_tx, vm_rx) = std::sync::mpsc::channel();
        let forward = self.events.clone();
        let forwarder = std::thread::Builder::new()
            .name("fc_events".into())
            .spawn(move || {
                while let Ok(ev) = vm_rx.recv() {
                    if forward.send(Event::Vm(ev)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        self.forwarder = Some(forwarder);
        let machine = Machine::start(&spec, serial, vm_tx).map_err(|e| {
            let mut msg = format!("Failed to start microVM: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })?;
        self.machine = Some(machine);
        Ok(())
    }

    /// Serves events until the VM ends or every sender is gone; returns the exit code.
    pub fn run(mut self, rx: Receiver<Event>) -> ExitCode {
        while let Ok(event) = rx.recv() {
            match event {
                Event::Api(req, reply) => {
                    let resp = self.handle(*req);
                    let _ = reply.send(resp);
                }
                Event::Vm(VmEvent::Booted(_)) => {}
                Event::Vm(VmEvent::Reset) => {
                    tracing::info!("guest reset: stopping");
                    self.shutdown();
                    return ExitCode::Ok;
                }
                Event::Vm(VmEvent::Crashed { vcpu, reason }) => {
                    tracing::error!(vcpu, %reason, "guest crashed: stopping");
                    self.shutdown();
                    return ExitCode::GuestCrashed;
                }
            }
        }
        self.shutdown();
        ExitCode::Ok
    }

    fn shutdown(&mut self) {
        if let Some(m) = self.machine.take() {
            m.stop();
        }
        // Every sender went with the machine (or with its failed start): the forwarder ends.
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.join();
        }
        self.flush_metrics().ok();
    }

    fn before_start(&self) -> Result<(), ApiResponse> {
        if self.machine.is_some() {
            Err(ApiResponse::bad_request(
                ConfigError::AfterStart.to_string(),
            ))
        } else {
            Ok(())
        }
    }

    fn flush_metrics(&self) -> Result<(), String> {
        let Some(MetricsConfig { metrics_path }) = &self.config.metrics else {
            return Err("The metrics system is not initialized.".into());
        };
        METRICS.flushes.fetch_add(1, Ordering::Relaxed);
        let line = METRICS.to_json().to_string();
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(metrics_path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| format!("Cannot write metrics to {metrics_path}: {e}"))
    }

    fn running(&self) -> Result<&Machine, ApiResponse> {
        self.machine.as_ref().ok_or_else(|| {
            ApiResponse::bad_request(
                "The requested operation is not supported before starting the microVM.",
            )
        })
    }

    fn patch_drive(&mut self, id: &str, u: crate::config::DriveUpdate) -> ApiResponse {
        use crate::devices::virtio::DeviceUpdate;
        let machine = match self.running() {
            Ok(m) => m,
            Err(e) => return e,
        };
        if u.drive_id != id {
            return ApiResponse::bad_request(ConfigError::IdMismatch.to_string());
        }
        let update = DeviceUpdate::Drive {
            path: u.path_on_host.as_ref().map(Into::into),
            rate_limiter: u.rate_limiter.clone(),
        };
        if let Err(e) = machine.update_device(id, &update) {
            return ApiResponse::bad_request(format!("Unable to patch the block device: {e}"));
        }
        if let Some(d) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
            if u.path_on_host.is_some() {
                d.path_on_host = u.path_on_host;
            }
            if u.rate_limiter.is_some() {
                d.rate_limiter = u.rate_limiter;
            }
        }
        ApiResponse::NoContent
    }

    fn patch_net(&mut self, id: &str, u: crate::config::NetworkInterfaceUpdate) -> ApiResponse {
        use crate::devices::virtio::DeviceUpdate;
        let machine = match self.running() {
            Ok(m) => m,
            Err(e) => return e,
        };
        if u.iface_id != id {
            return ApiResponse::bad_request(ConfigError::IdMismatch.to_string());
        }
        let update = DeviceUpdate::Net {
            rx: u.rx_rate_limiter.clone(),
            tx: u.tx_rate_limiter.clone(),
        };
        if let Err(e) = machine.update_device(id, &update) {
            return ApiResponse::bad_request(format!("Unable to patch the network interface: {e}"));
        }
        if let Some(n) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
        {
            if u.rx_rate_limiter.is_some() {
                n.rx_rate_limiter = u.rx_rate_limiter;
            }
            if u.tx_rate_limiter.is_some() {
                n.tx_rate_limiter = u.tx_rate_limiter;
            }
        }
        ApiResponse::NoContent
    }

    fn state(&self) -> &'static str {
        match (&self.machine, self.paused) {
            (None, _) => "Not started",
            (Some(_), false) => "Running",
            (Some(_), true) => "Paused",
        }
    }

    /// Serves one API request.
    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        let done = |r: Result<(), ConfigError>| match r {
            Ok(()) => ApiResponse::NoContent,
            Err(e) => ApiResponse::bad_request(e.to_string()),
        };
        macro_rules! before_start {
            () => {
                if let Err(e) = self.before_start() {
                    return e;
                }
            };
        }
        match req {
            ApiRequest::GetInstanceInfo => ApiResponse::Json(serde_json::json!({
                "id": self.id,
                "state": self.state(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
                "app_name": "Firecracker",
            })),
            ApiRequest::GetVmConfig => ApiResponse::Json(
                serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null),
            ),
            ApiRequest::GetMachineConfig => ApiResponse::Json(
                serde_json::to_value(&self.config.machine_config)
                    .unwrap_or(serde_json::Value::Null),
            ),
            ApiRequest::GetMetrics => ApiResponse::Text(prometheus_text()),
            ApiRequest::GetVersion => ApiResponse::Json(serde_json::json!({
                "firecracker_version": env!("CARGO_PKG_VERSION"),
            })),
            ApiRequest::PutBootSource(b) => {
                before_start!();
                done(self.config.set_boot_source(b))
            }
            ApiRequest::PutMachineConfig(m) => {
                before_start!();
                done(self.config.set_machine_config(m))
            }
            ApiRequest::PatchMachineConfig(u) => {
                before_start!();
                let m = self.config.machine_config.apply(&u);
                done(self.config.set_machine_config(m))
            }
            ApiRequest::PutDrive(id, d) => {
                before_start!();
                done(self.config.put_drive(&id, d))
            }
            ApiRequest::PutNetworkInterface(id, n) => {
                before_start!();
                done(self.config.put_network_interface(&id, n))
            }
            ApiRequest::PatchDrive(id, u) => self.patch_drive(&id, u),
            ApiRequest::PatchNetworkInterface(id, u) => self.patch_net(&id, u),
            ApiRequest::PutLogger(l) => {
                let result = match &mut self.logger {
                    Some(hook) => hook(&l),
                    None => Ok(()),
                };
                match result {
                    Ok(()) => {
                        self.config.logger = Some(l);
                        ApiResponse::NoContent
                    }
                    Err(e) => ApiResponse::bad_request(e),
                }
            }
            ApiRequest::PutMetrics(m) => {
                if self.config.metrics.is_some() {
                    return ApiResponse::bad_request("Reinitialization of metrics not allowed.");
                }
                if let Err(e) = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&m.metrics_path)
                {
                    return ApiResponse::bad_request(format!(
                        "Cannot open metrics file {}: {e}",
                        m.metrics_path
                    ));
                }
                self.config.metrics = Some(m);
                ApiResponse::NoContent
            }
            ApiRequest::Action(ActionType::InstanceStart) => match self.start() {
                Ok(()) => ApiResponse::NoContent,
                Err(e) => ApiResponse::bad_request(e),
            },
            ApiRequest::Action(ActionType::SendCtrlAltDel) => match &self.machine {
                None => ApiResponse::bad_request(
                    "The requested operation is not supported before starting the microVM.",
                ),
                Some(m) => match m.send_ctrl_alt_del() {
                    Ok(()) => ApiResponse::NoContent,
                    Err(e) => ApiResponse::bad_request(format!("Cannot send Ctrl+Alt+Del: {e}")),
                },
            },
            ApiRequest::Action(ActionType::FlushMetrics) => match self.flush_metrics() {
                Ok(()) => ApiResponse::NoContent,
                Err(e) => ApiResponse::bad_request(e),
            },
            ApiRequest::PatchVm(state) => match (&self.machine, state) {
                (None, _) => ApiResponse::bad_request(
                    "The requested operation is not supported before starting the microVM.",
                ),
                (Some(m), VmState::Paused) => {
                    m.pause();
                    self.paused = true;
                    ApiResponse::NoContent
                }
                (Some(m), VmState::Resumed) => {
                    m.resume();
                    self.paused = false;
                    ApiResponse::NoContent
                }
            },
        }
    }
}

/// The metrics as Prometheus text (`ferrostack_vmm_*`).
pub fn prometheus_text() -> String {
    METRICS.prometheus()
}
