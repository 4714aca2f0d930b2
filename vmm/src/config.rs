//! Firecracker's configuration objects, with its field names: the bodies of `PUT
//! /boot-source`, `/machine-config`, `/drives/{id}`, `/network-interfaces/{id}`, `/logger`,
//! `/metrics`, and the whole-VM document of `--config-file` and `GET /vm/config`.
//!
//! Unknown fields are refused. [`VmConfig`] holds what has been configured so far and
//! checks each update before taking it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::cpuid::CpuTemplate;
use crate::arch::layout;
use crate::machine::{DriveSpec, NetSpec, VmSpec};

/// Errors in a configuration request: each becomes a 400 with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The vCPU count is out of range.
    #[error("Invalid vCPU count: it should be between 1 and {max}.", max = layout::MAX_VCPUS)]
    VcpuCount,
    /// The memory size is zero or absurd.
    #[error("The memory size (MiB) is invalid: {0}.")]
    MemSize(usize),
    /// A feature we do not implement was asked for.
    #[error("{0} is not supported by this VMM.")]
    Unsupported(&'static str),
    /// A file named in the request does not exist or cannot be opened.
    #[error("Cannot open {what} {path}: {reason}")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The id in the URL differs from the id in the body.
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
    /// A second root device.
    #[error("A root block device already exists!")]
    RootExists,
    /// Starting without a kernel.
    #[error("Cannot start microvm without kernel configuration.")]
    MissingBootSource,
    /// Configuration after the VM started.
    #[error("The requested operation is not supported after starting the microVM.")]
    AfterStart,
    /// An `io_engine` other than `Sync` or `Async`.
    #[error("Invalid io_engine {0:?}: expected \"Sync\" or \"Async\".")]
    IoEngine(String),
    /// A queue pair count out of range.
    #[error("Invalid queue_pairs {0}: it should be between 1 and 8.")]
    QueuePairs(u16),
    /// A tap name that cannot be a Linux interface name.
    #[error("Invalid host device name: {0:?}")]
    TapName(String),
    /// A guest MAC address that does not parse.
    #[error("Invalid guest MAC address: {0}")]
    Mac(String),
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Default command line, as Firecracker's: serial console, reboot through the keyboard
/// controller, no PCI.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule";

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading (not supported: must be false).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (not supported: must be false).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// CPUID template.
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Huge pages backing guest memory: only `"None"`.
    #[serde(default = "huge_pages_none")]
    pub huge_pages: String,
}

fn huge_pages_none() -> String {
    "None".into()
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: CpuTemplate::None,
            huge_pages: huge_pages_none(),
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// Number of vCPUs.
    pub vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<usize>,
    /// SMT.
    pub smt: Option<bool>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// CPUID template.
    pub cpu_template: Option<CpuTemplate>,
    /// Huge pages.
    pub huge_pages: Option<String>,
}

impl MachineConfig {
    /// Applies a partial update.
    pub fn apply(&self, u: &MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: u.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: u.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: u.smt.unwrap_or(self.smt),
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: u.cpu_template.unwrap_or(self.cpu_template),
            huge_pages: u
                .huge_pages
                .clone()
                .unwrap_or_else(|| self.huge_pages.clone()),
        }
    }

    /// Checks ranges and unsupported features.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > layout::MAX_VCPUS {
            return Err(ConfigError::VcpuCount);
        }
        // Below 2 MiB there is no room for the kernel; above 1 TiB is surely a mistake.
        if self.mem_size_mib < 2 || self.mem_size_mib > (1 << 20) {
            return Err(ConfigError::MemSize(self.mem_size_mib));
        }
        if self.smt {
            return Err(ConfigError::Unsupported("smt"));
        }
        if self.track_dirty_pages {
            return Err(ConfigError::Unsupported("track_dirty_pages"));
        }
        if self.huge_pages != "None" {
            return Err(ConfigError::Unsupported("huge_pages"));
        }
        Ok(())
    }
}

/// A token bucket as Firecracker describes it (see [`crate::devices::rate_limiter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size.
    pub size: u64,
    /// Initial burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket.
    pub refill_time: u64,
}

/// Rate limiter of a drive or interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive id.
    pub drive_id: String,
    /// Host path of the backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether this is the root device.
    pub is_root_device: bool,
    /// Refuse guest writes.
    #[serde(default)]
    pub is_read_only: bool,
    /// Root partition UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// `Unsafe` or `Writeback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// `Sync` (positioned I/O, the default) or `Async` (io_uring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// vhost-user-blk socket (instead of `path_on_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface id.
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// Queue pairs, 1 to 8 (an extension to Firecracker's schema; more than one needs a
    /// multi-queue tap, `ip tuntap add ... multi_queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_pairs: Option<u16>,
}

/// `PATCH /drives/{drive_id}`: a new backing file and/or rate limiter for a running drive.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive id.
    pub drive_id: String,
    /// New host path of the backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters for a running interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface id.
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File (or named pipe) to log to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Prefix lines with the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with the source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File (or named pipe) that `FlushMetrics` appends a JSON line to.
    pub metrics_path: String,
}

/// The whole-VM document: `--config-file` input and `GET /vm/config` output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd, command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// Logger.
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    /// Metrics.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

fn check_file(what: &'static str, path: &str, write: bool) -> Result<(), ConfigError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(drop)
        .map_err(|e| ConfigError::MissingFile {
            what,
            path: path.to_string(),
            reason: e.to_string(),
        })
}

fn check_mac(mac: &str) -> Result<(), ConfigError> {
    let ok = mac.len() == 17 && crate::devices::virtio::net::parse_mac(mac).is_some();
    ok.then_some(()).ok_or_else(|| ConfigError::Mac(mac.into()))
}

impl VmConfig {
    /// Replaces the boot source after checking its files.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), ConfigError> {
        check_file("kernel image", &b.kernel_image_path, false)?;
        if let Some(initrd) = &b.initrd_path {
            check_file("initrd", initrd, false)?;
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// Replaces the machine configuration after validating it.
    pub fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), ConfigError> {
        m.validate()?;
        self.machine_config = m;
        Ok(())
    }

    /// Inserts or replaces drive `id`.
    pub fn put_drive(&mut self, id: &str, d: Drive) -> Result<(), ConfigError> {
        if d.drive_id != id {
            return Err(ConfigError::IdMismatch);
        }
        if !matches!(d.io_engine.as_deref(), None | Some("Sync") | Some("Async")) {
            return Err(ConfigError::IoEngine(
                d.io_engine.clone().unwrap_or_default(),
            ));
        }
        match (&d.path_on_host, &d.socket) {
            (Some(path), None) => check_file("drive", path, !d.is_read_only)?,
            (None, Some(socket)) => {
                use std::os::unix::fs::FileTypeExt;
                // Only looked at, not connected to: backends serve one frontend at a time.
                let is_socket = std::fs::metadata(socket).map(|m| m.file_type().is_socket());
                if !matches!(is_socket, Ok(true)) {
                    return Err(ConfigError::MissingFile {
                        what: "vhost-user socket",
                        path: socket.clone(),
                        reason: "not a unix socket".into(),
                    });
                }
            }
            _ => {
                return Err(ConfigError::MissingFile {
                    what: "drive",
                    path: String::new(),
                    reason: "exactly one of path_on_host and socket is required".into(),
                });
            }
        }
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|x| x.is_root_device && x.drive_id != id)
        {
            return Err(ConfigError::RootExists);
        }
        match self.drives.iter_mut().find(|x| x.drive_id == id) {
            Some(slot) => *slot = d,
            None => self.drives.push(d),
        }
        // The root device comes first, as Firecracker orders them (it becomes /dev/vda).
        self.drives.sort_by_key(|x| !x.is_root_device);
        Ok(())
    }

    /// Inserts or replaces network interface `id`.
    pub fn put_network_interface(
        &mut self,
        id: &str,
        n: NetworkInterface,
    ) -> Result<(), ConfigError> {
        if n.iface_id != id {
            return Err(ConfigError::IdMismatch);
        }
        if let Some(mac) = &n.guest_mac {
            check_mac(mac)?;
        }
        if !(1..=8).contains(&n.queue_pairs.unwrap_or(1)) {
            return Err(ConfigError::QueuePairs(n.queue_pairs.unwrap_or(0)));
        }
        if n.host_dev_name.is_empty() || n.host_dev_name.len() >= 16 {
            return Err(ConfigError::TapName(n.host_dev_name.clone()));
        }
        match self
            .network_interfaces
            .iter_mut()
            .find(|x| x.iface_id == id)
        {
            Some(slot) => *slot = n,
            None => self.network_interfaces.push(n),
        }
        Ok(())
    }

    /// Checks a whole document (as `--config-file` gives it) by replaying it through the
    /// same checks as the API.
    pub fn validated(self) -> Result<VmConfig, ConfigError> {
        let mut out = VmConfig {
            logger: self.logger,
            metrics: self.metrics,
            ..Default::default()
        };
        if let Some(b) = self.boot_source {
            out.set_boot_source(b)?;
        }
        out.set_machine_config(self.machine_config)?;
        for d in self.drives {
            let id = d.drive_id.clone();
            out.put_drive(&id, d)?;
        }
        for n in self.network_interfaces {
            let id = n.iface_id.clone();
            out.put_network_interface(&id, n)?;
        }
        Ok(out)
    }

    /// What the machine builder needs, or why the VM cannot start yet.
    pub fn vm_spec(&self) -> Result<VmSpec, ConfigError> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or(ConfigError::MissingBootSource)?;
        Ok(VmSpec {
            vcpus: self.machine_config.vcpu_count,
            mem_mib: self.machine_config.mem_size_mib,
            template: self.machine_config.cpu_template,
            kernel: PathBuf::from(&boot.kernel_image_path),
            initrd: boot.initrd_path.as_deref().map(PathBuf::from),
            boot_args: boot
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string()),
            drives: self
                .drives
                .iter()
                .map(|d| DriveSpec {
                    id: d.drive_id.clone(),
                    path: Path::new(d.path_on_host.as_deref().unwrap_or_default()).to_path_buf(),
                    read_only: d.is_read_only,
                    rate_limiter: d.rate_limiter.clone(),
                    socket: d.socket.as_deref().map(PathBuf::from),
                    io_uring: d.io_engine.as_deref() == Some("Async"),
                })
                .collect(),
            nets: self
                .network_interfaces
                .iter()
                .map(|n| NetSpec {
                    id: n.iface_id.clone(),
                    tap: n.host_dev_name.clone(),
                    mac: n
                        .guest_mac
                        .as_deref()
                        .and_then(crate::devices::virtio::net::parse_mac),
                    rx_rate_limiter: n.rx_rate_limiter.clone(),
                    tx_rate_limiter: n.tx_rate_limiter.clone(),
                    queue_pairs: n.queue_pairs.unwrap_or(1),
                })
                .collect(),
            protocol: Default::default(),
            serial_stdin: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_config_file_parses_and_unknown_fields_are_refused() {
        let doc = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                        "is_read_only": false}],
            "network-interfaces": []
        }"#;
        let c: VmConfig = serde_json::from_str(doc).unwrap();
        assert_eq!(c.machine_config.vcpu_count, 2);
        assert_eq!(c.drives[0].drive_id, "rootfs");
        let bad = r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "cpus": 3}}"#;
        assert!(serde_json::from_str::<VmConfig>(bad).is_err());
    }

    #[test]
    fn the_example_config_parses_and_validates_its_machine() {
        // `etc/vm-config.json`: the documented example of a `--config-file`.
        let c: VmConfig = serde_json::from_str(include_str!("../etc/vm-config.json")).unwrap();
        assert_eq!(c.machine_config.validate(), Ok(()));
        assert_eq!(c.machine_config.vcpu_count, 2);
        assert_eq!(
            c.drives[0]
                .rate_limiter
                .as_ref()
                .unwrap()
                .ops
                .as_ref()
                .unwrap()
                .one_time_burst,
            Some(5000)
        );
        assert_eq!(c.network_interfaces[0].host_dev_name, "tap-vm1");
        assert!(check_mac(c.network_interfaces[0].guest_mac.as_deref().unwrap()).is_ok());
        assert!(c.metrics.is_some() && c.logger.is_some());
    }

    #[test]
    fn machine_config_validation_and_patch() {
        let m = MachineConfig::default();
        assert_eq!(m.validate(), Ok(()));
        let p = m.apply(&MachineConfigUpdate {
            vcpu_count: Some(33),
            ..Default::default()
        });
        assert_eq!(p.validate(), Err(ConfigError::VcpuCount));
        let p = m.apply(&MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        });
        assert_eq!((p.vcpu_count, p.mem_size_mib), (1, 512));
        let smt = MachineConfig {
            smt: true,
            ..MachineConfig::default()
        };
        assert!(smt.validate().is_err());
    }

    #[test]
    fn drives_check_ids_files_and_a_single_root() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let path = f.path().to_str().unwrap().to_string();
        let drive = |id: &str, root| Drive {
            drive_id: id.into(),
            path_on_host: Some(path.clone()),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        };
        let mut c = VmConfig::default();
        assert_eq!(
            c.put_drive("a", drive("b", true)),
            Err(ConfigError::IdMismatch)
        );
        c.put_drive("data", drive("data", false)).unwrap();
        c.put_drive("root", drive("root", true)).unwrap();
        assert_eq!(c.drives[0].drive_id, "root");
        assert_eq!(
            c.put_drive("r2", drive("r2", true)),
            Err(ConfigError::RootExists)
        );
        let mut missing = drive("m", false);
        missing.path_on_host = Some("/nonexistent/disk".into());
        assert!(matches!(
            c.put_drive("m", missing),
            Err(ConfigError::MissingFile { .. })
        ));
    }

    #[test]
    fn macs_are_checked() {
        assert!(check_mac("06:00:ac:10:00:02").is_ok());
        assert!(check_mac("06:00:ac:10:00").is_err());
        assert!(check_mac("zz:00:ac:10:00:02").is_err());
    }
}
