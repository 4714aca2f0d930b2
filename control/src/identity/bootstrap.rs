//! `control bootstrap`: the default domain, the admin/member/reader roles (admin implies
//! member implies reader), the admin project and user, the service project and its image
//! service user, and catalog entries for identity, image, compute, network, volume and object-store. Running it
//! again updates the admin password and the endpoints and keeps everything else.

use serde_json::Map;

use super::{
    AssignmentDoc, DEFAULT_DOMAIN, DomainDoc, EndpointDoc, ProjectDoc, RegionDoc, RoleDoc,
    ServiceDoc, UserDoc, new_id, password,
};
use crate::service::ServiceError;
use crate::store::{Kind, Record, Store};

/// Name of the project owning service users and image data.
pub const SERVICE_PROJECT: &str = "service";
/// Name of the user control acts as towards objectd.
pub const IMAGE_SERVICE_USER: &str = "glance";

/// What bootstrap creates.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Admin user name.
    pub admin_user: String,
    /// Admin password.
    pub admin_password: String,
    /// Admin project name.
    pub admin_project: String,
    /// Region.
    pub region: String,
    /// control's public URL (identity at `/v3`, image at `/image`).
    pub public_url: String,
    /// objectd's URL (object-store endpoint `.../v1/AUTH_$(project_id)s`), if any.
    pub object_store_url: Option<String>,
}

/// Ids of what bootstrap made or found.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// Admin project id.
    pub admin_project_id: String,
    /// Admin user id.
    pub admin_user_id: String,
    /// Service project id.
    pub service_project_id: String,
}

fn ensure<T: serde::Serialize>(
    store: &dyn Store,
    kind: Kind,
    scope: &str,
    name: &str,
    fixed_id: Option<&str>,
    doc: impl FnOnce() -> T,
) -> Result<String, ServiceError> {
    if let Some(r) = store.get_by_name(kind, scope, name)? {
        return Ok(r.id);
    }
    let id = fixed_id.map(str::to_string).unwrap_or_else(new_id);
    store.insert(Record::new(kind, &id, scope, Some(name), &doc()))?;
    Ok(id)
}

fn assign(store: &dyn Store, user: &str, project: &str, role: &str) -> Result<(), ServiceError> {
    assign_on(store, user, "project", project, role)
}

/// Grants `role` to `user` on a project, or on the system (`target_type = "system"`,
/// `target_id = "all"`).
fn assign_on(
    store: &dyn Store,
    user: &str,
    target_type: &str,
    target_id: &str,
    role: &str,
) -> Result<(), ServiceError> {
    let id = format!("user:{user}:{target_type}:{target_id}:{role}");
    if store.get(Kind::Assignment, &id)?.is_none() {
        let doc = AssignmentDoc {
            actor_type: "user".into(),
            actor_id: user.into(),
            target_type: target_type.into(),
            target_id: target_id.into(),
            role_id: role.into(),
        };
        store.insert(Record::new(
            Kind::Assignment,
            &id,
            &format!("{target_type}:{target_id}"),
            None,
            &doc,
        ))?;
    }
    Ok(())
}

fn service_with_endpoint(
    store: &dyn Store,
    kind: &str,
    name: &str,
    url: &str,
    region: &str,
) -> Result<(), ServiceError> {
    let sid = ensure(store, Kind::Service, "", name, None, || ServiceDoc {
        kind: kind.into(),
        name: name.into(),
        description: String::new(),
        enabled: true,
    })?;
    for interface in ["public", "internal", "admin"] {
        let existing = store
            .list(Kind::Endpoint, Some(&sid))?
            .into_iter()
            .find(|r| {
                r.parse::<EndpointDoc>()
                    .is_ok_and(|e| e.interface == interface)
            });
        let doc = EndpointDoc {
            service_id: sid.clone(),
            interface: interface.into(),
            url: url.into(),
            region_id: Some(region.into()),
            enabled: true,
        };
        match existing {
            Some(r) => store.update(r.with_doc(None, &doc))?,
            None => store.insert(Record::new(Kind::Endpoint, &new_id(), &sid, None, &doc))?,
        }
    }
    Ok(())
}

/// Creates or updates the bootstrap records.
pub fn run(store: &dyn Store, b: &Bootstrap) -> Result<Bootstrapped, ServiceError> {
    let domain = ensure(
        store,
        Kind::Domain,
        "",
        "Default",
        Some(DEFAULT_DOMAIN),
        || DomainDoc {
            name: "Default".into(),
            description: "The default domain".into(),
            enabled: true,
            extra: Map::new(),
        },
    )?;
    let reader = ensure(store, Kind::Role, "", "reader", None, || RoleDoc {
        name: "reader".into(),
        description: String::new(),
        implies: vec![],
    })?;
    let member = ensure(store, Kind::Role, "", "member", None, || RoleDoc {
        name: "member".into(),
        description: String::new(),
        implies: vec![reader.clone()],
    })?;
    let admin = ensure(store, Kind::Role, "", "admin", None, || RoleDoc {
        name: "admin".into(),
        description: String::new(),
        implies: vec![member.clone()],
    })?;
    let project = |name: &str| {
        let name = name.to_string();
        let domain = domain.clone();
        move || ProjectDoc {
            name,
            domain_id: domain.clone(),
            description: String::new(),
            enabled: true,
            parent_id: domain,
            tags: vec![],
            extra: Map::new(),
        }
    };
    let admin_project = ensure(
        store,
        Kind::Project,
        &domain,
        &b.admin_project,
        None,
        project(&b.admin_project),
    )?;
    let service_project = ensure(
        store,
        Kind::Project,
        &domain,
        SERVICE_PROJECT,
        None,
        project(SERVICE_PROJECT),
    )?;
    let hash = password::hash(&b.admin_password)?;
    let admin_user = match store.get_by_name(Kind::User, &domain, &b.admin_user)? {
        Some(r) => {
            let mut u: UserDoc = r.parse()?;
            u.password_hash = Some(hash);
            u.enabled = true;
            store.update(r.with_doc(r.name.as_deref(), &u))?;
            r.id
        }
        None => {
            let id = new_id();
            let u = UserDoc {
                name: b.admin_user.clone(),
                domain_id: domain.clone(),
                enabled: true,
                password_hash: Some(hash),
                default_project_id: Some(admin_project.clone()),
                description: String::new(),
                extra: Map::new(),
            };
            store.insert(Record::new(
                Kind::User,
                &id,
                &domain,
                Some(&b.admin_user),
                &u,
            ))?;
            id
        }
    };
    assign(store, &admin_user, &admin_project, &admin)?;
    // As Keystone's bootstrap: the admin is also admin of the system.
    assign_on(store, &admin_user, "system", super::SYSTEM_ALL, &admin)?;
    let glance = ensure(store, Kind::User, &domain, IMAGE_SERVICE_USER, None, || {
        UserDoc {
            name: IMAGE_SERVICE_USER.into(),
            domain_id: domain.clone(),
            enabled: true,
            password_hash: None,
            default_project_id: Some(service_project.clone()),
            description: "control's image service, towards objectd".into(),
            extra: Map::new(),
        }
    })?;
    assign(store, &glance, &service_project, &member)?;
    if store.get(Kind::Region, &b.region)?.is_none() {
        store.insert(Record::new(
            Kind::Region,
            &b.region,
            "",
            None,
            &RegionDoc {
                description: String::new(),
                parent_region_id: None,
            },
        ))?;
    }
    let base = b.public_url.trim_end_matches('/');
    service_with_endpoint(
        store,
        "identity",
        "keystone",
        &format!("{base}/v3"),
        &b.region,
    )?;
    service_with_endpoint(
        store,
        "image",
        "glance",
        &format!("{base}/image"),
        &b.region,
    )?;
    service_with_endpoint(
        store,
        "compute",
        "nova",
        &format!("{base}/compute/v2.1"),
        &b.region,
    )?;
    service_with_endpoint(
        store,
        "network",
        "neutron",
        &format!("{base}/network"),
        &b.region,
    )?;
    // Cinder v3: the stock clients look for `volumev3` (cinderclient) and `block-storage`
    // (openstacksdk).
    for (kind, name) in [("volumev3", "cinderv3"), ("block-storage", "cinder")] {
        service_with_endpoint(
            store,
            kind,
            name,
            &format!("{base}/volume/v3/$(project_id)s"),
            &b.region,
        )?;
    }
    if let Some(o) = &b.object_store_url {
        let url = format!("{}/v1/AUTH_$(project_id)s", o.trim_end_matches('/'));
        service_with_endpoint(store, "object-store", "swift", &url, &b.region)?;
    }
    Ok(Bootstrapped {
        admin_project_id: admin_project,
        admin_user_id: admin_user,
        service_project_id: service_project,
    })
}

/// The text of an openrc for the admin.
pub fn openrc(b: &Bootstrap) -> String {
    format!(
        "export OS_AUTH_URL={}/v3\nexport OS_IDENTITY_API_VERSION=3\nexport OS_USERNAME={}\n\
         export OS_PASSWORD='{}'\nexport OS_PROJECT_NAME={}\nexport OS_USER_DOMAIN_NAME=Default\n\
         export OS_PROJECT_DOMAIN_NAME=Default\nexport OS_REGION_NAME={}\nexport OS_INTERFACE=public\n",
        b.public_url.trim_end_matches('/'),
        b.admin_user,
        b.admin_password.replace('\'', "'\\''"),
        b.admin_project,
        b.region
    )
}

/// The text of a clouds.yaml with one cloud, `ferrostack`.
pub fn clouds_yaml(b: &Bootstrap) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        "clouds:\n  ferrostack:\n    auth:\n      auth_url: {}\n      username: {}\n      password: {}\n      \
         project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n    \
         region_name: {}\n    interface: public\n    identity_api_version: 3\n",
        q(&format!("{}/v3", b.public_url.trim_end_matches('/'))),
        q(&b.admin_user),
        q(&b.admin_password),
        q(&b.admin_project),
        q(&b.region)
    )
}
