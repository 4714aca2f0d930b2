//! What control sends (a [`Placement`]) and what the agent keeps and reports (a
//! [`Server`] with its [`Status`], the data-plane [`Resources`] it holds and the [`Process`]
//! running it). Requests refuse unknown fields; [`Placement::validate`] runs before any side
//! effect.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors in a placement: each becomes a 400 naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A field is out of range or malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PlacementError {
    PlacementError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Most vCPUs a VM may have (the VMM's limit).
pub const MAX_VCPUS: u8 = 32;

/// A kernel, initrd or disk image: a host path or an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ImageRef {
    /// An absolute path on this node.
    Path(PathBuf),
    /// An `http://` URL (Glance or objectd).
    Url(String),
}

impl ImageRef {
    fn validate(&self, field: &str) -> Result<(), PlacementError> {
        match self {
            ImageRef::Path(p) if !p.is_absolute() => Err(invalid(field, "path must be absolute")),
            ImageRef::Path(_) => Ok(()),
            ImageRef::Url(u) => crate::http::parse_http_url(u)
                .map(drop)
                .map_err(|e| invalid(field, e.to_string())),
        }
    }
}

/// The root disk: a new volume from an image, or an existing blockdp volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDisk {
    /// The image the new volume is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// An existing volume to boot from (`block_device_mapping_v2` with a volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Volume size in bytes (at least the image's; default the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// vhost-user queues of the export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Delete the volume with the server (default: true for a volume made from an image,
    /// false for an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
    /// I/O limits of the volume (a flavor's `quota:disk_total_iops_sec` and
    /// `quota:disk_total_bytes_sec`), enforced by blockdp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<DiskQos>,
}

/// Volume I/O limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskQos {
    /// I/O operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
}

/// A subnet described in a placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    /// The prefix, `10.0.0.0/24`.
    pub cidr: String,
    /// The gateway (the prefix's first address when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<Ipv4Addr>,
    /// DHCP on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_dhcp: Option<bool>,
}

/// A network described in a placement: used if this node's netdp has it (by id, else by
/// name and project), created otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Control's id of the network (looked up first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name.
    pub name: String,
    /// MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Its subnet.
    pub subnet: SubnetSpec,
}

/// One network port of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// An existing netdp port (created by control through the Neutron API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    /// An existing netdp network to create the port on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// A network to find or create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// The fixed IP (allocated by netdp when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<Ipv4Addr>,
    /// The MAC (generated by netdp when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Security group ids (the project's default group when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
}

/// What control asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The server's id (control's UUID): 1 to 64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Owning project (ports and networks are created in it).
    #[serde(default)]
    pub project_id: String,
    /// vCPUs, 1 to 32.
    pub vcpus: u8,
    /// Memory in MiB.
    pub ram_mib: u64,
    /// The kernel (ELF vmlinux, PVH ELF or bzImage).
    pub kernel: ImageRef,
    /// The initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<ImageRef>,
    /// Kernel command line (Firecracker's default when absent); the agent appends `ip=`
    /// for the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The root disk.
    pub root_disk: RootDisk,
    /// Network ports, in guest order (eth0 first).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// What the guest reads from its config drive (keys, user data, properties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<InstanceMetadata>,
}

/// Nova's limit on `user_data`: 65535 bytes of base64.
pub const MAX_USER_DATA: usize = 65535;
/// Nova's default `metadata_items` quota.
pub const MAX_PROPERTIES: usize = 128;
/// The longest public key accepted.
pub const MAX_PUBLIC_KEY: usize = 16 * 1024;

/// The server's metadata, written to its config drive (`openstack/latest/meta_data.json`,
/// `user_data`); the uuid, name and project are the placement's own fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceMetadata {
    /// The guest's host name (derived from the name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The availability zone the server was placed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// The keypair's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The keypair's public key (`ssh-ed25519 AAAA... comment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// User metadata (`server create --property k=v`): Nova's `meta`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// User data, base64 as in Nova's request (at most [`MAX_USER_DATA`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The server's index in a multi-create request.
    #[serde(default)]
    pub launch_index: u32,
}

impl InstanceMetadata {
    /// The user data's bytes (base64 checked by [`Placement::validate`]).
    pub fn user_data_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        use base64::Engine;
        self.user_data
            .as_deref()
            .map(|u| {
                let compact: String = u.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD.decode(compact)
            })
            .transpose()
    }

    fn validate(&self) -> Result<(), PlacementError> {
        let f = |name: &str| format!("metadata.{name}");
        if let Some(h) = &self.hostname
            && !valid_hostname(h)
        {
            return Err(invalid(
                f("hostname"),
                "must be 1 to 63 characters of [a-z0-9-], not starting or ending with '-'",
            ));
        }
        for (name, v) in [
            ("availability_zone", &self.availability_zone),
            ("key_name", &self.key_name),
        ] {
            if v.as_deref()
                .is_some_and(|v| v.is_empty() || v.len() > 255 || v.chars().any(char::is_control))
            {
                return Err(invalid(f(name), "must be 1 to 255 printable characters"));
            }
        }
        if let Some(k) = &self.public_key
            && (k.is_empty()
                || k.len() > MAX_PUBLIC_KEY
                || k.bytes().any(|b| !(0x20..0x7f).contains(&b) && b != b'\n'))
        {
            return Err(invalid(
                f("public_key"),
                format!("must be 1 to {MAX_PUBLIC_KEY} printable ASCII characters"),
            ));
        }
        if self.properties.len() > MAX_PROPERTIES {
            return Err(invalid(
                f("properties"),
                format!("at most {MAX_PROPERTIES} items"),
            ));
        }
        if self
            .properties
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 255 || v.len() > 255)
        {
            return Err(invalid(
                f("properties"),
                "keys must be 1 to 255 bytes and values at most 255",
            ));
        }
        if self
            .user_data
            .as_ref()
            .is_some_and(|u| u.len() > MAX_USER_DATA)
        {
            return Err(invalid(
                f("user_data"),
                format!("at most {MAX_USER_DATA} bytes of base64"),
            ));
        }
        if let Err(e) = self.user_data_bytes() {
            return Err(invalid(f("user_data"), format!("not base64: {e}")));
        }
        Ok(())
    }
}

/// Whether `h` is a host name as Nova makes them: 1 to 63 of `[a-z0-9-]`, no '-' at
/// either end.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Nova's host name for a display name: lowercased, each run of other characters made one
/// '-', trimmed of '-', at most 63 characters; `server-<id>` when nothing is left.
pub fn hostname_for(name: &str, id: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut h = out.trim_matches('-').to_string();
    h.truncate(63);
    let h = h.trim_end_matches('-').to_string();
    if h.is_empty() {
        let mut fallback = format!("server-{}", id.to_ascii_lowercase());
        fallback.retain(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        fallback.truncate(63);
        fallback.trim_end_matches('-').to_string()
    } else {
        h
    }
}

/// Whether `s` is a usable id: 1 to 64 of `[A-Za-z0-9_-]` (also safe in paths).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `a.b.c.d/len` into the network address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    let a: Ipv4Addr = a.parse().ok()?;
    (len <= 32).then_some((a, len))
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

impl Placement {
    /// Checks every field; nothing is created before this passes.
    pub fn validate(&self) -> Result<(), PlacementError> {
        if !valid_id(&self.id) {
            return Err(invalid("id", "must be 1 to 64 characters of [A-Za-z0-9_-]"));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid("vcpus", format!("must be 1 to {MAX_VCPUS}")));
        }
        if !(2..=1 << 20).contains(&self.ram_mib) {
            return Err(invalid("ram_mib", "must be 2 to 1048576"));
        }
        self.kernel.validate("kernel")?;
        if let Some(i) = &self.initrd {
            i.validate("initrd")?;
        }
        if let Some(c) = &self.cmdline
            && (c.len() > 2048 || c.bytes().any(|b| !(0x20..0x7f).contains(&b)))
        {
            return Err(invalid(
                "cmdline",
                "must be at most 2048 printable ASCII characters",
            ));
        }
        let d = &self.root_disk;
        match (&d.image, &d.volume_id) {
            (Some(i), None) => i.validate("root_disk.image")?,
            (None, Some(v)) if valid_id(v) => {}
            (None, Some(_)) => return Err(invalid("root_disk.volume_id", "not a valid id")),
            _ => {
                return Err(invalid(
                    "root_disk",
                    "exactly one of image and volume_id is required",
                ));
            }
        }
        if d.size_bytes.is_some_and(|s| s == 0 || s % 512 != 0) {
            return Err(invalid(
                "root_disk.size_bytes",
                "must be a positive multiple of 512",
            ));
        }
        if let Some(q) = d.qos
            && (q.iops == Some(0) || q.bytes_per_sec == Some(0))
        {
            return Err(invalid("root_disk.qos", "limits must be positive"));
        }
        if d.num_queues.is_some_and(|q| q == 0 || q > 16) {
            return Err(invalid("root_disk.num_queues", "must be 1 to 16"));
        }
        if self.ports.len() > 4 {
            return Err(invalid("ports", "at most 4 ports"));
        }
        for (i, p) in self.ports.iter().enumerate() {
            let f = |name: &str| format!("ports[{i}].{name}");
            let targets = [
                p.port_id.is_some(),
                p.network_id.is_some(),
                p.network.is_some(),
            ];
            if targets.iter().filter(|t| **t).count() != 1 {
                return Err(invalid(
                    format!("ports[{i}]"),
                    "exactly one of port_id, network_id and network is required",
                ));
            }
            for (name, id) in [("port_id", &p.port_id), ("network_id", &p.network_id)] {
                if id.as_deref().is_some_and(|v| !valid_id(v)) {
                    return Err(invalid(f(name), "not a valid id"));
                }
            }
            if p.port_id.is_some()
                && (p.fixed_ip.is_some() || p.mac_address.is_some() || p.security_groups.is_some())
            {
                return Err(invalid(
                    f("port_id"),
                    "an existing port keeps its own addresses and groups",
                ));
            }
            if let Some(n) = &p.network {
                if n.name.is_empty() {
                    return Err(invalid(f("network.name"), "must not be empty"));
                }
                if n.id.as_deref().is_some_and(|v| !valid_id(v)) {
                    return Err(invalid(f("network.id"), "not a valid id"));
                }
                let Some((_, len)) = parse_cidr(&n.subnet.cidr) else {
                    return Err(invalid(f("network.subnet.cidr"), "not an IPv4 prefix"));
                };
                if len > 30 {
                    return Err(invalid(f("network.subnet.cidr"), "prefix too long"));
                }
            }
            if p.mac_address.as_deref().is_some_and(|m| !valid_mac(m)) {
                return Err(invalid(f("mac_address"), "not a MAC address"));
            }
            if let Some(groups) = &p.security_groups
                && groups.iter().any(|g| !valid_id(g))
            {
                return Err(invalid(f("security_groups"), "not a list of ids"));
            }
        }
        if let Some(m) = &self.metadata {
            m.validate()?;
        }
        Ok(())
    }
}

/// A server's state, as Nova reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Being built.
    Build,
    /// Running.
    Active,
    /// Stopped (asked to, or the guest shut down).
    Shutoff,
    /// vCPUs paused.
    Paused,
    /// Failed; `fault` says why.
    Error,
}

impl Status {
    /// The name as reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Build => "BUILD",
            Status::Active => "ACTIVE",
            Status::Shutoff => "SHUTOFF",
            Status::Paused => "PAUSED",
            Status::Error => "ERROR",
        }
    }
}

/// Why a server is in ERROR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happened.
    pub message: String,
    /// When (seconds since the epoch).
    pub created: u64,
}

/// The root volume the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeResource {
    /// blockdp's volume id.
    pub id: String,
    /// The vhost-user-blk socket, once exported.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Delete the volume with the server.
    pub delete_on_termination: bool,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
}

/// A volume attached to the server besides its root disk (`os-volume_attachments`): given
/// to the VMM as an extra drive at each start, in attachment order (vdb, vdc, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedVolume {
    /// blockdp's volume id.
    pub id: String,
    /// The guest device name control chose (`vdb`, ...), for reports.
    pub device: String,
    /// The vhost-user-blk socket of its export, once exported.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// A port the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortResource {
    /// netdp's port id.
    pub id: String,
    /// The network.
    pub network_id: String,
    /// The tap (`tap` + 11 characters of the port id).
    pub tap: String,
    /// Whether the agent created the tap (and deletes it).
    #[serde(default)]
    pub tap_created: bool,
    /// The MAC.
    pub mac_address: String,
    /// The fixed IP, if any.
    #[serde(default)]
    pub ip_address: Option<Ipv4Addr>,
    /// The subnet's prefix length.
    #[serde(default)]
    pub prefix_len: Option<u8>,
    /// The subnet's gateway.
    #[serde(default)]
    pub gateway_ip: Option<Ipv4Addr>,
    /// The subnet's DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_nameservers: Vec<Ipv4Addr>,
    /// The network's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Whether the agent created the port (and deletes it).
    pub created: bool,
}

/// What the server holds on the node, recorded as each piece is made so a delete (or a
/// restarted agent) releases exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// The kernel's path on this node.
    #[serde(default)]
    pub kernel_path: Option<PathBuf>,
    /// The initrd's path on this node.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// The root volume.
    #[serde(default)]
    pub volume: Option<VolumeResource>,
    /// The ports.
    #[serde(default)]
    pub ports: Vec<PortResource>,
    /// Volumes attached besides the root disk.
    #[serde(default)]
    pub attached_volumes: Vec<AttachedVolume>,
    /// The full command line given to the guest.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// blockdp was asked for the root volume (recorded before asking, so a crash before
    /// the answer is recorded leaves a trace).
    #[serde(default)]
    pub volume_requested: bool,
    /// netdp was asked for ports (likewise).
    #[serde(default)]
    pub ports_requested: bool,
}

/// The running VMM: the shim process supervising it and the VMM itself, each identified by
/// pid and start time (so a reused pid is never mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The shim's pid.
    pub shim_pid: i32,
    /// The shim's start time (clock ticks since boot, from `/proc/<pid>/stat`).
    pub shim_start: u64,
    /// The VMM's pid.
    pub vmm_pid: i32,
    /// The VMM's start time.
    pub vmm_start: u64,
}

/// A server as the agent keeps it (persisted) and reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// The placement it was built from.
    pub placement: Placement,
    /// Its state.
    pub status: Status,
    /// The operation in progress (`spawning`, `powering-off`, `powering-on`, `rebooting`,
    /// `pausing`, `unpausing`, `deleting`).
    #[serde(default)]
    pub task_state: Option<String>,
    /// Why it is in ERROR.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// What it holds.
    #[serde(default)]
    pub resources: Resources,
    /// Its VMM, while one runs.
    #[serde(default)]
    pub process: Option<Process>,
    /// The next VMM exit was asked for (a stop or reboot), so it means SHUTOFF whatever the code.
    #[serde(default)]
    pub stop_requested: bool,
    /// How long each step of the build took, in order.
    #[serde(default)]
    pub build_steps: Vec<StepTime>,
    /// Created (seconds since the epoch).
    pub created: u64,
    /// Last changed (seconds since the epoch).
    pub updated: u64,
}

/// The duration of one build step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    /// `images`, `volume`, `ports`, `config_drive`, `vmm_start` (process to API socket), `vmm_boot`
    /// (configuration and InstanceStart), `total`.
    pub step: String,
    /// Seconds.
    pub seconds: f64,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> serde_json::Value {
        serde_json::json!({
            "id": "srv-1",
            "vcpus": 1,
            "ram_mib": 64,
            "kernel": {"path": "/boot/vmlinux"},
            "root_disk": {"image": {"url": "http://images:9292/v2/images/x/file"}},
            "ports": [{"network": {"name": "blue", "subnet": {"cidr": "10.0.0.0/24"}}}],
        })
    }

    fn check(v: serde_json::Value) -> Result<(), String> {
        let p: Placement = serde_json::from_value(v).map_err(|e| e.to_string())?;
        p.validate().map_err(|e| e.to_string())
    }

    proptest::proptest! {
        /// Whatever bytes arrive, parsing and validation answer without panicking, and
        /// what validates has a usable id and sizes in range.
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(p) = serde_json::from_slice::<Placement>(&bytes)
                && p.validate().is_ok()
            {
                proptest::prop_assert!(valid_id(&p.id));
                proptest::prop_assert!(p.vcpus >= 1 && p.vcpus <= MAX_VCPUS);
            }
        }

        /// Placements with arbitrary field values validate or are refused, never panic.
        #[test]
        fn arbitrary_fields_never_panic(
            id in ".{0,70}",
            vcpus in proptest::num::u8::ANY,
            ram in proptest::num::u64::ANY,
            cidr in ".{0,24}",
            mac in ".{0,20}",
            size in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let mut v = placement();
            v["id"] = id.into();
            v["vcpus"] = vcpus.into();
            v["ram_mib"] = ram.into();
            v["ports"][0]["network"]["subnet"]["cidr"] = cidr.into();
            v["ports"][0]["mac_address"] = mac.into();
            v["root_disk"]["size_bytes"] = size.into();
            let _ = check(v);
        }
    }

    #[test]
    fn a_good_placement_passes_and_each_bad_field_is_named() {
        check(placement()).unwrap();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/id", "a/b".into(), "id"),
            ("/vcpus", 0.into(), "vcpus"),
            ("/vcpus", 33.into(), "vcpus"),
            ("/ram_mib", 1.into(), "ram_mib"),
            ("/kernel", serde_json::json!({"path": "rel/k"}), "kernel"),
            (
                "/kernel",
                serde_json::json!({"url": "https://x/k"}),
                "kernel",
            ),
            ("/root_disk", serde_json::json!({}), "root_disk"),
            ("/root_disk/size_bytes", 1000.into(), "size_bytes"),
            ("/root_disk/qos", serde_json::json!({"iops": 0}), "qos"),
            ("/ports/0/network/subnet/cidr", "10.0.0.0/33".into(), "cidr"),
            (
                "/ports/0/mac_address",
                "zz:00:00:00:00:00".into(),
                "mac_address",
            ),
            ("/ports/0/network_id", "n1".into(), "exactly one"),
            ("/cmdline", "a\nb".into(), "cmdline"),
        ];
        for (ptr, value, needle) in cases {
            let mut v = placement();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            v.pointer_mut(parent).unwrap()[key] = value;
            let err = check(v).expect_err(ptr);
            assert!(err.contains(needle), "{ptr}: {err}");
        }
        let mut v = placement();
        v["surprise"] = 1.into();
        assert!(check(v).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn metadata_is_checked_field_by_field() {
        let good = serde_json::json!({
            "availability_zone": "nova", "key_name": "k1",
            "public_key": "ssh-ed25519 AAAA test@host\n",
            "properties": {"role": "web"}, "user_data": "I2Nsb3VkLWNvbmZpZwo=",
            "launch_index": 0,
        });
        let mut v = placement();
        v["metadata"] = good.clone();
        check(v.clone()).unwrap();
        let p: Placement = serde_json::from_value(v).unwrap();
        let m = p.metadata.unwrap();
        assert_eq!(m.user_data_bytes().unwrap().unwrap(), b"#cloud-config\n");
        let big = "A".repeat(MAX_USER_DATA + 1);
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_PROPERTIES)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("user_data", "not base64!".into(), "metadata.user_data"),
            ("user_data", big.into(), "at most 65535"),
            ("public_key", "ssh-rsa \u{7}".into(), "metadata.public_key"),
            ("key_name", "".into(), "metadata.key_name"),
            ("hostname", "Bad_Host".into(), "metadata.hostname"),
            (
                "properties",
                serde_json::json!({"": "x"}),
                "metadata.properties",
            ),
            ("properties", many.into(), "at most 128"),
            ("surprise", 1.into(), "unknown field"),
        ];
        for (key, value, needle) in cases {
            let mut v = placement();
            v["metadata"] = good.clone();
            v["metadata"][key] = value;
            let err = check(v).expect_err(key);
            assert!(err.contains(needle), "{key}: {err}");
        }
    }

    #[test]
    fn host_names_follow_nova() {
        assert_eq!(hostname_for("Web Server_1", "x"), "web-server-1");
        assert_eq!(hostname_for("--a..b--", "x"), "a-b");
        assert_eq!(hostname_for("日本", "ID-1"), "server-id-1");
        let long = hostname_for(&"a".repeat(100), "x");
        assert_eq!(long.len(), 63);
        for name in ["Web Server_1", "--a..b--", "日本", "x y z"] {
            assert!(valid_hostname(&hostname_for(name, "abc")), "{name}");
        }
    }
}
