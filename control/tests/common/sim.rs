//! Simulated nodes for scheduler tests: nodes registered through control's real node API
//! (`PUT /v1/nodes/{id}` with the node token, heartbeats by `POST .../heartbeat`), whose
//! agent URL points at one in-test HTTP server standing in for their agents
//! (`http://127.0.0.1:PORT/nodes/{id}`). It speaks the agent's placement contract
//! (`POST /v1/servers` answers 202, `GET /v1/servers/{id}` answers ACTIVE, `DELETE`) and
//! records every placement it receives with the node it was sent to.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Cloud, http};

/// The shared node token of simulated clouds.
pub const NODE_TOKEN: &str = "sim-node-token";

/// What the stand-in agents received.
#[derive(Default)]
pub struct Placements {
    /// Every `POST /v1/servers` in arrival order: (server id, node id).
    pub received: Vec<(String, String)>,
    /// Servers currently held, by id: node id.
    pub held: BTreeMap<String, String>,
    /// When each server's placement arrived.
    pub arrived: BTreeMap<String, Instant>,
}

/// The stand-in agents' HTTP server (a thread; lives as long as the test process).
pub struct Agents {
    /// Its port.
    pub port: u16,
    /// What it received.
    pub placements: Arc<Mutex<Placements>>,
}

impl Agents {
    /// Starts the server.
    pub fn start() -> Agents {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let placements: Arc<Mutex<Placements>> = Arc::default();
        let p = placements.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &p);
                });
            }
        });
        Agents { port, placements }
    }

    /// The agent URL of a node.
    pub fn url(&self, node: &str) -> String {
        format!("http://127.0.0.1:{}/nodes/{node}", self.port)
    }
}

fn serve(stream: std::net::TcpStream, p: &Mutex<Placements>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, answer) = match (method.as_str(), segs.as_slice()) {
        ("POST", ["nodes", node, "v1", "servers"]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["server"]["id"].as_str().unwrap_or("").to_string();
            let mut p = p.lock().unwrap();
            p.received.push((id.clone(), node.to_string()));
            p.arrived.insert(id.clone(), Instant::now());
            p.held.insert(id.clone(), node.to_string());
            (202, json!({"server": {"id": id, "status": "BUILD"}}))
        }
        ("GET", ["nodes", node, "v1", "servers", id]) => match p.lock().unwrap().held.get(*id) {
            Some(n) if n == node => (
                200,
                json!({"server": {"id": id, "status": "ACTIVE", "task_state": null, "ports": []}}),
            ),
            _ => (404, json!({"error": {"message": "no such server"}})),
        },
        // control pushes each node's share of Neutron before a build; nothing to apply here.
        ("PUT", ["nodes", _, "v1", "network"]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            (200, json!({"generation": v["generation"], "errors": []}))
        }
        ("DELETE", ["nodes", _, "v1", "servers", id]) => {
            p.lock().unwrap().held.remove(*id);
            (204, Value::Null)
        }
        _ => (404, json!({"error": {"message": "no such route"}})),
    };
    let text = if answer.is_null() {
        String::new()
    } else {
        answer.to_string()
    };
    let mut s = r.into_inner();
    write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    s.flush()
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id (also its host name).
    pub id: String,
    /// Availability zone.
    pub az: String,
    /// CPU architecture.
    pub arch: String,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in GiB.
    pub disk_gb: u64,
}

/// Registers a node through `PUT /v1/nodes/{id}` on the controller at `port`.
pub fn register(port: u16, agents: &Agents, n: &Node) {
    let body = json!({"node": {"hostname": n.id, "agent_url": agents.url(&n.id),
        "availability_zone": n.az, "architecture": n.arch,
        "inventory": {"vcpus": n.vcpus, "memory_mib": n.memory_mib, "disk_bytes": n.disk_gb << 30}}});
    let r = json_req(
        port,
        "PUT",
        &format!("/v1/nodes/{}", n.id),
        NODE_TOKEN,
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Heartbeats of some nodes, sent in a loop by a thread until this is dropped.
pub struct Heartbeats {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    /// Heartbeats `nodes` on `port`, each about once a second.
    pub fn start(port: u16, nodes: Vec<String>) -> Heartbeats {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let round = Instant::now();
                for id in &nodes {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({"heartbeat": {"seq": 1, "time": 0, "servers": []}});
                    let path = format!("/v1/nodes/{id}/heartbeat");
                    let r = json_req(port, "POST", &path, NODE_TOKEN, &body);
                    assert_eq!(r.status, 204, "{}", r.text());
                }
                if let Some(rest) = Duration::from_secs(1).checked_sub(round.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        Heartbeats {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A JSON request with a token (no body for `Null`).
pub fn json_req(port: u16, method: &str, path: &str, token: &str, body: &Value) -> super::Answer {
    if body.is_null() {
        return http(port, method, path, &[("x-auth-token", token)], b"");
    }
    http(
        port,
        method,
        path,
        &[
            ("content-type", "application/json"),
            ("x-auth-token", token),
        ],
        body.to_string().as_bytes(),
    )
}

/// The admin's token and project, an unlimited quota, a kernel image and boot images
/// (one per `architecture` property given, `None` for none), flavors by name.
pub struct Tenant {
    /// Admin token (valid on every controller sharing the key dir).
    pub token: String,
    /// Boot image ids by architecture property (`""` for none).
    pub images: BTreeMap<String, String>,
    /// Flavor ids by name.
    pub flavors: BTreeMap<String, String>,
}

impl Tenant {
    /// Sets everything up on `cloud`. `flavors`: (name, vcpus, ram MiB, disk GiB).
    pub fn setup(cloud: &Cloud, arches: &[&str], flavors: &[(&str, u64, u64, u64)]) -> Tenant {
        let (token, body) = cloud.token("admin", super::ADMIN_PASSWORD, "admin");
        let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
        let r = cloud.json(
            "PUT",
            &format!("/compute/v2.1/os-quota-sets/{pid}"),
            Some(&token),
            &json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1,
                    "server_group_members": -1, "server_groups": -1}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let image = |name: &str, extra: Value| -> String {
            let mut b = json!({"name": name, "disk_format": "raw", "container_format": "bare"});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            let r = cloud.json("POST", "/image/v2/images", Some(&token), &b);
            assert_eq!(r.status, 201, "{}", r.text());
            let id = r.json()["id"].as_str().unwrap().to_string();
            let r = cloud.req(
                "PUT",
                &format!("/image/v2/images/{id}/file"),
                Some(&token),
                &[("content-type", "application/octet-stream")],
                name.as_bytes(),
            );
            assert_eq!(r.status, 204, "{}", r.text());
            id
        };
        let kernel = image("kernel", json!({}));
        let mut images = BTreeMap::new();
        for a in arches {
            let extra = if a.is_empty() {
                json!({"kernel_id": kernel})
            } else {
                json!({"kernel_id": kernel, "architecture": a})
            };
            images.insert(a.to_string(), image(&format!("disk-{a}"), extra));
        }
        let mut ids = BTreeMap::new();
        for (name, vcpus, ram, disk) in flavors {
            let r = cloud.json(
                "POST",
                "/compute/v2.1/flavors",
                Some(&token),
                &json!({"flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk}}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            ids.insert(
                name.to_string(),
                r.json()["flavor"]["id"].as_str().unwrap().to_string(),
            );
        }
        Tenant {
            token,
            images,
            flavors: ids,
        }
    }

    /// Creates a server group; returns its id.
    pub fn group(&self, port: u16, name: &str, policy: &str) -> String {
        let r = json_req(
            port,
            "POST",
            "/compute/v2.1/os-server-groups",
            &self.token,
            &json!({"server_group": {"name": name, "policies": [policy]}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["server_group"]["id"].as_str().unwrap().to_string()
    }

    /// `POST /servers` on the controller at `port`; returns the server id.
    pub fn create(&self, port: u16, spec: &ServerSpec) -> String {
        let mut server = json!({"name": spec.name, "imageRef": self.images[&spec.arch],
            "flavorRef": self.flavors[&spec.flavor], "networks": "none"});
        if let Some(az) = &spec.az {
            server["availability_zone"] = json!(az);
        }
        let mut body = json!({"server": server});
        if let Some(g) = &spec.group {
            body["os:scheduler_hints"] = json!({"group": g});
        }
        let r = json_req(port, "POST", "/compute/v2.1/servers", &self.token, &body);
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["server"]["id"].as_str().unwrap().to_string()
    }

    /// Creates servers from `threads` client threads, round-robin over `ports`
    /// (controllers); returns their ids in `specs` order.
    pub fn create_many(&self, ports: &[u16], specs: &[ServerSpec], threads: usize) -> Vec<String> {
        let ids: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; specs.len()]);
        std::thread::scope(|s| {
            for t in 0..threads {
                let ids = &ids;
                s.spawn(move || {
                    for i in (t..specs.len()).step_by(threads) {
                        let id = self.create(ports[i % ports.len()], &specs[i]);
                        ids.lock().unwrap()[i] = Some(id);
                    }
                });
            }
        });
        ids.into_inner()
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }

    /// Waits until none of `ids` is in BUILD; returns their detailed views by id.
    pub fn settle(&self, port: u16, ids: &[String]) -> BTreeMap<String, Value> {
        let want: BTreeSet<&String> = ids.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let r = json_req(
                port,
                "GET",
                "/compute/v2.1/servers/detail?all_tenants=1",
                &self.token,
                &Value::Null,
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let all: BTreeMap<String, Value> = r.json()["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| want.contains(&s["id"].as_str().unwrap().to_string()))
                .map(|s| (s["id"].as_str().unwrap().to_string(), s.clone()))
                .collect();
            let building = all.values().filter(|s| s["status"] == "BUILD").count();
            if all.len() == ids.len() && building == 0 {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{building} of {} servers still building ({} found)",
                ids.len(),
                all.len()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A server to create.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Name.
    pub name: String,
    /// Flavor name.
    pub flavor: String,
    /// Image by its architecture property (`""`: none).
    pub arch: String,
    /// Requested availability zone.
    pub az: Option<String>,
    /// Server group id.
    pub group: Option<String>,
}

impl ServerSpec {
    /// `count` servers named `prefix-N` of one flavor on the image without architecture.
    pub fn many(prefix: &str, flavor: &str, count: usize) -> Vec<ServerSpec> {
        (0..count)
            .map(|i| ServerSpec {
                name: format!("{prefix}-{i}"),
                flavor: flavor.into(),
                arch: String::new(),
                az: None,
                group: None,
            })
            .collect()
    }
}

/// Every node as control reports it (`GET /v1/nodes`), by id.
pub fn nodes(port: u16) -> BTreeMap<String, Value> {
    let r = json_req(port, "GET", "/v1/nodes", NODE_TOKEN, &Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

/// Asserts that no node holds more than its capacity after overcommit.
pub fn assert_within_capacity(nodes: &BTreeMap<String, Value>) {
    for (id, n) in nodes {
        for k in ["vcpus", "memory_mib", "disk_gb"] {
            let used = n["used"][k].as_u64().unwrap();
            let cap = n["capacity"][k].as_u64().unwrap();
            assert!(
                used <= cap,
                "node {id} overbooked on {k}: {used} > {cap}: {n}"
            );
        }
    }
}

/// The host of a server view.
pub fn host(v: &Value) -> &str {
    v["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or("")
}
