//! Registration and heartbeat towards control (when `--control-url` is given).
//!
//! The contract (control implements the other side):
//! - `PUT {control}/v1/nodes/{node_id}` with `{"node": {id, hostname, agent_url,
//!   inventory: {vcpus, memory_mib, disk_bytes, disk_free_bytes}, usage, servers_by_status}}`
//!   registers or refreshes the node (any 2xx). Sent at start and whenever control answers a
//!   heartbeat with 404 (it forgot the node).
//! - `POST {control}/v1/nodes/{node_id}/heartbeat` with `{"heartbeat": {seq, time, servers:
//!   [{id, status, task_state, fault}]}}` every interval (default 10 s); control answers 2xx.
//!   A node whose last heartbeat is older than three intervals is down: no new placements.
//!   `network_generation` is the generation of the network state applied last
//!   (`PUT /v1/network`); control pushes the state again to a node that is behind.
//! - Both carry `X-Auth-Token` when `--control-token` is set.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::json;

use crate::agent::{Agent, error_chain};
use crate::http::{Client, HttpError, parse_http_url};

/// Where and how often to report.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Control's base URL (`http://host:port[/prefix]`).
    pub url: String,
    /// A token for `X-Auth-Token`.
    pub token: Option<String>,
    /// Heartbeat period.
    pub interval: Duration,
    /// The URL control should call this agent at, if it listens on TCP.
    pub agent_url: Option<String>,
}

/// The registration body.
pub fn registration(agent: &Agent, agent_url: Option<&str>) -> serde_json::Value {
    let mut node = crate::api::node_view(agent);
    node["agent_url"] = json!(agent_url);
    json!({ "node": node })
}

/// The heartbeat body.
pub fn heartbeat(agent: &Agent, seq: u64) -> serde_json::Value {
    let servers: Vec<_> = agent
        .list()
        .iter()
        .map(|s| {
            json!({
                "id": s.placement.id,
                "status": s.status,
                "task_state": s.task_state,
                "fault": s.fault,
            })
        })
        .collect();
    json!({"heartbeat": {"seq": seq, "time": crate::model::now(), "servers": servers,
                         "network_generation": agent.network_generation()}})
}

/// Registers, then heartbeats forever.
pub async fn run(agent: Arc<Agent>, cfg: ControlConfig) -> Result<(), HttpError> {
    let (endpoint, prefix) = parse_http_url(&cfg.url)?;
    let mut client = Client::new(endpoint, Duration::from_secs(10));
    if let Some(t) = &cfg.token {
        client = client.with_header("x-auth-token", t);
    }
    let base = format!(
        "{}/v1/nodes/{}",
        prefix.trim_end_matches('/'),
        agent.node_id()
    );
    let mut registered = false;
    let mut seq = 0u64;
    loop {
        if !registered {
            let body = registration(&agent, cfg.agent_url.as_deref());
            match client.call(Method::PUT, &base, Some(&body)).await {
                Ok(_) => {
                    tracing::info!(url = %cfg.url, "registered with control");
                    registered = true;
                }
                Err(e) => tracing::warn!(error = %error_chain(&e), "registration failed"),
            }
        }
        if registered {
            seq += 1;
            let body = heartbeat(&agent, seq);
            match client
                .call(Method::POST, &format!("{base}/heartbeat"), Some(&body))
                .await
            {
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!("control forgot this node: registering again");
                    registered = false;
                    continue;
                }
                Err(e) => tracing::warn!(error = %error_chain(&e), "heartbeat failed"),
            }
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
