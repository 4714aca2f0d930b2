//! Identity (Keystone v3 semantics): documents for domains, projects, users, groups,
//! roles, assignments, the catalog and application credentials; authentication, token
//! validation with revocations, effective roles with implied roles, and the token body.
//!
//! Policy follows Keystone's defaults without enforced scope: `admin` on any project or
//! domain is cloud admin; `member` may write within its project; `reader` may read it.
//! `admin` implies `member` implies `reader` (the implied-role rules bootstrap creates).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::ApiError;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, Write};
use token::{Claims, Scope, method, now_secs};

pub mod bootstrap;
pub mod cache;
pub mod ec2;
pub mod login;
pub mod password;
pub mod token;

/// The id of the default domain.
pub const DEFAULT_DOMAIN: &str = "default";
/// The target id of role assignments on the system (Keystone's `system: {"all": true}`;
/// assignments store target type `system`).
pub const SYSTEM_ALL: &str = "all";

/// A domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainDoc {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Disabled domains authenticate nobody.
    pub enabled: bool,
    /// Extra attributes, echoed back.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// A project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectDoc {
    /// Name unique in its domain.
    pub name: String,
    /// Owning domain.
    pub domain_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Disabled projects cannot be scoped to.
    pub enabled: bool,
    /// Parent project (its domain when top-level).
    pub parent_id: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra attributes, echoed back.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDoc {
    /// Name unique in its domain.
    pub name: String,
    /// Owning domain.
    pub domain_id: String,
    /// Disabled users cannot authenticate.
    pub enabled: bool,
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    /// Project to scope to when none is asked for.
    pub default_project_id: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Extra attributes (e.g. email), echoed back.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// A group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupDoc {
    /// Name unique in its domain.
    pub name: String,
    /// Owning domain.
    pub domain_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// A role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleDoc {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Ids of roles this one implies.
    #[serde(default)]
    pub implies: Vec<String>,
}

/// A role assignment: actor has role on target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentDoc {
    /// `user` or `group`.
    pub actor_type: String,
    /// User or group id.
    pub actor_id: String,
    /// `project` or `domain`.
    pub target_type: String,
    /// Project or domain id.
    pub target_id: String,
    /// Role id.
    pub role_id: String,
}

/// A group membership (scope: the user id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipDoc {
    /// Group id.
    pub group_id: String,
    /// User id.
    pub user_id: String,
}

/// A catalog service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Service type (`identity`, `image`, `object-store`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Disabled services are left out of the catalog.
    pub enabled: bool,
}

/// A catalog endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointDoc {
    /// Service id.
    pub service_id: String,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// URL, possibly with `$(project_id)s`.
    pub url: String,
    /// Region id.
    pub region_id: Option<String>,
    /// Disabled endpoints are left out of the catalog.
    pub enabled: bool,
}

/// A region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionDoc {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Parent region id.
    pub parent_region_id: Option<String>,
}

/// An application credential (scope: user id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCredDoc {
    /// Name unique for the user.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Owner.
    pub user_id: String,
    /// Project the credential is scoped to.
    pub project_id: String,
    /// Argon2id hash of the secret.
    pub secret_hash: String,
    /// Role ids it delegates (a subset of the user's on the project).
    pub roles: Vec<String>,
    /// Seconds since the epoch, if it expires.
    pub expires_at: Option<u64>,
    /// May create further credentials.
    pub unrestricted: bool,
    /// Ids of the user's access rules that alone its tokens may do (none: no such limit).
    #[serde(default)]
    pub access_rules: Vec<String>,
}

/// An access rule (scope: its user id; name: `service method path`, so a user has each
/// rule once): one request an application credential that lists it may make.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRuleDoc {
    /// Catalog service type, e.g. `compute`.
    pub service: String,
    /// HTTP method.
    pub method: String,
    /// Path under the service's endpoint; `*` (or `{name}`) stands for one path segment,
    /// `**` for any number.
    pub path: String,
}

/// A trust (scope: the trustor's user id): the trustor delegates some of its roles on a
/// project to the trustee, who gets tokens carrying them through the trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustDoc {
    /// Who delegates.
    pub trustor_user_id: String,
    /// Who may use the trust.
    pub trustee_user_id: String,
    /// The project the roles are on.
    pub project_id: String,
    /// The role ids delegated (the trustor must keep holding each of them).
    pub roles: Vec<String>,
    /// Tokens through the trust name the trustor as their user, not the trustee.
    pub impersonation: bool,
    /// Seconds since the epoch, if it expires.
    pub expires_at: Option<u64>,
    /// Tokens that may still be issued through it (`None`: any number).
    pub remaining_uses: Option<u64>,
}

impl TrustDoc {
    /// The user a token through the trust names: the trustor when it impersonates, else
    /// the trustee.
    pub fn token_user(&self) -> &str {
        if self.impersonation {
            &self.trustor_user_id
        } else {
            &self.trustee_user_id
        }
    }

    /// Whether `user` is the trust's trustor or trustee.
    pub fn involves(&self, user: &str) -> bool {
        self.trustor_user_id == user || self.trustee_user_id == user
    }

    /// Whether the trust has expired at `now` (seconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// A revocation record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationDoc {
    /// Revoked token's audit id.
    pub audit_id: Option<String>,
    /// Revoked user (all tokens issued up to `issued_before`, milliseconds).
    pub user_id: Option<String>,
    /// For a user revocation.
    pub issued_before: u64,
    /// When the entry may be forgotten.
    pub until: u64,
}

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The token's claims.
    pub claims: Claims,
    /// The user's domain.
    pub user_domain_id: String,
    /// Project scope.
    pub project_id: Option<String>,
    /// Domain scope.
    pub domain_id: Option<String>,
    /// Effective role (id, name) pairs on the scope.
    pub roles: Vec<(String, String)>,
}

impl Ctx {
    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.claims.user_id
    }
    /// Whether the caller holds a role (by name) on its scope.
    pub fn has_role(&self, name: &str) -> bool {
        self.roles.iter().any(|(_, n)| n == name)
    }
    /// Cloud admin (admin role on its scope).
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }
}

/// A new random id (32 hex digits).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized("The request you have made requires authentication.")
}

/// The ids of a user's groups.
fn group_ids(svc: &Service, user_id: &str) -> Result<Vec<String>, ServiceError> {
    Ok(svc
        .store
        .list(Kind::Membership, Some(user_id))?
        .iter()
        .map(|r| r.parse::<MembershipDoc>().map(|m| m.group_id))
        .collect::<Result<_, _>>()?)
}

impl Service {
    /// Loads revocations from the store into memory (at start and periodically, so
    /// revocations made by another controller are honoured).
    pub fn reload_revocations(&self) -> Result<(), ServiceError> {
        let now = now_secs();
        let mut fresh = token::Revocations::default();
        let mut stale = Vec::new();
        for r in self.store.list(Kind::Revocation, None)? {
            let d: RevocationDoc = r.parse()?;
            if d.until <= now {
                stale.push(Write::Delete(Kind::Revocation, r.id.clone()));
                continue;
            }
            if let Some(a) = d.audit_id {
                fresh.revoke_audit(a, d.until);
            }
            if let Some(u) = d.user_id {
                fresh.revoke_user(u, d.issued_before);
            }
        }
        *self.revocations.write().expect("revocations") = fresh;
        if !stale.is_empty() {
            self.store.apply(&stale)?;
        }
        Ok(())
    }

    /// Revokes one token (and tokens made from it).
    pub fn revoke_token(&self, claims: &Claims) -> Result<(), ServiceError> {
        let audit = claims.audit_ids()[0].clone();
        let doc = RevocationDoc {
            audit_id: Some(audit.clone()),
            user_id: None,
            issued_before: 0,
            until: claims.expires_at,
        };
        self.store
            .insert(Record::new(Kind::Revocation, &new_id(), "", None, &doc))?;
        self.revocations
            .write()
            .expect("revocations")
            .revoke_audit(audit, claims.expires_at);
        Ok(())
    }

    /// Revokes every token a user holds now (password change, disable, delete).
    pub fn revoke_user(&self, user_id: &str) -> Result<(), ServiceError> {
        // Disabled, deleted, password changed: its verified password is no longer good.
        self.logins.forget(user_id);
        let now = now_secs();
        let now_ms = token::now_ms();
        let doc = RevocationDoc {
            audit_id: None,
            user_id: Some(user_id.to_string()),
            issued_before: now_ms,
            until: now + self.config.token_expiry.as_secs() + 1,
        };
        self.store
            .insert(Record::new(Kind::Revocation, &new_id(), "", None, &doc))?;
        self.revocations
            .write()
            .expect("revocations")
            .revoke_user(user_id.to_string(), now_ms);
        Ok(())
    }

    /// Checks a token's signature, expiry and revocation. No store access.
    pub fn check_token(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self
            .keys
            .open_token(token, now_secs())
            .map_err(|_| unauthorized())?;
        if self
            .revocations
            .read()
            .expect("revocations")
            .is_revoked(&claims)
        {
            return Err(unauthorized());
        }
        Ok(claims)
    }

    /// Role (id, doc) pairs by id.
    fn roles_by_id(&self) -> Result<Vec<(String, RoleDoc)>, ServiceError> {
        self.store
            .list(Kind::Role, None)?
            .iter()
            .map(|r| Ok((r.id.clone(), r.parse::<RoleDoc>()?)))
            .collect()
    }

    /// The roles a user holds on a target directly or through groups, implied roles
    /// included, as (id, name) pairs sorted by name.
    pub fn effective_roles(
        &self,
        user_id: &str,
        target_type: &str,
        target_id: &str,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        let generation = self.versioned.generation_of(crate::service::SNAPSHOT_KINDS);
        let key = format!("{user_id}|{target_type}:{target_id}");
        if let Some(r) = self.cache.roles(&key, generation) {
            return Ok(r);
        }
        let groups = group_ids(self, user_id)?;
        let mut direct = Vec::new();
        for r in self.store.list(
            Kind::Assignment,
            Some(&format!("{target_type}:{target_id}")),
        )? {
            let a: AssignmentDoc = r.parse()?;
            let mine = (a.actor_type == "user" && a.actor_id == user_id)
                || (a.actor_type == "group" && groups.contains(&a.actor_id));
            if mine {
                direct.push(a.role_id);
            }
        }
        let roles = self.expand_roles(direct)?;
        self.cache.put_roles(key, generation, roles.clone());
        Ok(roles)
    }

    /// Adds implied roles and resolves names.
    pub fn expand_roles(
        &self,
        mut ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        let roles = self.roles_by_id()?;
        let mut i = 0;
        while i < ids.len() {
            if let Some((_, d)) = roles.iter().find(|(id, _)| *id == ids[i]) {
                for imp in &d.implies {
                    if !ids.contains(imp) {
                        ids.push(imp.clone());
                    }
                }
            }
            i += 1;
        }
        let mut out: Vec<(String, String)> = roles
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, d)| (id, d.name))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// Resolves a token into the caller's context: user enabled, scope enabled, roles.
    pub fn context(&self, token: &str) -> Result<Ctx, ServiceError> {
        let claims = self.check_token(token)?;
        self.context_for(claims)
    }

    /// The context of verified claims.
    pub fn context_for(&self, claims: Claims) -> Result<Ctx, ServiceError> {
        let generation = self.versioned.generation_of(crate::service::SNAPSHOT_KINDS);
        let key = cache_key(&claims);
        if let Some(s) = self.cache.scope(&key, generation) {
            return Ok(Ctx {
                claims,
                user_domain_id: s.user_domain_id,
                project_id: s.project_id,
                domain_id: s.domain_id,
                roles: s.roles,
            });
        }
        let ctx = self.context_uncached(claims)?;
        self.cache.put_scope(
            key,
            generation,
            cache::ScopeInfo {
                user_domain_id: ctx.user_domain_id.clone(),
                project_id: ctx.project_id.clone(),
                domain_id: ctx.domain_id.clone(),
                roles: ctx.roles.clone(),
            },
        );
        Ok(ctx)
    }

    fn context_uncached(&self, claims: Claims) -> Result<Ctx, ServiceError> {
        let user = self
            .store
            .get(Kind::User, &claims.user_id)?
            .ok_or_else(unauthorized)?;
        let user: UserDoc = user.parse()?;
        if !user.enabled || !self.domain_enabled(&user.domain_id)? {
            return Err(unauthorized().into());
        }
        let (project_id, domain_id, roles) = match &claims.scope {
            Scope::Unscoped => (None, None, Vec::new()),
            Scope::Project(p) => {
                let rec = self.store.get(Kind::Project, p)?.ok_or_else(unauthorized)?;
                let doc: ProjectDoc = rec.parse()?;
                if !doc.enabled || !self.domain_enabled(&doc.domain_id)? {
                    return Err(unauthorized().into());
                }
                let mut roles = match &claims.trust_id {
                    Some(t) => self.trust_roles(t, &claims.user_id, p)?,
                    None => self.effective_roles(&claims.user_id, "project", p)?,
                };
                if let Some(ac) = &claims.app_cred_id {
                    let rec = self
                        .store
                        .get(Kind::AppCredential, ac)?
                        .ok_or_else(unauthorized)?;
                    let ac: AppCredDoc = rec.parse()?;
                    if ac.expires_at.is_some_and(|e| e <= now_secs()) {
                        return Err(unauthorized().into());
                    }
                    let allowed = self.expand_roles(ac.roles)?;
                    roles.retain(|r| allowed.contains(r));
                }
                (Some(p.clone()), None, roles)
            }
            Scope::Domain(d) => {
                if !self.domain_enabled(d)? {
                    return Err(unauthorized().into());
                }
                let roles = self.effective_roles(&claims.user_id, "domain", d)?;
                (None, Some(d.clone()), roles)
            }
            Scope::System => (
                None,
                None,
                self.effective_roles(&claims.user_id, "system", SYSTEM_ALL)?,
            ),
        };
        if claims.scope != Scope::Unscoped && roles.is_empty() {
            return Err(unauthorized().into());
        }
        Ok(Ctx {
            claims,
            user_domain_id: user.domain_id,
            project_id,
            domain_id,
            roles,
        })
    }

    /// The roles a token made through trust `id` for `user_id` carries on `project`: the
    /// trust's (implied roles added), while the trust lasts, its trustor and trustee are
    /// enabled and the trustor still holds every role it delegated. Else 401.
    fn trust_roles(
        &self,
        id: &str,
        user_id: &str,
        project: &str,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        let t: TrustDoc = self
            .store
            .get(Kind::Trust, id)?
            .ok_or_else(unauthorized)?
            .parse()?;
        if t.token_user() != user_id || t.project_id != project || t.expired(now_secs()) {
            return Err(unauthorized().into());
        }
        let roles = self.delegable_roles(&t)?.ok_or_else(unauthorized)?;
        for other in [&t.trustor_user_id, &t.trustee_user_id] {
            let enabled = match self.store.get(Kind::User, other)? {
                Some(r) => r.parse::<UserDoc>()?.enabled,
                None => false,
            };
            if !enabled {
                return Err(unauthorized().into());
            }
        }
        Ok(roles)
    }

    /// A trust's roles with the roles they imply, if its trustor still holds every role
    /// it delegated on its project; `None` if not.
    pub fn delegable_roles(
        &self,
        t: &TrustDoc,
    ) -> Result<Option<Vec<(String, String)>>, ServiceError> {
        let held = self.effective_roles(&t.trustor_user_id, "project", &t.project_id)?;
        if !t.roles.iter().all(|r| held.iter().any(|(id, _)| id == r)) {
            return Ok(None);
        }
        Ok(Some(self.expand_roles(t.roles.clone())?))
    }

    /// Whether the request `method path` to a service of one of `services` (catalog
    /// types; empty: no service of the catalog) may be made with `token`: always, unless
    /// the token comes from an application credential with access rules, which must then
    /// list it. Tokens that do not verify are let through (their handler refuses them).
    pub fn access_allowed(
        &self,
        token: &str,
        services: &[&str],
        method: &str,
        path: &str,
    ) -> Result<(), ServiceError> {
        let Ok(claims) = self.check_token(token) else {
            return Ok(());
        };
        let Some(ac) = &claims.app_cred_id else {
            return Ok(());
        };
        let Some(rec) = self.store.get(Kind::AppCredential, ac)? else {
            return Ok(());
        };
        let doc: AppCredDoc = rec.parse()?;
        if doc.access_rules.is_empty() {
            return Ok(());
        }
        for id in &doc.access_rules {
            let Some(r) = self.store.get(Kind::AccessRule, id)? else {
                continue;
            };
            // The stored rule read as objectd reads one from a token, so both match alike.
            let rule: objectd::keystone::AccessRule = r.parse()?;
            if rule.allows(services, method, path) {
                return Ok(());
            }
        }
        Err(ApiError::unauthorized(format!(
            "The access rules of application credential {ac} do not permit {method} {path}."
        ))
        .into())
    }

    /// Whether the caller's token comes from a restricted application credential (the
    /// default kind), which may not make or delete application credentials, access rules
    /// or trusts: a leaked one cannot mint credentials that outlive it.
    pub fn restricted_app_cred(&self, ctx: &Ctx) -> Result<bool, ServiceError> {
        let Some(ac) = &ctx.claims.app_cred_id else {
            return Ok(false);
        };
        Ok(match self.store.get(Kind::AppCredential, ac)? {
            Some(r) => !r.parse::<AppCredDoc>()?.unrestricted,
            None => true,
        })
    }

    /// An application credential's access rules as Keystone shows them.
    pub fn access_rules_view(&self, ids: &[String]) -> Result<Vec<Value>, ServiceError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.store.get(Kind::AccessRule, id)? {
                let d: AccessRuleDoc = r.parse()?;
                out.push(json!({"id": id, "service": d.service, "method": d.method,
                                "path": d.path}));
            }
        }
        Ok(out)
    }

    fn domain_enabled(&self, id: &str) -> Result<bool, ServiceError> {
        Ok(match self.store.get(Kind::Domain, id)? {
            Some(r) => r.parse::<DomainDoc>()?.enabled,
            None => false,
        })
    }

    /// The service catalog for a project (URL templates filled in; endpoints needing a
    /// project left out when there is none).
    pub fn catalog(&self, project_id: Option<&str>) -> Result<Value, ServiceError> {
        let endpoints: Vec<(String, EndpointDoc)> = self
            .store
            .list(Kind::Endpoint, None)?
            .iter()
            .map(|r| Ok((r.id.clone(), r.parse::<EndpointDoc>()?)))
            .collect::<Result<_, ServiceError>>()?;
        let mut out = Vec::new();
        for r in self.store.list(Kind::Service, None)? {
            let s: ServiceDoc = r.parse()?;
            if !s.enabled {
                continue;
            }
            let eps: Vec<Value> = endpoints
                .iter()
                .filter(|(_, e)| e.service_id == r.id && e.enabled)
                .filter_map(|(id, e)| {
                    let url = if e.url.contains("$(project_id)s") {
                        e.url.replace("$(project_id)s", project_id?)
                    } else {
                        e.url.clone()
                    };
                    Some(
                        json!({"id": id, "interface": e.interface, "region": e.region_id,
                        "region_id": e.region_id, "url": url}),
                    )
                })
                .collect();
            out.push(json!({"id": r.id, "type": s.kind, "name": s.name, "endpoints": eps}));
        }
        Ok(Value::Array(out))
    }

    fn named_ref(&self, kind: Kind, id: &str) -> Result<Value, ServiceError> {
        let name = self
            .store
            .get(kind, id)?
            .and_then(|r| r.name)
            .unwrap_or_default();
        Ok(json!({"id": id, "name": name}))
    }

    /// The `{"token": ...}` body for claims, as JSON text. The part that does not change
    /// from token to token (user, scope, roles, catalog) is rendered once and cached.
    pub fn token_body(&self, ctx: &Ctx, with_catalog: bool) -> Result<String, ServiceError> {
        let generation = self.versioned.generation_of(crate::service::SNAPSHOT_KINDS);
        let key = cache_key(&ctx.claims);
        let rest = match self.cache.body(&key, with_catalog, generation) {
            Some(b) => b,
            None => {
                let mut template = self.token_template(ctx, with_catalog)?;
                let Value::Object(t) = &mut template["token"] else {
                    unreachable!("the template is an object")
                };
                for k in ["methods", "audit_ids", "issued_at", "expires_at"] {
                    t.remove(k);
                }
                let text = Value::Object(std::mem::take(t)).to_string();
                let rest: std::sync::Arc<str> = text[1..text.len() - 1].into();
                self.cache
                    .put_body(key, with_catalog, generation, rest.clone());
                rest
            }
        };
        let c = &ctx.claims;
        Ok(format!(
            "{{\"token\":{{\"methods\":{},\"audit_ids\":{},\"issued_at\":{},\"expires_at\":{}{}{}}}}}",
            json!(c.method_names()),
            json!(c.audit_ids()),
            json!(crate::time::keystone_ms(c.issued_at_ms)),
            json!(crate::time::keystone(c.expires_at)),
            if rest.is_empty() { "" } else { "," },
            rest
        ))
    }

    /// The token body without its per-token fields (methods, audit ids, times).
    fn token_template(&self, ctx: &Ctx, with_catalog: bool) -> Result<Value, ServiceError> {
        let c = &ctx.claims;
        let user = self
            .store
            .get(Kind::User, &c.user_id)?
            .ok_or_else(unauthorized)?;
        let mut t = json!({
            "methods": c.method_names(),
            "user": {"id": c.user_id, "name": user.name,
                     "domain": self.named_ref(Kind::Domain, &ctx.user_domain_id)?,
                     "password_expires_at": null},
            "audit_ids": c.audit_ids(),
            "issued_at": crate::time::keystone_ms(c.issued_at_ms),
            "expires_at": crate::time::keystone(c.expires_at),
        });
        if let Some(p) = &ctx.project_id {
            let rec = self.store.get(Kind::Project, p)?.ok_or_else(unauthorized)?;
            let doc: ProjectDoc = rec.parse()?;
            t["project"] = json!({"id": p, "name": doc.name,
                "domain": self.named_ref(Kind::Domain, &doc.domain_id)?});
            t["is_domain"] = json!(false);
        }
        if let Some(d) = &ctx.domain_id {
            t["domain"] = self.named_ref(Kind::Domain, d)?;
        }
        if c.scope == Scope::System {
            t["system"] = json!({"all": true});
        }
        if c.scope != Scope::Unscoped {
            t["roles"] = ctx
                .roles
                .iter()
                .map(|(id, name)| json!({"id": id, "name": name}))
                .collect();
            if with_catalog {
                t["catalog"] = self.catalog(ctx.project_id.as_deref())?;
            }
        }
        if let Some(ac) = &c.app_cred_id
            && let Some(r) = self.store.get(Kind::AppCredential, ac)?
        {
            let d: AppCredDoc = r.parse()?;
            t["application_credential"] =
                json!({"id": ac, "name": d.name, "restricted": !d.unrestricted});
            if !d.access_rules.is_empty() {
                t["application_credential"]["access_rules"] =
                    json!(self.access_rules_view(&d.access_rules)?);
            }
        }
        if let Some(id) = &c.trust_id
            && let Some(r) = self.store.get(Kind::Trust, id)?
        {
            let d: TrustDoc = r.parse()?;
            t["OS-TRUST:trust"] = json!({"id": id, "impersonation": d.impersonation,
                "trustor_user": {"id": d.trustor_user_id},
                "trustee_user": {"id": d.trustee_user_id}});
        }
        Ok(json!({ "token": t }))
    }

    /// The secret a password or application-credential login presents, and the stored
    /// hash it is to be checked against (`None`: no such user or credential, or no
    /// password). `None` for other methods and for requests [`Service::authenticate`]
    /// refuses before checking any secret.
    pub fn login_secret(&self, auth: &AuthBody) -> Result<Option<LoginSecret>, ServiceError> {
        let id = &auth.auth.identity;
        if id.methods.len() != 1 {
            return Ok(None);
        }
        Ok(match id.methods[0].as_str() {
            "password" => match &id.password {
                Some(p) => {
                    let user = self.find_user(&p.user)?;
                    let cache_as = user
                        .as_ref()
                        .filter(|(_, u)| u.enabled)
                        .map(|(id, _)| id.clone());
                    let stored = user.and_then(|(_, u)| u.password_hash);
                    Some(LoginSecret {
                        secret: p.user.password.clone(),
                        stored,
                        cache_as,
                    })
                }
                None => None,
            },
            "application_credential" => match &id.application_credential {
                Some(a) => {
                    let stored = self.find_app_cred(a)?.map(|(_, d)| d.secret_hash);
                    Some(LoginSecret {
                        secret: a.secret.clone(),
                        stored,
                        cache_as: None,
                    })
                }
                None => None,
            },
            _ => None,
        })
    }

    fn find_app_cred(&self, a: &AppCredAuth) -> Result<Option<(Record, AppCredDoc)>, ServiceError> {
        let rec = match (&a.id, &a.name, &a.user) {
            (Some(id), _, _) => self.store.get(Kind::AppCredential, id)?,
            (None, Some(name), Some(u)) => match self.find_user(&UserRef {
                id: u.id.clone(),
                name: u.name.clone(),
                domain: u.domain.clone(),
                password: String::new(),
            })? {
                Some((uid, _)) => self.store.get_by_name(Kind::AppCredential, &uid, name)?,
                None => None,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "application_credential needs an id, or a name and a user",
                )
                .into());
            }
        };
        match rec {
            Some(rec) => {
                let doc: AppCredDoc = rec.parse()?;
                Ok(Some((rec, doc)))
            }
            None => Ok(None),
        }
    }

    /// Replaces a secret hash made with old parameters by `new` (made on login), unless
    /// the record changed since. Failures other than "would block" only cost the rehash.
    fn store_rehash(
        &self,
        kind: Kind,
        id: &str,
        old: &str,
        new: &str,
        swap: impl Fn(&mut Value) -> bool,
    ) -> Result<(), ServiceError> {
        let result = (|| -> Result<(), ServiceError> {
            let Some(rec) = self.store.get(kind, id)? else {
                return Ok(());
            };
            let mut doc: Value = rec.parse()?;
            if !swap(&mut doc) {
                return Ok(());
            }
            self.store.update(rec.with_doc(rec.name.as_deref(), &doc))?;
            Ok(())
        })();
        match result {
            Err(ServiceError::Store(crate::store::StoreError::WouldBlock)) => {
                Err(ServiceError::Store(crate::store::StoreError::WouldBlock))
            }
            Err(e) => {
                tracing::warn!(error = %e, %id, "rehashing a secret with current parameters failed");
                Ok(())
            }
            Ok(()) => {
                tracing::info!(%id, old_params = %old.split('$').nth(3).unwrap_or(""), new_params = %new.split('$').nth(3).unwrap_or(""), "rehashed a secret with current parameters");
                Ok(())
            }
        }
    }

    /// Authenticates an `{"auth": ...}` request into signed claims. `checked` is the
    /// outcome of checking the request's secret (see [`Service::login_secret`]) on the
    /// hashing pool beforehand; without it, or if the stored hash changed since, the
    /// secret is checked here.
    pub fn authenticate(
        &self,
        auth: &AuthBody,
        header_token: Option<&str>,
        checked: Option<&password::Checked>,
    ) -> Result<Claims, ServiceError> {
        let secret_ok = |secret: &str, stored: Option<&str>| -> (bool, Option<String>) {
            match checked.and_then(|c| c.for_stored(stored).map(|ok| (ok, c.rehash.clone()))) {
                Some(outcome) => outcome,
                None => (password::verify(secret, stored), None),
            }
        };
        let id = &auth.auth.identity;
        let now = now_secs();
        let mut expires_at = now + self.config.token_expiry.as_secs();
        let mut parent = None;
        let mut app_cred_id = None;
        let mut fixed_scope = None;
        let (user_id, methods) = match id.methods.first().map(String::as_str) {
            _ if id.methods.len() != 1 => {
                return Err(ApiError::bad_request(
                    "exactly one authentication method is supported",
                )
                .into());
            }
            Some("password") => {
                let p = id
                    .password
                    .as_ref()
                    .ok_or_else(|| ApiError::bad_request("'password' is missing from identity"))?;
                let user = self.find_user(&p.user)?;
                let stored = user.as_ref().and_then(|(_, u)| u.password_hash.clone());
                let (ok, rehash) = secret_ok(&p.user.password, stored.as_deref());
                match (user, stored) {
                    (Some((id, u)), Some(old)) if ok && u.enabled => {
                        if let Some(new) = rehash {
                            self.store_rehash(Kind::User, &id, &old, &new, |d| {
                                if d["password_hash"] != old.as_str() {
                                    return false;
                                }
                                d["password_hash"] = Value::String(new.clone());
                                true
                            })?;
                        }
                        (id, method::PASSWORD)
                    }
                    _ => return Err(unauthorized().into()),
                }
            }
            Some("token") => {
                let t = id
                    .token
                    .as_ref()
                    .map(|t| t.id.as_str())
                    .or(header_token)
                    .ok_or_else(|| ApiError::bad_request("'token' is missing from identity"))?;
                let old = self.check_token(t)?;
                if old.app_cred_id.is_some() {
                    return Err(ApiError::forbidden(
                        "application credential tokens cannot be rescoped",
                    )
                    .into());
                }
                if old.trust_id.is_some() {
                    return Err(ApiError::forbidden(
                        "tokens made through a trust cannot be rescoped",
                    )
                    .into());
                }
                expires_at = old.expires_at;
                parent = Some(old.audit_id);
                (old.user_id, method::TOKEN | old.methods)
            }
            Some("application_credential") => {
                let a = id.application_credential.as_ref().ok_or_else(|| {
                    ApiError::bad_request("'application_credential' is missing from identity")
                })?;
                let found = self.find_app_cred(a)?;
                let stored = found.as_ref().map(|(_, d)| d.secret_hash.clone());
                let (ok, rehash) = secret_ok(&a.secret, stored.as_deref());
                let (Some((rec, doc)), true) = (found, ok) else {
                    return Err(unauthorized().into());
                };
                if let Some(new) = rehash {
                    let old = doc.secret_hash.clone();
                    self.store_rehash(Kind::AppCredential, &rec.id, &old, &new, |d| {
                        if d["secret_hash"] != old.as_str() {
                            return false;
                        }
                        d["secret_hash"] = Value::String(new.clone());
                        true
                    })?;
                }
                if doc.expires_at.is_some_and(|e| e <= now) {
                    return Err(unauthorized().into());
                }
                if let Some(e) = doc.expires_at {
                    expires_at = expires_at.min(e);
                }
                if auth.auth.scope.is_some() {
                    return Err(ApiError::unauthorized(
                        "application credentials are already scoped; do not ask for a scope",
                    )
                    .into());
                }
                app_cred_id = Some(rec.id.clone());
                fixed_scope = Some(Scope::Project(doc.project_id.clone()));
                (doc.user_id, method::APP_CREDENTIAL)
            }
            Some(other) => {
                return Err(ApiError::unauthorized(format!(
                    "authentication method {other:?} is not supported"
                ))
                .into());
            }
            None => return Err(ApiError::bad_request("identity.methods is empty").into()),
        };
        let mut trust_id = None;
        let (user_id, scope) = match (fixed_scope, auth.auth.scope.as_ref()) {
            (Some(s), _) => (user_id, s),
            (
                None,
                Some(ScopeBody {
                    trust: Some(t),
                    project: None,
                    domain: None,
                    system: None,
                }),
            ) => {
                let (user, project, until) = self.use_trust(&t.id, &user_id)?;
                if let Some(e) = until {
                    expires_at = expires_at.min(e);
                }
                trust_id = Some(t.id.clone());
                (user, Scope::Project(project))
            }
            (None, scope) => {
                let s = self.resolve_scope(scope, &user_id)?;
                (user_id, s)
            }
        };
        let claims = Claims {
            methods,
            user_id,
            scope,
            issued_at_ms: token::now_ms(),
            expires_at,
            audit_id: token::random_audit_id()?,
            parent_audit_id: parent,
            app_cred_id,
            trust_id,
        };
        Ok(claims)
    }

    /// Checks that `trustee` may get a token through trust `id` now and counts the use.
    /// Returns the token's user (the trustor when the trust impersonates), its project and
    /// the trust's expiry.
    fn use_trust(
        &self,
        id: &str,
        trustee: &str,
    ) -> Result<(String, String, Option<u64>), ServiceError> {
        for _ in 0..8 {
            let rec = self
                .store
                .get(Kind::Trust, id)?
                .ok_or_else(|| ApiError::not_found(format!("Could not find trust: {id}.")))?;
            let mut t: TrustDoc = rec.parse()?;
            if t.trustee_user_id != trustee {
                return Err(ApiError::forbidden(
                    "The authenticated user is not the trustee of this trust.",
                )
                .into());
            }
            if t.expired(now_secs()) {
                return Err(ApiError::forbidden("The trust has expired.").into());
            }
            if self.delegable_roles(&t)?.is_none() {
                return Err(ApiError::forbidden(
                    "The trustor no longer holds every role the trust delegates.",
                )
                .into());
            }
            let user = t.token_user().to_string();
            match t.remaining_uses {
                None => return Ok((user, t.project_id, t.expires_at)),
                Some(0) => {
                    return Err(
                        ApiError::forbidden("The trust has no uses left for tokens.").into(),
                    );
                }
                Some(n) => {
                    t.remaining_uses = Some(n - 1);
                    match self.store.update(rec.with_doc(rec.name.as_deref(), &t)) {
                        Ok(()) => return Ok((user, t.project_id, t.expires_at)),
                        // Another login used it meanwhile: count again.
                        Err(crate::store::StoreError::Stale { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(ApiError::conflict("The trust is being used by other logins; retry.").into())
    }

    fn find_domain(&self, d: &DomainRef) -> Result<Option<String>, ServiceError> {
        Ok(match (&d.id, &d.name) {
            (Some(id), _) => self.store.get(Kind::Domain, id)?.map(|r| r.id),
            (None, Some(name)) => self
                .store
                .get_by_name(Kind::Domain, "", name)?
                .map(|r| r.id),
            _ => None,
        })
    }

    fn find_user(&self, u: &UserRef) -> Result<Option<(String, UserDoc)>, ServiceError> {
        let rec = match (&u.id, &u.name) {
            (Some(id), _) => self.store.get(Kind::User, id)?,
            (None, Some(name)) => {
                let domain = match &u.domain {
                    Some(d) => self.find_domain(d)?,
                    None => {
                        return Err(ApiError::bad_request(
                            "a user named without an id needs a domain",
                        )
                        .into());
                    }
                };
                match domain {
                    Some(d) => self.store.get_by_name(Kind::User, &d, name)?,
                    None => None,
                }
            }
            _ => return Err(ApiError::bad_request("the user needs an id or a name").into()),
        };
        let Some(rec) = rec else { return Ok(None) };
        let doc: UserDoc = rec.parse()?;
        if !self.domain_enabled(&doc.domain_id)? {
            return Ok(None);
        }
        Ok(Some((rec.id, doc)))
    }

    fn resolve_scope(
        &self,
        scope: Option<&ScopeBody>,
        user_id: &str,
    ) -> Result<Scope, ServiceError> {
        let denied = || ApiError::unauthorized("the user has no access to the requested scope");
        let scope = match scope {
            None => {
                // Keystone scopes to the default project when the user has roles there.
                let u: UserDoc = self
                    .store
                    .get(Kind::User, user_id)?
                    .ok_or_else(unauthorized)?
                    .parse()?;
                match u.default_project_id {
                    Some(p) if !self.effective_roles(user_id, "project", &p)?.is_empty() => {
                        Scope::Project(p)
                    }
                    _ => Scope::Unscoped,
                }
            }
            Some(ScopeBody {
                project: Some(p),
                domain: None,
                system: None,
                trust: None,
            }) => {
                let rec = match (&p.id, &p.name) {
                    (Some(id), _) => self.store.get(Kind::Project, id)?,
                    (None, Some(name)) => {
                        let d = p.domain.as_ref().ok_or_else(|| {
                            ApiError::bad_request("a project named without an id needs a domain")
                        })?;
                        match self.find_domain(d)? {
                            Some(d) => self.store.get_by_name(Kind::Project, &d, name)?,
                            None => None,
                        }
                    }
                    _ => {
                        return Err(
                            ApiError::bad_request("the project needs an id or a name").into()
                        );
                    }
                };
                let rec = rec.ok_or_else(denied)?;
                let doc: ProjectDoc = rec.parse()?;
                if !doc.enabled {
                    return Err(denied().into());
                }
                Scope::Project(rec.id)
            }
            Some(ScopeBody {
                domain: Some(d),
                project: None,
                system: None,
                trust: None,
            }) => Scope::Domain(self.find_domain(d)?.ok_or_else(denied)?),
            Some(ScopeBody {
                system: Some(sys),
                project: None,
                domain: None,
                trust: None,
            }) => {
                if *sys != json!({"all": true}) {
                    return Err(
                        ApiError::bad_request("the only system scope is {\"all\": true}").into(),
                    );
                }
                Scope::System
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "scope names exactly one of project, domain, system or OS-TRUST:trust",
                )
                .into());
            }
        };
        let roles = match &scope {
            Scope::Unscoped => return Ok(scope),
            Scope::Project(p) => self.effective_roles(user_id, "project", p)?,
            Scope::Domain(d) => self.effective_roles(user_id, "domain", d)?,
            Scope::System => self.effective_roles(user_id, "system", SYSTEM_ALL)?,
        };
        if roles.is_empty() {
            return Err(denied().into());
        }
        Ok(scope)
    }
}

fn cache_key(c: &Claims) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}",
        c.user_id, c.scope, c.app_cred_id, c.trust_id
    )
}

/// What a login by secret is checked with (see [`Service::login_secret`]).
#[derive(Debug)]
pub struct LoginSecret {
    /// The password or application-credential secret presented.
    pub secret: String,
    /// The stored hash (`None`: no such user or credential, or no password).
    pub stored: Option<String>,
    /// The user's id when this is a password login of a user found enabled: only then may
    /// a remembered verified password answer (see [`login`]).
    pub cache_as: Option<String>,
}

/// `{"auth": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthBody {
    /// The auth request.
    pub auth: Auth,
}

/// The auth request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Who.
    pub identity: Identity,
    /// For what.
    pub scope: Option<ScopeBody>,
}

/// The identity part.
#[derive(Debug, Deserialize)]
pub struct Identity {
    /// Method names.
    pub methods: Vec<String>,
    /// Password method.
    pub password: Option<PasswordAuth>,
    /// Token method.
    pub token: Option<TokenAuth>,
    /// Application credential method.
    pub application_credential: Option<AppCredAuth>,
}

/// Password method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordAuth {
    /// The user and password.
    pub user: UserRef,
}

/// A user by id or name and domain, with a password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    /// Id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Domain of a named user.
    pub domain: Option<DomainRef>,
    /// Password.
    #[serde(default)]
    pub password: String,
}

/// A domain by id or name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRef {
    /// Id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
}

/// Token method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuth {
    /// The token.
    pub id: String,
}

/// Application credential method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCredAuth {
    /// Credential id.
    pub id: Option<String>,
    /// Credential name (with `user`).
    pub name: Option<String>,
    /// Owner, with `name`.
    pub user: Option<AppCredUser>,
    /// Secret.
    pub secret: String,
}

/// The owner of a named application credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCredUser {
    /// Id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Domain.
    pub domain: Option<DomainRef>,
}

/// The scope part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeBody {
    /// A project.
    pub project: Option<ProjectRef>,
    /// A domain.
    pub domain: Option<DomainRef>,
    /// System scope: `{"all": true}`.
    pub system: Option<Value>,
    /// A trust the authenticated user is the trustee of.
    #[serde(rename = "OS-TRUST:trust")]
    pub trust: Option<TrustRef>,
}

/// A trust by id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRef {
    /// Id.
    pub id: String,
}

/// A project by id or name and domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRef {
    /// Id.
    pub id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Domain of a named project.
    pub domain: Option<DomainRef>,
}
