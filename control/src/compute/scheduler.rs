//! Placement-style scheduling: filter the nodes, weigh the survivors, claim room on the
//! best one with a compare-and-swap of its record. A lost race re-reads the nodes and
//! schedules again, so the claim never overbooks a node whoever else writes.
//!
//! Filters: the node is up (heartbeat within `down_after`) and enabled, not already tried
//! for this build, in the requested availability zone, offers the image's required
//! properties, has room for the flavor after overcommit, and satisfies the server group's
//! affinity or anti-affinity. Weighers: spread (most free memory and vCPUs first) or pack
//! (least free first).
//!
//! Server groups are claimed atomically too: the group's record holds the node of every
//! placed member, and a member's claim writes its node's allocation and its entry in the
//! group in one batch, each a compare-and-swap. Two members claimed at once (by one
//! controller or two) cannot both pass the group filter against the same picture of the
//! group: the second write finds a new group version and schedules again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Allocation, ComputeError, NodeDoc, Resources, list_nodes, load_group, load_node};
use crate::store::{Record, Store, StoreError, Write};

/// Image properties the filter matches against node properties.
pub const MATCHED_IMAGE_PROPERTIES: [&str; 2] = ["architecture", "hypervisor_type"];

/// How nodes are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weigher {
    /// Spread servers over nodes: most free room first.
    #[default]
    Spread,
    /// Fill nodes one after the other: least free room first.
    Pack,
}

/// A server group's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    /// All members on one node.
    Affinity,
    /// Every member on a different node.
    AntiAffinity,
}

/// What to place.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The server being placed.
    pub server_id: String,
    /// Its project.
    pub project_id: String,
    /// What it needs.
    pub resources: Resources,
    /// Required availability zone.
    pub availability_zone: Option<String>,
    /// The image's properties.
    pub image_properties: BTreeMap<String, String>,
    /// The server group's policy and the nodes its other members are on. [`claim`] fills
    /// it from the group's record when `group_id` is set.
    pub group: Option<(GroupPolicy, Vec<String>)>,
    /// The server group the server is a member of ([`super::ServerGroupDoc`]).
    pub group_id: Option<String>,
    /// Nodes already tried for this build (reschedules).
    pub exclude: Vec<String>,
    /// The only node allowed (where the server's boot volume lives).
    pub only_node: Option<String>,
}

/// Scheduling settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds without heartbeat after which a node is down.
    pub down_after: u64,
    /// Ranking.
    pub weigher: Weigher,
}

/// Why a node was filtered out (the first filter that refused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Heartbeat too old, or disabled.
    Down,
    /// Already tried for this build.
    Tried,
    /// Other availability zone.
    Zone,
    /// Image property mismatch.
    ImageProperties,
    /// Not enough vCPU, RAM or disk.
    Capacity,
    /// Server group policy.
    Group,
    /// Not the node holding the boot volume.
    Volume,
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::Down => "ComputeFilter",
            Refusal::Tried => "RetryFilter",
            Refusal::Zone => "AvailabilityZoneFilter",
            Refusal::ImageProperties => "ImagePropertiesFilter",
            Refusal::Capacity => "ResourceFilter",
            Refusal::Group => "ServerGroupFilter",
            Refusal::Volume => "VolumeLocalityFilter",
        }
    }
}

/// Runs every filter on one node; `None` passes.
pub fn filter(id: &str, node: &NodeDoc, req: &Request, s: &Settings, now: u64) -> Option<Refusal> {
    if node.disabled || !node.is_up(now, s.down_after) {
        return Some(Refusal::Down);
    }
    if req.exclude.iter().any(|x| x == id) {
        return Some(Refusal::Tried);
    }
    if req.only_node.as_deref().is_some_and(|n| n != id) {
        return Some(Refusal::Volume);
    }
    if let Some(az) = &req.availability_zone
        && *az != node.availability_zone
    {
        return Some(Refusal::Zone);
    }
    for key in MATCHED_IMAGE_PROPERTIES {
        if let Some(want) = req.image_properties.get(key)
            && node.properties.get(key) != Some(want)
        {
            return Some(Refusal::ImageProperties);
        }
    }
    let free = node.free();
    if node.allocations.contains_key(&req.server_id) {
        // Already claimed here (a retried claim): it fits by definition.
    } else if free.vcpus < req.resources.vcpus
        || free.memory_mib < req.resources.memory_mib
        || free.disk_gb < req.resources.disk_gb
    {
        return Some(Refusal::Capacity);
    }
    match &req.group {
        Some((GroupPolicy::Affinity, hosts))
            if !hosts.is_empty() && !hosts.iter().any(|h| h == id) =>
        {
            Some(Refusal::Group)
        }
        Some((GroupPolicy::AntiAffinity, hosts)) if hosts.iter().any(|h| h == id) => {
            Some(Refusal::Group)
        }
        _ => None,
    }
}

/// A node's weight: higher is better. Free memory and vCPUs as fractions of capacity
/// (memory counts twice as much), negated for packing.
pub fn weigh(node: &NodeDoc, w: Weigher) -> f64 {
    let cap = node.capacity();
    let free = node.free();
    let frac = |f: u64, c: u64| if c == 0 { 0.0 } else { f as f64 / c as f64 };
    let score = 2.0 * frac(free.memory_mib, cap.memory_mib) + frac(free.vcpus, cap.vcpus);
    match w {
        Weigher::Spread => score,
        Weigher::Pack => -score,
    }
}

/// Filters and ranks nodes: ids best first, or why none fits.
pub fn rank(
    nodes: &[(String, NodeDoc)],
    req: &Request,
    s: &Settings,
    now: u64,
) -> Result<Vec<String>, String> {
    let mut refused: BTreeMap<Refusal, usize> = BTreeMap::new();
    let mut ok: Vec<(f64, &str)> = Vec::new();
    for (id, n) in nodes {
        match filter(id, n, req, s, now) {
            None => ok.push((weigh(n, s.weigher), id)),
            Some(r) => *refused.entry(r).or_default() += 1,
        }
    }
    if ok.is_empty() {
        let why: Vec<String> = refused
            .iter()
            .map(|(r, n)| format!("{} refused {n}", r.name()))
            .collect();
        return Err(if why.is_empty() {
            "There are no compute nodes.".into()
        } else {
            format!(
                "{} of {} nodes: {}.",
                nodes.len(),
                nodes.len(),
                why.join(", ")
            )
        });
    }
    // Equal weights (identical nodes, equally full) are ordered by a hash of the server
    // and node ids: concurrent claims for different servers then mostly pick different
    // nodes of the tie instead of all racing for the same one, and a server's order is
    // still the same at every attempt.
    ok.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| tie(&req.server_id, a.1).cmp(&tie(&req.server_id, b.1)))
            .then_with(|| a.1.cmp(b.1))
    });
    Ok(ok.into_iter().map(|(_, id)| id.to_string()).collect())
}

fn tie(server: &str, node: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (server, node).hash(&mut h);
    h.finish()
}

/// Attempts of one claim before giving up. Every lost race means another claim won, so
/// only a storm of concurrent claims on the same nodes gets near it.
const CLAIM_ATTEMPTS: usize = 256;

/// Schedules and claims: returns the node id now holding the server's allocation (and,
/// for a group member, the group's entry for it, written in the same atomic batch).
pub fn claim(
    store: &dyn Store,
    req: &Request,
    s: &Settings,
    now: u64,
) -> Result<String, ComputeError> {
    for _ in 0..CLAIM_ATTEMPTS {
        let group = match &req.group_id {
            Some(g) => load_group(store, g)?,
            None => None,
        };
        let with_group;
        let req = match &group {
            Some((_, g)) => {
                let mut r = req.clone();
                r.group = Some((g.policy, g.hosts_except(&req.server_id)));
                with_group = r;
                &with_group
            }
            None => req,
        };
        // The claim is a compare-and-swap against the version that was ranked: if the
        // best node changed since (another claim landed on it), it may no longer be the
        // best, so schedule again rather than claim it anyway.
        let (records, nodes): (Vec<Record>, Vec<(String, NodeDoc)>) = list_nodes(store)?
            .into_iter()
            .map(|(r, d)| {
                let id = r.id.clone();
                (r, (id, d))
            })
            .unzip();
        let ranked = rank(&nodes, req, s, now).map_err(ComputeError::NoValidHost)?;
        let best = &ranked[0];
        let Some(i) = nodes.iter().position(|(id, _)| id == best) else {
            continue;
        };
        let record = &records[i];
        let mut doc = nodes[i].1.clone();
        doc.allocations.insert(
            req.server_id.clone(),
            Allocation {
                project_id: req.project_id.clone(),
                resources: req.resources,
            },
        );
        let mut writes = vec![Write::Update(record.with_doc(None, &doc))];
        if let Some((grec, mut g)) = group {
            g.hosts.insert(req.server_id.clone(), best.clone());
            writes.push(Write::Update(grec.with_doc(grec.name.as_deref(), &g)));
        }
        match store.apply(&writes) {
            Ok(()) => return Ok(best.clone()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(req.server_id.clone()))
}

/// Removes a server's allocation from a node and its entry from its server group, in
/// one batch (no-op for what is already gone).
pub fn release(
    store: &dyn Store,
    node_id: &str,
    server_id: &str,
    group_id: Option<&str>,
) -> Result<(), ComputeError> {
    for _ in 0..CLAIM_ATTEMPTS {
        let mut writes = Vec::new();
        if let Some((record, mut doc)) = load_node(store, node_id)?
            && doc.allocations.remove(server_id).is_some()
        {
            writes.push(Write::Update(record.with_doc(None, &doc)));
        }
        if let Some(g) = group_id
            && let Some((grec, mut gd)) = load_group(store, g)?
            && gd.hosts.remove(server_id).is_some()
        {
            writes.push(Write::Update(grec.with_doc(grec.name.as_deref(), &gd)));
        }
        if writes.is_empty() {
            return Ok(());
        }
        match store.apply(&writes) {
            Ok(()) => return Ok(()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(node_id.to_string()))
}

/// Edits one node's record by compare-and-swap; `f` returns whether it changed anything,
/// or an error that aborts. Retries lost races.
fn edit_node(
    store: &dyn Store,
    node_id: &str,
    mut f: impl FnMut(&mut NodeDoc) -> Result<bool, ComputeError>,
) -> Result<(), ComputeError> {
    for _ in 0..64 {
        let Some((record, mut doc)) = load_node(store, node_id)? else {
            return Err(ComputeError::NoValidHost(format!(
                "node {node_id} is not registered"
            )));
        };
        if !f(&mut doc)? {
            return Ok(());
        }
        match store.update(record.with_doc(None, &doc)) {
            Ok(()) => return Ok(()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ComputeError::Contended(node_id.to_string()))
}

/// Claims `gb` of disk for a volume: on `node` when given (a snapshot's or a server's
/// node), else on the up and enabled node with the most free disk. Returns the node.
pub fn claim_volume(
    store: &dyn Store,
    node: Option<&str>,
    volume_id: &str,
    project_id: &str,
    gb: u64,
    s: &Settings,
    now: u64,
) -> Result<String, ComputeError> {
    let alloc = Allocation {
        project_id: project_id.to_string(),
        resources: Resources {
            disk_gb: gb,
            ..Resources::default()
        },
    };
    for _ in 0..64 {
        let target = match node {
            Some(n) => n.to_string(),
            None => {
                let mut best: Option<(u64, String)> = None;
                let mut seen = 0;
                for (r, d) in list_nodes(store)? {
                    seen += 1;
                    if d.volume_disabled || !d.is_up(now, s.down_after) {
                        continue;
                    }
                    let free = d.free().disk_gb;
                    if free >= gb && best.as_ref().is_none_or(|b| free > b.0) {
                        best = Some((free, r.id.clone()));
                    }
                }
                match best {
                    Some((_, id)) => id,
                    None => {
                        return Err(ComputeError::NoValidHost(format!(
                            "no up node of {seen} has {gb} GiB of free disk"
                        )));
                    }
                }
            }
        };
        let mut lost = false;
        let r = edit_node(store, &target, |d| {
            if d.volume_allocations.contains_key(volume_id) {
                return Ok(false);
            }
            if d.free().disk_gb < gb {
                if node.is_none() {
                    lost = true;
                    return Ok(false);
                }
                return Err(ComputeError::NoValidHost(format!(
                    "node {target} has {} GiB of free disk, {gb} GiB needed",
                    d.free().disk_gb
                )));
            }
            d.volume_allocations
                .insert(volume_id.to_string(), alloc.clone());
            Ok(true)
        });
        match r {
            Ok(()) if lost => continue,
            Ok(()) => return Ok(target),
            Err(e) => return Err(e),
        }
    }
    Err(ComputeError::Contended(volume_id.to_string()))
}

/// Grows a volume's claim on its node to `gb`, if the node has room.
pub fn resize_volume(
    store: &dyn Store,
    node_id: &str,
    volume_id: &str,
    project_id: &str,
    gb: u64,
) -> Result<(), ComputeError> {
    edit_node(store, node_id, |d| {
        let current = d
            .volume_allocations
            .get(volume_id)
            .map_or(0, |a| a.resources.disk_gb);
        let free = d.free().disk_gb;
        if gb > current && free < gb - current {
            return Err(ComputeError::NoValidHost(format!(
                "node {node_id} has {free} GiB of free disk, {} GiB more needed",
                gb - current
            )));
        }
        d.volume_allocations.insert(
            volume_id.to_string(),
            Allocation {
                project_id: project_id.to_string(),
                resources: Resources {
                    disk_gb: gb,
                    ..Resources::default()
                },
            },
        );
        Ok(true)
    })
}

/// Removes a volume's claim (no-op if absent or the node is gone).
pub fn release_volume(
    store: &dyn Store,
    node_id: &str,
    volume_id: &str,
) -> Result<(), ComputeError> {
    match edit_node(store, node_id, |d| {
        Ok(d.volume_allocations.remove(volume_id).is_some())
    }) {
        Err(ComputeError::NoValidHost(_)) => Ok(()),
        r => r,
    }
}

/// Moves a server's root disk claim to a volume made for it on the same node (boot from
/// a new volume): the server keeps its vCPUs and memory, the volume holds the disk.
pub fn move_disk_to_volume(
    store: &dyn Store,
    node_id: &str,
    server_id: &str,
    volume_id: &str,
) -> Result<(), ComputeError> {
    edit_node(store, node_id, |d| {
        let Some(a) = d.allocations.get_mut(server_id) else {
            return Ok(false);
        };
        let gb = std::mem::take(&mut a.resources.disk_gb);
        let project_id = a.project_id.clone();
        d.volume_allocations.insert(
            volume_id.to_string(),
            Allocation {
                project_id,
                resources: Resources {
                    disk_gb: gb,
                    ..Resources::default()
                },
            },
        );
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::{Ratios, Resources};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Kind, Record};

    fn node(vcpus: u64, mem: u64, hb: u64) -> NodeDoc {
        let mut properties = BTreeMap::new();
        properties.insert("architecture".into(), "x86_64".into());
        NodeDoc {
            hostname: "h".into(),
            agent_url: String::new(),
            availability_zone: "nova".into(),
            inventory: Resources {
                vcpus,
                memory_mib: mem,
                disk_gb: 100,
            },
            ratios: Ratios {
                cpu: 1.0,
                ram: 1.0,
                disk: 1.0,
            },
            properties,
            allocations: BTreeMap::new(),
            volume_allocations: BTreeMap::new(),
            registered_at: 0,
            disabled_reason: None,
            last_heartbeat: hb,
            disabled: false,
            volume_disabled: false,
            volume_disabled_reason: None,
        }
    }

    fn req(vcpus: u64, mem: u64) -> Request {
        Request {
            server_id: "s".into(),
            project_id: "p".into(),
            resources: Resources {
                vcpus,
                memory_mib: mem,
                disk_gb: 1,
            },
            ..Request::default()
        }
    }

    const S: Settings = Settings {
        down_after: 30,
        weigher: Weigher::Spread,
    };

    #[test]
    fn filters_refuse_for_the_right_reason() {
        let n = node(2, 1024, 100);
        assert_eq!(filter("a", &n, &req(2, 1024), &S, 110), None);
        assert_eq!(
            filter("a", &n, &req(3, 512), &S, 110),
            Some(Refusal::Capacity)
        );
        assert_eq!(
            filter("a", &n, &req(1, 2048), &S, 110),
            Some(Refusal::Capacity)
        );
        let mut big_disk = req(1, 1);
        big_disk.resources.disk_gb = 101;
        assert_eq!(filter("a", &n, &big_disk, &S, 110), Some(Refusal::Capacity));
        assert_eq!(filter("a", &n, &req(1, 1), &S, 131), Some(Refusal::Down));
        let mut dis = n.clone();
        dis.disabled = true;
        assert_eq!(filter("a", &dis, &req(1, 1), &S, 110), Some(Refusal::Down));
        let mut r = req(1, 1);
        r.exclude = vec!["a".into()];
        assert_eq!(filter("a", &n, &r, &S, 110), Some(Refusal::Tried));
        let mut r = req(1, 1);
        r.availability_zone = Some("other".into());
        assert_eq!(filter("a", &n, &r, &S, 110), Some(Refusal::Zone));
        r.availability_zone = Some("nova".into());
        assert_eq!(filter("a", &n, &r, &S, 110), None);
        let mut r = req(1, 1);
        r.image_properties
            .insert("architecture".into(), "aarch64".into());
        assert_eq!(filter("a", &n, &r, &S, 110), Some(Refusal::ImageProperties));
        r.image_properties
            .insert("architecture".into(), "x86_64".into());
        r.image_properties
            .insert("os_distro".into(), "anything".into());
        assert_eq!(filter("a", &n, &r, &S, 110), None);
        // Overcommit: 2 cores at ratio 4 hold 8 vCPUs.
        let mut oc = n.clone();
        oc.ratios.cpu = 4.0;
        assert_eq!(filter("a", &oc, &req(8, 1), &S, 110), None);
        assert_eq!(
            filter("a", &oc, &req(9, 1), &S, 110),
            Some(Refusal::Capacity)
        );
    }

    #[test]
    fn group_policies() {
        let n = node(2, 1024, 100);
        let mut r = req(1, 1);
        r.group = Some((GroupPolicy::AntiAffinity, vec!["a".into()]));
        assert_eq!(filter("a", &n, &r, &S, 100), Some(Refusal::Group));
        assert_eq!(filter("b", &n, &r, &S, 100), None);
        r.group = Some((GroupPolicy::Affinity, vec!["a".into()]));
        assert_eq!(filter("a", &n, &r, &S, 100), None);
        assert_eq!(filter("b", &n, &r, &S, 100), Some(Refusal::Group));
        // The first member of an affinity group goes anywhere.
        r.group = Some((GroupPolicy::Affinity, vec![]));
        assert_eq!(filter("b", &n, &r, &S, 100), None);
    }

    #[test]
    fn weighers_spread_and_pack() {
        let mut busy = node(4, 4096, 100);
        busy.allocations.insert(
            "x".into(),
            Allocation {
                project_id: "p".into(),
                resources: Resources {
                    vcpus: 2,
                    memory_mib: 2048,
                    disk_gb: 1,
                },
            },
        );
        let idle = node(4, 4096, 100);
        let nodes = vec![("busy".to_string(), busy), ("idle".to_string(), idle)];
        assert_eq!(rank(&nodes, &req(1, 1), &S, 100).unwrap()[0], "idle");
        let pack = Settings {
            weigher: Weigher::Pack,
            ..S
        };
        assert_eq!(rank(&nodes, &req(1, 1), &pack, 100).unwrap()[0], "busy");
        let err = rank(&nodes, &req(1, 1), &S, 1000).unwrap_err();
        assert!(err.contains("ComputeFilter refused 2"), "{err}");
        assert_eq!(
            rank(&[], &req(1, 1), &S, 0).unwrap_err(),
            "There are no compute nodes."
        );
    }

    #[test]
    fn volume_claims_take_the_roomiest_node_and_never_overbook() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let mut small = node(4, 4096, 100);
        small.inventory.disk_gb = 10;
        put(&store, "small", &small);
        put(&store, "big", &node(4, 4096, 100)); // 100 GiB
        let n = claim_volume(&store, None, "v1", "p", 60, &S, 110).unwrap();
        assert_eq!(n, "big");
        // 40 GiB left on big, 10 on small: 30 goes to big, then 20 fits nowhere.
        assert_eq!(
            claim_volume(&store, None, "v2", "p", 30, &S, 110).unwrap(),
            "big"
        );
        let e = claim_volume(&store, None, "v3", "p", 20, &S, 110).unwrap_err();
        assert!(matches!(e, ComputeError::NoValidHost(_)), "{e}");
        // Pinned to a node (a snapshot's): refused there when full, never moved.
        let e = claim_volume(&store, Some("small"), "v4", "p", 11, &S, 110).unwrap_err();
        assert!(e.to_string().contains("small"), "{e}");
        assert_eq!(
            claim_volume(&store, Some("small"), "v4", "p", 10, &S, 110).unwrap(),
            "small"
        );
        // Growing needs room; releasing gives it back.
        assert!(resize_volume(&store, "big", "v2", "p", 41).is_err());
        resize_volume(&store, "big", "v2", "p", 40).unwrap();
        release_volume(&store, "big", "v1").unwrap();
        let (_, d) = load_node(&store, "big").unwrap().unwrap();
        assert_eq!(d.used().disk_gb, 40);
        assert_eq!(d.volume_allocations.len(), 1);
        // Down nodes get no volume.
        assert!(claim_volume(&store, None, "v5", "p", 1, &S, 1000).is_err());
        // Cinder's disable keeps new volumes off a node; Nova's does not.
        let mut roomy = node(4, 4096, 100);
        roomy.inventory.disk_gb = 1000;
        roomy.volume_disabled = true;
        put(&store, "roomy", &roomy);
        assert_eq!(
            claim_volume(&store, None, "v6", "p", 1, &S, 110).unwrap(),
            "big"
        );
        crate::compute::set_disabled(
            &store,
            "roomy",
            crate::compute::NodeService::Volume,
            false,
            None,
        )
        .unwrap();
        crate::compute::set_disabled(
            &store,
            "roomy",
            crate::compute::NodeService::Compute,
            true,
            None,
        )
        .unwrap();
        assert_eq!(
            claim_volume(&store, None, "v7", "p", 1, &S, 110).unwrap(),
            "roomy"
        );
    }

    fn put(store: &dyn Store, id: &str, n: &NodeDoc) {
        store
            .insert(Record::new(Kind::Node, id, "", None, n))
            .unwrap();
    }

    #[test]
    fn claim_and_release_hundreds_of_nodes() {
        let store = SqliteStore::in_memory().unwrap();
        for i in 0..300 {
            put(&store, &format!("n{i:03}"), &node(2, 2048, 100));
        }
        // Spread: 300 servers of 1 vCPU land on 300 different nodes.
        let mut used = BTreeMap::new();
        for i in 0..300 {
            let mut r = req(1, 1024);
            r.server_id = format!("s{i}");
            used.insert(claim(&store, &r, &S, 100).unwrap(), r.server_id);
        }
        assert_eq!(used.len(), 300);
        let (_, d) = load_node(&store, "n000").unwrap().unwrap();
        assert_eq!(d.used().vcpus, 1);
        let s = &used["n000"];
        assert!(d.allocations.contains_key(s));
        release(&store, "n000", s, None).unwrap();
        release(&store, "n000", s, None).unwrap();
        let (_, d) = load_node(&store, "n000").unwrap().unwrap();
        assert!(d.allocations.is_empty());
    }

    #[test]
    fn concurrent_claims_from_two_controllers_never_overbook() {
        // Two "controllers" (separate connections to one database file) claim 1-vCPU
        // servers on 5 nodes of 4 vCPUs each: exactly 20 fit, the rest get NoValidHost.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        let b = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        for i in 0..5 {
            put(&*a, &format!("n{i}"), &node(4, 4096, 100));
        }
        let mut threads = Vec::new();
        for t in 0..4 {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            threads.push(std::thread::spawn(move || {
                let mut placed = 0;
                let mut refused = 0;
                for i in 0..10 {
                    let mut r = req(1, 100);
                    r.server_id = format!("t{t}-{i}");
                    match claim(&*store, &r, &S, 100) {
                        Ok(_) => placed += 1,
                        Err(ComputeError::NoValidHost(_)) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (placed, refused)
            }));
        }
        let (mut placed, mut refused) = (0, 0);
        for t in threads {
            let (p, r) = t.join().unwrap();
            placed += p;
            refused += r;
        }
        assert_eq!((placed, refused), (20, 20));
        for (_, d) in list_nodes(&*a).unwrap() {
            assert_eq!(d.used().vcpus, 4, "{d:?}");
            assert_eq!(d.allocations.len(), 4);
        }
    }

    /// Members of one group claimed at once from two store connections (two
    /// controllers), with the pack weigher so that every claim wants the same node: the
    /// anti-affinity members still land on distinct nodes, the affinity ones on one node,
    /// and the group record names exactly the node of each allocation.
    #[test]
    fn group_claims_are_atomic_across_connections() {
        use crate::compute::{ServerGroupDoc, load_group};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        let b = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        for i in 0..20 {
            put(&*a, &format!("n{i:02}"), &node(32, 32768, 100));
        }
        for (g, policy) in [
            ("anti", GroupPolicy::AntiAffinity),
            ("aff", GroupPolicy::Affinity),
        ] {
            let doc = ServerGroupDoc {
                name: g.into(),
                policy,
                project_id: "p".into(),
                user_id: "u".into(),
                hosts: BTreeMap::new(),
            };
            a.insert(Record::new(Kind::ServerGroup, g, "p", None, &doc))
                .unwrap();
        }
        let pack = Settings {
            weigher: Weigher::Pack,
            ..S
        };
        let mut threads = Vec::new();
        for t in 0..6 {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            threads.push(std::thread::spawn(move || {
                for i in 0..3 {
                    for g in ["anti", "aff"] {
                        let mut r = req(1, 100);
                        r.server_id = format!("{g}-{t}-{i}");
                        r.group_id = Some(g.into());
                        claim(&*store, &r, &pack, 100).unwrap();
                    }
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let nodes = list_nodes(&*a).unwrap();
        let node_of = |server: &str| -> Vec<String> {
            nodes
                .iter()
                .filter(|(_, d)| d.allocations.contains_key(server))
                .map(|(r, _)| r.id.clone())
                .collect()
        };
        let (_, anti) = load_group(&*a, "anti").unwrap().unwrap();
        assert_eq!(anti.hosts.len(), 18);
        let distinct: std::collections::BTreeSet<_> = anti.hosts.values().collect();
        assert_eq!(distinct.len(), 18, "{anti:?}");
        let (_, aff) = load_group(&*a, "aff").unwrap().unwrap();
        assert_eq!(aff.hosts.len(), 18);
        let distinct: std::collections::BTreeSet<_> = aff.hosts.values().collect();
        assert_eq!(distinct.len(), 1, "{aff:?}");
        for g in [&anti, &aff] {
            for (server, host) in &g.hosts {
                assert_eq!(node_of(server), vec![host.clone()]);
            }
        }
        // Releasing takes the member out of its group too.
        let (s, n) = aff.hosts.iter().next().unwrap();
        release(&*b, n, s, Some("aff")).unwrap();
        let (_, aff2) = load_group(&*a, "aff").unwrap().unwrap();
        assert_eq!(aff2.hosts.len(), 17);
        assert!(!aff2.hosts.contains_key(s));
        let (_, nd) = load_node(&*a, n).unwrap().unwrap();
        assert!(!nd.allocations.contains_key(s));
        // An anti-affinity group with a member on every node has no room for one more.
        let mut r = req(1, 100);
        r.server_id = "one-too-many".into();
        r.group_id = Some("anti".into());
        for i in 0..2 {
            let mut r = r.clone();
            r.server_id = format!("fill-{i}");
            claim(&*a, &r, &pack, 100).unwrap();
        }
        match claim(&*a, &r, &pack, 100) {
            Err(ComputeError::NoValidHost(why)) => {
                assert!(why.contains("ServerGroupFilter refused 20"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
