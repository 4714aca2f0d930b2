//! Telemetry: meters (Ceilometer-style samples stored as time series), lifecycle events
//! and threshold alarms (Aodh-style).
//!
//! Samples arrive in batches from node agents (`POST /telemetry/v1/samples`, see
//! [`crate::api::telemetry`] for the contract) and are appended to the `meter_samples`
//! table. Every stored row is an aggregate of one or more samples of one meter of one
//! resource: `count`, `sum`, `min`, `max`, `last`, over a bucket of `granularity` seconds
//! starting at `ts` (granularity 0: one raw sample at `ts`). Because those five figures
//! merge, a query at any granularity can mix raw rows and aggregates: the retention pass
//! ([`retention_pass`]) replaces raw rows older than `raw-retention` by per-minute rows,
//! per-minute rows older than `minute-retention` by per-hour rows, and drops per-hour rows
//! older than `hour-retention`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

pub mod alarm;
pub mod metrics;

/// Errors of the telemetry layer.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A sample, query or alarm is invalid (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
}

fn invalid(msg: impl Into<String>) -> TelemetryError {
    TelemetryError::Invalid(msg.into())
}

/// One stored row of a meter (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// Meter name (`cpu`, `disk.read.bytes`...).
    pub meter: String,
    /// The measured resource (server, volume, port id).
    pub resource_id: String,
    /// Owner project.
    pub project_id: String,
    /// Owner user (may be empty).
    pub user_id: String,
    /// `cumulative`, `gauge` or `delta`.
    pub mtype: String,
    /// Unit (`ns`, `B`, `MiB`, `request`...).
    pub unit: String,
    /// Bucket width in seconds; 0 for a raw sample.
    pub granularity: i64,
    /// Bucket start (or sample time), milliseconds since the epoch.
    pub ts: i64,
    /// Samples merged.
    pub count: i64,
    /// Sum of their volumes.
    pub sum: f64,
    /// Smallest volume.
    pub min: f64,
    /// Largest volume.
    pub max: f64,
    /// The latest volume.
    pub last: f64,
}

/// A filter for [`Store::query_samples`]; empty strings match anything.
#[derive(Debug, Clone)]
pub struct SampleFilter {
    /// Smallest row granularity included.
    pub min_granularity: i64,
    /// Largest row granularity included.
    pub max_granularity: i64,
    /// From (inclusive), ms.
    pub start_ms: i64,
    /// To (exclusive), ms.
    pub end_ms: i64,
    /// Meter name or "".
    pub meter: String,
    /// Resource id or "".
    pub resource_id: String,
    /// Project id or "".
    pub project_id: String,
    /// Most rows returned.
    pub limit: i64,
}

impl SampleFilter {
    /// Every row of every granularity.
    pub fn all() -> SampleFilter {
        SampleFilter {
            min_granularity: 0,
            max_granularity: i64::MAX,
            start_ms: i64::MIN,
            end_ms: i64::MAX,
            meter: String::new(),
            resource_id: String::new(),
            project_id: String::new(),
            limit: i64::MAX,
        }
    }
}

/// A sample as agents send it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Meter name.
    pub meter: String,
    /// `cumulative`, `gauge` or `delta`.
    #[serde(rename = "type")]
    pub mtype: String,
    /// Unit.
    pub unit: String,
    /// The value.
    pub volume: f64,
    /// The measured resource.
    pub resource_id: String,
    /// Owner project.
    pub project_id: String,
    /// Owner user.
    #[serde(default)]
    pub user_id: String,
    /// Epoch seconds (may be fractional) or `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    pub timestamp: serde_json::Value,
}

/// Longest accepted name or id.
const MAX_NAME: usize = 255;

fn check_name(what: &str, s: &str, allow_empty: bool) -> Result<(), TelemetryError> {
    if (s.is_empty() && !allow_empty) || s.len() > MAX_NAME {
        return Err(invalid(format!(
            "{what} must be 1 to {MAX_NAME} characters"
        )));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
    {
        return Err(invalid(format!(
            "{what} {s:?} has characters other than letters, digits and ._-:/"
        )));
    }
    Ok(())
}

/// Parses a timestamp: epoch seconds (number) or ISO 8601 UTC text; milliseconds out.
pub fn parse_timestamp(v: &serde_json::Value) -> Result<i64, TelemetryError> {
    match v {
        serde_json::Value::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
                .ok_or_else(|| invalid(format!("timestamp {n} is out of range")))?;
            Ok((secs * 1000.0).round() as i64)
        }
        serde_json::Value::String(s) => parse_time_text(s),
        other => Err(invalid(format!(
            "timestamp must be epoch seconds or ISO 8601 text, not {other}"
        ))),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff...][Z]` or epoch seconds given as text; ms out.
pub fn parse_time_text(s: &str) -> Result<i64, TelemetryError> {
    if let Ok(secs) = s.parse::<f64>() {
        return parse_timestamp(&serde_json::json!(secs));
    }
    let secs = crate::time::parse(s)
        .ok_or_else(|| invalid(format!("{s:?} is not a timestamp (YYYY-MM-DDTHH:MM:SSZ)")))?;
    let frac = s
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|rest| {
            let digits: String = rest
                .chars()
                .take_while(char::is_ascii_digit)
                .take(3)
                .collect();
            format!("{digits:0<3}").parse::<i64>().unwrap_or(0)
        })
        .unwrap_or(0);
    Ok(secs as i64 * 1000 + frac)
}

/// `ms` since the epoch as `2026-12-04T17:29:05.123Z`.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000).max(0) as u64;
    let g = crate::time::glance(secs);
    format!("{}.{:03}Z", g.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// Now, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sample {
    /// Checks the sample and turns it into a raw row.
    pub fn into_row(self) -> Result<SampleRow, TelemetryError> {
        check_name("meter", &self.meter, false)?;
        check_name("resource_id", &self.resource_id, false)?;
        check_name("project_id", &self.project_id, false)?;
        check_name("user_id", &self.user_id, true)?;
        if !["cumulative", "gauge", "delta"].contains(&self.mtype.as_str()) {
            return Err(invalid(format!(
                "type {:?} must be cumulative, gauge or delta",
                self.mtype
            )));
        }
        if self.unit.is_empty() || self.unit.len() > 32 {
            return Err(invalid("unit must be 1 to 32 characters"));
        }
        if !self.volume.is_finite() {
            return Err(invalid(format!(
                "volume of {} must be a finite number",
                self.meter
            )));
        }
        let ts = parse_timestamp(&self.timestamp)?;
        Ok(SampleRow {
            meter: self.meter,
            resource_id: self.resource_id,
            project_id: self.project_id,
            user_id: self.user_id,
            mtype: self.mtype,
            unit: self.unit,
            granularity: 0,
            ts,
            count: 1,
            sum: self.volume,
            min: self.volume,
            max: self.volume,
            last: self.volume,
        })
    }
}

/// How a bucket's samples become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Average of the samples.
    Mean,
    /// Sum of the samples.
    Sum,
    /// Largest sample.
    Max,
    /// Smallest sample.
    Min,
    /// Number of samples.
    Count,
    /// The latest sample.
    Last,
    /// Per-second increase of a cumulative meter since the previous bucket (the latest
    /// sample of each; a counter reset counts from zero).
    Rate,
}

impl Aggregation {
    /// Parses a query value.
    pub fn parse(s: &str) -> Result<Aggregation, TelemetryError> {
        serde_json::from_value(serde_json::json!(s)).map_err(|_| {
            invalid(format!(
                "aggregation {s:?} must be one of mean, sum, max, min, count, last, rate"
            ))
        })
    }
}

/// A merged bucket.
#[derive(Debug, Clone, Copy)]
struct Acc {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_ts: i64,
}

impl Acc {
    fn of(r: &SampleRow) -> Acc {
        Acc {
            count: r.count,
            sum: r.sum,
            min: r.min,
            max: r.max,
            last: r.last,
            last_ts: r.ts,
        }
    }
    fn merge(&mut self, r: &SampleRow) {
        self.count += r.count;
        self.sum += r.sum;
        self.min = self.min.min(r.min);
        self.max = self.max.max(r.max);
        if r.ts >= self.last_ts {
            self.last = r.last;
            self.last_ts = r.ts;
        }
    }
}

/// One point of an aggregate series: bucket start (ms), granularity (s), value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// Bucket start, ms.
    pub ts: i64,
    /// Bucket width, s.
    pub granularity: i64,
    /// The aggregated value.
    pub value: f64,
}

/// Aggregates rows (of any granularity up to `granularity`) into buckets of `granularity`
/// seconds. Rows of several resources are combined per bucket; for `rate` each resource's
/// rate is computed alone and the rates are summed (the rate of the group).
pub fn aggregate(rows: &[SampleRow], granularity: i64, agg: Aggregation) -> Vec<Measure> {
    let width = granularity.max(1) * 1000;
    // resource -> bucket -> acc (per resource, needed for rate).
    let mut per: BTreeMap<&str, BTreeMap<i64, Acc>> = BTreeMap::new();
    for r in rows {
        let b = r.ts.div_euclid(width) * width;
        per.entry(&r.resource_id)
            .or_default()
            .entry(b)
            .and_modify(|a| a.merge(r))
            .or_insert_with(|| Acc::of(r));
    }
    let mut out: BTreeMap<i64, f64> = BTreeMap::new();
    if agg == Aggregation::Rate {
        for buckets in per.values() {
            let mut prev: Option<(i64, f64)> = None;
            for (&b, a) in buckets {
                if let Some((pb, pv)) = prev {
                    let delta = if a.last >= pv { a.last - pv } else { a.last };
                    let secs = ((b - pb) as f64 / 1000.0).max(1e-3);
                    *out.entry(b).or_insert(0.0) += delta / secs;
                }
                prev = Some((b, a.last));
            }
        }
    } else {
        let mut merged: BTreeMap<i64, Acc> = BTreeMap::new();
        for buckets in per.values() {
            for (&b, a) in buckets {
                merged
                    .entry(b)
                    .and_modify(|m| {
                        m.count += a.count;
                        m.sum += a.sum;
                        m.min = m.min.min(a.min);
                        m.max = m.max.max(a.max);
                        // Last across resources: sum of each resource's latest (a group
                        // total for gauges like memory).
                        m.last += a.last;
                    })
                    .or_insert(*a);
            }
        }
        for (b, a) in merged {
            let v = match agg {
                Aggregation::Mean => a.sum / a.count.max(1) as f64,
                Aggregation::Sum => a.sum,
                Aggregation::Max => a.max,
                Aggregation::Min => a.min,
                Aggregation::Count => a.count as f64,
                Aggregation::Last => a.last,
                Aggregation::Rate => unreachable!("handled above"),
            };
            out.insert(b, v);
        }
    }
    out.into_iter()
        .map(|(ts, value)| Measure {
            ts,
            granularity,
            value,
        })
        .collect()
}

/// A series' identity and bucket start, for [`rollup`].
type SeriesBucket<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, i64);

/// Rolls rows of one granularity up into buckets of a larger one (same series identity).
pub fn rollup(rows: &[SampleRow], to_granularity: i64) -> Vec<SampleRow> {
    let width = to_granularity * 1000;
    let mut groups: BTreeMap<SeriesBucket<'_>, SampleRow> = BTreeMap::new();
    for r in rows {
        let b = r.ts.div_euclid(width) * width;
        let key = (
            r.meter.as_str(),
            r.resource_id.as_str(),
            r.project_id.as_str(),
            r.user_id.as_str(),
            r.mtype.as_str(),
            r.unit.as_str(),
            b,
        );
        match groups.get_mut(&key) {
            Some(g) => {
                g.count += r.count;
                g.sum += r.sum;
                g.min = g.min.min(r.min);
                g.max = g.max.max(r.max);
                // Rows arrive ordered by time, so the latest one wins.
                g.last = r.last;
            }
            None => {
                let mut g = r.clone();
                g.granularity = to_granularity;
                g.ts = b;
                groups.insert(key, g);
            }
        }
    }
    groups.into_values().collect()
}

/// Retention settings, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Raw samples kept this long, then rolled into per-minute rows.
    pub raw_ms: i64,
    /// Per-minute rows kept this long, then rolled into per-hour rows.
    pub minute_ms: i64,
    /// Per-hour rows kept this long, then dropped.
    pub hour_ms: i64,
}

/// What a retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Raw rows replaced by per-minute rows.
    pub raw_rolled: usize,
    /// Per-minute rows replaced by per-hour rows.
    pub minute_rolled: usize,
    /// Per-hour rows dropped.
    pub hour_dropped: usize,
}

/// One retention pass at time `now_ms` (see the module docs). Cut-offs are aligned to the
/// target bucket so a bucket is rolled up whole.
pub fn retention_pass(
    store: &dyn Store,
    r: Retention,
    now_ms: i64,
) -> Result<RetentionReport, TelemetryError> {
    let mut report = RetentionReport::default();
    for (from, to, keep) in [(0i64, 60i64, r.raw_ms), (60, 3600, r.minute_ms)] {
        let width = to * 1000;
        let cutoff = (now_ms - keep).div_euclid(width) * width;
        let mut f = SampleFilter::all();
        f.min_granularity = from;
        f.max_granularity = from;
        f.end_ms = cutoff;
        let rows = store.query_samples(&f)?;
        if rows.is_empty() {
            continue;
        }
        let rolled = rollup(&rows, to);
        store.replace_samples(from, cutoff, &rolled)?;
        if from == 0 {
            report.raw_rolled = rows.len();
        } else {
            report.minute_rolled = rows.len();
        }
    }
    let cutoff = now_ms - r.hour_ms;
    let mut f = SampleFilter::all();
    f.min_granularity = 3600;
    f.max_granularity = 3600;
    f.end_ms = cutoff;
    let old = store.query_samples(&f)?;
    if !old.is_empty() {
        store.replace_samples(3600, cutoff, &[])?;
        report.hour_dropped = old.len();
    }
    Ok(report)
}

/// A lifecycle event as agents send it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// The sender's id for it (a repeat with the same id from the same node is stored
    /// once); control makes one when absent.
    #[serde(default)]
    pub message_id: Option<String>,
    /// `compute.instance.create`, `compute.instance.delete`, `compute.instance.update`.
    pub event_type: String,
    /// The resource it is about.
    pub resource_id: String,
    /// Owner project.
    pub project_id: String,
    /// When (epoch seconds or ISO 8601).
    pub generated: serde_json::Value,
    /// Extra key/values (`state`, `old_state`, `name`...).
    #[serde(default)]
    pub traits: BTreeMap<String, serde_json::Value>,
}

/// A stored event.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EventDoc {
    /// Id (message id).
    pub message_id: String,
    /// Type.
    pub event_type: String,
    /// The resource.
    pub resource_id: String,
    /// Owner project.
    pub project_id: String,
    /// When, ms since the epoch.
    pub generated_ms: i64,
    /// The node that reported it.
    pub node_id: String,
    /// Extra key/values.
    pub traits: BTreeMap<String, serde_json::Value>,
}

impl EventIn {
    /// Checks the event and makes its stored document.
    pub fn into_doc(self, node_id: &str) -> Result<EventDoc, TelemetryError> {
        check_name("event_type", &self.event_type, false)?;
        check_name("resource_id", &self.resource_id, false)?;
        check_name("project_id", &self.project_id, false)?;
        if self.traits.len() > 32 {
            return Err(invalid("an event has at most 32 traits"));
        }
        let message_id = match self.message_id {
            Some(id) => {
                if id.is_empty()
                    || id.len() > 64
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(invalid(
                        "message_id must be 1 to 64 letters, digits or dashes",
                    ));
                }
                id
            }
            None => crate::identity::new_id(),
        };
        Ok(EventDoc {
            message_id,
            event_type: self.event_type,
            resource_id: self.resource_id,
            project_id: self.project_id,
            generated_ms: parse_timestamp(&self.generated)?,
            node_id: node_id.to_string(),
            traits: self.traits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(res: &str, ts: i64, v: f64) -> SampleRow {
        SampleRow {
            meter: "m".into(),
            resource_id: res.into(),
            project_id: "p".into(),
            user_id: String::new(),
            mtype: "cumulative".into(),
            unit: "B".into(),
            granularity: 0,
            ts,
            count: 1,
            sum: v,
            min: v,
            max: v,
            last: v,
        }
    }

    #[test]
    fn aggregations_over_buckets() {
        let rows = [
            row("a", 0, 1.0),
            row("a", 30_000, 3.0),
            row("a", 60_000, 10.0),
            row("a", 90_000, 20.0),
        ];
        let m = |agg| {
            aggregate(&rows, 60, agg)
                .iter()
                .map(|m| (m.ts, m.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(m(Aggregation::Mean), [(0, 2.0), (60_000, 15.0)]);
        assert_eq!(m(Aggregation::Sum), [(0, 4.0), (60_000, 30.0)]);
        assert_eq!(m(Aggregation::Max), [(0, 3.0), (60_000, 20.0)]);
        assert_eq!(m(Aggregation::Min), [(0, 1.0), (60_000, 10.0)]);
        assert_eq!(m(Aggregation::Count), [(0, 2.0), (60_000, 2.0)]);
        assert_eq!(m(Aggregation::Last), [(0, 3.0), (60_000, 20.0)]);
        // (20 - 3) / 60 s.
        assert_eq!(m(Aggregation::Rate), [(60_000, 17.0 / 60.0)]);
    }

    #[test]
    fn rate_sums_resources_and_survives_a_reset() {
        let rows = [
            row("a", 0, 100.0),
            row("b", 0, 0.0),
            row("a", 10_000, 50.0), // reset: counts 50 from zero
            row("b", 10_000, 20.0),
        ];
        let m = aggregate(&rows, 10, Aggregation::Rate);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].value, 5.0 + 2.0);
    }

    #[test]
    fn rollup_then_query_gives_the_same_answer_as_raw() {
        let store = crate::store::sqlite::SqliteStore::in_memory().unwrap();
        let rows: Vec<_> = (0..600)
            .map(|i| {
                row(
                    if i % 2 == 0 { "a" } else { "b" },
                    i * 1000,
                    (i * 7 % 13) as f64,
                )
            })
            .collect();
        store.append_samples(&rows).unwrap();
        let q = |store: &dyn Store| {
            let mut f = SampleFilter::all();
            f.meter = "m".into();
            f.max_granularity = 3600;
            let rows = store.query_samples(&f).unwrap();
            [
                Aggregation::Mean,
                Aggregation::Sum,
                Aggregation::Max,
                Aggregation::Min,
                Aggregation::Count,
            ]
            .map(|a| aggregate(&rows, 3600, a))
        };
        let before = q(&store);
        let ret = Retention {
            raw_ms: 0,
            minute_ms: 0,
            hour_ms: i64::MAX / 4,
        };
        // 600 s of raw rows, all older than "now" = 1 h: rolled to minutes then hours.
        let rep = retention_pass(&store, ret, 3_600_000).unwrap();
        assert_eq!(rep.raw_rolled, 600);
        assert_eq!(rep.minute_rolled, 20, "10 minutes x 2 resources");
        let mut f = SampleFilter::all();
        f.max_granularity = 0;
        assert!(store.query_samples(&f).unwrap().is_empty(), "raw rows gone");
        let all = store.query_samples(&SampleFilter::all()).unwrap();
        assert_eq!(all.len(), 2, "one hour row per resource: {all:?}");
        assert!(all.iter().all(|r| r.granularity == 3600 && r.count == 300));
        assert_eq!(q(&store), before);
        // Hour rows past hour retention are dropped.
        let ret = Retention {
            raw_ms: 0,
            minute_ms: 0,
            hour_ms: 1,
        };
        let rep = retention_pass(&store, ret, 10_000_000).unwrap();
        assert_eq!(rep.hour_dropped, 2);
        assert!(
            store
                .query_samples(&SampleFilter::all())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn samples_are_validated() {
        let good = serde_json::json!({"meter": "cpu", "type": "cumulative", "unit": "ns",
            "volume": 5.0, "resource_id": "r1", "project_id": "p1", "timestamp": 1.5});
        let s: Sample = serde_json::from_value(good.clone()).unwrap();
        let r = s.into_row().unwrap();
        assert_eq!((r.ts, r.count, r.last), (1500, 1, 5.0));
        for (k, v, needle) in [
            (
                "type",
                serde_json::json!("counter"),
                "cumulative, gauge or delta",
            ),
            ("meter", serde_json::json!(""), "meter must be"),
            ("meter", serde_json::json!("a b"), "characters"),
            (
                "timestamp",
                serde_json::json!("yesterday"),
                "not a timestamp",
            ),
            ("timestamp", serde_json::json!(-1), "out of range"),
            ("unit", serde_json::json!(""), "unit"),
        ] {
            let mut b = good.clone();
            b[k] = v;
            let s: Sample = serde_json::from_value(b).unwrap();
            let e = s.into_row().unwrap_err().to_string();
            assert!(e.contains(needle), "{k}: {e}");
        }
        assert_eq!(
            parse_time_text("2026-12-04T17:29:05.25Z").unwrap(),
            parse_time_text("2026-12-04T17:29:05Z").unwrap() + 250
        );
        assert_eq!(format_ms(1_500), "1970-01-01T00:00:01.500Z");
    }
}
