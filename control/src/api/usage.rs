//! Nova's simple tenant usage (`os-simple-tenant-usage`): per project, the hours each
//! server ran within a period and those hours times its flavor's vCPUs, memory and disk.
//!
//! A server counts for the overlap of `[launched_at, terminated_at or now]` with the
//! period `[start, end]` (end capped at now), as Nova counts; a server that never became
//! ACTIVE counts nothing. Live servers come from their [`ServerDoc`]s. Deleted ones would
//! be gone, so [`delete_server_record`] replaces a launched server's record by a
//! [`TerminatedServerDoc`] (name, owner, flavor, launch and termination time) in the same
//! atomic batch: the counterpart of the soft-deleted instance row Nova reports from.
//!
//! `GET /v2.1/os-simple-tenant-usage` (admins: every project, `detailed=1` adds each
//! server) and `GET /v2.1/os-simple-tenant-usage/{project_id}` (that project's members or
//! an admin; always detailed) take `start` and `end` as `YYYY-MM-DDTHH:MM:SS[.ffffff]`
//! (or with a space before a fractional time), UTC; absent means now.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, Request};
use crate::compute::{FlavorDoc, ServerDoc};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Store, StoreError, Write};

/// What usage reports keep of a deleted server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminatedServerDoc {
    /// Display name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// Flavor at creation.
    pub flavor: FlavorDoc,
    /// Epoch seconds of the first ACTIVE.
    pub launched_at: u64,
    /// Epoch seconds of the delete.
    pub terminated_at: u64,
}

/// Forgets the deleted servers terminated before `before` (epoch seconds), as Nova's
/// `nova-manage db purge --before` drops its soft-deleted rows: usage reports of periods
/// reaching back before then stop counting them. One atomic batch; returns how many.
pub fn purge_terminated(store: &dyn Store, before: u64) -> Result<usize, StoreError> {
    let mut writes = Vec::new();
    for r in store.list(Kind::TerminatedServer, None)? {
        let d: TerminatedServerDoc = r.parse()?;
        if d.terminated_at < before {
            writes.push(Write::Delete(Kind::TerminatedServer, r.id));
        }
    }
    if !writes.is_empty() {
        store.apply(&writes)?;
    }
    Ok(writes.len())
}

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// Deletes server `id`'s record and its instance actions; if it ever ran, records it as
/// terminated now in the same batch. A server deleted meanwhile by another request is left alone.
pub(crate) fn delete_server_record(svc: &Service, id: &str) -> Result<(), ApiError> {
    let Some(r) = svc.store.get(Kind::Server, id).map_err(se)? else {
        return Ok(());
    };
    let d: ServerDoc = r.parse().map_err(se)?;
    // Its instance actions go with it (at 2.1 a deleted server's cannot be listed).
    let mut writes = super::instance_actions::deletes(svc, id)?;
    writes.push(Write::Delete(Kind::Server, id.to_string()));
    let Some(launched_at) = d.launched_at else {
        return svc.store.apply(&writes).map_err(se);
    };
    let doc = TerminatedServerDoc {
        name: d.name,
        project_id: d.project_id,
        flavor: d.flavor,
        launched_at,
        terminated_at: now_secs(),
    };
    writes.push(Write::Insert(Record::new(
        Kind::TerminatedServer,
        id,
        &doc.project_id,
        None,
        &doc,
    )));
    match svc.store.apply(&writes) {
        // A concurrent delete of the same server recorded it first.
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(se(e)),
    }
}

/// `GET /os-simple-tenant-usage`: every project's usage (admins only).
pub(crate) fn list(svc: &Service, ctx: &Ctx, req: &Request) -> Result<Value, ApiError> {
    if !ctx.is_admin() {
        return Err(policy("list"));
    }
    let period = Period::from_query(req, now_micros())?;
    // Nova's own clients send `1`; newer SDKs send a boolean's text (`True`).
    let detailed = first(req, "detailed").is_some_and(|d| {
        ["1", "true", "yes", "on"]
            .iter()
            .any(|t| d.eq_ignore_ascii_case(t))
    });
    let servers = load(svc, None)?;
    Ok(json!({"tenant_usages": report(&servers, &period, detailed)}))
}

/// `GET /os-simple-tenant-usage/{project_id}`: one project's usage (its members or an
/// admin); `{}` when nothing of it ran in the period.
pub(crate) fn show(
    svc: &Service,
    ctx: &Ctx,
    req: &Request,
    project_id: &str,
) -> Result<Value, ApiError> {
    if !ctx.is_admin() && ctx.project_id.as_deref() != Some(project_id) {
        return Err(policy("show"));
    }
    let period = Period::from_query(req, now_micros())?;
    let servers = load(svc, Some(project_id))?;
    let usage = report(&servers, &period, true)
        .into_iter()
        .next()
        .unwrap_or_else(|| json!({}));
    Ok(json!({"tenant_usage": usage}))
}

fn policy(action: &str) -> ApiError {
    ApiError::forbidden(format!(
        "Policy doesn't allow os_compute_api:os-simple-tenant-usage:{action} to be performed."
    ))
}

/// A server as the report sees it, live or terminated.
#[derive(Debug, Clone)]
struct Counted {
    id: String,
    name: String,
    project_id: String,
    flavor: FlavorDoc,
    launched_at: u64,
    terminated_at: Option<u64>,
    /// Nova's `vm_state` (`terminated` once deleted).
    state: &'static str,
}

/// Every launched server, live or terminated, of one project or all.
fn load(svc: &Service, project: Option<&str>) -> Result<Vec<Counted>, ApiError> {
    let mut out = Vec::new();
    for r in svc.store.list(Kind::Server, project).map_err(se)? {
        let d: ServerDoc = r.parse().map_err(se)?;
        let Some(launched_at) = d.launched_at else {
            continue;
        };
        out.push(Counted {
            state: d.vm_state(),
            id: r.id,
            name: d.name,
            project_id: d.project_id,
            flavor: d.flavor,
            launched_at,
            terminated_at: None,
        });
    }
    for r in svc
        .store
        .list(Kind::TerminatedServer, project)
        .map_err(se)?
    {
        let d: TerminatedServerDoc = r.parse().map_err(se)?;
        out.push(Counted {
            id: r.id,
            name: d.name,
            project_id: d.project_id,
            flavor: d.flavor,
            launched_at: d.launched_at,
            terminated_at: Some(d.terminated_at),
            state: "terminated",
        });
    }
    Ok(out)
}

const MICROS: i64 = 1_000_000;

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / MICROS) * MICROS
}

/// A report's period in microseconds since the epoch, `stop` already capped at `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Period {
    start: i64,
    stop: i64,
    now: i64,
}

/// The first non-empty value of a query parameter (blank values are ignored, as
/// Python's `parse_qs` does for Nova).
fn first<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

impl Period {
    /// `start` and `end` of the query; 400 if either is malformed or start is not before
    /// end. Absent ones mean `now` (both absent: the instant now).
    fn from_query(req: &Request, now: i64) -> Result<Period, ApiError> {
        Period::parse(first(req, "start"), first(req, "end"), now)
    }

    fn parse(start: Option<&str>, end: Option<&str>, now: i64) -> Result<Period, ApiError> {
        let one = |v: Option<&str>| match v {
            None => Ok(now),
            Some(s) => parse_time(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid datetime string: Datetime is in invalid format: {s:?} \
                     (expected YYYY-MM-DDTHH:MM:SS[.ffffff])"
                ))
            }),
        };
        let (start_t, stop_t) = (one(start)?, one(end)?);
        // Nova reads the clock once per absent bound, so two absent bounds still make a
        // (tiny) valid period; one reading here makes it the instant now.
        let both_absent = start.is_none() && end.is_none();
        if !(start_t < stop_t || both_absent) {
            return Err(ApiError::bad_request(
                "Invalid start time. The start time cannot occur after the end time.",
            ));
        }
        Ok(Period {
            start: start_t,
            stop: stop_t.min(now),
            now,
        })
    }
}

/// Parses Nova's accepted forms, `%Y-%m-%dT%H:%M:%S`, `%Y-%m-%dT%H:%M:%S.%f` and
/// `%Y-%m-%d %H:%M:%S.%f` (UTC), into microseconds since the epoch; `None` if `s` is
/// none of them or names no real time.
fn parse_time(s: &str) -> Option<i64> {
    let mut c = Cursor { s: s.as_bytes() };
    let y = c.number(4, 4)?;
    c.expect(b'-')?;
    let m = c.number(1, 2)?;
    c.expect(b'-')?;
    let d = c.number(1, 2)?;
    let sep = c.next()?;
    let hh = c.number(1, 2)?;
    c.expect(b':')?;
    let mm = c.number(1, 2)?;
    c.expect(b':')?;
    let ss = c.number(1, 2)?;
    let micros = match c.next() {
        None if sep == b'T' => 0,
        Some(b'.') if sep == b'T' || sep == b' ' => {
            let before = c.s.len();
            let f = c.number(1, 6)?;
            let digits = (before - c.s.len()) as u32;
            f * 10_i64.pow(6 - digits)
        }
        _ => return None,
    };
    if !c.s.is_empty()
        || y < 1
        || !(1..=12).contains(&m)
        || d < 1
        || d > days_in_month(y, m)
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return None;
    }
    let secs = crate::time::days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs * MICROS + micros)
}

struct Cursor<'a> {
    s: &'a [u8],
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.s.split_first()?;
        self.s = rest;
        Some(b)
    }
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }
    /// `min` to `max` ASCII digits (as many as there are, up to `max`).
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let n = self
            .s
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return None;
        }
        let (digits, rest) = self.s.split_at(n);
        self.s = rest;
        Some(
            digits
                .iter()
                .fold(0, |acc, b| acc * 10 + i64::from(b - b'0')),
        )
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Microseconds since the epoch as Nova writes its naive UTC times:
/// `2026-12-05T22:09:28` or `2026-12-05T22:09:28.123456`.
fn format_micros(t: i64) -> String {
    let secs = t.div_euclid(MICROS);
    let frac = t.rem_euclid(MICROS);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::time::civil_from_days(days);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

/// Hours of `[launched, terminated or stop]` within `[start, stop]` (never negative).
fn hours(s: &Counted, p: &Period) -> f64 {
    let begin = secs_to_micros(s.launched_at).max(p.start);
    let end = s
        .terminated_at
        .map_or(p.stop, |t| secs_to_micros(t).min(p.stop));
    (end - begin).max(0) as f64 / 3_600_000_000.0
}

/// Whether a server existed during the period at all (Nova's "active by window").
fn in_window(s: &Counted, p: &Period) -> bool {
    secs_to_micros(s.launched_at) < p.stop
        && s.terminated_at.is_none_or(|t| secs_to_micros(t) > p.start)
}

/// Per-project usage, ordered by project id; each project's servers by launch time.
fn report(servers: &[Counted], p: &Period, detailed: bool) -> Vec<Value> {
    let mut counted: Vec<&Counted> = servers.iter().filter(|s| in_window(s, p)).collect();
    counted.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
    let mut tenants: BTreeMap<&str, Value> = BTreeMap::new();
    for s in counted {
        let h = hours(s, p);
        let f = &s.flavor;
        let local_gb = f.disk + f.ephemeral;
        let started = secs_to_micros(s.launched_at);
        let ended = s.terminated_at.map(secs_to_micros);
        let uptime = (ended.unwrap_or(p.now) - started).max(0) / MICROS;
        let t = tenants.entry(&s.project_id).or_insert_with(|| {
            let mut t = json!({"tenant_id": s.project_id, "total_hours": 0.0,
                "total_vcpus_usage": 0.0, "total_memory_mb_usage": 0.0,
                "total_local_gb_usage": 0.0,
                "start": format_micros(p.start), "stop": format_micros(p.stop)});
            if detailed {
                t["server_usages"] = json!([]);
            }
            t
        });
        let mut add = |key: &str, v: f64| {
            t[key] = json!(t[key].as_f64().unwrap_or(0.0) + v);
        };
        add("total_hours", h);
        add("total_vcpus_usage", f.vcpus as f64 * h);
        add("total_memory_mb_usage", f.ram as f64 * h);
        add("total_local_gb_usage", local_gb as f64 * h);
        if let Some(list) = t.get_mut("server_usages").and_then(Value::as_array_mut) {
            list.push(
                json!({"instance_id": s.id, "name": s.name, "tenant_id": s.project_id,
                "hours": h, "flavor": f.name, "vcpus": f.vcpus, "memory_mb": f.ram,
                "local_gb": local_gb, "state": s.state,
                "started_at": format_micros(started), "ended_at": ended.map(format_micros),
                "uptime": uptime}),
            );
        }
    }
    tenants.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600 * MICROS;

    fn flavor(vcpus: u64, ram: u64, disk: u64, ephemeral: u64) -> FlavorDoc {
        FlavorDoc {
            name: "f".into(),
            vcpus,
            ram,
            disk,
            ephemeral,
            swap: 0,
            rxtx_factor: 1.0,
            is_public: true,
            description: None,
        }
    }

    fn server(id: &str, project: &str, launched_h: u64, terminated_h: Option<u64>) -> Counted {
        Counted {
            id: id.into(),
            name: format!("n-{id}"),
            project_id: project.into(),
            flavor: flavor(2, 1024, 10, 5),
            launched_at: launched_h * 3600,
            terminated_at: terminated_h.map(|t| t * 3600),
            state: if terminated_h.is_some() {
                "terminated"
            } else {
                "active"
            },
        }
    }

    fn period(start_h: i64, stop_h: i64, now_h: i64) -> Period {
        Period {
            start: start_h * H,
            stop: stop_h.min(now_h) * H,
            now: now_h * H,
        }
    }

    #[test]
    fn parses_novas_forms_and_nothing_else() {
        let t = parse_time("2026-12-05T22:09:28").unwrap();
        assert_eq!(format_micros(t), "2026-12-05T22:09:28");
        assert_eq!(t / MICROS, 1_796_508_568);
        assert_eq!(
            parse_time("2026-12-05T22:09:28.5").unwrap(),
            t + 500_000,
            "a short fraction is tenths"
        );
        assert_eq!(parse_time("2026-12-05 22:09:28.000123").unwrap(), t + 123);
        assert_eq!(parse_time("2026-1-5T1:2:3").unwrap() % MICROS, 0);
        assert_eq!(
            format_micros(parse_time("2000-02-29T00:00:00.000001").unwrap()),
            "2000-02-29T00:00:00.000001"
        );
        assert_eq!(
            format_micros(parse_time("1969-12-31T23:59:59").unwrap()),
            "1969-12-31T23:59:59"
        );
        for bad in [
            "",
            "2026-12-05",
            "2026-12-05T22:09",
            "2026-12-05 22:09:28",
            "2026-12-05T22:09:28Z",
            "2026-12-05T22:09:28+00:00",
            "2026-12-05T22:09:28.",
            "2026-12-05T22:09:28.1234567",
            "2026-02-29T00:00:00",
            "2026-13-01T00:00:00",
            "2026-00-01T00:00:00",
            "2026-12-05T24:00:00",
            "2026-12-05T23:60:00",
            "2026-12-05T23:59:60",
            "0000-01-01T00:00:00",
            "26-12-05T00:00:00",
            "yesterday",
            "2026-12-05T22:09:28\u{e9}",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn periods_are_checked_and_capped_at_now() {
        let now = 100 * H;
        let p = Period::parse(
            Some("1970-01-01T01:00:00"),
            Some("2100-01-01T00:00:00"),
            now,
        )
        .unwrap();
        assert_eq!((p.start, p.stop), (H, now));
        let p = Period::parse(None, None, now).unwrap();
        assert_eq!((p.start, p.stop), (now, now));
        let e = Period::parse(
            Some("1970-01-01T02:00:00"),
            Some("1970-01-01T01:00:00"),
            now,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("start time cannot occur after"),
            "{}",
            e.message
        );
        let e = Period::parse(
            Some("1970-01-01T01:00:00"),
            Some("1970-01-01T01:00:00"),
            now,
        )
        .unwrap_err();
        assert_eq!(e.status, 400, "an empty period is refused");
        let e = Period::parse(Some("2100-01-01T00:00:00"), None, now).unwrap_err();
        assert_eq!(e.status, 400, "a start after now without an end");
        let e = Period::parse(Some("2026-12-05"), None, now).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("\"2026-12-05\""), "{}", e.message);
    }

    #[test]
    fn hours_are_the_overlap_times_the_flavor() {
        // p1: a launched at 10 h, deleted at 14 h; b running since 12 h.
        // p2: c deleted at 9 h (before the period), d launched at 30 h (after it).
        let servers = [
            server("a", "p1", 10, Some(14)),
            server("b", "p1", 12, None),
            server("c", "p2", 2, Some(9)),
            server("d", "p2", 30, None),
        ];
        // Period 11 h..20 h, now 40 h: a counts 3 h, b 8 h.
        let r = report(&servers, &period(11, 20, 40), true);
        assert_eq!(r.len(), 1, "p2 had nothing in the period: {r:?}");
        let t = &r[0];
        assert_eq!(t["tenant_id"], "p1");
        assert_eq!(t["total_hours"], 11.0);
        assert_eq!(t["total_vcpus_usage"], 22.0);
        assert_eq!(t["total_memory_mb_usage"], 11.0 * 1024.0);
        assert_eq!(t["total_local_gb_usage"], 11.0 * 15.0);
        assert_eq!(t["start"], "1970-01-01T11:00:00");
        assert_eq!(t["stop"], "1970-01-01T20:00:00");
        let s = t["server_usages"].as_array().unwrap();
        assert_eq!(s[0]["instance_id"], "a");
        assert_eq!(s[0]["hours"], 3.0);
        assert_eq!(s[0]["state"], "terminated");
        assert_eq!(s[0]["started_at"], "1970-01-01T10:00:00");
        assert_eq!(s[0]["ended_at"], "1970-01-01T14:00:00");
        assert_eq!(s[0]["uptime"], 4 * 3600);
        assert_eq!(s[0]["local_gb"], 15);
        assert_eq!(s[1]["instance_id"], "b");
        assert_eq!(s[1]["hours"], 8.0);
        assert_eq!(s[1]["state"], "active");
        assert_eq!(s[1]["ended_at"], Value::Null);
        assert_eq!(s[1]["uptime"], (40 - 12) * 3600, "until now");

        // Up to now (the end is capped): b runs 12 h..35 h.
        let r = report(&servers, &period(0, 1000, 35), false);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["total_hours"], 4.0 + 23.0);
        assert!(r[0].get("server_usages").is_none(), "not detailed");
        assert_eq!(r[1]["tenant_id"], "p2");
        assert_eq!(r[1]["total_hours"], 7.0 + 5.0);
        assert_eq!(r[1]["stop"], "1970-01-02T11:00:00");

        // Touching bounds: deleted exactly at the start, launched exactly at the stop.
        assert!(report(&servers[2..3], &period(9, 20, 40), true).is_empty());
        assert!(report(&servers[3..4], &period(20, 30, 40), true).is_empty());
    }
}
