//! The telemetry API at `/telemetry/v1` (Ceilometer/Gnocchi/Aodh-like), every call with
//! `X-Auth-Token`. Errors are Keystone-shaped `{"error": {"code", "title", "message"}}`.
//!
//! Ingestion (node agents: `[compute] node-token`, or a token with the `admin` or `service`
//! role):
//! - `POST /telemetry/v1/samples` `{"node_id": "...", "samples": [{"meter", "type"
//!   (cumulative|gauge|delta), "unit", "volume", "resource_id", "project_id", "user_id"?,
//!   "timestamp" (epoch seconds or ISO 8601)}], "events": [{"event_type", "resource_id",
//!   "project_id", "generated", "traits"?, "message_id"?}]}` → 202 `{"samples": n, "events":
//!   m}` (an event whose `message_id` this node sent before is skipped, not counted). The batch
//!   is all or nothing: one invalid sample → 400 naming it, nothing stored.
//!
//! Queries (project scope: non-admins only see their token's project; admins see all and
//! may filter with `project_id`):
//! - `GET /telemetry/v1/samples?meter=&resource_id=&start=&end=&limit=` → raw samples.
//! - `GET /telemetry/v1/aggregates?meter=&resource_id=&start=&end=&granularity=&aggregation=`
//!   → `{"measures": [[timestamp, granularity, value], ...]}` (Gnocchi's triples); `meter`
//!   is required, `aggregation` is mean (default), sum, max, min, count, last or rate,
//!   `granularity` seconds (default 60). A resource of another project gives 404.
//! - `GET /telemetry/v1/events?resource_id=&event_type=&start=&end=` → `{"events": [...]}`.
//! - Alarms: `POST /telemetry/v1/alarms` (201), `GET /telemetry/v1/alarms`,
//!   `GET|DELETE /telemetry/v1/alarms/{id}` (another project's: 404).

use std::sync::atomic::Ordering;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Request, Response, json as json_resp};
use crate::identity::Ctx;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Write};
use crate::telemetry::alarm::{AlarmDoc, AlarmIn};
use crate::telemetry::metrics::METRICS;
use crate::telemetry::{
    Aggregation, EventDoc, EventIn, Sample, SampleFilter, TelemetryError, aggregate, format_ms,
    now_ms, parse_time_text,
};

impl From<TelemetryError> for ServiceError {
    fn from(e: TelemetryError) -> ServiceError {
        match e {
            TelemetryError::Invalid(m) => ApiError::bad_request(m).into(),
            TelemetryError::Store(s) => ServiceError::Store(s),
        }
    }
}

/// Most rows a query reads.
const MAX_ROWS: i64 = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    node_id: String,
    #[serde(default)]
    samples: Vec<Sample>,
    #[serde(default)]
    events: Vec<EventIn>,
}

fn ctx(svc: &Service, req: &Request) -> Result<Ctx, ServiceError> {
    let token = req.header("x-auth-token").ok_or_else(|| {
        ApiError::unauthorized("The request you have made requires authentication.")
    })?;
    let ctx = svc.context(token)?;
    if ctx.project_id.is_none() {
        return Err(ApiError::forbidden("telemetry needs a project-scoped token").into());
    }
    Ok(ctx)
}

/// The project a query is limited to ("" = all, admins only).
fn scope_of(ctx: &Ctx, req: &Request) -> Result<String, ServiceError> {
    let own = ctx.project_id.clone().unwrap_or_default();
    match req.q("project_id") {
        Some(p) if ctx.is_admin() => Ok(p.to_string()),
        Some(p) if p != own => {
            Err(ApiError::forbidden("only admins may read another project's telemetry").into())
        }
        _ if ctx.is_admin() => Ok(String::new()),
        _ => Ok(own),
    }
}

fn time_q(req: &Request, key: &str, default: i64) -> Result<i64, ServiceError> {
    match req.q(key) {
        Some(v) => Ok(parse_time_text(v)?),
        None => Ok(default),
    }
}

fn limit_q(req: &Request) -> Result<i64, ServiceError> {
    match req.q("limit") {
        None => Ok(MAX_ROWS),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_ROWS).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_ROWS}")).into()),
    }
}

/// Answers one `/telemetry/...` request (`segs` after `telemetry`).
pub fn handle(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    match (&req.method, segs.as_slice()) {
        (&Method::GET, []) | (&Method::GET, ["v1"]) => Ok(json_resp(
            StatusCode::OK,
            &json!({"versions": [{"id": "v1", "status": "CURRENT"}]}),
        )),
        (&Method::POST, ["v1", "samples"]) => ingest(svc, req),
        (&Method::GET, ["v1", "samples"]) => samples(svc, req),
        (&Method::GET, ["v1", "aggregates"]) => aggregates(svc, req),
        (&Method::GET, ["v1", "events"]) => events(svc, req),
        (&Method::POST, ["v1", "alarms"]) => alarm_create(svc, req),
        (&Method::GET, ["v1", "alarms"]) => alarm_list(svc, req),
        (&Method::GET, ["v1", "alarms", id]) => {
            let (_, doc) = alarm_get(svc, req, id)?;
            Ok(json_resp(StatusCode::OK, &json!({"alarm": doc})))
        }
        (&Method::DELETE, ["v1", "alarms", id]) => {
            let (rec, _) = alarm_get(svc, req, id)?;
            svc.store.delete(Kind::Alarm, &rec.id)?;
            Ok(super::empty(StatusCode::NO_CONTENT))
        }
        (_, ["v1", "samples" | "aggregates" | "events" | "alarms"]) | (_, ["v1", "alarms", _]) => {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed here", req.method),
            )
            .into())
        }
        _ => Err(ApiError::not_found("no such telemetry resource").into()),
    }
}

fn ingest(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    // Node agents authenticate as they do for registration: `[compute] node-token` or an
    // admin token; a project-scoped token with the service role works too.
    if super::compute::node_auth(svc, req).is_err() {
        let ctx = ctx(svc, req)?;
        if !(ctx.is_admin() || ctx.has_role("service")) {
            return Err(ApiError::forbidden(
                "only nodes, the admin or service role may post samples",
            )
            .into());
        }
    }
    let batch: Batch = req.json()?;
    let max = svc.config.raw.telemetry.max_batch;
    if batch.samples.len() + batch.events.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a batch holds at most {max} samples and events"),
        )
        .into());
    }
    if batch.node_id.is_empty() || batch.node_id.len() > 255 {
        return Err(ApiError::bad_request("node_id must be 1 to 255 characters").into());
    }
    let n = batch.samples.len();
    let mut rows = Vec::with_capacity(n);
    for (i, s) in batch.samples.into_iter().enumerate() {
        match s.into_row() {
            Ok(r) => rows.push(r),
            Err(e) => {
                METRICS
                    .samples_rejected
                    .fetch_add(n as u64, Ordering::Relaxed);
                return Err(ApiError::bad_request(format!("samples[{i}]: {e}")).into());
            }
        }
    }
    let mut writes = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.into_iter().enumerate() {
        let doc = e
            .into_doc(&batch.node_id)
            .map_err(|e| ApiError::bad_request(format!("events[{i}]: {e}")))?;
        // An agent resends what it has no answer for: a repeat is stored once.
        if let Some(old) = svc.store.get(Kind::Event, &doc.message_id)? {
            if old.parse::<EventDoc>()?.node_id == doc.node_id {
                continue;
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "events[{i}]: message_id {} is another node's",
                    doc.message_id
                ),
            )
            .into());
        }
        if writes
            .iter()
            .any(|w| matches!(w, Write::Insert(r) if r.id == doc.message_id))
        {
            continue;
        }
        writes.push(Write::Insert(Record::new(
            Kind::Event,
            &doc.message_id,
            &doc.project_id,
            None,
            &doc,
        )));
    }
    svc.store.append_samples(&rows)?;
    if !writes.is_empty() {
        svc.store.apply(&writes)?;
    }
    METRICS
        .samples_ingested
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    METRICS
        .events_ingested
        .fetch_add(writes.len() as u64, Ordering::Relaxed);
    Ok(json_resp(
        StatusCode::ACCEPTED,
        &json!({"samples": rows.len(), "events": writes.len()}),
    ))
}

fn filter(req: &Request, project: String) -> Result<SampleFilter, ServiceError> {
    let mut f = SampleFilter::all();
    f.meter = req.q("meter").unwrap_or("").to_string();
    f.resource_id = req.q("resource_id").unwrap_or("").to_string();
    f.project_id = project;
    f.start_ms = time_q(req, "start", i64::MIN)?;
    f.end_ms = time_q(req, "end", i64::MAX)?;
    if f.start_ms >= f.end_ms {
        return Err(ApiError::bad_request("start must be before end").into());
    }
    f.limit = limit_q(req)?;
    Ok(f)
}

/// 404 when a named resource has rows, but none visible to the caller.
fn check_resource_visible(
    svc: &Service,
    f: &SampleFilter,
    rows_empty: bool,
) -> Result<(), ServiceError> {
    if !rows_empty || f.resource_id.is_empty() || f.project_id.is_empty() {
        return Ok(());
    }
    let mut any = SampleFilter::all();
    any.resource_id = f.resource_id.clone();
    any.limit = 1;
    if !svc.store.query_samples(&any)?.is_empty() {
        return Err(ApiError::not_found(format!("resource {} not found", f.resource_id)).into());
    }
    Ok(())
}

fn samples(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let ctx = ctx(svc, req)?;
    let mut f = filter(req, scope_of(&ctx, req)?)?;
    f.max_granularity = 0;
    let rows = svc.store.query_samples(&f)?;
    check_resource_visible(svc, &f, rows.is_empty())?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"meter": r.meter, "type": r.mtype, "unit": r.unit, "volume": r.last,
                "resource_id": r.resource_id, "project_id": r.project_id,
                "user_id": r.user_id, "timestamp": format_ms(r.ts)})
        })
        .collect();
    Ok(json_resp(StatusCode::OK, &json!({"samples": list})))
}

fn aggregates(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let ctx = ctx(svc, req)?;
    let mut f = filter(req, scope_of(&ctx, req)?)?;
    if f.meter.is_empty() {
        return Err(ApiError::bad_request("the meter query parameter is required").into());
    }
    let granularity = match req.q("granularity") {
        None => 60,
        Some(g) => g
            .parse::<i64>()
            .ok()
            .filter(|g| (1..=86_400 * 366).contains(g))
            .ok_or_else(|| ApiError::bad_request("granularity must be 1 to 31622400 seconds"))?,
    };
    let agg = Aggregation::parse(req.q("aggregation").unwrap_or("mean"))?;
    f.max_granularity = granularity;
    let mut rows = svc.store.query_samples(&f)?;
    check_resource_visible(svc, &f, rows.is_empty())?;
    // Only rows whose bucket fits inside the requested one.
    rows.retain(|r| r.granularity == 0 || granularity % r.granularity == 0);
    let measures: Vec<Value> = aggregate(&rows, granularity, agg)
        .iter()
        .map(|m| json!([format_ms(m.ts), m.granularity, m.value]))
        .collect();
    Ok(json_resp(
        StatusCode::OK,
        &json!({"meter": f.meter, "aggregation": agg, "granularity": granularity,
            "measures": measures}),
    ))
}

fn event_view(e: &EventDoc) -> Value {
    json!({"message_id": e.message_id, "event_type": e.event_type,
        "resource_id": e.resource_id, "project_id": e.project_id,
        "generated": format_ms(e.generated_ms), "node_id": e.node_id, "traits": e.traits})
}

fn events(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let ctx = ctx(svc, req)?;
    let project = scope_of(&ctx, req)?;
    let start = time_q(req, "start", i64::MIN)?;
    let end = time_q(req, "end", i64::MAX)?;
    let recs = svc.store.list(
        Kind::Event,
        (!project.is_empty()).then_some(project.as_str()),
    )?;
    let mut docs = recs
        .iter()
        .map(|r| r.parse::<EventDoc>())
        .collect::<Result<Vec<_>, _>>()?;
    docs.retain(|e| {
        req.q("resource_id").is_none_or(|r| r == e.resource_id)
            && req.q("event_type").is_none_or(|t| t == e.event_type)
            && e.generated_ms >= start
            && e.generated_ms < end
    });
    docs.sort_by(|a, b| (a.generated_ms, &a.message_id).cmp(&(b.generated_ms, &b.message_id)));
    let list: Vec<Value> = docs.iter().map(event_view).collect();
    Ok(json_resp(StatusCode::OK, &json!({"events": list})))
}

fn alarm_create(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let ctx = ctx(svc, req)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        alarm: AlarmIn,
    }
    let body: Body = req.json()?;
    let own = ctx.project_id.clone().unwrap_or_default();
    let project = match &body.alarm.project_id {
        Some(p) if p != &own && !ctx.is_admin() => {
            return Err(
                ApiError::forbidden("only admins may create alarms for another project").into(),
            );
        }
        Some(p) => p.clone(),
        None => own,
    };
    let doc = body
        .alarm
        .into_doc(project, ctx.user_id().to_string(), now_ms())?;
    svc.store.insert(Record::new(
        Kind::Alarm,
        &doc.alarm_id,
        &doc.project_id,
        None,
        &doc,
    ))?;
    Ok(json_resp(StatusCode::CREATED, &json!({"alarm": doc})))
}

fn alarm_list(svc: &Service, req: &Request) -> Result<Response, ServiceError> {
    let ctx = ctx(svc, req)?;
    let project = scope_of(&ctx, req)?;
    let recs = svc.store.list(
        Kind::Alarm,
        (!project.is_empty()).then_some(project.as_str()),
    )?;
    let docs = recs
        .iter()
        .map(|r| r.parse::<AlarmDoc>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json_resp(StatusCode::OK, &json!({"alarms": docs})))
}

fn alarm_get(svc: &Service, req: &Request, id: &str) -> Result<(Record, AlarmDoc), ServiceError> {
    let ctx = ctx(svc, req)?;
    let nf = || ApiError::not_found(format!("Alarm {id} not found"));
    let rec = svc.store.get(Kind::Alarm, id)?.ok_or_else(nf)?;
    if !ctx.is_admin() && ctx.project_id.as_deref() != Some(rec.scope.as_str()) {
        return Err(nf().into());
    }
    let doc = rec.parse()?;
    Ok((rec, doc))
}
