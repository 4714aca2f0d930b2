//! Neutron's subnet pools (`/v2.0/subnetpools`) and the allocation of subnets from them.
//!
//! A pool is a set of prefixes (one IP version, merged as Neutron merges them: overlapping
//! and adjacent prefixes become one) with bounds on the prefix length of the subnets taken
//! from it. A subnet created with `subnetpool_id` (or `use_default_subnetpool`) gets a
//! CIDR from the pool: the one asked for (`cidr`) if it lies in the pool's free space, or
//! the first block of `prefixlen` (the pool's default) found as Neutron finds it (the
//! smallest free block that holds it, the lowest of those). What a pool has handed out is
//! not kept apart: it is the CIDRs of the subnets whose `subnetpool_id` is the pool, so
//! deleting a subnet frees its range.
//!
//! Race-freedom: a subnet taken from a pool is inserted in one batch with a
//! compare-and-swap update of the pool's record (read before the pool's subnets are
//! listed), so of two concurrent allocations from one pool only one lands and the other
//! computes again with the first one's subnet in view. A pool's delete is the same kind of
//! batch (update, then delete), so a subnet cannot be taken from a pool being deleted.
//! Defaults: a default pool's record is named `default-ipv4`/`default-ipv6` in one scope,
//! so the store's unique names keep one default per IP version.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::neutron::{Collection, Create, Delete, Update, name_of, opt_bool, opt_str};
use super::openstack::{get, load, owned, visible};
use crate::identity::Ctx;
use crate::identity::token::now_secs;
use crate::network::all;
use crate::service::{Service, ServiceError};
use crate::store::{Kind, Record, StoreError, Write};

use super::network::SubnetDoc;

/// How often an allocation or a pool change computes again after losing a race.
const ATTEMPTS: usize = 16;

fn se(e: StoreError) -> ApiError {
    ServiceError::from(e).into()
}

// ---------------------------------------------------------------------------------------
// CIDR arithmetic (both IP versions, addresses as u128).

/// A prefix of either IP version, its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (an IPv4 one in the low 32 bits).
    pub addr: u128,
    /// The prefix length.
    pub len: u8,
    /// IPv6.
    pub v6: bool,
}

impl Cidr {
    /// Address bits of its version.
    pub fn bits(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    /// 4 or 6.
    pub fn version(self) -> u8 {
        if self.v6 { 6 } else { 4 }
    }

    fn mask(v6: bool, len: u8) -> u128 {
        let bits = if v6 { 128 } else { 32 };
        let width = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        if len == 0 {
            0
        } else {
            (u128::MAX << (bits - len)) & width
        }
    }

    /// Parses `addr/len`; host bits are cleared (as Neutron does for pool prefixes).
    /// `None` if it is not a prefix.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = s.split_once('/')?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
            return None;
        }
        let len: u8 = len.parse().ok()?;
        let (addr, v6) = match ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        let bits = if v6 { 128 } else { 32 };
        if len > bits {
            return None;
        }
        Some(Cidr {
            addr: addr & Cidr::mask(v6, len),
            len,
            v6,
        })
    }

    /// Whether `other` lies inside this prefix.
    pub fn contains(self, other: Cidr) -> bool {
        self.v6 == other.v6
            && self.len <= other.len
            && other.addr & Cidr::mask(self.v6, self.len) == self.addr
    }

    /// log2 of the number of addresses.
    pub fn host_bits(self) -> u8 {
        self.bits() - self.len
    }

    /// Its two halves (`None` for a single address).
    fn halves(self) -> Option<(Cidr, Cidr)> {
        if self.len >= self.bits() {
            return None;
        }
        let len = self.len + 1;
        let low = Cidr { len, ..self };
        let high = Cidr {
            addr: self.addr | (1u128 << (self.bits() - len)),
            len,
            v6: self.v6,
        };
        Some((low, high))
    }

    /// The prefix one bit shorter that holds it.
    fn parent(self) -> Option<Cidr> {
        let len = self.len.checked_sub(1)?;
        Some(Cidr {
            addr: self.addr & Cidr::mask(self.v6, len),
            len,
            v6: self.v6,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len)
        } else {
            // The low 32 bits hold the address.
            let a = u32::try_from(self.addr).unwrap_or(u32::MAX);
            write!(f, "{}/{}", Ipv4Addr::from(a), self.len)
        }
    }
}

/// The smallest list of prefixes covering the same addresses (Neutron's `cidr_merge`):
/// prefixes inside others dropped, pairs of halves joined, sorted.
pub fn merge(list: &[Cidr]) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = list.to_vec();
    loop {
        v.sort_by_key(|c| (c.v6, c.addr, c.len));
        let mut out: Vec<Cidr> = vec![];
        for c in v.iter().copied() {
            if out.last().is_some_and(|l| l.contains(c)) {
                continue;
            }
            out.push(c);
        }
        let mut joined = false;
        let mut merged: Vec<Cidr> = vec![];
        let mut i = 0;
        while i < out.len() {
            if let (Some(a), Some(b)) = (out.get(i), out.get(i + 1))
                && a.len == b.len
                && let Some(p) = a.parent()
                && p.halves() == Some((*a, *b))
            {
                merged.push(p);
                joined = true;
                i += 2;
                continue;
            }
            merged.push(out[i]);
            i += 1;
        }
        if !joined {
            return merged;
        }
        v = merged;
    }
}

/// The free space of `prefixes` once `used` is taken out, as prefixes in address order.
pub fn free_blocks(prefixes: &[Cidr], used: &[Cidr]) -> Vec<Cidr> {
    fn walk(p: Cidr, used: &[Cidr], out: &mut Vec<Cidr>) {
        if used.iter().any(|u| u.contains(p)) {
            return;
        }
        if !used.iter().any(|u| p.contains(*u)) {
            out.push(p);
            return;
        }
        if let Some((a, b)) = p.halves() {
            walk(a, used, out);
            walk(b, used, out);
        }
    }
    let mut out = vec![];
    for p in merge(prefixes) {
        walk(p, used, &mut out);
    }
    out
}

/// A free prefix of length `len`, chosen as Neutron chooses it: the first prefix of the
/// smallest free block that can hold one (the lowest such block when several are as
/// small), so large blocks stay whole. `None` when there is no room.
pub fn allocate_any(prefixes: &[Cidr], used: &[Cidr], len: u8) -> Option<Cidr> {
    free_blocks(prefixes, used)
        .into_iter()
        .filter(|b| b.len <= len && len <= b.bits())
        .min_by_key(|b| (std::cmp::Reverse(b.len), b.addr))
        .map(|b| Cidr { len, ..b })
}

/// Whether `want` lies wholly in the free space.
pub fn is_free(prefixes: &[Cidr], used: &[Cidr], want: Cidr) -> bool {
    free_blocks(prefixes, used).iter().any(|b| b.contains(want))
}

/// Neutron's quota units of a prefix: addresses for IPv4, /64s for IPv6.
fn quota_units(c: Cidr) -> u128 {
    let shift = if c.v6 {
        64u8.saturating_sub(c.len)
    } else {
        c.host_bits()
    };
    1u128.checked_shl(u32::from(shift)).unwrap_or(u128::MAX)
}

// ---------------------------------------------------------------------------------------
// The resource.

/// A subnet pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetPoolDoc {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owner.
    pub project_id: String,
    /// Its prefixes, merged.
    pub prefixes: Vec<String>,
    /// 4 or 6.
    pub ip_version: u8,
    /// The prefix length of a subnet that asks for none.
    pub default_prefixlen: u8,
    /// The shortest prefix a subnet may have.
    pub min_prefixlen: u8,
    /// The longest prefix a subnet may have.
    pub max_prefixlen: u8,
    /// Every project may take subnets from it.
    pub shared: bool,
    /// The pool of `use_default_subnetpool` for its IP version.
    pub is_default: bool,
    /// Per-project limit on what subnets from it may hold (addresses for IPv4, /64s for
    /// IPv6).
    pub default_quota: Option<u64>,
    /// Bumped by every update.
    pub revision: u64,
    /// Epoch seconds.
    pub created: u64,
    /// Epoch seconds.
    pub updated: u64,
}

impl SubnetPoolDoc {
    fn cidrs(&self) -> Vec<Cidr> {
        self.prefixes
            .iter()
            .filter_map(|p| Cidr::parse(p))
            .collect()
    }
}

owned!(
    /// Subnet pools: their project's, and every project's when shared.
    pub(super) Pool: Kind::SubnetPool, "Subnet pool", SubnetPoolDoc;

    fn sees(ctx: &Ctx, d: &SubnetPoolDoc) -> bool {
        d.shared || visible(ctx, &d.project_id)
    }
);

impl Collection for Pool {
    const KEY: &'static str = "subnetpool";
    const PATH: &'static str = "subnetpools";
    const LIST: &'static str = "subnetpools";
    const CREATE: Create = create_pool;
    const UPDATE: Option<Update<SubnetPoolDoc>> = Some(update_pool);
    const DELETE: Delete<SubnetPoolDoc> = delete_pool;

    fn view(_svc: &Service, id: &str, d: &SubnetPoolDoc) -> Result<Value, ApiError> {
        Ok(view(id, d))
    }
}

fn view(id: &str, d: &SubnetPoolDoc) -> Value {
    json!({"id": id, "name": d.name, "description": d.description,
        "tenant_id": d.project_id, "project_id": d.project_id, "prefixes": d.prefixes,
        "ip_version": d.ip_version, "default_prefixlen": d.default_prefixlen,
        "min_prefixlen": d.min_prefixlen, "max_prefixlen": d.max_prefixlen,
        "shared": d.shared, "is_default": d.is_default, "default_quota": d.default_quota,
        "address_scope_id": null, "tags": [], "revision_number": d.revision,
        "created_at": crate::time::keystone(d.created),
        "updated_at": crate::time::keystone(d.updated)})
}

/// The store name of a default pool (unique: one default per IP version).
fn default_name(d: &SubnetPoolDoc) -> Option<String> {
    d.is_default.then(|| format!("default-ipv{}", d.ip_version))
}

fn policy(rule: &str) -> ApiError {
    ApiError::forbidden(format!("(rule:{rule}) is disallowed by policy"))
        .kind("PolicyNotAuthorized")
}

fn default_exists() -> ApiError {
    ApiError::bad_request(
        "Invalid input for operation: A default subnetpool for this IP family has already been set. Only one default may exist per IP family.",
    )
    .kind("InvalidInput")
}

/// An optional non-negative integer field (Neutron's `convert_to_int` and
/// `non_negative`).
fn opt_uint(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    let v = match o.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let n: Option<i128> = match v {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let bad = |why: String| {
        ApiError::bad_request(format!("Invalid input for {key}. Reason: {why}"))
            .kind("HTTPBadRequest")
    };
    match n {
        None => Err(bad(format!("'{}' is not an integer.", show(v)))),
        Some(n) if n < 0 => Err(bad(format!("'{n}' should be non-negative."))),
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| bad(format!("'{n}' is too large."))),
    }
}

fn show(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// The `prefixes` of a body, checked and merged: `(prefixes, ip version)`.
fn prefixes_field(v: &Value) -> Result<Vec<Cidr>, ApiError> {
    let list = v.as_array().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for prefixes. Reason: '{}' is not a list.",
            show(v)
        ))
        .kind("HTTPBadRequest")
    })?;
    if list.is_empty() {
        return Err(ApiError::bad_request("Empty subnet pool prefix list.")
            .kind("EmptySubnetPoolPrefixList"));
    }
    let mut out = vec![];
    for p in list {
        let c = p.as_str().and_then(Cidr::parse).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for prefixes. Reason: '{}' is not a valid IP subnet.",
                show(p)
            ))
            .kind("HTTPBadRequest")
        })?;
        if out.first().is_some_and(|f: &Cidr| f.v6 != c.v6) {
            return Err(ApiError::bad_request(
                "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
            )
            .kind("PrefixVersionMismatch"));
        }
        out.push(c);
    }
    Ok(merge(&out))
}

/// Neutron's checks of the prefix bounds of a pool of IP version `v`.
fn check_bounds(v: u8, min: u64, default: u64, max: u64) -> Result<(), ApiError> {
    let bits: u64 = if v == 6 { 128 } else { 32 };
    let bounds = |t: &str, n: u64, bt: &str, bn: u64| {
        ApiError::bad_request(format!("Illegal prefix bounds: {t}={n}, {bt}={bn}."))
            .kind("IllegalSubnetPoolPrefixBounds")
    };
    if min > max {
        return Err(bounds("min_prefixlen", min, "max_prefixlen", max));
    }
    if max > bits {
        return Err(bounds("max_prefixlen", max, "ip_version_max", bits));
    }
    if default < min {
        return Err(bounds("default_prefixlen", default, "min_prefixlen", min));
    }
    if default > max {
        return Err(bounds("default_prefixlen", default, "max_prefixlen", max));
    }
    Ok(())
}

fn create_pool(svc: &Service, ctx: &Ctx, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let own = ctx.project_id.clone().unwrap_or_default();
    let project = match opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?) {
        Some(p) if p != own && !ctx.is_admin() => {
            return Err(policy("create_subnetpool"));
        }
        Some(p) => p,
        None => own,
    };
    let prefixes = prefixes_field(o.get("prefixes").unwrap_or(&Value::Null))?;
    let v6 = prefixes.first().is_some_and(|c| c.v6);
    let ip_version = if v6 { 6 } else { 4 };
    let bits: u64 = if v6 { 128 } else { 32 };
    let min = opt_uint(o, "min_prefixlen")?.unwrap_or(if v6 { 64 } else { 8 });
    let max = opt_uint(o, "max_prefixlen")?.unwrap_or(bits);
    let default = opt_uint(o, "default_prefixlen")?.unwrap_or(min);
    check_bounds(ip_version, min, default, max)?;
    let shared = opt_bool(o, "shared")?.unwrap_or(false);
    let is_default = opt_bool(o, "is_default")?.unwrap_or(false);
    if shared && !ctx.is_admin() {
        return Err(policy("create_subnetpool:shared"));
    }
    if is_default && !ctx.is_admin() {
        return Err(policy("create_subnetpool:is_default"));
    }
    if o.get("address_scope_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "Invalid input for address_scope_id. Reason: address scopes are not supported.",
        )
        .kind("HTTPBadRequest"));
    }
    let now = now_secs();
    let doc = SubnetPoolDoc {
        name: name_of(o)?.unwrap_or_default(),
        description: opt_str(o, "description")?.unwrap_or_default(),
        project_id: project,
        prefixes: prefixes.iter().map(Cidr::to_string).collect(),
        ip_version,
        // All three are at most 128 (checked above).
        default_prefixlen: default as u8,
        min_prefixlen: min as u8,
        max_prefixlen: max as u8,
        shared,
        is_default,
        default_quota: opt_uint(o, "default_quota")?,
        revision: 1,
        created: now,
        updated: now,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let rec = Record::new(
        Kind::SubnetPool,
        &id,
        "",
        default_name(&doc).as_deref(),
        &doc,
    );
    match svc.store.insert(rec) {
        Ok(()) => Ok(view(&id, &doc)),
        Err(StoreError::Conflict { .. }) => Err(default_exists()),
        Err(e) => Err(se(e)),
    }
}

fn update_pool(
    svc: &Service,
    ctx: &Ctx,
    id: &str,
    _r: Record,
    d: SubnetPoolDoc,
    o: &Map<String, Value>,
) -> Result<Value, ApiError> {
    if !visible(ctx, &d.project_id) {
        return Err(policy("update_subnetpool"));
    }
    for key in ["ip_version", "shared", "project_id", "tenant_id"] {
        if o.contains_key(key) {
            return Err(
                ApiError::bad_request(format!("Cannot update read-only attribute {key}"))
                    .kind("HTTPBadRequest"),
            );
        }
    }
    if o.contains_key("is_default") && !ctx.is_admin() {
        return Err(policy("update_subnetpool:is_default"));
    }
    if o.get("address_scope_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "Invalid input for address_scope_id. Reason: address scopes are not supported.",
        )
        .kind("HTTPBadRequest"));
    }
    let name = name_of(o)?;
    let description = opt_str(o, "description")?;
    let prefixes = o.get("prefixes").map(prefixes_field).transpose()?;
    let min = opt_uint(o, "min_prefixlen")?;
    let max = opt_uint(o, "max_prefixlen")?;
    let default = opt_uint(o, "default_prefixlen")?;
    let is_default = opt_bool(o, "is_default")?;
    let quota = match o.get("default_quota") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => Some(opt_uint(o, "default_quota")?),
    };
    for _ in 0..ATTEMPTS {
        let (r, mut d) = get::<Pool>(svc, id)?;
        if let Some(n) = &name {
            d.name.clone_from(n);
        }
        if let Some(v) = &description {
            d.description.clone_from(v);
        }
        if let Some(new) = &prefixes {
            if new.iter().any(|c| c.version() != d.ip_version) {
                return Err(ApiError::bad_request(
                    "Cannot mix IPv4 and IPv6 prefixes in a subnet pool.",
                )
                .kind("PrefixVersionMismatch"));
            }
            // Every address of the pool must stay in it.
            if !free_blocks(&d.cidrs(), new).is_empty() {
                return Err(ApiError::bad_request(
                    "Illegal update to prefixes: Existing prefixes must be a subset of the new prefixes.",
                )
                .kind("IllegalSubnetPoolPrefixUpdate"));
            }
            d.prefixes = new.iter().map(Cidr::to_string).collect();
        }
        let min = min.unwrap_or(u64::from(d.min_prefixlen));
        let max = max.unwrap_or(u64::from(d.max_prefixlen));
        let default = default.unwrap_or(u64::from(d.default_prefixlen));
        check_bounds(d.ip_version, min, default, max)?;
        // At most 128 (checked).
        (d.min_prefixlen, d.max_prefixlen, d.default_prefixlen) =
            (min as u8, max as u8, default as u8);
        if let Some(b) = is_default {
            d.is_default = b;
        }
        if let Some(q) = quota {
            d.default_quota = q;
        }
        d.revision += 1;
        d.updated = now_secs();
        match svc
            .store
            .update(r.with_doc(default_name(&d).as_deref(), &d))
        {
            Ok(()) => return Ok(view(id, &d)),
            Err(StoreError::Conflict { .. }) => return Err(default_exists()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(format!(
        "Subnet pool {id} is changing too often; try again"
    )))
}

fn delete_pool(svc: &Service, ctx: &Ctx, id: &str, d: SubnetPoolDoc) -> Result<(), ApiError> {
    if !visible(ctx, &d.project_id) {
        return Err(policy("delete_subnetpool"));
    }
    for _ in 0..ATTEMPTS {
        let Some(r) = svc.store.get(Kind::SubnetPool, id).map_err(se)? else {
            return Ok(());
        };
        if !allocated(svc, id)?.is_empty() {
            return Err(ApiError::bad_request(
                "Unable to delete subnet pool: Subnet pool has existing allocations.",
            )
            .kind("SubnetPoolDeleteError"));
        }
        // The update fails if an allocation landed since the pool was read.
        let writes = [
            Write::Update(r.clone()),
            Write::Delete(Kind::SubnetPool, id.to_string()),
        ];
        match svc.store.apply(&writes) {
            Ok(()) => return Ok(()),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(se(e)),
        }
    }
    Err(ApiError::conflict(format!(
        "Subnet pool {id} is changing too often; try again"
    )))
}

/// The subnets taken from pool `id`.
fn allocated(svc: &Service, id: &str) -> Result<Vec<SubnetDoc>, ApiError> {
    Ok(all::<SubnetDoc>(&*svc.store, Kind::Subnet, None)
        .map_err(se)?
        .into_iter()
        .filter(|(_, s)| s.subnetpool_id.as_deref() == Some(id))
        .map(|(_, s)| s)
        .collect())
}

// ---------------------------------------------------------------------------------------
// Subnets from pools.

fn bad_subnet(msg: &str) -> ApiError {
    ApiError::bad_request(format!("Bad subnets request: {msg}.")).kind("BadRequest")
}

/// The pool a subnet create asks for (`subnetpool_id`, or the default pool of its IP
/// version with `use_default_subnetpool`), if any; 404 for one the caller may not see.
pub(super) fn requested(
    svc: &Service,
    ctx: &Ctx,
    n: &Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    let pool = opt_str(n, "subnetpool_id")?;
    let use_default = opt_bool(n, "use_default_subnetpool")?.unwrap_or(false);
    if use_default && pool.is_some() {
        return Err(bad_subnet(
            "subnetpool_id and use_default_subnetpool cannot both be specified",
        ));
    }
    if let Some(id) = pool {
        load::<Pool>(svc, ctx, &id)?;
        return Ok(Some(id));
    }
    if !use_default {
        return Ok(None);
    }
    let version = match opt_str(n, "cidr")? {
        Some(c) => Cidr::parse(&c).map(Cidr::version).unwrap_or(4),
        None => match n.get("ip_version").and_then(Value::as_u64) {
            Some(v) => v as u8,
            None => {
                return Err(bad_subnet(
                    "ip_version must be specified in the absence of cidr and subnetpool_id",
                ));
            }
        },
    };
    let name = format!("default-ipv{version}");
    match svc
        .store
        .get_by_name(Kind::SubnetPool, "", &name)
        .map_err(se)?
    {
        Some(r) => {
            let d: SubnetPoolDoc = r.parse().map_err(se)?;
            if <Pool as super::openstack::Owned>::sees(ctx, &d) {
                return Ok(Some(r.id));
            }
            Err(bad_subnet(&format!(
                "No default subnetpool found for IPv{version}"
            )))
        }
        None => Err(bad_subnet(&format!(
            "No default subnetpool found for IPv{version}"
        ))),
    }
}

/// A CIDR for a new subnet of `project` from pool `pool_id`: the body's `cidr` if it is
/// free in the pool, else one of its `prefixlen` (the pool's default); with the write
/// that must go in the subnet's batch (the compare-and-swap of the pool's record, read
/// here before the pool's subnets are).
pub(super) fn allocate(
    svc: &Service,
    pool_id: &str,
    project: &str,
    n: &Map<String, Value>,
) -> Result<(String, Write), ApiError> {
    let (rec, pool) = get::<Pool>(svc, pool_id)?;
    if let Some(v) = n.get("ip_version").and_then(Value::as_u64)
        && v != u64::from(pool.ip_version)
    {
        return Err(bad_subnet(&format!(
            "Cannot allocate IPv{v} subnet from IPv{} subnet pool",
            pool.ip_version
        )));
    }
    if pool.ip_version != 4 {
        return Err(ApiError::bad_request("only IPv4 subnets are supported"));
    }
    let cidr = opt_str(n, "cidr")?;
    let prefixlen = opt_uint(n, "prefixlen")?;
    if cidr.is_some() && prefixlen.is_some() {
        return Err(bad_subnet(
            "cidr and prefixlen must not be supplied together",
        ));
    }
    let want = match &cidr {
        Some(c) => {
            let (base, len) = super::network::parse_cidr(c)?;
            Some(Cidr {
                addr: u128::from(u32::from(base)),
                len,
                v6: false,
            })
        }
        None => None,
    };
    let len = match (want, prefixlen) {
        (Some(w), _) => u64::from(w.len),
        (None, Some(l)) => l,
        (None, None) => u64::from(pool.default_prefixlen),
    };
    if len > u64::from(pool.max_prefixlen) {
        return Err(ApiError::bad_request(format!(
            "Unable to allocate subnet with prefix length {len}, maximum allowed prefix is {}.",
            pool.max_prefixlen
        ))
        .kind("MaxPrefixSubnetAllocationError"));
    }
    if len < u64::from(pool.min_prefixlen) {
        return Err(ApiError::bad_request(format!(
            "Unable to allocate subnet with prefix length {len}, minimum allowed prefix is {}.",
            pool.min_prefixlen
        ))
        .kind("MinPrefixSubnetAllocationError"));
    }
    // At most max_prefixlen, so at most 128.
    let len = len as u8;
    let taken = allocated(svc, pool_id)?;
    let used: Vec<Cidr> = taken.iter().filter_map(|s| Cidr::parse(&s.cidr)).collect();
    if let Some(q) = pool.default_quota {
        let mine: u128 = taken
            .iter()
            .filter(|s| s.project_id == project)
            .filter_map(|s| Cidr::parse(&s.cidr))
            .map(quota_units)
            .sum();
        let new = quota_units(Cidr {
            addr: 0,
            len,
            v6: false,
        });
        if mine.saturating_add(new) > u128::from(q) {
            return Err(
                ApiError::conflict("Per-tenant subnet pool prefix quota exceeded.")
                    .kind("SubnetPoolQuotaExceeded"),
            );
        }
    }
    let prefixes = pool.cidrs();
    let got = match want {
        Some(w) => is_free(&prefixes, &used, w).then_some(w).ok_or_else(|| {
            allocation_error("Cannot allocate requested subnet from the available set of prefixes")
        })?,
        None => allocate_any(&prefixes, &used, len).ok_or_else(|| {
            allocation_error(&format!(
                "Insufficient prefix space to allocate subnet size /{len}"
            ))
        })?,
    };
    Ok((got.to_string(), Write::Update(rec)))
}

/// Neutron's `SubnetAllocationError` (which Neutron itself answers with a 500; a 409
/// here: the request conflicts with what the pool has left).
fn allocation_error(reason: &str) -> ApiError {
    ApiError::conflict(format!("Failed to allocate subnet: {reason}."))
        .kind("SubnetAllocationError")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn cs(l: &[&str]) -> Vec<Cidr> {
        l.iter().map(|s| c(s)).collect()
    }

    fn strs(l: &[Cidr]) -> Vec<String> {
        l.iter().map(Cidr::to_string).collect()
    }

    #[test]
    fn parse_clears_host_bits_and_refuses_what_is_no_prefix() {
        assert_eq!(c("10.10.0.5/16").to_string(), "10.10.0.0/16");
        assert_eq!(c("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.300/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0.0/+8",
            " 10.0.0.0/8",
            "x/8",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn merge_joins_halves_and_drops_prefixes_inside_others() {
        assert_eq!(
            strs(&merge(&cs(&[
                "10.0.1.0/24",
                "10.0.0.0/24",
                "10.0.0.128/25"
            ]))),
            ["10.0.0.0/23"]
        );
        assert_eq!(
            strs(&merge(&cs(&[
                "10.10.0.0/16",
                "10.10.5.0/24",
                "192.168.0.0/24"
            ]))),
            ["10.10.0.0/16", "192.168.0.0/24"]
        );
        // Not halves of one parent: kept apart.
        assert_eq!(
            strs(&merge(&cs(&["10.0.1.0/24", "10.0.2.0/24"]))),
            ["10.0.1.0/24", "10.0.2.0/24"]
        );
    }

    #[test]
    fn allocation_is_first_fit_aligned_and_prefers_the_smallest_free_block() {
        let pool = cs(&["10.10.0.0/16"]);
        let mut used = vec![];
        for want in ["10.10.0.0/24", "10.10.1.0/24"] {
            let got = allocate_any(&pool, &used, 24).unwrap();
            assert_eq!(got.to_string(), want);
            used.push(got);
        }
        // A /26 goes to the start of the next free aligned block.
        let got = allocate_any(&pool, &used, 26).unwrap();
        assert_eq!(got.to_string(), "10.10.2.0/26");
        used.push(got);
        // A /24 is aligned on a /24 boundary: not 10.10.2.64.
        let got = allocate_any(&pool, &used, 24).unwrap();
        assert_eq!(got.to_string(), "10.10.3.0/24");
        used.push(got);
        // A further /26 fills the hole left in 10.10.2.0/24 rather than breaking up a
        // larger block (Neutron's choice).
        assert_eq!(
            allocate_any(&pool, &used, 26).unwrap().to_string(),
            "10.10.2.64/26"
        );
        // Freeing a range makes it the first choice again.
        used.remove(0);
        assert_eq!(
            allocate_any(&pool, &used, 24).unwrap().to_string(),
            "10.10.0.0/24"
        );
        // A block larger than the pool never fits.
        assert_eq!(allocate_any(&pool, &[], 15), None);
    }

    #[test]
    fn allocation_runs_out_and_spans_several_prefixes() {
        let pool = cs(&["10.0.0.0/25", "10.9.0.0/26"]);
        let mut used = vec![];
        let mut got = vec![];
        while let Some(n) = allocate_any(&pool, &used, 26) {
            used.push(n);
            got.push(n.to_string());
        }
        // The smallest block (the /26 prefix) first, then the /25's halves.
        assert_eq!(got, ["10.9.0.0/26", "10.0.0.0/26", "10.0.0.64/26"]);
        assert_eq!(allocate_any(&pool, &used, 28), None);
        assert_eq!(allocate_any(&pool, &used, 26), None);
    }

    #[test]
    fn a_specific_prefix_must_lie_in_free_space() {
        let pool = cs(&["10.10.0.0/16"]);
        let used = cs(&["10.10.0.0/24"]);
        assert!(is_free(&pool, &used, c("10.10.1.0/24")));
        assert!(!is_free(&pool, &used, c("10.10.0.0/16")));
        assert!(!is_free(&pool, &used, c("10.10.0.128/25")));
        assert!(!is_free(&pool, &used, c("10.11.0.0/24")));
        assert!(!is_free(&pool, &used, c("10.0.0.0/8")));
    }

    #[test]
    fn ipv6_pools_allocate_the_same_way() {
        let pool = cs(&["2001:db8::/48"]);
        let a = allocate_any(&pool, &[], 64).unwrap();
        assert_eq!(a.to_string(), "2001:db8::/64");
        let b = allocate_any(&pool, &[a], 64).unwrap();
        assert_eq!(b.to_string(), "2001:db8:0:1::/64");
        let big = allocate_any(&pool, &[a, b], 56).unwrap();
        assert_eq!(big.to_string(), "2001:db8:0:100::/56");
        // An IPv4 prefix never matches an IPv6 one.
        assert!(!is_free(&pool, &[], c("10.0.0.0/8")));
        assert_eq!(quota_units(c("2001:db8::/56")), 256);
        assert_eq!(quota_units(c("10.0.0.0/24")), 256);
        // A whole /0 of IPv6 is 2^128 addresses: no overflow.
        assert_eq!(
            allocate_any(&cs(&["::/0"]), &[], 128).unwrap().to_string(),
            "::/128"
        );
    }

    #[test]
    fn bounds_are_checked_as_neutron_checks_them() {
        assert!(check_bounds(4, 8, 24, 32).is_ok());
        let msg = |r: Result<(), ApiError>| r.unwrap_err().message;
        assert_eq!(
            msg(check_bounds(4, 25, 24, 24)),
            "Illegal prefix bounds: min_prefixlen=25, max_prefixlen=24."
        );
        assert_eq!(
            msg(check_bounds(4, 8, 24, 33)),
            "Illegal prefix bounds: max_prefixlen=33, ip_version_max=32."
        );
        assert_eq!(
            msg(check_bounds(4, 16, 8, 32)),
            "Illegal prefix bounds: default_prefixlen=8, min_prefixlen=16."
        );
        assert!(check_bounds(6, 64, 64, 128).is_ok());
    }
}
