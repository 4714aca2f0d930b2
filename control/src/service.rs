//! The state every handler shares: configuration, store, token keys, revocations and the
//! image store client.

use std::sync::{Arc, Mutex, RwLock};

use crate::api::ApiError;
use crate::config::Validated;
use crate::identity::cache::IdentityCache;
use crate::identity::login::{LoginLimits, Logins};
use crate::identity::password::PasswordError;
use crate::identity::token::{KeyRing, Revocations, TokenError};
use crate::objectstore::{ObjectStore, ObjectStoreError};
use crate::store::{Kind, SharedStore, StoreError, Versioned};

/// Errors below the API layer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An answer for the client (4xx).
    #[error("{}", .0.message)]
    Api(ApiError),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// Token keys failed.
    #[error("token keys")]
    Token(#[from] TokenError),
    /// Hashing failed.
    #[error("password hashing")]
    Password(#[from] PasswordError),
    /// objectd failed.
    #[error("image store")]
    ObjectStore(#[from] ObjectStoreError),
}

impl From<ApiError> for ServiceError {
    fn from(e: ApiError) -> ServiceError {
        ServiceError::Api(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// The kinds read on every authenticated request (token scope, roles, catalog, image
/// memberships), served from in-memory snapshots of the store.
pub const SNAPSHOT_KINDS: &[Kind] = &[
    Kind::ImageMember,
    Kind::Role,
    Kind::Assignment,
    Kind::Membership,
    Kind::User,
    Kind::Group,
    Kind::Project,
    Kind::Domain,
    Kind::AppCredential,
    Kind::AccessRule,
    Kind::Trust,
    Kind::Credential,
    Kind::Service,
    Kind::Endpoint,
    Kind::Region,
];

/// Shared state of the daemon.
pub struct Service {
    /// Validated configuration.
    pub config: Validated,
    /// The state store (through [`Versioned`], so caches see local writes).
    pub store: SharedStore,
    /// The same store, for its write generation.
    pub versioned: Arc<Versioned>,
    /// Derived identity data (roles, token bodies), valid for a generation and a moment.
    pub cache: IdentityCache,
    /// Password logins: verified-credential cache, single-flight checks, their bound.
    pub logins: Logins,
    /// Token signing keys.
    pub keys: KeyRing,
    /// Revoked tokens (mirrored in the store).
    pub revocations: RwLock<Revocations>,
    /// objectd client for image data.
    pub objects: ObjectStore,
    /// Every image record parsed, for listing: (generation, when, images).
    pub image_list: Mutex<Option<ImageList>>,
    /// Serialises this controller's pushes of network state to the nodes.
    pub net_sync: tokio::sync::Mutex<()>,
}

/// A parsed snapshot of all images at a store generation.
pub type ImageList = (u64, std::time::Instant, Arc<ImageIndex>);

/// Every image, parsed, with its API view already serialized (a list answers by joining
/// views instead of building and serializing each image's JSON again).
#[derive(Debug, Default)]
pub struct ImageIndex {
    /// (id, document) pairs, ordered by id.
    pub images: Vec<(String, crate::image::ImageDoc)>,
    /// `images[i]`'s view as JSON text.
    pub views: Vec<String>,
}

impl Service {
    /// All images, parsed and rendered; reused while no image changed and for at most
    /// [`crate::identity::cache::CACHE_TTL`].
    pub fn all_images(&self) -> Result<Arc<ImageIndex>, ServiceError> {
        let generation = self.versioned.generation_of(&[Kind::Image]);
        // Held while reading, so concurrent misses wait for one read.
        let mut held = self.image_list.lock().expect("image list");
        if let Some((g, at, list)) = held.as_ref()
            && *g == generation
            && at.elapsed() < crate::identity::cache::CACHE_TTL
        {
            return Ok(list.clone());
        }
        let images: Vec<(String, crate::image::ImageDoc)> = self
            .store
            .list(Kind::Image, None)?
            .iter()
            .map(|r| Ok((r.id.clone(), r.parse()?)))
            .collect::<Result<_, ServiceError>>()?;
        let views = images
            .iter()
            .map(|(id, d)| d.view(id).to_string())
            .collect();
        let list = Arc::new(ImageIndex { images, views });
        *held = Some((generation, std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// Builds the service from its parts and loads revocations from the store.
    pub fn new(config: Validated, store: SharedStore) -> Result<Arc<Service>, ServiceError> {
        let keys = KeyRing::open(&config.raw.tokens.key_dir, config.raw.tokens.max_keys)?;
        let objects = ObjectStore::new(&config.raw.images)?;
        let versioned = Arc::new(Versioned::with_snapshots(store, SNAPSHOT_KINDS));
        let logins = Logins::new(LoginLimits {
            cache_ttl: config.password_cache_ttl,
            cache_entries: config.raw.identity.password_cache_entries,
            max_checks: config.raw.identity.max_password_checks,
        })?;
        let svc = Arc::new(Service {
            config,
            store: versioned.clone(),
            versioned,
            cache: IdentityCache::default(),
            logins,
            keys,
            revocations: RwLock::new(Revocations::default()),
            objects,
            image_list: Mutex::new(None),
            net_sync: tokio::sync::Mutex::new(()),
        });
        svc.reload_revocations()?;
        Ok(svc)
    }
}
