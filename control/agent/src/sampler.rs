//! Meter sampling for control's telemetry (when `--control-url` is given and
//! `sample-interval-secs` is not 0).
//!
//! Every interval the agent reads the Prometheus text of each running server's vmm
//! (`GET /metrics` on its API socket), of blockdp and of netdp, plus `/proc/<vmm pid>` for
//! resident memory, and sends one batch:
//!
//! `POST {control}/telemetry/v1/samples` with `X-Auth-Token` (admin or service role) and
//! `{"node_id", "samples": [{"meter", "type", "unit", "volume", "resource_id",
//! "project_id", "timestamp" (epoch seconds)}], "events": [...]}`; control answers 202.
//! A failed batch is logged and dropped (cumulative meters carry the totals, so the next
//! batch loses nothing but the points in between).
//!
//! Meters (Ceilometer's names):
//! - per server (resource = server id): `cpu` (cumulative ns of vCPU thread time),
//!   `vcpus` (gauge), `memory` (gauge MiB, configured), `memory.resident` (gauge MiB, the
//!   vmm's RSS), `disk.read.requests`, `disk.write.requests` (cumulative request),
//!   `disk.read.bytes`, `disk.write.bytes` (cumulative B) from its root volume in blockdp.
//! - per volume (resource = blockdp volume id): `disk.device.read.requests`,
//!   `disk.device.write.requests`, `disk.device.read.bytes`, `disk.device.write.bytes`.
//! - per port (resource = netdp port id): `network.incoming.packets`,
//!   `network.incoming.bytes` (delivered to the guest), `network.outgoing.packets`,
//!   `network.outgoing.bytes` (sent by the guest), `network.outgoing.packets.drop`.
//!
//! Events (checked every second, sent at once): `compute.instance.create` when a server
//! appears, `compute.instance.delete` when it goes, `compute.instance.update` with traits
//! `old_state`/`state` when its status changes. The servers present when the agent starts
//! are the baseline (no events for them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::agent::{Agent, error_chain};
use crate::http::{Client, HttpError, parse_http_url};
use crate::model::{Server, Status};

/// Where and how often to send samples.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Control's base URL.
    pub url: String,
    /// A token for `X-Auth-Token`.
    pub token: Option<String>,
    /// Sampling period.
    pub interval: Duration,
}

/// One Prometheus sample: name, labels, value.
pub type PromSample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus text (comments skipped; malformed lines ignored).
pub fn parse_prom(text: &str) -> Vec<PromSample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.find('{') {
            Some(i) if series.ends_with('}') => {
                let mut labels = BTreeMap::new();
                for pair in series[i + 1..series.len() - 1].split(',') {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                    }
                }
                (series[..i].to_string(), labels)
            }
            Some(_) => continue,
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// The sum of the series named `name` whose labels include `want`.
pub fn prom_sum(samples: &[PromSample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

fn sample(
    meter: &str,
    mtype: &str,
    unit: &str,
    volume: f64,
    res: &str,
    project: &str,
    ts: f64,
) -> Value {
    json!({"meter": meter, "type": mtype, "unit": unit, "volume": volume,
        "resource_id": res, "project_id": project, "timestamp": ts})
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The vmm's resident memory in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn scrape(client: &Client) -> Option<Vec<PromSample>> {
    match client.send(Method::GET, "/metrics", None).await {
        Ok(a) if a.status == 200 => Some(parse_prom(&String::from_utf8_lossy(&a.body))),
        Ok(a) => {
            tracing::debug!(status = a.status, "metrics scrape refused");
            None
        }
        Err(e) => {
            tracing::debug!(error = %error_chain(&e), "metrics scrape failed");
            None
        }
    }
}

/// The samples of every server, volume and port of this agent now.
pub async fn collect(agent: &Agent) -> Vec<Value> {
    let t = Duration::from_secs(5);
    let cfg = agent.config();
    let blockdp = scrape(&Client::unix(&cfg.blockdp_socket, t))
        .await
        .unwrap_or_default();
    let netdp = scrape(&Client::unix(&cfg.netdp_socket, t))
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for s in agent.list() {
        server_samples(agent, &s, &blockdp, &netdp, &mut out).await;
    }
    out
}

async fn server_samples(
    agent: &Agent,
    s: &Server,
    blockdp: &[PromSample],
    netdp: &[PromSample],
    out: &mut Vec<Value>,
) {
    let id = &s.placement.id;
    let project = &s.placement.project_id;
    let ts = now_secs();
    if matches!(s.status, Status::Active | Status::Paused)
        && let Some(p) = &s.process
    {
        let vmm = Client::unix(agent.vmm_socket(id), Duration::from_secs(5));
        if let Some(m) = scrape(&vmm).await {
            let cpu = prom_sum(&m, "ferrostack_vmm_vcpu_cpu_seconds_total", &[]);
            out.push(sample(
                "cpu",
                "cumulative",
                "ns",
                (cpu * 1e9).round(),
                id,
                project,
                ts,
            ));
        }
        if let Some(rss) = rss_mib(p.vmm_pid) {
            out.push(sample(
                "memory.resident",
                "gauge",
                "MiB",
                rss,
                id,
                project,
                ts,
            ));
        }
        out.push(sample(
            "vcpus",
            "gauge",
            "vcpu",
            f64::from(s.placement.vcpus),
            id,
            project,
            ts,
        ));
        out.push(sample(
            "memory",
            "gauge",
            "MiB",
            s.placement.ram_mib as f64,
            id,
            project,
            ts,
        ));
    }
    if let Some(v) = &s.resources.volume {
        let vol = [("volume", v.id.as_str())];
        let figure = |name: &str, op: &str| {
            let mut want = vol.to_vec();
            want.push(("op", op));
            prom_sum(blockdp, name, &want)
        };
        if blockdp.iter().any(|(n, l, _)| {
            n == "ferrostack_blockdp_io_requests_total" && l.get("volume") == Some(&v.id)
        }) {
            for (suffix, unit, name, op) in [
                (
                    "read.requests",
                    "request",
                    "ferrostack_blockdp_io_requests_total",
                    "read",
                ),
                (
                    "write.requests",
                    "request",
                    "ferrostack_blockdp_io_requests_total",
                    "write",
                ),
                (
                    "read.bytes",
                    "B",
                    "ferrostack_blockdp_io_bytes_total",
                    "read",
                ),
                (
                    "write.bytes",
                    "B",
                    "ferrostack_blockdp_io_bytes_total",
                    "write",
                ),
            ] {
                let value = figure(name, op);
                out.push(sample(
                    &format!("disk.{suffix}"),
                    "cumulative",
                    unit,
                    value,
                    id,
                    project,
                    ts,
                ));
                out.push(sample(
                    &format!("disk.device.{suffix}"),
                    "cumulative",
                    unit,
                    value,
                    &v.id,
                    project,
                    ts,
                ));
            }
        }
    }
    for port in &s.resources.ports {
        let want = [("port", port.id.as_str())];
        if !netdp.iter().any(|(n, l, _)| {
            n == "ferrostack_netdp_port_rx_packets_total" && l.get("port") == Some(&port.id)
        }) {
            continue;
        }
        for (meter, unit, series) in [
            (
                "network.incoming.packets",
                "packet",
                "ferrostack_netdp_port_tx_packets_total",
            ),
            (
                "network.incoming.bytes",
                "B",
                "ferrostack_netdp_port_tx_bytes_total",
            ),
            (
                "network.outgoing.packets",
                "packet",
                "ferrostack_netdp_port_rx_packets_total",
            ),
            (
                "network.outgoing.bytes",
                "B",
                "ferrostack_netdp_port_rx_bytes_total",
            ),
            (
                "network.outgoing.packets.drop",
                "packet",
                "ferrostack_netdp_port_drops_total",
            ),
        ] {
            out.push(sample(
                meter,
                "cumulative",
                unit,
                prom_sum(netdp, series, &want),
                &port.id,
                project,
                ts,
            ));
        }
    }
}

/// What the event tracker remembers of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Owner project.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: Status,
}

/// The servers now, for [`events`].
pub fn snapshot(servers: &[Server]) -> BTreeMap<String, Seen> {
    servers
        .iter()
        .map(|s| {
            (
                s.placement.id.clone(),
                Seen {
                    project_id: s.placement.project_id.clone(),
                    name: s.placement.name.clone(),
                    status: s.status,
                },
            )
        })
        .collect()
}

/// Lifecycle events between two snapshots.
pub fn events(
    before: &BTreeMap<String, Seen>,
    now: &BTreeMap<String, Seen>,
    ts: f64,
) -> Vec<Value> {
    let mut out = Vec::new();
    let ev = |t: &str, id: &str, s: &Seen, traits: Value| {
        json!({"event_type": t, "resource_id": id, "project_id": s.project_id,
            "generated": ts, "traits": traits})
    };
    for (id, s) in now {
        match before.get(id) {
            None => out.push(ev(
                "compute.instance.create",
                id,
                s,
                json!({"name": s.name, "state": s.status.as_str()}),
            )),
            Some(b) if b.status != s.status => out.push(ev(
                "compute.instance.update",
                id,
                s,
                json!({"name": s.name, "old_state": b.status.as_str(), "state": s.status.as_str()}),
            )),
            Some(_) => {}
        }
    }
    for (id, b) in before {
        if !now.contains_key(id) {
            out.push(ev(
                "compute.instance.delete",
                id,
                b,
                json!({"name": b.name, "state": "DELETED", "old_state": b.status.as_str()}),
            ));
        }
    }
    out
}

async fn send(
    client: &Client,
    path: &str,
    node: &str,
    samples: Vec<Value>,
    events: Vec<Value>,
) -> bool {
    let n = (samples.len(), events.len());
    let body = json!({"node_id": node, "samples": samples, "events": events});
    match client.call(Method::POST, path, Some(&body)).await {
        Ok(_) => {
            tracing::debug!(samples = n.0, events = n.1, "telemetry sent");
            true
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), samples = n.0, events = n.1, "sending telemetry failed");
            false
        }
    }
}

/// Samples and reports events forever.
pub async fn run(agent: Arc<Agent>, cfg: SamplerConfig) -> Result<(), HttpError> {
    let (endpoint, prefix) = parse_http_url(&cfg.url)?;
    let mut client = Client::new(endpoint, Duration::from_secs(10));
    if let Some(t) = &cfg.token {
        client = client.with_header("x-auth-token", t);
    }
    let path = format!("{}/telemetry/v1/samples", prefix.trim_end_matches('/'));
    let node = agent.node_id();
    let mut seen = snapshot(&agent.list());
    let mut pending: Vec<Value> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let now = snapshot(&agent.list());
        pending.extend(events(&seen, &now, now_secs()));
        seen = now;
        let due = tokio::time::Instant::now() >= next_sample;
        if !due && pending.is_empty() {
            continue;
        }
        let samples = if due {
            next_sample = tokio::time::Instant::now() + cfg.interval;
            collect(&agent).await
        } else {
            Vec::new()
        };
        let events = std::mem::take(&mut pending);
        if !send(&client, &path, &node, samples, events.clone()).await && events.len() < 10_000 {
            // Events are not cumulative: keep them for the next try.
            pending = events;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_read() {
        let t = "# HELP x y\n# TYPE x counter\nferrostack_x_total{a=\"1\",op=\"read\"} 5\n\
                 ferrostack_x_total{a=\"2\",op=\"read\"} 7\nferrostack_y 1.5e3\nbad line\n";
        let s = parse_prom(t);
        assert_eq!(s.len(), 3);
        assert_eq!(prom_sum(&s, "ferrostack_x_total", &[("op", "read")]), 12.0);
        assert_eq!(prom_sum(&s, "ferrostack_x_total", &[("a", "2")]), 7.0);
        assert_eq!(prom_sum(&s, "ferrostack_y", &[]), 1500.0);
    }

    #[test]
    fn lifecycle_events_between_snapshots() {
        let seen = |status| Seen {
            project_id: "p".into(),
            name: "vm".into(),
            status,
        };
        let before = BTreeMap::from([
            ("a".to_string(), seen(Status::Build)),
            ("b".to_string(), seen(Status::Active)),
        ]);
        let now = BTreeMap::from([
            ("a".to_string(), seen(Status::Active)),
            ("c".to_string(), seen(Status::Build)),
        ]);
        let e = events(&before, &now, 5.0);
        let kinds: Vec<_> = e
            .iter()
            .map(|e| {
                (
                    e["event_type"].as_str().unwrap(),
                    e["resource_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("compute.instance.update", "a"),
                ("compute.instance.create", "c"),
                ("compute.instance.delete", "b")
            ]
        );
        assert_eq!(e[0]["traits"]["old_state"], "BUILD");
        assert_eq!(e[0]["traits"]["state"], "ACTIVE");
        assert!(events(&now, &now, 6.0).is_empty());
    }
}
