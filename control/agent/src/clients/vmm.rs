//! One VM's Firecracker-compatible API (the `vmm` process's socket).

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{Client, HttpError, NO_BODY};

/// `PUT /boot-source`.
#[derive(Debug, Clone, Serialize)]
pub struct BootSource {
    /// Kernel path.
    pub kernel_image_path: String,
    /// Command line.
    pub boot_args: String,
    /// Initrd path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// RAM in MiB.
    pub mem_size_mib: u64,
}

/// `PUT /drives/{id}` for a vhost-user-blk drive.
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// Drive id.
    pub drive_id: String,
    /// Root device.
    pub is_root_device: bool,
    /// The vhost-user-blk socket.
    pub socket: String,
}

/// `PUT /drives/{id}` for a drive backed by a host file (the config drive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDrive {
    /// Drive id.
    pub drive_id: String,
    /// Root device.
    pub is_root_device: bool,
    /// The backing file.
    pub path_on_host: String,
    /// Refuse guest writes.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInterface {
    /// Interface id.
    pub iface_id: String,
    /// The tap.
    pub host_dev_name: String,
    /// The guest's MAC.
    pub guest_mac: String,
}

/// `GET /`.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceInfo {
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
}

/// A client of one VMM.
#[derive(Debug, Clone)]
pub struct Vmm(pub Client);

impl Vmm {
    /// Sets the kernel, initrd and command line.
    pub async fn boot_source(&self, b: &BootSource) -> Result<(), HttpError> {
        self.0
            .call(Method::PUT, "/boot-source", Some(b))
            .await
            .map(drop)
    }

    /// Sets vCPUs and memory.
    pub async fn machine_config(&self, m: &MachineConfig) -> Result<(), HttpError> {
        self.0
            .call(Method::PUT, "/machine-config", Some(m))
            .await
            .map(drop)
    }

    /// Attaches a drive.
    pub async fn drive(&self, d: &Drive) -> Result<(), HttpError> {
        let path = format!("/drives/{}", d.drive_id);
        self.0.call(Method::PUT, &path, Some(d)).await.map(drop)
    }

    /// Attaches a drive backed by a host file.
    pub async fn file_drive(&self, d: &FileDrive) -> Result<(), HttpError> {
        let path = format!("/drives/{}", d.drive_id);
        self.0.call(Method::PUT, &path, Some(d)).await.map(drop)
    }

    /// Attaches a network interface.
    pub async fn network_interface(&self, n: &NetworkInterface) -> Result<(), HttpError> {
        let path = format!("/network-interfaces/{}", n.iface_id);
        self.0.call(Method::PUT, &path, Some(n)).await.map(drop)
    }

    /// `InstanceStart`, `SendCtrlAltDel`.
    pub async fn action(&self, action_type: &str) -> Result<(), HttpError> {
        let body = json!({ "action_type": action_type });
        self.0
            .call(Method::PUT, "/actions", Some(&body))
            .await
            .map(drop)
    }

    /// Pauses (`Paused`) or resumes (`Resumed`) the vCPUs.
    pub async fn set_state(&self, state: &str) -> Result<(), HttpError> {
        let body = json!({ "state": state });
        self.0
            .call(Method::PATCH, "/vm", Some(&body))
            .await
            .map(drop)
    }

    /// The instance's state.
    pub async fn info(&self) -> Result<InstanceInfo, HttpError> {
        self.0.json(Method::GET, "/", NO_BODY).await
    }
}
