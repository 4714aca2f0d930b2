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
//! A failed batch's samples are logged and dropped (cumulative meters carry the totals, so
//! the next batch loses nothing but the points in between); its events are kept.
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
//! Events: `compute.instance.create` when a server appears, `compute.instance.delete` when
//! it goes, `compute.instance.update` with traits `old_state`/`state` when its status
//! changes. They are made at the moment of the change: every change to the agent's state
//! goes through [`crate::agent::Agent`]'s save, which compares the servers with those of
//! the last save and appends the events to an outbox ([`Outbox`]) held in the same state
//! file, so the change and its events are written by one atomic rename (a crash keeps
//! both or neither). The sender is woken at once, posts the outbox (each event carries its
//! `message_id`, so control drops a repeat), and removes what control accepted; failures
//! are retried with backoff (1 s doubling to 30 s), and an agent restart resumes from the
//! saved outbox. Event times are strictly increasing milliseconds, so two quick changes
//! keep their order. At most [`MAX_PENDING`] events wait (the oldest are dropped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::{Agent, error_chain, lock};
use crate::http::{Client, HttpError, parse_http_url};
use crate::model::{Server, Status};
use crate::store::{State, StoreError};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Owner project.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: Status,
}

/// The servers now, for [`events`].
pub fn snapshot(servers: &BTreeMap<String, Server>) -> BTreeMap<String, Seen> {
    servers
        .iter()
        .map(|(id, s)| {
            (
                id.clone(),
                Seen {
                    project_id: s.placement.project_id.clone(),
                    name: s.placement.name.clone(),
                    status: s.status,
                },
            )
        })
        .collect()
}

/// A lifecycle event, as control's `POST /telemetry/v1/samples` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id: control stores an event once however often it is sent.
    pub message_id: String,
    /// `compute.instance.{create,update,delete}`.
    pub event_type: String,
    /// The server.
    pub resource_id: String,
    /// Its project.
    pub project_id: String,
    /// When, epoch seconds (whole milliseconds).
    pub generated: f64,
    /// `name`, `state`, `old_state`.
    pub traits: Value,
}

/// At most this many events wait to be sent; beyond, the oldest are dropped.
pub const MAX_PENDING: usize = 10_000;

/// The events part of the agent's saved state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outbox {
    /// The servers as of the last save (`None` in a state file from before events were
    /// saved: the servers then are the baseline).
    #[serde(default)]
    pub seen: Option<BTreeMap<String, Seen>>,
    /// Events control has not accepted yet, oldest first.
    #[serde(default)]
    pub pending: Vec<Event>,
    /// The last event's time, ms (times are strictly increasing).
    #[serde(default)]
    pub last_ms: i64,
}

/// Lifecycle events between two snapshots, times from `ts_ms` (which it advances).
pub fn events(
    before: &BTreeMap<String, Seen>,
    now: &BTreeMap<String, Seen>,
    ts_ms: &mut i64,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut ev = |t: &str, id: &str, s: &Seen, traits: Value| {
        *ts_ms += 1;
        out.push(Event {
            message_id: uuid::Uuid::new_v4().simple().to_string(),
            event_type: t.to_string(),
            resource_id: id.to_string(),
            project_id: s.project_id.clone(),
            generated: *ts_ms as f64 / 1000.0,
            traits,
        });
    };
    for (id, s) in now {
        match before.get(id) {
            None => ev(
                "compute.instance.create",
                id,
                s,
                json!({"name": s.name, "state": s.status.as_str()}),
            ),
            Some(b) if b.status != s.status => ev(
                "compute.instance.update",
                id,
                s,
                json!({"name": s.name, "old_state": b.status.as_str(), "state": s.status.as_str()}),
            ),
            Some(_) => {}
        }
    }
    for (id, b) in before {
        if !now.contains_key(id) {
            ev(
                "compute.instance.delete",
                id,
                b,
                json!({"name": b.name, "state": "DELETED", "old_state": b.status.as_str()}),
            );
        }
    }
    out
}

/// What [`record`] changed, to take back if the state cannot be saved.
#[derive(Debug)]
pub struct Undo {
    seen: Option<BTreeMap<String, Seen>>,
    pending: Vec<Event>,
    last_ms: i64,
}

impl Undo {
    /// Puts the outbox back as it was.
    pub fn restore(self, st: &mut State) {
        st.events.seen = self.seen;
        st.events.pending = self.pending;
        st.events.last_ms = self.last_ms;
    }
}

fn now_ms() -> i64 {
    (now_secs() * 1000.0) as i64
}

/// Called before every save of the state: appends the events of the changes since the
/// last save to the outbox (when `enabled`). `None` when nothing changed.
pub fn record(st: &mut State, enabled: bool) -> Option<Undo> {
    let now = snapshot(&st.servers);
    let Some(before) = &st.events.seen else {
        st.events.seen = Some(now);
        return None;
    };
    if *before == now {
        return None;
    }
    if !enabled {
        st.events.seen = Some(now);
        return None;
    }
    let mut ts = st.events.last_ms.max(now_ms() - 1);
    let new = events(before, &now, &mut ts);
    let undo = Undo {
        seen: st.events.seen.replace(now),
        pending: st.events.pending.clone(),
        last_ms: st.events.last_ms,
    };
    if new.is_empty() {
        return Some(undo);
    }
    st.events.last_ms = ts;
    st.events.pending.extend(new);
    let over = st.events.pending.len().saturating_sub(MAX_PENDING);
    if over > 0 {
        tracing::warn!(
            dropped = over,
            "telemetry outbox full: oldest events dropped"
        );
        st.events.pending.drain(..over);
    }
    Some(undo)
}

impl Agent {
    /// Up to `max` events waiting for control, oldest first.
    pub fn pending_events(&self, max: usize) -> Vec<Event> {
        let st = lock(&self.state);
        st.events.pending.iter().take(max).cloned().collect()
    }

    /// Removes the events control accepted and saves.
    pub fn ack_events(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        let before = st.events.pending.len();
        st.events.pending.retain(|e| !ids.contains(&e.message_id));
        if st.events.pending.len() == before {
            return Ok(());
        }
        self.save(&mut st)
    }

    /// Waits until a save recorded new events (returns at once if one did since the last
    /// wait).
    pub async fn events_recorded(&self) {
        self.events_ready.notified().await;
    }
}

async fn send(
    client: &Client,
    path: &str,
    node: &str,
    samples: Vec<Value>,
    events: &[Event],
) -> Result<(), HttpError> {
    let n = (samples.len(), events.len());
    let body = json!({"node_id": node, "samples": samples, "events": events});
    match client.call(Method::POST, path, Some(&body)).await {
        Ok(_) => {
            tracing::debug!(samples = n.0, events = n.1, "telemetry sent");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), samples = n.0, events = n.1, "sending telemetry failed");
            Err(e)
        }
    }
}

/// Events sent in one batch at most.
const EVENTS_PER_BATCH: usize = 200;

/// Samples every interval and sends events as they are recorded, forever.
pub async fn run(agent: Arc<Agent>, cfg: SamplerConfig) -> Result<(), HttpError> {
    use tokio::time::Instant;
    let (endpoint, prefix) = parse_http_url(&cfg.url)?;
    let mut client = Client::new(endpoint, Duration::from_secs(10));
    if let Some(t) = &cfg.token {
        client = client.with_header("x-auth-token", t);
    }
    let path = format!("{}/telemetry/v1/samples", prefix.trim_end_matches('/'));
    let node = agent.node_id();
    let sampling = !cfg.interval.is_zero();
    let far = Duration::from_secs(86_400 * 365);
    let mut next_sample = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let pending = agent.pending_events(EVENTS_PER_BATCH);
        let events_due = !pending.is_empty() && retry_at.is_none_or(|r| now >= r);
        let samples_due = sampling && now >= next_sample;
        if !events_due && !samples_due {
            let mut wake = if sampling { next_sample } else { now + far };
            if let Some(r) = retry_at.filter(|_| !pending.is_empty()) {
                wake = wake.min(r);
            }
            tokio::select! {
                () = agent.events_recorded() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            continue;
        }
        let samples = if samples_due {
            next_sample = now + cfg.interval;
            collect(&agent).await
        } else {
            Vec::new()
        };
        let events = if events_due { pending } else { Vec::new() };
        match send(&client, &path, &node, samples, &events).await {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                retry_at = None;
                let ids: Vec<String> = events.into_iter().map(|e| e.message_id).collect();
                if let Err(e) = agent.ack_events(&ids) {
                    // They stay in the outbox and are sent again; control drops repeats.
                    tracing::warn!(error = %error_chain(&e), "cannot save the telemetry outbox");
                }
            }
            Err(HttpError::Status { status, .. })
                if (400..500).contains(&status)
                    && ![401, 403, 408, 429].contains(&status)
                    && !events.is_empty() =>
            {
                if samples_due {
                    // Maybe the samples were refused: send the events alone next.
                    retry_at = Some(Instant::now());
                } else {
                    tracing::error!(
                        status,
                        events = events.len(),
                        "control refused these events: dropped"
                    );
                    let ids: Vec<String> = events.into_iter().map(|e| e.message_id).collect();
                    let _ = agent.ack_events(&ids);
                }
            }
            Err(_) => {
                if !events.is_empty() {
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
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
        let mut ts = 5000;
        let e = events(&before, &now, &mut ts);
        let kinds: Vec<_> = e
            .iter()
            .map(|e| (e.event_type.as_str(), e.resource_id.as_str(), e.generated))
            .collect();
        assert_eq!(
            kinds,
            [
                ("compute.instance.update", "a", 5.001),
                ("compute.instance.create", "c", 5.002),
                ("compute.instance.delete", "b", 5.003)
            ]
        );
        assert_eq!(ts, 5003);
        assert_eq!(e[0].traits["old_state"], "BUILD");
        assert_eq!(e[0].traits["state"], "ACTIVE");
        assert_ne!(e[0].message_id, e[1].message_id);
        assert!(events(&now, &now, &mut ts).is_empty());
    }

    fn server(id: &str, status: Status) -> Server {
        let mut s: Server = serde_json::from_value(json!({
            "placement": {"id": id, "name": "vm", "project_id": "p", "vcpus": 1, "ram_mib": 64,
                "kernel": {"path": "/k"}, "root_disk": {}},
            "status": "BUILD", "created": 0, "updated": 0
        }))
        .unwrap();
        s.status = status;
        s
    }

    /// Every state change recorded before its save becomes its own event, in order, with
    /// strictly increasing times, even when the changes come within one millisecond; a
    /// failed save takes its events back; the outbox survives a reload of the state file.
    #[test]
    fn each_saved_change_is_one_event_and_the_outbox_is_saved_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut st = crate::store::load(&path).unwrap();
        let save = |st: &mut State| {
            record(st, true);
            crate::store::save(&path, st).unwrap();
        };
        st.servers.insert("a".into(), server("a", Status::Build));
        save(&mut st);
        for status in [Status::Active, Status::Shutoff, Status::Active] {
            st.servers.get_mut("a").unwrap().status = status;
            save(&mut st);
        }
        st.servers.remove("a");
        save(&mut st);
        let st = crate::store::load(&path).unwrap();
        let got: Vec<_> = st
            .events
            .pending
            .iter()
            .map(|e| {
                (
                    e.event_type.as_str(),
                    e.traits["old_state"].as_str().unwrap_or(""),
                    e.traits["state"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("compute.instance.create", "", "BUILD"),
                ("compute.instance.update", "BUILD", "ACTIVE"),
                ("compute.instance.update", "ACTIVE", "SHUTOFF"),
                ("compute.instance.update", "SHUTOFF", "ACTIVE"),
                ("compute.instance.delete", "ACTIVE", "DELETED"),
            ]
        );
        let times: Vec<f64> = st.events.pending.iter().map(|e| e.generated).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

        // A save that fails is undone: no event, and the next save reports the change.
        let mut st = st;
        st.servers.insert("b".into(), server("b", Status::Build));
        let undo = record(&mut st, true).expect("a change");
        assert_eq!(st.events.pending.len(), 6);
        undo.restore(&mut st);
        assert_eq!(st.events.pending.len(), 5);
        assert!(record(&mut st, true).is_some());
        assert_eq!(st.events.pending.len(), 6);
        // Disabled: the baseline moves, nothing is queued.
        st.servers.remove("b");
        assert!(record(&mut st, false).is_none());
        assert_eq!(st.events.pending.len(), 6);
        assert!(record(&mut st, true).is_none(), "nothing new since");
    }
}
