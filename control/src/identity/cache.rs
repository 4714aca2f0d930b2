//! A short-lived cache of what validating or issuing a token derives from the store: the
//! caller's domain, scope and effective roles (also per user and target, which a project
//! with many members would otherwise scan for on every token issued), and the token body
//! without its per-token fields.
//! An entry is used only while the store's write generation is unchanged (any local
//! write clears it) and for at most [`CACHE_TTL`] (writes by other controllers sharing
//! the store are seen within that time). Revocations are never cached: they are checked
//! on every request before the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an entry may be used without a local write.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

/// What a scope resolves to for a user.
#[derive(Debug, Clone)]
pub struct ScopeInfo {
    /// The user's domain.
    pub user_domain_id: String,
    /// Project scope.
    pub project_id: Option<String>,
    /// Domain scope.
    pub domain_id: Option<String>,
    /// Effective roles.
    pub roles: Vec<(String, String)>,
}

type Bodies = HashMap<(String, bool), (u64, Instant, Arc<str>)>;
type Roles = HashMap<String, (u64, Instant, Vec<(String, String)>)>;

/// The cache.
#[derive(Debug, Default)]
pub struct IdentityCache {
    scopes: Mutex<HashMap<String, (u64, Instant, ScopeInfo)>>,
    bodies: Mutex<Bodies>,
    roles: Mutex<Roles>,
}

fn fresh(entry_gen: u64, at: Instant, generation: u64) -> bool {
    entry_gen == generation && at.elapsed() < CACHE_TTL
}

impl IdentityCache {
    /// A cached scope, if still valid at `generation`.
    pub fn scope(&self, key: &str, generation: u64) -> Option<ScopeInfo> {
        let map = self.scopes.lock().expect("cache");
        map.get(key)
            .filter(|(g, at, _)| fresh(*g, *at, generation))
            .map(|(_, _, s)| s.clone())
    }

    /// Remembers a scope computed at `generation`.
    pub fn put_scope(&self, key: String, generation: u64, info: ScopeInfo) {
        let mut map = self.scopes.lock().expect("cache");
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (g, at, _)| fresh(*g, *at, generation));
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (generation, Instant::now(), info));
    }

    /// A user's cached effective roles on a target (`user|type:id`), if still valid.
    pub fn roles(&self, key: &str, generation: u64) -> Option<Vec<(String, String)>> {
        let map = self.roles.lock().expect("cache");
        map.get(key)
            .filter(|(g, at, _)| fresh(*g, *at, generation))
            .map(|(_, _, r)| r.clone())
    }

    /// Remembers effective roles computed at `generation`.
    pub fn put_roles(&self, key: String, generation: u64, roles: Vec<(String, String)>) {
        let mut map = self.roles.lock().expect("cache");
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (g, at, _)| fresh(*g, *at, generation));
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (generation, Instant::now(), roles));
    }

    /// A cached token body template (the token object's fields other than methods, audit
    /// ids and times, as JSON text without the braces).
    pub fn body(&self, key: &str, catalog: bool, generation: u64) -> Option<Arc<str>> {
        let map = self.bodies.lock().expect("cache");
        map.get(&(key.to_string(), catalog))
            .filter(|(g, at, _)| fresh(*g, *at, generation))
            .map(|(_, _, v)| v.clone())
    }

    /// Remembers a token body template.
    pub fn put_body(&self, key: String, catalog: bool, generation: u64, body: Arc<str>) {
        let mut map = self.bodies.lock().expect("cache");
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert((key, catalog), (generation, Instant::now(), body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_die_with_a_new_generation() {
        let c = IdentityCache::default();
        let info = ScopeInfo {
            user_domain_id: "d".into(),
            project_id: Some("p".into()),
            domain_id: None,
            roles: vec![("r".into(), "reader".into())],
        };
        c.put_scope("k".into(), 5, info);
        assert!(c.scope("k", 5).is_some());
        assert!(c.scope("k", 6).is_none(), "a write invalidates");
        assert!(c.scope("other", 5).is_none());
        c.put_body("k".into(), true, 5, "\"a\":1".into());
        assert_eq!(&*c.body("k", true, 5).unwrap(), "\"a\":1");
        assert!(c.body("k", false, 5).is_none());
        assert!(c.body("k", true, 7).is_none());
    }
}
