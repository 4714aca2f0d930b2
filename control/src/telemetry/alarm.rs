//! Threshold alarms in Aodh's style: a rule on a meter of one resource (or of all of a
//! project's resources), evaluated every `evaluation-interval`; state `ok`, `alarm` or
//! `insufficient data`; on a transition each URL of the new state's actions gets an HTTP
//! POST `{"alarm_id", "alarm_name", "severity", "previous", "current", "reason",
//! "reason_data"}`.
//!
//! Evaluation: the last `evaluation_periods` windows of `period` seconds ending now are
//! aggregated; if any window has no sample the state is `insufficient data`; if every
//! window breaches the threshold, `alarm`; if none does, `ok`; otherwise unchanged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::metrics::METRICS;
use super::{Aggregation, SampleFilter, TelemetryError, aggregate, invalid};
use crate::store::{Kind, Record, Store};

/// Alarm states.
pub const STATES: [&str; 3] = ["ok", "alarm", "insufficient data"];

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    /// <
    Lt,
    /// <=
    Le,
    /// ==
    Eq,
    /// !=
    Ne,
    /// >=
    Ge,
    /// >
    Gt,
}

impl Comparison {
    fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Comparison::Lt => v < t,
            Comparison::Le => v <= t,
            Comparison::Eq => v == t,
            Comparison::Ne => v != t,
            Comparison::Ge => v >= t,
            Comparison::Gt => v > t,
        }
    }
}

/// The threshold rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Meter name.
    pub meter_name: String,
    /// One resource; absent: every resource of the alarm's project.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// Comparison with the threshold.
    pub comparison_operator: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// How each period's samples become one value.
    #[serde(default = "default_agg")]
    pub aggregation_method: Aggregation,
    /// Window length, seconds.
    #[serde(default = "default_period")]
    pub period: u64,
    /// Consecutive windows that must agree.
    #[serde(default = "default_periods")]
    pub evaluation_periods: u32,
}

fn default_agg() -> Aggregation {
    Aggregation::Mean
}
fn default_period() -> u64 {
    60
}
fn default_periods() -> u32 {
    1
}

/// A create request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmIn {
    /// Name.
    pub name: String,
    /// Must be `threshold`.
    #[serde(rename = "type", default = "default_type")]
    pub alarm_type: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `low`, `moderate` or `critical`.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Evaluated at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Owner project (admins only; default: the token's project).
    #[serde(default)]
    pub project_id: Option<String>,
    /// The rule.
    pub threshold_rule: ThresholdRule,
    /// URLs called on a transition to `alarm`.
    #[serde(default)]
    pub alarm_actions: Vec<String>,
    /// URLs called on a transition to `ok`.
    #[serde(default)]
    pub ok_actions: Vec<String>,
    /// URLs called on a transition to `insufficient data`.
    #[serde(default)]
    pub insufficient_data_actions: Vec<String>,
}

fn default_type() -> String {
    "threshold".into()
}
fn default_severity() -> String {
    "low".into()
}
fn yes() -> bool {
    true
}

/// A stored alarm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmDoc {
    /// Id.
    pub alarm_id: String,
    /// Name.
    pub name: String,
    /// Always `threshold`.
    #[serde(rename = "type")]
    pub alarm_type: String,
    /// Free text.
    pub description: String,
    /// Severity.
    pub severity: String,
    /// Evaluated at all.
    pub enabled: bool,
    /// Owner project.
    pub project_id: String,
    /// Creator.
    pub user_id: String,
    /// Current state.
    pub state: String,
    /// Why.
    pub state_reason: String,
    /// When the state last changed (ISO).
    pub state_timestamp: String,
    /// Creation time (ISO).
    pub timestamp: String,
    /// The rule.
    pub threshold_rule: ThresholdRule,
    /// URLs called on a transition to `alarm`.
    pub alarm_actions: Vec<String>,
    /// URLs called on a transition to `ok`.
    pub ok_actions: Vec<String>,
    /// URLs called on a transition to `insufficient data`.
    pub insufficient_data_actions: Vec<String>,
}

fn check_url(u: &str) -> Result<(), TelemetryError> {
    let rest = u
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("action {u:?} must be an http:// URL")))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || u.len() > 2048 {
        return Err(invalid(format!("action {u:?} has no host")));
    }
    Ok(())
}

impl AlarmIn {
    /// Checks the request and makes the document.
    pub fn into_doc(
        self,
        project_id: String,
        user_id: String,
        now_ms: i64,
    ) -> Result<AlarmDoc, TelemetryError> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(invalid("name must be 1 to 255 characters"));
        }
        if self.alarm_type != "threshold" {
            return Err(invalid(format!(
                "type {:?}: only threshold alarms are supported",
                self.alarm_type
            )));
        }
        if !["low", "moderate", "critical"].contains(&self.severity.as_str()) {
            return Err(invalid("severity must be low, moderate or critical"));
        }
        let r = &self.threshold_rule;
        super::check_name("meter_name", &r.meter_name, false)?;
        if let Some(id) = &r.resource_id {
            super::check_name("resource_id", id, false)?;
        }
        if !r.threshold.is_finite() {
            return Err(invalid("threshold must be a finite number"));
        }
        if r.period == 0 || r.period > 86_400 {
            return Err(invalid("period must be 1 to 86400 seconds"));
        }
        if r.evaluation_periods == 0 || r.evaluation_periods > 100 {
            return Err(invalid("evaluation_periods must be 1 to 100"));
        }
        for u in self
            .alarm_actions
            .iter()
            .chain(&self.ok_actions)
            .chain(&self.insufficient_data_actions)
        {
            check_url(u)?;
        }
        let now = super::format_ms(now_ms);
        Ok(AlarmDoc {
            alarm_id: crate::identity::new_id(),
            name: self.name,
            alarm_type: self.alarm_type,
            description: self.description,
            severity: self.severity,
            enabled: self.enabled,
            project_id,
            user_id,
            state: "insufficient data".into(),
            state_reason: "Not evaluated yet".into(),
            state_timestamp: now.clone(),
            timestamp: now,
            threshold_rule: self.threshold_rule,
            alarm_actions: self.alarm_actions,
            ok_actions: self.ok_actions,
            insufficient_data_actions: self.insufficient_data_actions,
        })
    }
}

/// The state a rule gives at `now_ms`, with the reason and the window values.
pub fn evaluate(
    store: &dyn Store,
    alarm: &AlarmDoc,
    now_ms: i64,
) -> Result<(String, String, Vec<f64>), TelemetryError> {
    let r = &alarm.threshold_rule;
    let period_ms = r.period as i64 * 1000;
    let n = r.evaluation_periods as i64;
    let start = now_ms - period_ms * n;
    let mut f = SampleFilter::all();
    f.meter = r.meter_name.clone();
    f.resource_id = r.resource_id.clone().unwrap_or_default();
    f.project_id = alarm.project_id.clone();
    // Rate needs the window before the first one.
    f.start_ms = if r.aggregation_method == Aggregation::Rate {
        start - period_ms
    } else {
        start
    };
    f.end_ms = now_ms;
    f.max_granularity = r.period as i64;
    let rows = store.query_samples(&f)?;
    // Windows end at now: shift times so that buckets align to them.
    let offset = now_ms.rem_euclid(period_ms);
    let shifted: Vec<_> = rows
        .into_iter()
        .map(|mut row| {
            row.ts -= offset;
            row
        })
        .collect();
    let measures = aggregate(&shifted, r.period as i64, r.aggregation_method);
    let first = start - offset;
    let values: Vec<f64> = (0..n)
        .filter_map(|i| {
            let b = first + i * period_ms;
            measures.iter().find(|m| m.ts == b).map(|m| m.value)
        })
        .collect();
    let what = format!(
        "{:?} of {} over {} s",
        r.aggregation_method, r.meter_name, r.period
    )
    .to_lowercase();
    if values.len() < n as usize {
        return Ok((
            "insufficient data".into(),
            format!("{} of {} windows have samples ({what})", values.len(), n),
            values,
        ));
    }
    let breaches = values
        .iter()
        .filter(|v| r.comparison_operator.holds(**v, r.threshold))
        .count();
    let op = serde_json::to_value(r.comparison_operator)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if breaches == values.len() {
        Ok((
            "alarm".into(),
            format!(
                "Transition to alarm due to {n} windows outside threshold, most recent: {} ({what} {op} {})",
                values[values.len() - 1],
                r.threshold
            ),
            values,
        ))
    } else if breaches == 0 {
        Ok((
            "ok".into(),
            format!(
                "Transition to ok due to {n} windows inside threshold, most recent: {} ({what})",
                values[values.len() - 1]
            ),
            values,
        ))
    } else {
        Ok((
            alarm.state.clone(),
            format!("windows disagree ({breaches} of {n} breach): state unchanged"),
            values,
        ))
    }
}

/// A transition to notify.
#[derive(Debug, Clone)]
pub struct Transition {
    /// URLs to call.
    pub urls: Vec<String>,
    /// The body.
    pub body: serde_json::Value,
}

/// Evaluates every enabled alarm; stores state changes (compare-and-swap) and returns the
/// webhook calls to make.
pub fn evaluate_all(store: &dyn Store, now_ms: i64) -> Result<Vec<Transition>, TelemetryError> {
    let mut out = Vec::new();
    for rec in store.list(Kind::Alarm, None)? {
        let mut doc: AlarmDoc = rec.parse()?;
        if !doc.enabled {
            continue;
        }
        METRICS.alarm_evaluations.fetch_add(1, Ordering::Relaxed);
        let (state, reason, values) = evaluate(store, &doc, now_ms)?;
        if state == doc.state {
            continue;
        }
        let previous = std::mem::replace(&mut doc.state, state.clone());
        doc.state_reason = reason.clone();
        doc.state_timestamp = super::format_ms(now_ms);
        let updated = Record {
            doc: serde_json::to_string(&doc).expect("documents serialize"),
            ..rec.clone()
        };
        match store.update(updated) {
            Ok(()) => {}
            // Changed or deleted meanwhile (another controller evaluated it): skip.
            Err(crate::store::StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        let i = STATES.iter().position(|s| *s == state).unwrap_or(2);
        METRICS.alarm_transitions[i].fetch_add(1, Ordering::Relaxed);
        let urls = match state.as_str() {
            "alarm" => doc.alarm_actions.clone(),
            "ok" => doc.ok_actions.clone(),
            _ => doc.insufficient_data_actions.clone(),
        };
        tracing::info!(alarm = %doc.alarm_id, %previous, current = %state, "alarm transition");
        if !urls.is_empty() {
            out.push(Transition {
                urls,
                body: serde_json::json!({
                    "alarm_id": doc.alarm_id,
                    "alarm_name": doc.name,
                    "severity": doc.severity,
                    "previous": previous,
                    "current": state,
                    "reason": reason,
                    "reason_data": {
                        "type": "threshold",
                        "disposition": if state == "alarm" { "outside" } else { "inside" },
                        "count": values.len(),
                        "most_recent": values.last(),
                    },
                }),
            });
        }
    }
    Ok(out)
}

/// POSTs a transition to one URL (10 s deadline).
pub async fn notify(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    use http_body_util::{BodyExt, Full};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let call = async {
        let stream = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| format!("connect {hostport}: {e}"))?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("host", hostport)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok::<u16, String>(status)
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Calls the webhooks of every transition.
pub async fn deliver(transitions: Vec<Transition>) {
    for t in transitions {
        for url in &t.urls {
            match notify(url, &t.body).await {
                Ok(s) if (200..300).contains(&s) => {
                    METRICS.webhook_calls.fetch_add(1, Ordering::Relaxed);
                }
                Ok(s) => {
                    METRICS.webhook_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%url, status = s, "alarm webhook refused");
                }
                Err(e) => {
                    METRICS.webhook_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%url, error = %e, "alarm webhook failed");
                }
            }
        }
    }
}

/// The evaluator loop (spawned by the server).
pub async fn run(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = store.clone();
        let now = super::now_ms();
        match tokio::task::spawn_blocking(move || evaluate_all(&*s, now)).await {
            Ok(Ok(t)) => deliver(t).await,
            Ok(Err(e)) => tracing::warn!(error = %e, "alarm evaluation failed"),
            Err(e) => tracing::warn!(error = %e, "alarm evaluation panicked"),
        }
    }
}
