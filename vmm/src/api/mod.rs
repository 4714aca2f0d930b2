//! The Firecracker-compatible HTTP API on a Unix socket.
//!
//! - [`http`]: a small HTTP/1.1 request parser and response writer (bounded sizes, keep-alive).
//! - [`routes`]: turns a parsed request into a typed [`ApiRequest`], or a 400 with
//!   Firecracker's `{"fault_message": ...}` body.
//! - [`server`]: the socket thread: accepts connections, parses, sends each [`ApiRequest`] to
//!   the VMM thread over a channel and writes back its [`ApiResponse`].

pub mod http;
pub mod routes;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::config::{
    BootSource, Drive, DriveUpdate, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, NetworkInterface, NetworkInterfaceUpdate,
};

/// `PUT /actions` action types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard controller.
    SendCtrlAltDel,
    /// Append the metrics to the metrics file.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// What to do.
    pub action_type: ActionType,
}

/// `PATCH /vm` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop running vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateBody {
    /// The wanted state.
    pub state: VmState,
}

/// One API request, parsed and typed: what the VMM thread acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /metrics`: Prometheus text.
    GetMetrics,
    /// `GET /version`.
    GetVersion,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{id}`.
    PutDrive(String, Drive),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(String, NetworkInterface),
    /// `PATCH /drives/{id}`.
    PatchDrive(String, DriveUpdate),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(String, NetworkInterfaceUpdate),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmState),
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
}

/// The VMM thread's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiResponse {
    /// 204.
    NoContent,
    /// 200 with a JSON body.
    Json(serde_json::Value),
    /// 200 with a Prometheus text body.
    Text(String),
    /// An error status with a fault message.
    Error(u16, String),
}

impl ApiResponse {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiResponse::Error(400, message.into())
    }
}
