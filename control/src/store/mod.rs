//! control's state store: records of every kind behind one trait, with an embedded SQLite
//! backend (the default) and a PostgreSQL backend for several controllers.
//!
//! A record is a JSON document with an id, a scope (the domain, project or parent it
//! belongs to; `""` for none) and an optional name unique within its kind and scope. Writes
//! are applied in atomic batches, updates are compare-and-swap on a version number, so two
//! controllers sharing a database never overwrite each other's changes unseen. The typed
//! layers above (identity, images) own the document shapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Serialize, de::DeserializeOwned};

pub use crate::telemetry::{SampleFilter, SampleRow};

pub mod conformance;
pub mod postgres;
pub mod snapshot;
pub mod sqlite;

use snapshot::{SNAPSHOT_TTL, Snapshot, must_block};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An insert collided with an existing id or name.
    #[error("a {kind} with that id or name already exists")]
    Conflict {
        /// The record kind.
        kind: &'static str,
    },
    /// A compare-and-swap update found another version (or no record).
    #[error("the {kind} {id} changed or vanished since it was read")]
    Stale {
        /// The record kind.
        kind: &'static str,
        /// The record id.
        id: String,
    },
    /// The SQLite engine failed.
    #[error("sqlite")]
    Sqlite(#[source] rusqlite::Error),
    /// The PostgreSQL engine failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// A stored document does not parse as the expected type.
    #[error("stored {kind} {id} is malformed")]
    Malformed {
        /// The record kind.
        kind: &'static str,
        /// The record id.
        id: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A schema migration failed.
    #[error("schema migration {0} failed")]
    Migration(u32, #[source] Box<StoreError>),
    /// The database has a schema newer than this program knows.
    #[error("database schema version {0} is newer than this control ({1})")]
    TooNew(u32, u32),
    /// The access would block and the caller asked for cached data only (see
    /// [`snapshot::cached_only`]); never seen outside that mode.
    #[error("the store would block in cached-only mode")]
    WouldBlock,
}

/// The kinds of record control keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Identity domains.
    Domain,
    /// Projects (scope: domain id).
    Project,
    /// Users (scope: domain id).
    User,
    /// Groups (scope: domain id).
    Group,
    /// Roles (global scope).
    Role,
    /// Role assignments (scope: the target `project:<id>` or `domain:<id>`).
    Assignment,
    /// Group memberships (scope: group id).
    Membership,
    /// Catalog services.
    Service,
    /// Catalog endpoints (scope: service id).
    Endpoint,
    /// Catalog regions.
    Region,
    /// Application credentials (scope: user id).
    AppCredential,
    /// Token revocations.
    Revocation,
    /// Images (scope: owner project id).
    Image,
    /// Image members (scope: image id).
    ImageMember,
    /// Settings of the deployment (the bootstrap record).
    Setting,
    /// Compute nodes with their inventory and allocations.
    Node,
    /// Compute flavors.
    ComputeFlavor,
    /// Servers (scope: project id).
    Server,
    /// Keypairs (scope: user id).
    Keypair,
    /// Server groups (scope: project id).
    ServerGroup,
    /// Per-project compute quotas (id: project id).
    Quota,
    /// Neutron networks (scope: project id).
    Network,
    /// Neutron subnets (scope: network id).
    Subnet,
    /// Neutron ports (scope: network id).
    Port,
    /// Neutron routers (scope: project id).
    Router,
    /// Neutron security groups (scope: project id; the `default` group is named).
    SecurityGroup,
    /// Neutron security-group rules (scope: group id).
    SecurityGroupRule,
    /// Neutron floating IPs (scope: project id).
    FloatingIp,
    /// Neutron subnet pools (scope: `""`; a default pool is named `default-ipv4` or
    /// `default-ipv6`, so there is at most one of each).
    SubnetPool,
    /// IP addresses in use (scope: subnet id, name: the address), so that two
    /// controllers never hand out one address twice.
    IpAllocation,
    /// Telemetry events: lifecycle changes (scope: project id).
    Event,
    /// Telemetry alarms (scope: project id).
    Alarm,
    /// Cinder volumes (scope: project id).
    Volume,
    /// Cinder volume snapshots (scope: project id).
    VolumeSnapshot,
    /// Per-project block-storage quotas (id: project id).
    VolumeQuota,
    /// Per-project Neutron quotas that differ from the defaults (id: project id).
    NetworkQuota,
    /// Keystone credentials (scope: user id; `ec2` ones have the SHA-256 of their access
    /// key as id).
    Credential,
    /// Deleted servers as usage reports need them (scope: project id).
    TerminatedServer,
    /// Nova instance actions (scope: server id; id: `<server id>:<request id>`).
    InstanceAction,
    /// Keystone registered limits (name: service, region and resource, so unique).
    RegisteredLimit,
    /// Keystone project limits (scope: project id; name as a registered limit's).
    Limit,
    /// Keystone trusts (scope: the trustor's user id).
    Trust,
    /// Application-credential access rules (scope: user id; name: `service method path`).
    AccessRule,
    /// Glance tasks: image imports (scope: image id).
    ImageTask,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 44] = [
        Kind::Domain,
        Kind::Project,
        Kind::User,
        Kind::Group,
        Kind::Role,
        Kind::Assignment,
        Kind::Membership,
        Kind::Service,
        Kind::Endpoint,
        Kind::Region,
        Kind::AppCredential,
        Kind::Revocation,
        Kind::Image,
        Kind::ImageMember,
        Kind::Setting,
        Kind::Node,
        Kind::ComputeFlavor,
        Kind::Server,
        Kind::Keypair,
        Kind::ServerGroup,
        Kind::Quota,
        Kind::Network,
        Kind::Subnet,
        Kind::Port,
        Kind::Router,
        Kind::SecurityGroup,
        Kind::SecurityGroupRule,
        Kind::FloatingIp,
        Kind::SubnetPool,
        Kind::IpAllocation,
        Kind::Event,
        Kind::Alarm,
        Kind::Volume,
        Kind::VolumeSnapshot,
        Kind::VolumeQuota,
        Kind::NetworkQuota,
        Kind::Credential,
        Kind::TerminatedServer,
        Kind::InstanceAction,
        Kind::RegisteredLimit,
        Kind::Limit,
        Kind::Trust,
        Kind::AccessRule,
        Kind::ImageTask,
    ];

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Project => "project",
            Kind::User => "user",
            Kind::Group => "group",
            Kind::Role => "role",
            Kind::Assignment => "assignment",
            Kind::Membership => "membership",
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
            Kind::Region => "region",
            Kind::AppCredential => "application_credential",
            Kind::Revocation => "revocation",
            Kind::Image => "image",
            Kind::ImageMember => "image_member",
            Kind::Setting => "setting",
            Kind::Node => "node",
            Kind::ComputeFlavor => "flavor",
            Kind::Server => "server",
            Kind::Keypair => "keypair",
            Kind::ServerGroup => "server_group",
            Kind::Quota => "quota",
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::Router => "router",
            Kind::SecurityGroup => "security_group",
            Kind::SecurityGroupRule => "security_group_rule",
            Kind::FloatingIp => "floatingip",
            Kind::SubnetPool => "subnetpool",
            Kind::IpAllocation => "ip_allocation",
            Kind::Event => "event",
            Kind::Alarm => "alarm",
            Kind::Volume => "volume",
            Kind::VolumeSnapshot => "volume_snapshot",
            Kind::VolumeQuota => "volume_quota",
            Kind::NetworkQuota => "network_quota",
            Kind::Credential => "credential",
            Kind::TerminatedServer => "terminated_server",
            Kind::InstanceAction => "instance_action",
            Kind::RegisteredLimit => "registered_limit",
            Kind::Limit => "limit",
            Kind::Trust => "trust",
            Kind::AccessRule => "access_rule",
            Kind::ImageTask => "image_task",
        }
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's kind.
    pub kind: Kind,
    /// Unique within the kind.
    pub id: String,
    /// What it belongs to (`""` for nothing).
    pub scope: String,
    /// Unique within kind and scope when set.
    pub name: Option<String>,
    /// The JSON document.
    pub doc: String,
    /// Incremented by every update; 1 after insert.
    pub version: i64,
}

impl Record {
    /// A new record (version 1) from a serializable document.
    pub fn new<T: Serialize>(
        kind: Kind,
        id: &str,
        scope: &str,
        name: Option<&str>,
        doc: &T,
    ) -> Record {
        Record {
            kind,
            id: id.to_string(),
            scope: scope.to_string(),
            name: name.map(str::to_string),
            doc: serde_json::to_string(doc).expect("documents serialize"),
            version: 1,
        }
    }

    /// The document parsed as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_str(&self.doc).map_err(|source| StoreError::Malformed {
            kind: self.kind.as_str(),
            id: self.id.clone(),
            source,
        })
    }

    /// The same record with a new document (and name), for an update.
    pub fn with_doc<T: Serialize>(&self, name: Option<&str>, doc: &T) -> Record {
        Record {
            name: name.map(str::to_string),
            doc: serde_json::to_string(doc).expect("documents serialize"),
            ..self.clone()
        }
    }
}

/// One write of an atomic batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create a record; fails with [`StoreError::Conflict`] if the id or name is taken.
    Insert(Record),
    /// Replace a record whose stored version is still `record.version`; it becomes
    /// `record.version + 1`. Fails with [`StoreError::Stale`] otherwise.
    Update(Record),
    /// Remove a record if present.
    Delete(Kind, String),
}

/// control's state. Every method is blocking: call from `spawn_blocking` in async code.
pub trait Store: Send + Sync {
    /// The engine's name, for logs.
    fn engine(&self) -> &'static str;
    /// One record by id.
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError>;
    /// One record by scope and name.
    fn get_by_name(
        &self,
        kind: Kind,
        scope: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError>;
    /// Every record of a kind, or of a kind within one scope, ordered by id.
    fn list(&self, kind: Kind, scope: Option<&str>) -> Result<Vec<Record>, StoreError>;
    /// Applies every write or none.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// The schema version in the database.
    fn schema_version(&self) -> Result<u32, StoreError>;
    /// Appends meter rows (time series; see [`crate::telemetry`]) in one transaction.
    fn append_samples(&self, rows: &[SampleRow]) -> Result<(), StoreError>;
    /// Meter rows matching a filter, ordered by time.
    fn query_samples(&self, filter: &SampleFilter) -> Result<Vec<SampleRow>, StoreError>;
    /// Atomically deletes the rows of `granularity` older than `before_ms` and appends
    /// `rows` (a retention pass: raw rows replaced by their aggregates).
    fn replace_samples(
        &self,
        granularity: i64,
        before_ms: i64,
        rows: &[SampleRow],
    ) -> Result<(), StoreError>;

    /// Inserts one record.
    fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.apply(&[Write::Insert(record)])
    }
    /// Compare-and-swap update of one record.
    fn update(&self, record: Record) -> Result<(), StoreError> {
        self.apply(&[Write::Update(record)])
    }
    /// Deletes one record.
    fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        self.apply(&[Write::Delete(kind, id.to_string())])
    }
}

/// A shared store.
pub type SharedStore = Arc<dyn Store>;

/// A store that counts the batches written through it, so caches of derived data (roles,
/// token bodies) know when this controller changed something, and that serves the kinds
/// it is told to from in-memory [`Snapshot`]s (see [`snapshot`]).
pub struct Versioned {
    inner: SharedStore,
    generation: AtomicU64,
    /// Batches that wrote each kind, by position in [`Kind::ALL`].
    kind_generations: Vec<AtomicU64>,
    /// Per kind: `None` if not snapshotted, else the current snapshot if any.
    snapshots: Vec<Option<Mutex<Option<Held>>>>,
}

/// A snapshot with the kind generation it was read at and when.
type Held = (u64, Instant, Arc<Snapshot>);

fn kind_index(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is listed in Kind::ALL")
}

impl Versioned {
    /// Wraps a store.
    pub fn new(inner: SharedStore) -> Versioned {
        Versioned::with_snapshots(inner, &[])
    }

    /// Wraps a store, serving reads of `kinds` from snapshots.
    pub fn with_snapshots(inner: SharedStore, kinds: &[Kind]) -> Versioned {
        Versioned {
            inner,
            generation: AtomicU64::new(0),
            kind_generations: Kind::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            snapshots: Kind::ALL
                .iter()
                .map(|k| kinds.contains(k).then(|| Mutex::new(None)))
                .collect(),
        }
    }

    /// Batches applied so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A number that changes whenever a batch writing any of `kinds` is applied.
    pub fn generation_of(&self, kinds: &[Kind]) -> u64 {
        kinds
            .iter()
            .map(|k| self.kind_generations[kind_index(*k)].load(Ordering::Acquire))
            .sum()
    }

    /// The fresh snapshot of a snapshotted kind (read from the engine if needed), or
    /// `None` for other kinds.
    fn snapshot(&self, kind: Kind) -> Result<Option<Arc<Snapshot>>, StoreError> {
        let i = kind_index(kind);
        let Some(slot) = &self.snapshots[i] else {
            return Ok(None);
        };
        // Held while reading, so concurrent misses wait for one read instead of each
        // reading the whole kind.
        let mut held = slot.lock().expect("snapshot lock");
        let generation = self.kind_generations[i].load(Ordering::Acquire);
        if let Some((g, at, snap)) = held.as_ref()
            && *g == generation
            && at.elapsed() < SNAPSHOT_TTL
        {
            return Ok(Some(snap.clone()));
        }
        if must_block() {
            return Err(StoreError::WouldBlock);
        }
        let snap = Arc::new(Snapshot::build(self.inner.list(kind, None)?));
        *held = Some((generation, Instant::now(), snap.clone()));
        Ok(Some(snap))
    }

    /// Fails fast in cached-only mode.
    fn engine_access(&self) -> Result<&SharedStore, StoreError> {
        if must_block() {
            return Err(StoreError::WouldBlock);
        }
        Ok(&self.inner)
    }
}

impl Store for Versioned {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        match self.snapshot(kind)? {
            Some(s) => Ok(s.get(id).cloned()),
            None => self.engine_access()?.get(kind, id),
        }
    }
    fn get_by_name(
        &self,
        kind: Kind,
        scope: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        match self.snapshot(kind)? {
            Some(s) => Ok(s.get_by_name(scope, name).cloned()),
            None => self.engine_access()?.get_by_name(kind, scope, name),
        }
    }
    fn list(&self, kind: Kind, scope: Option<&str>) -> Result<Vec<Record>, StoreError> {
        match self.snapshot(kind)? {
            Some(s) => Ok(s.list(scope)),
            None => self.engine_access()?.list(kind, scope),
        }
    }
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let r = self.engine_access()?.apply(writes);
        // Bump even on failure: part of a failed batch never lands, but bumping is cheap
        // and keeps the rule simple.
        for w in writes {
            let kind = match w {
                Write::Insert(r) | Write::Update(r) => r.kind,
                Write::Delete(k, _) => *k,
            };
            self.kind_generations[kind_index(kind)].fetch_add(1, Ordering::AcqRel);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        r
    }
    fn schema_version(&self) -> Result<u32, StoreError> {
        self.engine_access()?.schema_version()
    }
    // Meter rows are not records: no generation bump.
    fn append_samples(&self, rows: &[SampleRow]) -> Result<(), StoreError> {
        self.engine_access()?.append_samples(rows)
    }
    fn query_samples(&self, filter: &SampleFilter) -> Result<Vec<SampleRow>, StoreError> {
        self.engine_access()?.query_samples(filter)
    }
    fn replace_samples(
        &self,
        granularity: i64,
        before_ms: i64,
        rows: &[SampleRow],
    ) -> Result<(), StoreError> {
        self.engine_access()?
            .replace_samples(granularity, before_ms, rows)
    }
}

/// The schema, one migration per entry, applied in order at start-up. Both engines take
/// the same SQL; never edit an entry once released, append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: records of every kind.
    "CREATE TABLE records (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        scope TEXT NOT NULL,
        name TEXT,
        doc TEXT NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE UNIQUE INDEX records_by_name ON records (kind, scope, name);
    CREATE INDEX records_by_scope ON records (kind, scope, id);",
    // 2: telemetry meters, append-only time series. `granularity` is 0 for raw samples
    // (count 1, every value = the volume) and the bucket width in seconds for aggregates
    // made by the retention pass; `ts` is milliseconds since the epoch.
    "CREATE TABLE meter_samples (
        meter TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        mtype TEXT NOT NULL,
        unit TEXT NOT NULL,
        granularity BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        n BIGINT NOT NULL,
        vsum DOUBLE PRECISION NOT NULL,
        vmin DOUBLE PRECISION NOT NULL,
        vmax DOUBLE PRECISION NOT NULL,
        vlast DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX meter_samples_by_resource ON meter_samples (meter, resource_id, granularity, ts);
    CREATE INDEX meter_samples_by_project ON meter_samples (project_id, meter, granularity, ts);
    CREATE INDEX meter_samples_by_age ON meter_samples (granularity, ts);",
];

/// The query shared by both engines for [`Store::query_samples`]: parameters are bound
/// in order of first appearance (granularity range, start, end, meter, resource, project,
/// limit).
pub(crate) const SAMPLE_QUERY: &str = "SELECT meter, resource_id, project_id, user_id, mtype, unit,
        granularity, ts, n, vsum, vmin, vmax, vlast FROM meter_samples
    WHERE granularity >= $1 AND granularity <= $2 AND ts >= $3 AND ts < $4
      AND ($5 = '' OR meter = $5) AND ($6 = '' OR resource_id = $6)
      AND ($7 = '' OR project_id = $7)
    ORDER BY ts, resource_id LIMIT $8";

/// The insert shared by both engines.
pub(crate) const SAMPLE_INSERT: &str = "INSERT INTO meter_samples (meter, resource_id,
        project_id, user_id, mtype, unit, granularity, ts, n, vsum, vmin, vmax, vlast)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// The retention delete shared by both engines.
pub(crate) const SAMPLE_PRUNE: &str =
    "DELETE FROM meter_samples WHERE granularity = $1 AND ts < $2";

/// Opens the configured store and brings its schema up to date.
pub fn open(config: &crate::config::StoreConfig) -> Result<SharedStore, StoreError> {
    match config.kind {
        crate::config::StoreKind::Sqlite => Ok(Arc::new(sqlite::SqliteStore::open(
            config.location.as_ref(),
        )?)),
        crate::config::StoreKind::Postgres => {
            Ok(Arc::new(postgres::PostgresStore::open(&config.location)?))
        }
    }
}
