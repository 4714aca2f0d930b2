//! Compute: nodes (the agents' registrations and heartbeats), their inventory and
//! allocations, flavors, servers and keypairs as stored documents, and the scheduler
//! ([`scheduler`]) that claims room on a node atomically.
//!
//! A node's allocations live inside its own record, so a claim is one compare-and-swap of
//! that record: two controllers sharing a store can never both fit a server into the last
//! room of a node, the loser re-reads and schedules again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{Kind, Record, Store, StoreError};

pub mod agent;
pub mod scheduler;

/// Errors of the compute layer.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// No node passes the filters.
    #[error("No valid host was found. {0}")]
    NoValidHost(String),
    /// Compare-and-swap kept losing against other writers.
    #[error("the claim on node {0} lost too many races; try again")]
    Contended(String),
}

/// What one server takes from a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Root disk in GiB.
    pub disk_gb: u64,
}

impl Resources {
    fn add(self, o: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus + o.vcpus,
            memory_mib: self.memory_mib + o.memory_mib,
            disk_gb: self.disk_gb + o.disk_gb,
        }
    }
}

/// One claim on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Owner of the server.
    pub project_id: String,
    /// What it takes.
    pub resources: Resources,
}

/// Allocation ratios (overcommit) of a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ratios {
    /// vCPU overcommit.
    pub cpu: f64,
    /// Memory overcommit.
    pub ram: f64,
    /// Disk overcommit.
    pub disk: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios {
            cpu: 4.0,
            ram: 1.0,
            disk: 1.0,
        }
    }
}

/// A node: what its agent registered, when it last heartbeat, what is placed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDoc {
    /// Host name.
    pub hostname: String,
    /// Where control reaches the agent (`http://host:port`).
    pub agent_url: String,
    /// Availability zone.
    pub availability_zone: String,
    /// Physical inventory.
    pub inventory: Resources,
    /// Overcommit ratios.
    #[serde(default)]
    pub ratios: Ratios,
    /// Properties the node offers, matched against image properties
    /// (`architecture`, `hypervisor_type`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Allocations by server id.
    #[serde(default)]
    pub allocations: BTreeMap<String, Allocation>,
    /// Disk held by volumes (on the node's blockdp), by volume id.
    #[serde(default)]
    pub volume_allocations: BTreeMap<String, Allocation>,
    /// Epoch seconds of the registration.
    pub registered_at: u64,
    /// Epoch seconds of the last heartbeat (or registration).
    pub last_heartbeat: u64,
    /// Administratively disabled: gets nothing new.
    #[serde(default)]
    pub disabled: bool,
    /// Why it was disabled (`openstack compute service set --disable-reason`).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// The node's volume service disabled (`openstack volume service set --disable`): no
    /// new volume is placed here (servers still are, as `disabled` is Nova's alone).
    #[serde(default)]
    pub volume_disabled: bool,
    /// Why its volume service was disabled.
    #[serde(default)]
    pub volume_disabled_reason: Option<String>,
}

impl NodeDoc {
    /// Sum of the allocations.
    pub fn used(&self) -> Resources {
        self.allocations
            .values()
            .chain(self.volume_allocations.values())
            .fold(Resources::default(), |a, b| a.add(b.resources))
    }

    /// Capacity after overcommit.
    pub fn capacity(&self) -> Resources {
        let scale = |v: u64, r: f64| (v as f64 * r).floor() as u64;
        Resources {
            vcpus: scale(self.inventory.vcpus, self.ratios.cpu),
            memory_mib: scale(self.inventory.memory_mib, self.ratios.ram),
            disk_gb: scale(self.inventory.disk_gb, self.ratios.disk),
        }
    }

    /// Room left after overcommit.
    pub fn free(&self) -> Resources {
        let c = self.capacity();
        let u = self.used();
        Resources {
            vcpus: c.vcpus.saturating_sub(u.vcpus),
            memory_mib: c.memory_mib.saturating_sub(u.memory_mib),
            disk_gb: c.disk_gb.saturating_sub(u.disk_gb),
        }
    }

    /// Whether the node heartbeat within `down_after` seconds of `now`.
    pub fn is_up(&self, now: u64, down_after: u64) -> bool {
        now.saturating_sub(self.last_heartbeat) <= down_after
    }
}

/// Loads a node.
pub fn load_node(store: &dyn Store, id: &str) -> Result<Option<(Record, NodeDoc)>, StoreError> {
    match store.get(Kind::Node, id)? {
        Some(r) => {
            let d = r.parse()?;
            Ok(Some((r, d)))
        }
        None => Ok(None),
    }
}

/// Every node.
pub fn list_nodes(store: &dyn Store) -> Result<Vec<(Record, NodeDoc)>, StoreError> {
    store
        .list(Kind::Node, None)?
        .into_iter()
        .map(|r| {
            let d = r.parse()?;
            Ok((r, d))
        })
        .collect()
}

/// A server group: its policy and, by server id, the node each placed member is on.
/// Members' claims update `hosts` in the same atomic batch as their allocation (see
/// [`scheduler::claim`]), so the group filter never works from a stale picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerGroupDoc {
    /// Display name.
    pub name: String,
    /// `affinity` or `anti-affinity`.
    pub policy: scheduler::GroupPolicy,
    /// Owner.
    #[serde(default)]
    pub project_id: String,
    /// Creator.
    #[serde(default)]
    pub user_id: String,
    /// Node id of each placed member, by server id.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
}

impl ServerGroupDoc {
    /// The nodes of every member but `server_id`.
    pub fn hosts_except(&self, server_id: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|(s, _)| s.as_str() != server_id)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// Loads a server group.
pub fn load_group(
    store: &dyn Store,
    id: &str,
) -> Result<Option<(Record, ServerGroupDoc)>, StoreError> {
    match store.get(Kind::ServerGroup, id)? {
        Some(r) => {
            let d = r.parse()?;
            Ok(Some((r, d)))
        }
        None => Ok(None),
    }
}

/// What an agent reports when it registers (`PUT /v1/nodes/{id}`): its `GET /v1/node`
/// document plus `agent_url`.
#[derive(Debug, Clone, Deserialize)]
pub struct Registration {
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Where to reach the agent.
    #[serde(default)]
    pub agent_url: Option<String>,
    /// Physical inventory.
    pub inventory: AgentInventory,
    /// Availability zone (`nova` when absent).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// CPU architecture, matched against images' `architecture` (control's own when
    /// absent).
    #[serde(default)]
    pub architecture: Option<String>,
}

/// The agent's inventory shape.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentInventory {
    /// vCPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in bytes.
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Registers or re-registers a node, keeping its allocations. Retries lost races.
pub fn register(
    store: &dyn Store,
    id: &str,
    reg: &Registration,
    ratios: Ratios,
    now: u64,
) -> Result<NodeDoc, ComputeError> {
    for _ in 0..16 {
        let existing = load_node(store, id)?;
        let mut properties = BTreeMap::new();
        properties.insert(
            "architecture".to_string(),
            reg.architecture
                .clone()
                .unwrap_or_else(|| std::env::consts::ARCH.into()),
        );
        properties.insert("hypervisor_type".to_string(), "ferrostack-vmm".into());
        let doc = NodeDoc {
            hostname: if reg.hostname.is_empty() {
                id.to_string()
            } else {
                reg.hostname.clone()
            },
            agent_url: reg.agent_url.clone().unwrap_or_default(),
            availability_zone: reg
                .availability_zone
                .clone()
                .unwrap_or_else(|| "nova".into()),
            inventory: Resources {
                vcpus: reg.inventory.vcpus,
                memory_mib: reg.inventory.memory_mib,
                disk_gb: reg.inventory.disk_bytes >> 30,
            },
            ratios,
            properties,
            allocations: existing
                .as_ref()
                .map(|(_, d)| d.allocations.clone())
                .unwrap_or_default(),
            volume_allocations: existing
                .as_ref()
                .map(|(_, d)| d.volume_allocations.clone())
                .unwrap_or_default(),
            registered_at: existing
                .as_ref()
                .map(|(_, d)| d.registered_at)
                .unwrap_or(now),
            last_heartbeat: now,
            disabled: existing.as_ref().is_some_and(|(_, d)| d.disabled),
            disabled_reason: existing
                .as_ref()
                .and_then(|(_, d)| d.disabled_reason.clone()),
            volume_disabled: existing.as_ref().is_some_and(|(_, d)| d.volume_disabled),
            volume_disabled_reason: existing
                .as_ref()
                .and_then(|(_, d)| d.volume_disabled_reason.clone()),
        };
        let res = match existing {
            Some((r, _)) => store.update(r.with_doc(None, &doc)),
            None => store.insert(Record::new(Kind::Node, id, "", None, &doc)),
        };
        match res {
            Ok(()) => return Ok(doc),
            Err(StoreError::Stale { .. } | StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(id.to_string()))
}

/// Which of a node's services an administrator disables or enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeService {
    /// Nova's `nova-compute`: no new servers.
    Compute,
    /// Cinder's `cinder-volume`: no new volumes.
    Volume,
}

/// Disables one service of a node (nothing new of its kind is placed there; what is there
/// stays) or enables it again; `None` if the node is unknown.
pub fn set_disabled(
    store: &dyn Store,
    id: &str,
    service: NodeService,
    disabled: bool,
    reason: Option<String>,
) -> Result<Option<NodeDoc>, ComputeError> {
    for _ in 0..16 {
        let Some((r, mut doc)) = load_node(store, id)? else {
            return Ok(None);
        };
        let reason = if disabled { reason.clone() } else { None };
        match service {
            NodeService::Compute => (doc.disabled, doc.disabled_reason) = (disabled, reason),
            NodeService::Volume => {
                (doc.volume_disabled, doc.volume_disabled_reason) = (disabled, reason)
            }
        }
        match store.update(r.with_doc(None, &doc)) {
            Ok(()) => return Ok(Some(doc)),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(id.to_string()))
}

/// Records a heartbeat; `None` if the node is unknown (the agent then re-registers).
pub fn heartbeat(store: &dyn Store, id: &str, now: u64) -> Result<Option<NodeDoc>, ComputeError> {
    for _ in 0..16 {
        let Some((r, mut doc)) = load_node(store, id)? else {
            return Ok(None);
        };
        doc.last_heartbeat = now;
        match store.update(r.with_doc(None, &doc)) {
            Ok(()) => return Ok(Some(doc)),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(id.to_string()))
}

/// A flavor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavorDoc {
    /// Unique name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub ram: u64,
    /// Root disk in GiB (0: the image's size).
    pub disk: u64,
    /// Ephemeral disk in GiB.
    #[serde(default)]
    pub ephemeral: u64,
    /// Swap in MiB.
    #[serde(default)]
    pub swap: u64,
    /// rxtx factor.
    #[serde(default = "one")]
    pub rxtx_factor: f64,
    /// Visible to every project.
    #[serde(default = "yes")]
    pub is_public: bool,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// A fault recorded on a server in ERROR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// HTTP-like code (500 for build failures).
    pub code: u16,
    /// What went wrong.
    pub message: String,
    /// Epoch seconds.
    pub created: u64,
}

/// A port of a server as the agent reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerPort {
    /// Port id on netdp.
    pub id: String,
    /// Network id on netdp.
    pub network_id: String,
    /// MAC.
    pub mac_address: String,
    /// Fixed IP.
    pub ip_address: String,
}

/// A volume a server uses (its boot volume, or one attached later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerVolume {
    /// control's volume id.
    pub volume_id: String,
    /// `/dev/vda` for the boot volume, then `/dev/vdb`...
    pub device: String,
    /// The server boots from it.
    #[serde(default)]
    pub boot: bool,
    /// Delete it with the server.
    #[serde(default)]
    pub delete_on_termination: bool,
}

/// A server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerDoc {
    /// Display name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// Creator.
    pub user_id: String,
    /// Flavor id at creation.
    pub flavor_id: String,
    /// Flavor at creation (later flavor changes do not resize it).
    pub flavor: FlavorDoc,
    /// Image id.
    pub image_id: String,
    /// Requested networks: `("network"|"port", id)`.
    #[serde(default)]
    pub networks: Vec<(String, String)>,
    /// Keypair name.
    #[serde(default)]
    pub key_name: Option<String>,
    /// Its public key (passed to the guest as metadata).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// User data, base64 as in the request (written to the config drive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Availability zone requested or placed in.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Server group id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// BUILD, ACTIVE, SHUTOFF, PAUSED, ERROR (Nova's status).
    pub status: String,
    /// Nova's task state (`scheduling`, `spawning`, `powering-off`, ...).
    #[serde(default)]
    pub task_state: Option<String>,
    /// The node holding the allocation.
    #[serde(default)]
    pub node_id: Option<String>,
    /// That node's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Nodes tried for this build.
    #[serde(default)]
    pub tried: Vec<String>,
    /// Fault when in ERROR.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Ports as the agent made them.
    #[serde(default)]
    pub ports: Vec<ServerPort>,
    /// Ports control created for the server's `--network` entries (deleted with it).
    #[serde(default)]
    pub created_ports: Vec<String>,
    /// Security group names asked for (the project's `default` when empty).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Volumes it uses, the boot volume first.
    #[serde(default)]
    pub volumes: Vec<ServerVolume>,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
    /// Epoch seconds of the first ACTIVE.
    #[serde(default)]
    pub launched_at: Option<u64>,
    /// Locked against changes by non-admins: by `"owner"` or by `"admin"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<String>,
}

impl ServerDoc {
    /// The volume it boots from, if any.
    pub fn boot_volume(&self) -> Option<&ServerVolume> {
        self.volumes.iter().find(|v| v.boot)
    }

    /// Nova's `OS-EXT-STS:vm_state`.
    pub fn vm_state(&self) -> &'static str {
        match self.status.as_str() {
            "BUILD" => "building",
            "ACTIVE" => "active",
            "SHUTOFF" => "stopped",
            "PAUSED" => "paused",
            "DELETED" => "deleted",
            _ => "error",
        }
    }
    /// Nova's `OS-EXT-STS:power_state` (0 nostate, 1 running, 3 paused, 4 shutdown).
    pub fn power_state(&self) -> u8 {
        match self.status.as_str() {
            "ACTIVE" => 1,
            "PAUSED" => 3,
            "SHUTOFF" => 4,
            _ => 0,
        }
    }
}

/// A keypair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeypairDoc {
    /// Name (unique per user).
    pub name: String,
    /// OpenSSH public key.
    pub public_key: String,
    /// Its fingerprint (MD5 of the key blob, colon-separated hex).
    pub fingerprint: String,
    /// `ssh`.
    pub kind: String,
    /// Epoch seconds.
    pub created: u64,
}

/// Per-project quotas (absent: the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaDoc {
    /// Servers.
    pub instances: i64,
    /// vCPUs.
    pub cores: i64,
    /// Memory in MiB.
    pub ram: i64,
    /// Keypairs per user.
    pub key_pairs: i64,
    /// Server groups.
    pub server_groups: i64,
    /// Members per server group.
    pub server_group_members: i64,
}

impl Default for QuotaDoc {
    fn default() -> Self {
        QuotaDoc {
            instances: 10,
            cores: 20,
            ram: 51200,
            key_pairs: 100,
            server_groups: 10,
            server_group_members: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn reg(vcpus: u64, mem: u64) -> Registration {
        Registration {
            hostname: "n".into(),
            agent_url: Some("http://127.0.0.1:1".into()),
            inventory: AgentInventory {
                vcpus,
                memory_mib: mem,
                disk_bytes: 100 << 30,
            },
            availability_zone: None,
            architecture: None,
        }
    }

    #[test]
    fn register_heartbeat_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        assert!(heartbeat(&store, "a", 10).unwrap().is_none());
        let d = register(&store, "a", &reg(4, 8192), Ratios::default(), 100).unwrap();
        assert_eq!(d.inventory.disk_gb, 100);
        assert_eq!(d.capacity().vcpus, 16);
        assert!(d.is_up(130, 30));
        assert!(!d.is_up(131, 30));
        let d = heartbeat(&store, "a", 200).unwrap().unwrap();
        assert_eq!(d.last_heartbeat, 200);
        assert_eq!(d.registered_at, 100);
    }
}
