//! The agent proper: builds servers from placements, runs their actions, supervises their
//! VMMs and releases everything on delete.
//!
//! Threads and locks: API handlers and background tasks share [`Agent`]. The server table
//! sits behind a short-held `std::sync::Mutex` and is saved (atomically) after every change.
//! Each server also has an async operation lock, held for the whole of a build, an action or
//! a delete, so operations on one server never interleave; the supervisor skips a server
//! whose lock is held (the operation in progress owns its VMM's exit).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;

mod volumes;
pub use volumes::VolumeCreate;

use crate::clients::blockdp::{self, Blockdp};
use crate::clients::netdp::{self, Netdp};
use crate::clients::vmm::{self, Vmm};
use crate::http::{Client, HttpError};
use crate::model::{
    AttachedVolume, Fault, ImageRef, Placement, PlacementError, PortResource, PortSpec, Process,
    Resources, Server, Status, StepTime, VolumeResource, now, parse_cidr,
};
use crate::process::{self as proc, ExitRecord, ShimFiles};
use crate::store::{self, State, StoreError};
use crate::tap::{self, TapError};

/// Firecracker's default command line (serial console, reboot through the keyboard
/// controller so Ctrl+Alt+Del and `reboot` end the VMM, no PCI).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// State file, server directories (console logs, VMM sockets) and downloaded images.
    pub state_dir: PathBuf,
    /// blockdp's API socket.
    pub blockdp_socket: PathBuf,
    /// netdp's API socket.
    pub netdp_socket: PathBuf,
    /// The `vmm` binary.
    pub vmm_binary: PathBuf,
    /// This agent's executable (it runs the VMM shims).
    pub agent_exe: PathBuf,
    /// How long a guest gets to shut down after Ctrl+Alt+Del before it is killed.
    pub shutdown_timeout: Duration,
    /// How long netdp gets to program a new port's tap.
    pub port_timeout: Duration,
    /// Deadline for downloading an image or creating a volume from one.
    pub image_timeout: Duration,
    /// Where the node's disk capacity is measured (blockdp's data directory).
    pub disk_path: PathBuf,
    /// Record lifecycle events in the outbox for [`crate::sampler`] (when it runs).
    pub record_events: bool,
}

/// Errors of agent operations, mapped to HTTP statuses in [`crate::api`].
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The placement is invalid.
    #[error("invalid placement")]
    Invalid(#[source] PlacementError),
    /// No such server.
    #[error("server {0} not found")]
    NotFound(String),
    /// The request conflicts with the server's state.
    #[error("{0}")]
    Conflict(String),
    /// The state could not be saved.
    #[error("save the agent state")]
    Store(#[source] StoreError),
    /// A step against a data plane or the VMM failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A data plane refused a volume request (its 4xx status and what it said).
    #[error("{1}")]
    Refused(u16, String),
}

/// A failed step of a build, action or delete: becomes the server's fault message.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A kernel or initrd path cannot be read.
    #[error("{what} {path} is not readable")]
    ImagePath {
        /// Kernel or initrd.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A kernel or initrd download failed.
    #[error("download the {what}")]
    Download {
        /// Kernel or initrd.
        what: &'static str,
        /// The cause.
        #[source]
        source: crate::fetch::FetchError,
    },
    /// The server directory could not be made.
    #[error("create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    /// blockdp refused or failed.
    #[error("blockdp: {what}")]
    Blockdp {
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: HttpError,
    },
    /// netdp refused or failed.
    #[error("netdp: {what}")]
    Netdp {
        /// The operation.
        what: String,
        /// The cause.
        #[source]
        source: HttpError,
    },
    /// A port named in the placement does not exist.
    #[error("netdp has no port {0}")]
    NoPort(String),
    /// netdp did not program the port's tap in time.
    #[error("netdp did not activate port {port} on tap {tap} within {timeout:?}")]
    PortTimeout {
        /// The port.
        port: String,
        /// The tap.
        tap: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The tap could not be made or removed.
    #[error("tap")]
    Tap(#[source] TapError),
    /// The VMM could not be started.
    #[error("start the VMM")]
    Spawn(#[source] proc::ProcessError),
    /// The VMM ended before it was configured.
    #[error("the VMM exited during start-up ({status}): {log}")]
    EarlyExit {
        /// How it ended.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// The VMM's API did not come up.
    #[error("the VMM's API socket {0} did not come up")]
    NoApi(PathBuf),
    /// The VMM refused a configuration request or action.
    #[error("vmm: {what}")]
    Vmm {
        /// The request.
        what: &'static str,
        /// The cause.
        #[source]
        source: HttpError,
    },
    /// The VMM did not stop, even when killed.
    #[error("the VMM (pid {0}) did not exit")]
    Unkillable(i32),
    /// The state could not be saved.
    #[error("save the agent state")]
    Store(#[source] StoreError),
    /// The config drive could not be built.
    #[error("config drive")]
    ConfigDrive(#[source] crate::configdrive::ConfigDriveError),
    /// The server was deleted meanwhile.
    #[error("server {0} is gone")]
    Gone(String),
}

/// The error and its causes, joined: what a fault message or an API error says.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A server action (Nova's `POST /servers/{id}/action` bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `os-stop`.
    Stop,
    /// `os-start`.
    Start,
    /// `reboot` with type `SOFT` (Ctrl+Alt+Del, then start) or `HARD` (kill, then start).
    Reboot {
        /// HARD.
        hard: bool,
    },
    /// `pause`.
    Pause,
    /// `unpause`.
    Unpause,
}

impl Action {
    fn task(self) -> &'static str {
        match self {
            Action::Stop => "powering-off",
            Action::Start => "powering-on",
            Action::Reboot { hard: false } => "rebooting",
            Action::Reboot { hard: true } => "rebooting_hard",
            Action::Pause => "pausing",
            Action::Unpause => "unpausing",
        }
    }

    fn allowed(self, status: Status, built: bool) -> bool {
        match self {
            Action::Stop => matches!(status, Status::Active | Status::Paused),
            Action::Start => status == Status::Shutoff,
            Action::Reboot { hard: false } => status == Status::Active,
            Action::Reboot { hard: true } => {
                built
                    && matches!(
                        status,
                        Status::Active | Status::Paused | Status::Shutoff | Status::Error
                    )
            }
            Action::Pause => status == Status::Active,
            Action::Unpause => status == Status::Paused,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Builds that ended ACTIVE.
    pub builds_ok: u64,
    /// Builds that ended in ERROR.
    pub builds_failed: u64,
    /// VMM exits not asked for, by outcome (`shutoff`, `error`).
    pub unexpected_exits: HashMap<&'static str, u64>,
    /// Sum of build durations, seconds.
    pub build_seconds: f64,
}

/// The node agent.
pub struct Agent {
    cfg: AgentConfig,
    pub(crate) state: Mutex<State>,
    children: Mutex<HashMap<String, Child>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) net_lock: tokio::sync::Mutex<()>,
    blockdp: Blockdp,
    pub(crate) netdp: Netdp,
    /// Counters for `/metrics`.
    pub counters: Mutex<Counters>,
    /// Woken when a save recorded lifecycle events.
    pub(crate) events_ready: tokio::sync::Notify,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("state_dir", &self.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Opens the agent's state and re-adopts the VMMs that kept running while it was away.
    pub fn open(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        let dir_err = |e| AgentError::Step(StepError::Dir(cfg.state_dir.clone(), e));
        std::fs::create_dir_all(cfg.state_dir.join("servers")).map_err(dir_err)?;
        let mut state =
            store::load(&cfg.state_dir.join("state.json")).map_err(AgentError::Store)?;
        if state.events.seen.is_none() {
            // A state file from before events were saved: its servers are the baseline.
            state.events.seen = Some(crate::sampler::snapshot(&state.servers));
        }
        let long = Duration::from_secs(10);
        let agent = Agent {
            blockdp: Blockdp(Client::unix(
                &cfg.blockdp_socket,
                cfg.image_timeout.max(long),
            )),
            netdp: Netdp(Client::unix(&cfg.netdp_socket, long)),
            cfg,
            state: Mutex::new(state),
            children: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            net_lock: tokio::sync::Mutex::new(()),
            counters: Mutex::new(Counters::default()),
            events_ready: tokio::sync::Notify::new(),
        };
        agent.adopt()?;
        for s in agent.list() {
            // A built server's config drive, rebuilt if it went missing while we were away.
            if s.resources.cmdline.is_some()
                && let Err(e) = agent.config_drive(&s)
            {
                tracing::warn!(server = %s.placement.id, error = %error_chain(&e), "cannot rebuild the config drive");
            }
        }
        Ok(Arc::new(agent))
    }

    /// The settings.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// This node's id.
    pub fn node_id(&self) -> String {
        lock(&self.state).node_id.clone()
    }

    /// Saves the state, with the lifecycle events of what changed since the last save in
    /// the same write (see [`crate::sampler`]).
    pub(crate) fn save(&self, state: &mut State) -> Result<(), StoreError> {
        let undo = crate::sampler::record(state, self.cfg.record_events);
        match store::save(&self.cfg.state_dir.join("state.json"), state) {
            Ok(()) => {
                if undo.is_some() {
                    self.events_ready.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                if let Some(u) = undo {
                    u.restore(state);
                }
                Err(e)
            }
        }
    }

    /// After a restart: servers whose VMM still runs stay as they were; an operation cut
    /// short by the restart is ended (a build in ERROR, others by what the VMM says).
    fn adopt(&self) -> Result<(), AgentError> {
        let mut st = lock(&self.state);
        for s in st.servers.values_mut() {
            let running = s
                .process
                .is_some_and(|p| proc::alive(p.vmm_pid, p.vmm_start));
            if let Some(task) = s.task_state.take() {
                tracing::warn!(server = %s.placement.id, task, "operation interrupted by an agent restart");
                if s.status == Status::Build || task == "deleting" {
                    s.status = Status::Error;
                    s.fault = Some(Fault {
                        message: format!("the agent restarted during {task}"),
                        created: now(),
                    });
                }
            }
            if running {
                tracing::info!(server = %s.placement.id, "re-adopted a running VMM");
            } else if s.process.is_none() && matches!(s.status, Status::Active | Status::Paused) {
                // A start or reboot cut short between stopping one VMM and starting the next.
                s.status = Status::Shutoff;
            }
            s.updated = now();
        }
        self.save(&mut st).map_err(AgentError::Store)
    }

    /// After [`Agent::open`]: asks each re-adopted VMM whether it runs or is paused (a pause
    /// or unpause may have been cut short by the restart).
    pub async fn reconcile(&self) {
        let running: Vec<String> = lock(&self.state)
            .servers
            .values()
            .filter(|s| s.process.is_some() && s.status != Status::Build)
            .map(|s| s.placement.id.clone())
            .collect();
        for id in running {
            let vm = Vmm(Client::unix(self.vmm_socket(&id), Duration::from_secs(5)));
            let status = match vm.info().await.map(|i| i.state) {
                Ok(state) if state == "Paused" => Status::Paused,
                Ok(state) if state == "Running" => Status::Active,
                _ => continue, // gone or not started: the supervisor decides
            };
            let _ = self.update(&id, |s| s.status = status);
        }
    }

    /// Every server.
    pub fn list(&self) -> Vec<Server> {
        lock(&self.state).servers.values().cloned().collect()
    }

    /// One server.
    pub fn get(&self, id: &str) -> Result<Server, AgentError> {
        lock(&self.state)
            .servers
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(id.to_string()))
    }

    /// The server's directory.
    pub fn server_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("servers").join(id)
    }

    /// The server's console log.
    pub fn console_path(&self, id: &str) -> PathBuf {
        self.server_dir(id).join("console.log")
    }

    /// The server's config drive image.
    pub fn config_drive_path(&self, id: &str) -> PathBuf {
        self.server_dir(id).join(crate::configdrive::FILE_NAME)
    }

    /// The server's VMM API socket.
    pub fn vmm_socket(&self, id: &str) -> PathBuf {
        self.server_dir(id).join("vmm.sock")
    }

    /// Changes a server and saves the state.
    fn update(&self, id: &str, f: impl FnOnce(&mut Server)) -> Result<Server, StepError> {
        let mut st = lock(&self.state);
        let Some(s) = st.servers.get_mut(id) else {
            return Err(StepError::Gone(id.into()));
        };
        f(s);
        s.updated = now();
        let s = s.clone();
        self.save(&mut st).map_err(StepError::Store)?;
        Ok(s)
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.to_string()).or_default().clone()
    }

    /// Accepts a placement: the server is recorded in BUILD and built in the background.
    pub fn create(self: &Arc<Self>, placement: Placement) -> Result<Server, AgentError> {
        placement.validate().map_err(AgentError::Invalid)?;
        let id = placement.id.clone();
        let server = {
            let mut st = lock(&self.state);
            if st.servers.contains_key(&id) {
                return Err(AgentError::Conflict(format!("server {id} already exists")));
            }
            let t = now();
            let s = Server {
                placement,
                status: Status::Build,
                task_state: Some("spawning".into()),
                fault: None,
                resources: Resources::default(),
                process: None,
                stop_requested: false,
                build_steps: Vec::new(),
                created: t,
                updated: t,
            };
            st.servers.insert(id.clone(), s.clone());
            if let Err(e) = self.save(&mut st) {
                st.servers.remove(&id);
                return Err(AgentError::Store(e));
            }
            s
        };
        let agent = self.clone();
        let op = self.op_lock(&id);
        tokio::spawn(async move {
            let _guard = op.lock().await;
            let started = Instant::now();
            let result = agent.build(&id).await;
            // Counted before the status changes, so that anyone who sees the outcome
            // also sees it counted.
            {
                let mut c = lock(&agent.counters);
                if result.is_ok() {
                    c.builds_ok += 1;
                } else {
                    c.builds_failed += 1;
                }
                c.build_seconds += started.elapsed().as_secs_f64();
            }
            agent.finish(&id, result, Status::Active);
        });
        Ok(server)
    }

    /// Ends an operation: the target status, or ERROR with the step's error as the fault.
    fn finish(&self, id: &str, result: Result<(), StepError>, target: Status) {
        let r = self.update(id, |s| {
            s.task_state = None;
            match &result {
                Ok(()) => {
                    s.status = target;
                    if target != Status::Error {
                        s.fault = None;
                    }
                }
                Err(e) => {
                    let message = error_chain(e);
                    tracing::warn!(server = %s.placement.id, %message, "operation failed");
                    s.status = Status::Error;
                    s.fault = Some(Fault {
                        message,
                        created: now(),
                    });
                }
            }
        });
        if let Err(e) = r {
            tracing::error!(server = id, error = %error_chain(&e), "cannot record the outcome");
        }
    }

    async fn build(&self, id: &str) -> Result<(), StepError> {
        let placement = self
            .get(id)
            .map_err(|_| StepError::Gone(id.into()))?
            .placement;
        let dir = self.server_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| StepError::Dir(dir.clone(), e))?;
        let started = Instant::now();
        let mut step = Instant::now();
        let mut lap = |name: &str, steps: &mut Vec<StepTime>| {
            steps.push(StepTime {
                step: name.into(),
                seconds: step.elapsed().as_secs_f64(),
            });
            step = Instant::now();
        };
        let mut steps = Vec::new();

        let kernel = self.image(&placement.kernel, "kernel").await?;
        let initrd = match &placement.initrd {
            Some(i) => Some(self.image(i, "initrd").await?),
            None => None,
        };
        self.update(id, |s| {
            s.resources.kernel_path = Some(kernel);
            s.resources.initrd_path = initrd;
        })?;
        lap("images", &mut steps);

        self.build_volume(&placement).await?;
        lap("volume", &mut steps);
        for (i, spec) in placement.ports.iter().enumerate() {
            self.build_port(&placement, i, spec).await?;
        }
        lap("ports", &mut steps);
        let built = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        let _ = std::fs::remove_file(self.config_drive_path(id));
        self.config_drive(&built)?;
        lap("config_drive", &mut steps);
        let cmdline = self.cmdline(&placement);
        self.update(id, |s| s.resources.cmdline = Some(cmdline))?;
        let (start, boot) = self.boot(id).await?;
        steps.push(StepTime {
            step: "vmm_start".into(),
            seconds: start.as_secs_f64(),
        });
        steps.push(StepTime {
            step: "vmm_boot".into(),
            seconds: boot.as_secs_f64(),
        });
        steps.push(StepTime {
            step: "total".into(),
            seconds: started.elapsed().as_secs_f64(),
        });
        self.update(id, |s| s.build_steps = steps)?;
        Ok(())
    }

    /// A kernel or initrd as a host path: checked, or downloaded into the image cache.
    async fn image(&self, r: &ImageRef, what: &'static str) -> Result<PathBuf, StepError> {
        match r {
            ImageRef::Path(p) => {
                std::fs::File::open(p).map_err(|source| StepError::ImagePath {
                    what,
                    path: p.clone(),
                    source,
                })?;
                Ok(p.clone())
            }
            ImageRef::Url(u) => crate::fetch::cached(
                u,
                &self.cfg.state_dir.join("images"),
                self.cfg.image_timeout,
            )
            .await
            .map_err(|source| StepError::Download { what, source }),
        }
    }

    async fn build_volume(&self, p: &Placement) -> Result<(), StepError> {
        let d = &p.root_disk;
        let bd = |what| move |source| StepError::Blockdp { what, source };
        let volume = match (&d.image, &d.volume_id) {
            (Some(image), _) => {
                let source = match image {
                    ImageRef::Path(p) => blockdp::Source::Path(p.clone()),
                    ImageRef::Url(u) => blockdp::Source::Url(u.clone()),
                };
                self.update(&p.id, |s| s.resources.volume_requested = true)?;
                let v = self
                    .blockdp
                    .create(&blockdp::CreateVolume {
                        name: format!("server-{}-root", p.id),
                        size: d.size_bytes,
                        source: Some(source),
                    })
                    .await
                    .map_err(bd("create the root volume"))?;
                let delete = d.delete_on_termination.unwrap_or(true);
                self.update(&p.id, |s| {
                    s.resources.volume = Some(VolumeResource {
                        id: v.id.clone(),
                        socket: None,
                        delete_on_termination: delete,
                        size: v.size,
                    })
                })?;
                v
            }
            (None, Some(vid)) => {
                let v = self
                    .blockdp
                    .get(vid)
                    .await
                    .map_err(bd("find the root volume"))?;
                let delete = d.delete_on_termination.unwrap_or(false);
                self.update(&p.id, |s| {
                    s.resources.volume = Some(VolumeResource {
                        id: v.id.clone(),
                        socket: None,
                        delete_on_termination: delete,
                        size: v.size,
                    })
                })?;
                v
            }
            (None, None) => unreachable!("validated"),
        };
        if let Some(q) = d.qos {
            self.blockdp
                .set_qos(&volume.id, q.iops, q.bytes_per_sec)
                .await
                .map_err(bd("set the root volume's limits"))?;
        }
        let exported = match volume.export {
            Some(_) => volume,
            None => self
                .blockdp
                .export(&volume.id, d.num_queues)
                .await
                .map_err(bd("export the root volume"))?,
        };
        let socket = exported.export.map(|e| e.socket);
        self.update(&p.id, |s| {
            if let Some(v) = s.resources.volume.as_mut() {
                v.socket = socket;
            }
        })?;
        Ok(())
    }

    /// The netdp network a port goes on: given, found, or created as described.
    async fn network_for(&self, p: &Placement, spec: &PortSpec) -> Result<String, StepError> {
        let nd = |what: &str| {
            let what = what.to_string();
            move |source| StepError::Netdp { what, source }
        };
        if let Some(id) = &spec.network_id {
            return Ok(id.clone());
        }
        let Some(n) = &spec.network else {
            unreachable!("validated: a port spec names a network or a port")
        };
        let _guard = self.net_lock.lock().await;
        let mut network = None;
        if let Some(id) = &n.id {
            network = self
                .netdp
                .network(id)
                .await
                .map_err(nd("look up the network"))?;
        }
        if network.is_none() {
            network = self
                .netdp
                .networks()
                .await
                .map_err(nd("list networks"))?
                .into_iter()
                .find(|x| x.name == n.name && x.project_id == p.project_id);
        }
        let network = match network {
            Some(x) => x,
            None => self
                .netdp
                .create_network(&netdp::NetworkCreate {
                    name: n.name.clone(),
                    project_id: p.project_id.clone(),
                    mtu: n.mtu,
                })
                .await
                .map_err(nd("create the network"))?,
        };
        let (addr, len) = parse_cidr(&n.subnet.cidr).expect("validated");
        let base = Ipv4Addr::from(u32::from(addr) & mask(len));
        let wanted = format!("{base}/{len}");
        let has = self
            .netdp
            .subnets()
            .await
            .map_err(nd("list subnets"))?
            .into_iter()
            .any(|s| s.network_id == network.id && s.cidr == wanted);
        if !has {
            self.netdp
                .create_subnet(&netdp::SubnetCreate {
                    network_id: network.id.clone(),
                    project_id: p.project_id.clone(),
                    ip_version: 4,
                    cidr: wanted,
                    gateway_ip: n.subnet.gateway_ip,
                    enable_dhcp: n.subnet.enable_dhcp,
                })
                .await
                .map_err(nd("create the subnet"))?;
        }
        Ok(network.id)
    }

    async fn build_port(&self, p: &Placement, i: usize, spec: &PortSpec) -> Result<(), StepError> {
        let nd = |what: &str| {
            let what = what.to_string();
            move |source| StepError::Netdp { what, source }
        };
        let (port, created) = match &spec.port_id {
            Some(pid) => {
                let port = self
                    .netdp
                    .port(pid)
                    .await
                    .map_err(nd("look up the port"))?
                    .ok_or_else(|| StepError::NoPort(pid.clone()))?;
                (port, false)
            }
            None => {
                self.update(&p.id, |s| s.resources.ports_requested = true)?;
                let network_id = self.network_for(p, spec).await?;
                let subnets = self.netdp.subnets().await.map_err(nd("list subnets"))?;
                let fixed_ips = spec.fixed_ip.map(|ip| {
                    let subnet = subnets
                        .iter()
                        .filter(|s| s.network_id == network_id)
                        .find(|s| in_cidr(ip, &s.cidr))
                        .map(|s| s.id.clone())
                        .unwrap_or_default();
                    vec![netdp::FixedIp {
                        subnet_id: subnet,
                        ip_address: Some(ip),
                    }]
                });
                let port = self
                    .netdp
                    .create_port(&netdp::PortCreate {
                        name: format!("server-{}-{i}", p.id),
                        network_id,
                        project_id: p.project_id.clone(),
                        mac_address: spec.mac_address.clone(),
                        fixed_ips,
                        security_groups: spec.security_groups.clone(),
                        device_owner: "compute:nova".into(),
                        device_id: p.id.clone(),
                    })
                    .await
                    .map_err(nd("create the port"))?;
                (port, true)
            }
        };
        let subnets = self.netdp.subnets().await.map_err(nd("list subnets"))?;
        let first = port.fixed_ips.first();
        let subnet = first.and_then(|f| subnets.iter().find(|s| s.id == f.subnet_id));
        let tap_name = port.tap_name();
        // For the config drive's network data; a port works without it.
        let mtu = match self.netdp.network(&port.network_id).await {
            Ok(n) => n.map(|n| n.mtu),
            Err(_) => None,
        };
        let mut res = PortResource {
            id: port.id.clone(),
            network_id: port.network_id.clone(),
            tap: tap_name.clone(),
            tap_created: false,
            mac_address: port.mac_address.clone(),
            ip_address: first.and_then(|f| f.ip_address),
            prefix_len: subnet.and_then(|s| parse_cidr(&s.cidr)).map(|c| c.1),
            gateway_ip: subnet.and_then(|s| s.gateway_ip),
            dns_nameservers: subnet
                .map(|s| s.dns_nameservers.clone())
                .unwrap_or_default(),
            mtu,
            created,
        };
        self.update(&p.id, |s| s.resources.ports.push(res.clone()))?;
        let existed = tap::exists(&tap_name);
        tap::create(&tap_name).map_err(StepError::Tap)?;
        res.tap_created = !existed;
        self.update(&p.id, |s| {
            if let Some(r) = s.resources.ports.iter_mut().find(|r| r.id == res.id) {
                r.tap_created = res.tap_created;
            }
        })?;
        // Bind the plugged port to the server (netdp programs the tap right away rather than
        // at its next periodic sync), then, like Nova waiting for vif-plugged, start the
        // guest once netdp forwards its frames.
        self.netdp
            .bind_port(&port.id, &p.id)
            .await
            .map_err(nd("bind the port"))?;
        let deadline = Instant::now() + self.cfg.port_timeout;
        loop {
            let status = self
                .netdp
                .port(&port.id)
                .await
                .map_err(nd("check the port"))?;
            if status.is_some_and(|x| x.status == "ACTIVE") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StepError::PortTimeout {
                    port: port.id.clone(),
                    tap: tap_name,
                    timeout: self.cfg.port_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cmdline(&self, p: &Placement) -> String {
        let mut c = p.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into());
        let s = self.get(&p.id).ok();
        let first = s.as_ref().and_then(|s| s.resources.ports.first());
        if let Some(port) = first
            && let (Some(ip), Some(len)) = (port.ip_address, port.prefix_len)
        {
            // Linux's static configuration: ip=<client>::<gateway>:<netmask>::<device>:off
            let gw = port.gateway_ip.map(|g| g.to_string()).unwrap_or_default();
            let netmask = Ipv4Addr::from(mask(len));
            c.push_str(&format!(" ip={ip}::{gw}:{netmask}::eth0:off"));
        }
        c
    }

    /// The server's config drive as a read-only VMM drive; the image is built into the
    /// server's directory when missing.
    fn config_drive(&self, s: &Server) -> Result<vmm::FileDrive, StepError> {
        let path = self.config_drive_path(&s.placement.id);
        if !path.exists() {
            let dir = self.server_dir(&s.placement.id);
            std::fs::create_dir_all(&dir).map_err(|e| StepError::Dir(dir.clone(), e))?;
            crate::configdrive::build(s, &path).map_err(StepError::ConfigDrive)?;
        }
        Ok(vmm::FileDrive {
            drive_id: crate::configdrive::DRIVE_ID.into(),
            is_root_device: false,
            path_on_host: path.display().to_string(),
            is_read_only: true,
        })
    }

    /// Starts the server's VMM under a shim and configures it through its API; returns how
    /// long the process took to serve its API, and the configuration and start.
    async fn boot(&self, id: &str) -> Result<(Duration, Duration), StepError> {
        let spawned = Instant::now();
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        let dir = self.server_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| StepError::Dir(dir.clone(), e))?;
        let config_drive = self.config_drive(&s)?;
        let files = ShimFiles::in_dir(&dir);
        let sock = self.vmm_socket(id);
        let _ = std::fs::remove_file(&sock);
        let s_ = |p: &Path| p.display().to_string();
        let args: Vec<String> = vec![
            "--api-sock".into(),
            s_(&sock),
            "--serial-out".into(),
            s_(&self.console_path(id)),
            "--log-path".into(),
            s_(&dir.join("vmm.log")),
            "--level".into(),
            "info".into(),
            "--no-serial-input".into(),
            "--id".into(),
            id.to_string(),
        ];
        let child = proc::spawn_shim(&self.cfg.agent_exe, &files, &self.cfg.vmm_binary, &args)
            .map_err(StepError::Spawn)?;
        let shim_pid = child.id() as i32;
        let shim_start = proc::stat(shim_pid).map(|x| x.0).unwrap_or(0);
        lock(&self.children).insert(id.to_string(), child);

        // The pid record, then the API socket; a VMM that dies first is reported with its log.
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            if let Some(p) = files.read_pid() {
                break p;
            }
            if let Some(exit) = files.read_exit() {
                return Err(self.early_exit(id, Some(exit)));
            }
            if Instant::now() > deadline {
                proc::signal(shim_pid, shim_start, Signal::KILL);
                return Err(StepError::Spawn(proc::ProcessError::NoPid(files.pid_file)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let process = Process {
            shim_pid,
            shim_start,
            vmm_pid: pid.pid,
            vmm_start: pid.start,
        };
        self.update(id, |s| {
            s.process = Some(process);
            s.stop_requested = false;
        })?;
        loop {
            if tokio::net::UnixStream::connect(&sock).await.is_ok() {
                break;
            }
            if !proc::alive(pid.pid, pid.start) {
                self.wait_exit_record(&files, shim_pid, shim_start).await;
                return Err(self.early_exit(id, files.read_exit()));
            }
            if Instant::now() > deadline {
                self.kill(id, process).await;
                return Err(StepError::NoApi(sock));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let api_ready = spawned.elapsed();
        let configuring = Instant::now();
        let extra = match self.extra_drives(id).await {
            Ok(x) => x,
            Err(e) => {
                self.kill(id, process).await;
                return Err(e);
            }
        };
        let vm = Vmm(Client::unix(&sock, Duration::from_secs(30)));
        let r = &s.resources;
        let configure = async {
            let v = |what| move |source| StepError::Vmm { what, source };
            vm.machine_config(&vmm::MachineConfig {
                vcpu_count: s.placement.vcpus,
                mem_size_mib: s.placement.ram_mib,
            })
            .await
            .map_err(v("PUT /machine-config"))?;
            vm.boot_source(&vmm::BootSource {
                kernel_image_path: r.kernel_path.as_deref().map(s_).unwrap_or_default(),
                boot_args: r.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into()),
                initrd_path: r.initrd_path.as_deref().map(s_),
            })
            .await
            .map_err(v("PUT /boot-source"))?;
            if let Some(socket) = r.volume.as_ref().and_then(|v| v.socket.as_deref()) {
                vm.drive(&vmm::Drive {
                    drive_id: "rootfs".into(),
                    is_root_device: true,
                    socket: s_(socket),
                })
                .await
                .map_err(v("PUT /drives/rootfs"))?;
            }
            for d in &extra {
                vm.drive(d).await.map_err(v("PUT /drives (extra)"))?;
            }
            vm.file_drive(&config_drive)
                .await
                .map_err(v("PUT /drives/config-drive"))?;
            for (i, port) in r.ports.iter().enumerate() {
                vm.network_interface(&vmm::NetworkInterface {
                    iface_id: format!("eth{i}"),
                    host_dev_name: port.tap.clone(),
                    guest_mac: port.mac_address.clone(),
                })
                .await
                .map_err(v("PUT /network-interfaces"))?;
            }
            vm.action("InstanceStart")
                .await
                .map_err(v("PUT /actions InstanceStart"))
        };
        if let Err(e) = configure.await {
            self.kill(id, process).await;
            return Err(e);
        }
        Ok((api_ready, configuring.elapsed()))
    }

    fn early_exit(&self, id: &str, exit: Option<ExitRecord>) -> StepError {
        let log = log_tail(&self.server_dir(id).join("vmm.log"));
        let log = if log.is_empty() {
            log_tail(&self.server_dir(id).join("shim.log"))
        } else {
            log
        };
        let _ = self.update(id, |s| s.process = None);
        StepError::EarlyExit {
            status: describe_exit(exit),
            log,
        }
    }

    async fn wait_exit_record(&self, files: &ShimFiles, shim_pid: i32, shim_start: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while files.read_exit().is_none()
            && proc::alive(shim_pid, shim_start)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for the VMM to exit; true if it did.
    async fn wait_gone(&self, p: Process, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !proc::alive(p.vmm_pid, p.vmm_start) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the VMM (SIGKILL) and forgets it.
    async fn kill(&self, id: &str, p: Process) {
        let _ = self.update(id, |s| s.stop_requested = true);
        proc::signal(p.vmm_pid, p.vmm_start, Signal::KILL);
        self.wait_gone(p, Duration::from_secs(10)).await;
        self.reaped(id, p).await;
    }

    /// After the VMM is gone: reaps the shim, returns how the VMM ended, forgets the process.
    async fn reaped(&self, id: &str, p: Process) -> Option<ExitRecord> {
        let files = ShimFiles::in_dir(&self.server_dir(id));
        self.wait_exit_record(&files, p.shim_pid, p.shim_start)
            .await;
        if let Some(mut child) = lock(&self.children).remove(id) {
            // The shim exits right after writing its record.
            std::thread::spawn(move || child.wait());
        }
        let _ = self.update(id, |s| s.process = None);
        files.read_exit()
    }

    /// Stops the VMM: Ctrl+Alt+Del and a grace period when `graceful`, then SIGTERM and
    /// SIGKILL.
    async fn stop_vmm(&self, id: &str, graceful: bool) -> Result<(), StepError> {
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        let Some(p) = s.process else {
            return Ok(());
        };
        self.update(id, |s| s.stop_requested = true)?;
        let vm = Vmm(Client::unix(self.vmm_socket(id), Duration::from_secs(10)));
        let mut gone = false;
        if graceful {
            if s.status == Status::Paused {
                let _ = vm.set_state("Resumed").await;
            }
            if vm.action("SendCtrlAltDel").await.is_ok() {
                gone = self.wait_gone(p, self.cfg.shutdown_timeout).await;
            }
        }
        if !gone {
            proc::signal(p.vmm_pid, p.vmm_start, Signal::TERM);
            gone = self.wait_gone(p, Duration::from_secs(5)).await;
        }
        if !gone {
            proc::signal(p.vmm_pid, p.vmm_start, Signal::KILL);
            if !self.wait_gone(p, Duration::from_secs(10)).await {
                return Err(StepError::Unkillable(p.vmm_pid));
            }
        }
        self.reaped(id, p).await;
        self.update(id, |s| s.stop_requested = false)?;
        Ok(())
    }

    /// Starts an action in the background; the server shows it as its task state.
    pub fn action(self: &Arc<Self>, id: &str, action: Action) -> Result<Server, AgentError> {
        let server = {
            let mut st = lock(&self.state);
            let s = st
                .servers
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            if let Some(t) = &s.task_state {
                return Err(AgentError::Conflict(format!("server {id} is busy ({t})")));
            }
            let built = s.resources.cmdline.is_some();
            if !action.allowed(s.status, built) {
                return Err(AgentError::Conflict(format!(
                    "cannot {} server {id} while it is {}",
                    action.task(),
                    s.status.as_str()
                )));
            }
            s.task_state = Some(action.task().into());
            s.updated = now();
            let s = s.clone();
            self.save(&mut st).map_err(AgentError::Store)?;
            s
        };
        let agent = self.clone();
        let op = self.op_lock(id);
        let id = id.to_string();
        tokio::spawn(async move {
            let _guard = op.lock().await;
            let (result, target) = agent.run_action(&id, action).await;
            agent.finish(&id, result, target);
        });
        Ok(server)
    }

    async fn run_action(&self, id: &str, action: Action) -> (Result<(), StepError>, Status) {
        let vm = Vmm(Client::unix(self.vmm_socket(id), Duration::from_secs(10)));
        let v = |what| move |source| StepError::Vmm { what, source };
        match action {
            Action::Stop => (self.stop_vmm(id, true).await, Status::Shutoff),
            Action::Start => (self.boot(id).await.map(drop), Status::Active),
            Action::Reboot { hard } => {
                let r = match self.stop_vmm(id, !hard).await {
                    Ok(()) => self.boot(id).await.map(drop),
                    Err(e) => Err(e),
                };
                (r, Status::Active)
            }
            Action::Pause => (
                vm.set_state("Paused").await.map_err(v("PATCH /vm Paused")),
                Status::Paused,
            ),
            Action::Unpause => (
                vm.set_state("Resumed")
                    .await
                    .map_err(v("PATCH /vm Resumed")),
                Status::Active,
            ),
        }
    }

    /// Deletes a server: kills its VMM, releases its volume, ports and taps, forgets it.
    pub async fn delete(&self, id: &str) -> Result<(), AgentError> {
        {
            let mut st = lock(&self.state);
            let s = st
                .servers
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            s.task_state = Some("deleting".into());
            s.updated = now();
            self.save(&mut st).map_err(AgentError::Store)?;
        }
        let op = self.op_lock(id);
        let _guard = op.lock().await;
        let result = self.release(id).await;
        match result {
            Ok(()) => {
                let mut st = lock(&self.state);
                st.servers.remove(id);
                self.save(&mut st).map_err(AgentError::Store)?;
                drop(st);
                lock(&self.locks).remove(id);
                let _ = std::fs::remove_dir_all(self.server_dir(id));
                Ok(())
            }
            Err(e) => {
                let message = format!("delete failed: {}", error_chain(&e));
                let _ = self.update(id, |s| {
                    s.task_state = None;
                    s.status = Status::Error;
                    s.fault = Some(Fault {
                        message,
                        created: now(),
                    });
                });
                Err(AgentError::Step(e))
            }
        }
    }

    async fn release(&self, id: &str) -> Result<(), StepError> {
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        if let Some(p) = s.process {
            self.kill(id, p).await;
            if proc::alive(p.vmm_pid, p.vmm_start) {
                return Err(StepError::Unkillable(p.vmm_pid));
            }
        }
        self.adopt_orphans(&s).await?;
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        if let Some(v) = &s.resources.volume {
            let bd = |what| move |source| StepError::Blockdp { what, source };
            match self.blockdp.unexport(&v.id).await {
                Ok(_) => {}
                Err(e) if matches!(e.status(), Some(404 | 409)) => {}
                Err(e) => return Err(bd("unexport the root volume")(e)),
            }
            if v.delete_on_termination {
                match self.blockdp.delete(&v.id).await {
                    Ok(()) => {}
                    Err(e) if e.status() == Some(404) => {}
                    Err(e) => return Err(bd("delete the root volume")(e)),
                }
            }
            self.update(id, |s| s.resources.volume = None)?;
        }
        self.release_attached(id).await?;
        for port in &s.resources.ports {
            if port.tap_created {
                tap::delete(&port.tap).map_err(StepError::Tap)?;
            }
            let (what, result) = if port.created {
                ("delete the port", self.netdp.delete_port(&port.id).await)
            } else {
                (
                    "unbind the port",
                    self.netdp.unbind_port(&port.id).await.map(drop),
                )
            };
            match result {
                Ok(()) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(source) => {
                    return Err(StepError::Netdp {
                        what: what.into(),
                        source,
                    });
                }
            }
            self.update(id, |s| s.resources.ports.retain(|p| p.id != port.id))?;
        }
        Ok(())
    }

    /// A build cut short (an agent crash) may have left a volume or ports the state does
    /// not name: blockdp and netdp were asked, the answer never recorded. They carry the
    /// server's names (`server-<id>-root`, `server-<id>-<n>` on device `<id>`): find them
    /// and record them, so the release that follows frees them too.
    async fn adopt_orphans(&self, s: &Server) -> Result<(), StepError> {
        let id = s.placement.id.clone();
        if s.resources.volume.is_none() && s.resources.volume_requested {
            let name = format!("server-{id}-root");
            let vols = self
                .blockdp
                .list()
                .await
                .map_err(|source| StepError::Blockdp {
                    what: "list volumes",
                    source,
                })?;
            if let Some(v) = vols.into_iter().find(|v| v.name == name) {
                tracing::info!(server = %id, volume = %v.id, "found an unrecorded root volume");
                self.update(&id, |s| {
                    s.resources.volume = Some(VolumeResource {
                        id: v.id.clone(),
                        socket: v.export.as_ref().map(|e| e.socket.clone()),
                        delete_on_termination: true,
                        size: v.size,
                    })
                })?;
            }
        }
        if s.resources.ports_requested {
            let prefix = format!("server-{id}-");
            let ports = self
                .netdp
                .ports()
                .await
                .map_err(|source| StepError::Netdp {
                    what: "list ports".into(),
                    source,
                })?;
            for port in ports {
                let known = s.resources.ports.iter().any(|r| r.id == port.id);
                if known || port.device_id != id || !port.name.starts_with(&prefix) {
                    continue;
                }
                tracing::info!(server = %id, port = %port.id, "found an unrecorded port");
                let tap = port.tap_name();
                let res = PortResource {
                    id: port.id.clone(),
                    network_id: port.network_id.clone(),
                    tap_created: tap::exists(&tap),
                    tap,
                    mac_address: port.mac_address.clone(),
                    ip_address: None,
                    prefix_len: None,
                    gateway_ip: None,
                    dns_nameservers: Vec::new(),
                    mtu: None,
                    created: true,
                };
                self.update(&id, |s| s.resources.ports.push(res))?;
            }
        }
        Ok(())
    }

    /// The last `lines` lines of the server's console (all of it when `None`), from at
    /// most its last [`MAX_CONSOLE`] bytes.
    pub fn console(&self, id: &str, lines: Option<usize>) -> Result<String, AgentError> {
        self.get(id)?;
        let bytes = read_tail(&self.console_path(id), MAX_CONSOLE).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        Ok(match lines {
            None => text.into_owned(),
            Some(n) => {
                let all: Vec<&str> = text.split_inclusive('\n').collect();
                all[all.len().saturating_sub(n)..].concat()
            }
        })
    }

    /// One supervision pass: a VMM that exited on its own makes its server SHUTOFF (clean
    /// exit) or ERROR (crash, kill, failure).
    pub async fn supervise(&self) {
        let candidates: Vec<(String, Process)> = lock(&self.state)
            .servers
            .values()
            .filter(|s| s.task_state.is_none())
            .filter_map(|s| s.process.map(|p| (s.placement.id.clone(), p)))
            .collect();
        for (id, p) in candidates {
            if proc::alive(p.vmm_pid, p.vmm_start) {
                continue;
            }
            let op = self.op_lock(&id);
            let Ok(_guard) = op.try_lock() else {
                continue; // an operation owns this VMM's exit
            };
            let Ok(s) = self.get(&id) else { continue };
            if s.process != Some(p) || s.task_state.is_some() {
                continue;
            }
            let exit = self.reaped(&id, p).await;
            let (status, fault) = outcome(exit, s.stop_requested);
            let fault = fault.map(|f| {
                let tail = log_tail(&self.server_dir(&id).join("vmm.log"));
                if tail.is_empty() {
                    f
                } else {
                    format!("{f}: {tail}")
                }
            });
            tracing::info!(server = %id, status = status.as_str(), "VMM exited");
            {
                let mut c = lock(&self.counters);
                let key = if status == Status::Error {
                    "error"
                } else {
                    "shutoff"
                };
                *c.unexpected_exits.entry(key).or_default() += 1;
            }
            let r = self.update(&id, |s| {
                s.status = status;
                s.stop_requested = false;
                s.fault = fault.map(|message| Fault {
                    message,
                    created: now(),
                });
            });
            if let Err(e) = r {
                tracing::error!(server = %id, error = %error_chain(&e), "cannot record a VMM exit");
            }
        }
    }
}

/// What a VMM exit means for its server: SHUTOFF for a clean exit or one that was asked
/// for, ERROR with a fault message otherwise (`vmm`'s exit codes: 0 guest reset or
/// shutdown, 2 guest crash, 1 VMM failure).
pub fn outcome(exit: Option<ExitRecord>, requested: bool) -> (Status, Option<String>) {
    if requested {
        return (Status::Shutoff, None);
    }
    match exit {
        Some(ExitRecord { code: Some(0), .. }) => (Status::Shutoff, None),
        Some(ExitRecord { code: Some(2), .. }) => (
            Status::Error,
            Some("the guest crashed (vmm exit code 2)".into()),
        ),
        other => (Status::Error, Some(describe_exit(other))),
    }
}

fn describe_exit(exit: Option<ExitRecord>) -> String {
    match exit {
        Some(ExitRecord { code: Some(c), .. }) => format!("the VMM exited with code {c}"),
        Some(ExitRecord {
            signal: Some(s), ..
        }) => format!("the VMM was killed by signal {s}"),
        _ => "the VMM vanished (exit status unknown)".into(),
    }
}

/// Most console bytes returned at once (the end of the log).
pub const MAX_CONSOLE: u64 = 1 << 20;

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The last non-empty line of a log file.
fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    parse_cidr(cidr).is_some_and(|(a, l)| u32::from(ip) & mask(l) == u32::from(a) & mask(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_nova_states() {
        let rec = |code, signal| Some(ExitRecord { code, signal });
        assert_eq!(outcome(rec(Some(0), None), false), (Status::Shutoff, None));
        assert_eq!(outcome(rec(None, Some(9)), true), (Status::Shutoff, None));
        let (s, f) = outcome(rec(Some(2), None), false);
        assert_eq!(s, Status::Error);
        assert!(f.unwrap().contains("crashed"));
        let (s, f) = outcome(rec(None, Some(9)), false);
        assert_eq!(s, Status::Error);
        assert!(f.unwrap().contains("signal 9"));
        let (s, f) = outcome(None, false);
        assert_eq!(s, Status::Error);
        assert!(f.unwrap().contains("vanished"));
    }

    #[test]
    fn actions_follow_nova_state_rules() {
        use Status::*;
        assert!(Action::Stop.allowed(Active, true));
        assert!(Action::Stop.allowed(Paused, true));
        assert!(!Action::Stop.allowed(Shutoff, true));
        assert!(Action::Start.allowed(Shutoff, true));
        assert!(!Action::Start.allowed(Active, true));
        assert!(!Action::Reboot { hard: false }.allowed(Shutoff, true));
        assert!(Action::Reboot { hard: true }.allowed(Error, true));
        assert!(!Action::Reboot { hard: true }.allowed(Error, false));
        assert!(Action::Pause.allowed(Active, true));
        assert!(Action::Unpause.allowed(Paused, true));
        assert!(!Action::Unpause.allowed(Active, true));
    }

    #[test]
    fn cidr_membership() {
        assert!(in_cidr(Ipv4Addr::new(10, 0, 0, 5), "10.0.0.0/24"));
        assert!(!in_cidr(Ipv4Addr::new(10, 0, 1, 5), "10.0.0.0/24"));
        assert_eq!(Ipv4Addr::from(mask(24)), Ipv4Addr::new(255, 255, 255, 0));
    }
}
