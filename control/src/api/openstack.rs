//! What the OpenStack APIs served here share: a service's version (its document and the
//! headers on every answer, [`Version`]), the caller of a request ([`caller`]), the
//! compare-and-swap edit of a record ([`edit`]), and records a project owns, which other
//! projects see as absent ([`Owned`], [`load`]).
//!
//! Keystone's kinds have their own generic CRUD (`identity::Resource`, with serde-typed
//! bodies and policies); Nova's, Cinder's and Neutron's answer in their services' own
//! words, so each module keeps its routes and builds on these pieces.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{ApiError, Flavor, Request, Response, blocking, json as json_resp};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError};

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

/// The one version an OpenStack service offers here (Nova 2.1, Cinder 3.0).
#[derive(Debug)]
pub(crate) struct Version {
    /// The version's root under the public URL (`compute/v2.1`).
    pub root: &'static str,
    /// Its id (`v2.1`).
    pub id: &'static str,
    /// Its number, also the minimum microversion (`2.1`).
    pub version: &'static str,
    /// When it was released, as the service reports it.
    pub updated: &'static str,
    /// Its media type (`application/vnd.openstack.compute+json;version=2.1`).
    pub media_type: &'static str,
    /// Headers every answer of the service carries, in order.
    pub headers: &'static [(&'static str, &'static str)],
}

impl Version {
    /// The version document.
    pub fn doc(&self, svc: &Service) -> Value {
        json!({
            "id": self.id, "status": "CURRENT", "version": self.version,
            "min_version": self.version, "updated": self.updated,
            "links": [{"rel": "self",
                       "href": format!("{}/{}/", svc.config.public_url, self.root)}],
            "media-types": [{"base": "application/json", "type": self.media_type}],
        })
    }

    /// `{"versions": [doc]}` with `status`.
    pub fn versions(&self, svc: &Service, status: StatusCode) -> Response {
        json_resp(status, &json!({"versions": [self.doc(svc)]}))
    }

    /// `{"version": doc}`.
    pub fn current(&self, svc: &Service) -> Response {
        json_resp(StatusCode::OK, &json!({"version": self.doc(svc)}))
    }

    /// The answer of a route: its response or its error in Nova's shape (Cinder's is the
    /// same), with the service's headers.
    pub async fn serve(&self, route: impl Future<Output = Result<Response, ApiError>>) -> Response {
        let mut r = route
            .await
            .unwrap_or_else(|e| e.into_response(Flavor::Nova));
        let h = r.headers_mut();
        for (name, value) in self.headers {
            h.insert(*name, HeaderValue::from_static(value));
        }
        r
    }
}

/// The caller of `req` (from its token), on the blocking pool.
pub(crate) async fn caller(svc: &Arc<Service>, req: &Request) -> Result<Ctx, ApiError> {
    let head = Request {
        method: req.method.clone(),
        segs: vec![],
        query: vec![],
        headers: req.headers.clone(),
        body: Bytes::new(),
    };
    blocking(svc.clone(), move |svc| {
        super::identity::caller(svc, &head).map_err(ApiError::from)
    })
    .await
}

/// Whether the caller may see what `project` owns (its own, or any as admin).
pub(crate) fn visible(ctx: &Ctx, project: &str) -> bool {
    ctx.is_admin() || ctx.project_id.as_deref() == Some(project)
}

/// A stored document with an update time.
pub(crate) trait Stamped: Serialize + DeserializeOwned {
    /// Sets its update time (epoch seconds).
    fn stamp(&mut self, now: u64);
}

/// Compare-and-swap edit of the `kind` record `id`: `f` returns whether it changed the
/// document (which is then stamped and stored, and `f` run again on a concurrent change),
/// or an error that aborts. `None` when the record is gone; 409 when it changed 32 times
/// under the edit (`what` names it in the message).
pub(crate) fn edit<T: Stamped>(
    svc: &Service,
    kind: Kind,
    id: &str,
    what: &str,
    mut f: impl FnMut(&mut T) -> Result<bool, ApiError>,
) -> Result<Option<T>, ApiError> {
    for _ in 0..32 {
        let Some(r) = svc.store.get(kind, id).map_err(se)? else {
            return Ok(None);
        };
        let mut d: T = r.parse().map_err(se)?;
        if !f(&mut d)? {
            return Ok(Some(d));
        }
        d.stamp(now_secs());
        match svc.store.update(r.with_doc(None, &d)) {
            Ok(()) => return Ok(Some(d)),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(format!(
        "{what} {id} is changing too often; try again"
    )))
}

/// A kind of record a project owns; other projects (but admins) see it as absent, unless
/// [`Owned::sees`] says otherwise (a shared network).
pub(crate) trait Owned {
    /// The store kind.
    const KIND: Kind;
    /// What a 404 calls it (`Port`, `Volume`).
    const WHAT: &'static str;
    /// The stored document.
    type Doc: Serialize + DeserializeOwned;

    /// The owning project.
    fn owner(d: &Self::Doc) -> &str;
    /// Whether the caller may see `d` (by default: its owner and admins).
    fn sees(ctx: &Ctx, d: &Self::Doc) -> bool {
        visible(ctx, Self::owner(d))
    }
    /// The 404 for a record that is not there: "`WHAT` `id` could not be found."
    fn missing(id: &str) -> ApiError {
        ApiError::not_found(format!("{} {id} could not be found.", Self::WHAT))
    }
    /// The 404 for a record that is there but not the caller's (by default as if missing).
    fn hidden(id: &str) -> ApiError {
        Self::missing(id)
    }
}

/// An [`Owned`] record by id, parsed, if the caller may see it; otherwise its 404
/// ([`Owned::missing`], or [`Owned::hidden`] when it is another's).
pub(crate) fn load<R: Owned>(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
) -> Result<(Record, R::Doc), ApiError> {
    let (r, d) = get::<R>(svc, id)?;
    if !R::sees(ctx, &d) {
        return Err(R::hidden(id));
    }
    Ok((r, d))
}

/// An [`Owned`] record by id, parsed, whoever owns it (for callers that decide visibility
/// themselves); [`Owned::missing`] when there is none.
pub(crate) fn get<R: Owned>(svc: &Service, id: &str) -> Result<(Record, R::Doc), ApiError> {
    let r = svc
        .store
        .get(R::KIND, id)
        .map_err(se)?
        .ok_or_else(|| R::missing(id))?;
    let d: R::Doc = r.parse().map_err(se)?;
    Ok((r, d))
}

/// Declares a unit struct `$ty` for the records of `$kind` its project owns (their
/// `project_id`) as [`Owned`], with any other items of that impl after a `;`:
/// `owned!(Port: Kind::Port, "Port", PortDoc);` (a visibility may come before `$ty`).
macro_rules! owned {
    ($(#[$m:meta])* $vis:vis $ty:ident: $kind:expr, $what:literal, $doc:ty $(; $($rest:tt)*)?) => {
        $(#[$m])*
        $vis struct $ty;

        impl $crate::api::openstack::Owned for $ty {
            const KIND: $crate::store::Kind = $kind;
            const WHAT: &'static str = $what;
            type Doc = $doc;

            fn owner(d: &$doc) -> &str {
                &d.project_id
            }
            $($($rest)*)?
        }
    };
}
pub(crate) use owned;

/// Keystone's default roles on the Nova, Neutron and Cinder APIs: a `reader` of a project
/// may look (GET, HEAD), only a `member` (or an admin) may change anything.
pub(crate) fn writer(ctx: &Ctx, method: &http::Method) -> Result<(), ApiError> {
    let safe = matches!(*method, http::Method::GET | http::Method::HEAD);
    if safe || ctx.is_admin() || ctx.has_role("member") {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "Policy doesn't allow this request to be performed: changes need the member role on the project (reader is read-only)",
    )
    .kind("PolicyNotAuthorized"))
}
