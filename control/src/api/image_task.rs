//! Glance's tasks, as the record of each image import: what was asked, whether it worked
//! and why not (`openstack image task list/show`, `glance task-list/task-show`,
//! `GET /v2/images/{id}/tasks`). A task is made when an import is accepted and finished
//! when the background work ends. It expires 48 hours after that (Glance's
//! `task_time_to_live`): expired tasks are left out of answers, and they are deleted when
//! the next import starts. An image's tasks are deleted with the image.
//!
//! Policy as Glance's defaults: `/v2/tasks` is for admins (`tasks_api_access`); an image's
//! own tasks are for those who may change the image.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiError;
use crate::identity::token::now_secs;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Write};

/// How long a finished task is kept.
const TIME_TO_LIVE: u64 = 48 * 3600;

/// A task as stored (scope: its image id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskDoc {
    /// `pending`, `processing`, `success` or `failure`.
    pub status: String,
    /// The import request and the image.
    pub input: Value,
    /// On success, the image.
    pub result: Option<Value>,
    /// On failure, why.
    pub message: String,
    /// The image's project.
    pub owner: String,
    /// Who asked.
    pub user_id: String,
    /// The request that asked (its `x-openstack-request-id`).
    pub request_id: String,
    /// The image.
    pub image_id: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub updated_at: u64,
    /// Set when finished.
    pub expires_at: Option<u64>,
}

impl TaskDoc {
    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// Records a new import task for an image; its id. Expired tasks of any image go in the
/// same batch.
pub fn start(
    svc: &Service,
    image_id: &str,
    owner: &str,
    user_id: &str,
    request_id: &str,
    import_req: Value,
) -> Result<String, ServiceError> {
    let now = now_secs();
    let id = uuid::Uuid::new_v4().to_string();
    let doc = TaskDoc {
        status: "processing".into(),
        input: json!({"image_id": image_id, "import_req": import_req, "backend": null}),
        result: None,
        message: String::new(),
        owner: owner.into(),
        user_id: user_id.into(),
        request_id: request_id.into(),
        image_id: image_id.into(),
        created_at: now,
        updated_at: now,
        expires_at: None,
    };
    let mut writes = vec![Write::Insert(Record::new(
        Kind::ImageTask,
        &id,
        image_id,
        None,
        &doc,
    ))];
    for r in svc.store.list(Kind::ImageTask, None)? {
        if r.parse::<TaskDoc>()?.expired(now) {
            writes.push(Write::Delete(Kind::ImageTask, r.id));
        }
    }
    svc.store.apply(&writes)?;
    Ok(id)
}

/// Finishes a task: success, or failure with why.
pub fn finish(svc: &Service, id: &str, outcome: Result<(), String>) -> Result<(), ServiceError> {
    let Some(rec) = svc.store.get(Kind::ImageTask, id)? else {
        return Ok(());
    };
    let mut doc: TaskDoc = rec.parse()?;
    let now = now_secs();
    match outcome {
        Ok(()) => {
            doc.status = "success".into();
            doc.result = Some(json!({"image_id": doc.image_id}));
        }
        Err(why) => {
            doc.status = "failure".into();
            doc.message = why;
        }
    }
    doc.updated_at = now;
    doc.expires_at = Some(now + TIME_TO_LIVE);
    svc.store.update(rec.with_doc(None, &doc))?;
    Ok(())
}

/// Deletes of an image's tasks (the image is being deleted).
pub fn of_image(svc: &Service, image_id: &str) -> Result<Vec<Write>, ServiceError> {
    Ok(svc
        .store
        .list(Kind::ImageTask, Some(image_id))?
        .into_iter()
        .map(|r| Write::Delete(Kind::ImageTask, r.id))
        .collect())
}

fn view(r: &Record, d: &TaskDoc, full: bool) -> Value {
    let t = crate::time::glance;
    let mut v = json!({
        "id": r.id, "type": "api_image_import", "status": d.status, "owner": d.owner,
        "expires_at": d.expires_at.map(t), "created_at": t(d.created_at),
        "updated_at": t(d.updated_at), "self": format!("/v2/tasks/{}", r.id),
        "schema": "/v2/schemas/task",
    });
    if full {
        v["input"] = d.input.clone();
        v["result"] = d.result.clone().unwrap_or(Value::Null);
        v["message"] = json!(d.message);
        v["image_id"] = json!(d.image_id);
        v["user_id"] = json!(d.user_id);
        v["request_id"] = json!(d.request_id);
    }
    v
}

/// `GET /v2/tasks`, newest first, with Glance's `type` and `status` filters,
/// `sort_key`/`sort_dir`, and pages by `limit` and `marker` (with a `next` link).
pub fn list(svc: &Service, q: &dyn Fn(&str) -> Option<String>) -> Result<Value, ServiceError> {
    if let Some(t) = q("type")
        && t != "api_image_import"
        && t != "import"
    {
        return Ok(json!({"tasks": [], "first": "/v2/tasks", "schema": "/v2/schemas/tasks"}));
    }
    let status = q("status");
    if let Some(s) = &status
        && !["pending", "processing", "success", "failure"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!("Invalid status value: {s}")).into());
    }
    let key = q("sort_key").unwrap_or_else(|| "created_at".into());
    if ![
        "created_at",
        "updated_at",
        "id",
        "status",
        "type",
        "expires_at",
    ]
    .contains(&key.as_str())
    {
        return Err(ApiError::bad_request(format!("Invalid sort_key value: {key}")).into());
    }
    let desc = match q("sort_dir").as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid sort_dir value: {other}")).into());
        }
    };
    let limit = match q("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a non-negative integer"))?,
        None => usize::MAX,
    };
    let mut items = live(svc, None)?;
    items.retain(|(_, d)| status.as_ref().is_none_or(|s| *s == d.status));
    items.sort_by(|(ra, a), (rb, b)| {
        let o = match key.as_str() {
            "updated_at" => a.updated_at.cmp(&b.updated_at),
            "expires_at" => a.expires_at.cmp(&b.expires_at),
            "status" => a.status.cmp(&b.status),
            "created_at" => a.created_at.cmp(&b.created_at),
            _ => std::cmp::Ordering::Equal,
        };
        let o = o.then_with(|| ra.id.cmp(&rb.id));
        if desc { o.reverse() } else { o }
    });
    let start = match q("marker") {
        Some(m) => {
            items
                .iter()
                .position(|(r, _)| r.id == m)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid marker: {m}")))?
                + 1
        }
        None => 0,
    };
    let page: Vec<&(Record, TaskDoc)> = items.iter().skip(start).take(limit).collect();
    let mut out = json!({"tasks": page.iter().map(|(r, d)| view(r, d, false)).collect::<Vec<_>>(),
               "first": "/v2/tasks", "schema": "/v2/schemas/tasks"});
    if start + page.len() < items.len()
        && let Some((last, _)) = page.last()
    {
        let mut next = format!("/v2/tasks?marker={}&sort_key={key}", last.id);
        next.push_str(if desc {
            "&sort_dir=desc"
        } else {
            "&sort_dir=asc"
        });
        if let Some(s) = &status {
            next.push_str(&format!("&status={s}"));
        }
        if limit != usize::MAX {
            next.push_str(&format!("&limit={limit}"));
        }
        out["next"] = json!(next);
    }
    Ok(out)
}

/// `GET /v2/tasks/{id}`.
pub fn show(svc: &Service, id: &str) -> Result<Value, ServiceError> {
    let found = match svc.store.get(Kind::ImageTask, id)? {
        Some(rec) => Some((rec.parse::<TaskDoc>()?, rec)).filter(|(d, _)| !d.expired(now_secs())),
        None => None,
    };
    let (d, rec) = found
        .ok_or_else(|| ApiError::not_found(format!("Task with the given ID {id} not found")))?;
    Ok(view(&rec, &d, true))
}

/// The tasks not expired, of one image or of all.
fn live(svc: &Service, image_id: Option<&str>) -> Result<Vec<(Record, TaskDoc)>, ServiceError> {
    let now = now_secs();
    let mut items = Vec::new();
    for r in svc.store.list(Kind::ImageTask, image_id)? {
        let d: TaskDoc = r.parse()?;
        if !d.expired(now) {
            items.push((r, d));
        }
    }
    Ok(items)
}

/// `GET /v2/images/{id}/tasks`: the image's tasks, newest first.
pub fn of_image_view(svc: &Service, image_id: &str) -> Result<Value, ServiceError> {
    let mut items = live(svc, Some(image_id))?;
    items.sort_by(|(ra, a), (rb, b)| (b.created_at, &rb.id).cmp(&(a.created_at, &ra.id)));
    Ok(json!({"tasks": items.iter().map(|(r, d)| view(r, d, true)).collect::<Vec<_>>()}))
}

/// Glance's `task` schema (glanceclient builds its task model from it and checks listed
/// tasks against it too, so it requires nothing: a listed task has no input).
pub fn schema() -> Value {
    let text = |d: &str| json!({"type": "string", "description": d});
    let maybe = |t: &str, d: &str| json!({"type": ["null", t], "description": d});
    json!({
        "name": "task",
        "properties": {
            "id": text("An identifier for the task"),
            "type": {"type": "string", "enum": ["import", "api_image_import"],
                     "description": "The type of task represented by this content"},
            "status": {"type": "string",
                       "enum": ["pending", "processing", "success", "failure"],
                       "description": "The current status of this task"},
            "input": maybe("object", "The parameters required by task, JSON blob"),
            "result": maybe("object", "The result of current task, JSON blob"),
            "owner": text("An identifier for the owner of this task"),
            "message": text("Human-readable informative message only included when appropriate (usually on failure)"),
            "image_id": text("Image associated with the task"),
            "request_id": text("Human-readable informative request-id"),
            "user_id": text("User associated with the task"),
            "expires_at": maybe("string", "Datetime when this resource would be subject to removal"),
            "created_at": text("Datetime when this resource was created"),
            "updated_at": text("Datetime when this resource was updated"),
            "self": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "self", "href": "{self}"},
                  {"rel": "describedby", "href": "{schema}"}],
    })
}

/// Glance's `tasks` schema.
pub fn list_schema() -> Value {
    json!({
        "name": "tasks",
        "properties": {
            "tasks": {"type": "array", "items": schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    })
}
