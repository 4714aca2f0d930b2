//! Container ACLs (`X-Container-Read`, `X-Container-Write`), as Swift's TempAuth and
//! keystoneauth read them.
//!
//! An ACL is a comma-separated list. In a read ACL, `.r:<host>` elements grant anonymous
//! reads by `Referer` (`.r:*` anyone, `.r:.example.com` a domain, `.r:-host` takes a grant
//! back; the last element that matches decides), and `.rlistings` lets such readers list
//! the container too. Every other element names a group of authenticated users: a TempAuth
//! account (`test`), user (`test:tester`) or storage account (`AUTH_test`), or for Keystone
//! tokens `<project id>:*` and `*:*`. Referrers are refused in write ACLs.

use super::super::ApiError;

/// Who sent a request that is not its target account's own.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The group names the requester's token carries; empty when anonymous.
    pub groups: Vec<String>,
    /// The request's `Referer`, if any.
    pub referer: Option<String>,
}

impl Requester {
    /// Whether the request carried a valid token.
    pub fn authenticated(&self) -> bool {
        !self.groups.is_empty()
    }
}

/// The groups of a TempAuth user `account:user` owning the storage account `storage`.
pub fn tempauth_groups(storage: &str, user: &str) -> Vec<String> {
    let account = user.split_once(':').map_or(user, |(a, _)| a);
    vec![storage.to_owned(), account.to_owned(), user.to_owned()]
}

/// The groups of a Keystone token scoped to the project owning `storage` (`AUTH_<id>`).
pub fn keystone_groups(storage: &str) -> Vec<String> {
    let project = storage.strip_prefix("AUTH_").unwrap_or(storage);
    vec![storage.to_owned(), format!("{project}:*"), "*:*".to_owned()]
}

/// A parsed ACL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Referrer elements in order: (grant or take back, host pattern).
    referrers: Vec<(bool, String)>,
    /// Group names.
    groups: Vec<String>,
    /// `.rlistings` was given.
    listings: bool,
}

/// Why an ACL header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A referrer element with nothing after the colon.
    #[error("no host given in referrer element {0:?}")]
    EmptyReferrer(String),
    /// A referrer or `.rlistings` in a write ACL.
    #[error("referrers are not allowed in write ACLs: {0:?}")]
    ReferrerInWrite(String),
    /// An element starting with `.` that is not a known designation.
    #[error("unknown designator in ACL element {0:?}")]
    UnknownDesignator(String),
}

impl From<AclError> for ApiError {
    fn from(e: AclError) -> ApiError {
        ApiError::bad_request("InvalidAcl", e.to_string())
    }
}

const REFERRER_PREFIXES: [&str; 4] = [".r:", ".ref:", ".referer:", ".referrer:"];

impl Acl {
    /// Parses an ACL header value; `write` for `X-Container-Write`.
    pub fn parse(value: &str, write: bool) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if e == ".rlistings" {
                if write {
                    return Err(AclError::ReferrerInWrite(e.to_owned()));
                }
                acl.listings = true;
                continue;
            }
            if let Some(host) = REFERRER_PREFIXES.iter().find_map(|p| e.strip_prefix(p)) {
                if write {
                    return Err(AclError::ReferrerInWrite(e.to_owned()));
                }
                let (allow, host) = match host.strip_prefix('-') {
                    Some(h) => (false, h),
                    None => (true, host),
                };
                if host.is_empty() {
                    return Err(AclError::EmptyReferrer(e.to_owned()));
                }
                acl.referrers.push((allow, host.to_ascii_lowercase()));
                continue;
            }
            if e.starts_with('.') {
                return Err(AclError::UnknownDesignator(e.to_owned()));
            }
            acl.groups.push(e.to_owned());
        }
        Ok(acl)
    }

    /// Parses a stored ACL; a malformed one (it was validated when set) grants nothing.
    pub fn stored(value: Option<&String>, write: bool) -> Acl {
        value
            .and_then(|v| Acl::parse(v, write).ok())
            .unwrap_or_default()
    }

    /// Whether one of `groups` is named.
    pub fn names_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether a request with this `Referer` is granted by the referrer elements.
    pub fn referrer_allowed(&self, referer: Option<&str>) -> bool {
        let host = referer
            .map(|r| {
                let r = r.split_once("//").map_or(r, |(_, rest)| rest);
                let r = r.split('/').next().unwrap_or("");
                let r = r.rsplit_once('@').map_or(r, |(_, h)| h);
                r.split(':').next().unwrap_or("").to_ascii_lowercase()
            })
            .unwrap_or_default();
        let mut allowed = false;
        for (allow, pattern) in &self.referrers {
            let matches = pattern == "*"
                || *pattern == host
                || (pattern.starts_with('.')
                    && !host.is_empty()
                    && host.ends_with(pattern.as_str()));
            if matches {
                allowed = *allow;
            }
        }
        allowed
    }

    /// Whether `who` may read objects.
    pub fn may_read(&self, who: &Requester) -> bool {
        self.names_any(&who.groups) || self.referrer_allowed(who.referer.as_deref())
    }

    /// Whether `who` may list the container (a group grant, or a referrer grant plus
    /// `.rlistings`).
    pub fn may_list(&self, who: &Requester) -> bool {
        self.names_any(&who.groups)
            || (self.listings && self.referrer_allowed(who.referer.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn anon(referer: Option<&str>) -> Requester {
        Requester {
            groups: vec![],
            referer: referer.map(str::to_owned),
        }
    }

    #[test]
    fn referrers_and_listings() {
        let acl = Acl::parse(".r:*", false).unwrap();
        assert!(acl.may_read(&anon(None)));
        assert!(!acl.may_list(&anon(None)));
        let acl = Acl::parse(".r:*,.rlistings", false).unwrap();
        assert!(acl.may_list(&anon(Some("http://x/"))));
        let acl = Acl::parse(".r:.example.com, .r:-bad.example.com", false).unwrap();
        assert!(acl.may_read(&anon(Some("https://www.example.com:8443/page"))));
        assert!(!acl.may_read(&anon(Some("http://bad.example.com/"))));
        assert!(!acl.may_read(&anon(Some("http://example.org/"))));
        assert!(!acl.may_read(&anon(None)));
        let acl = Acl::parse(".r:-evil.com,.r:*", false).unwrap();
        assert!(
            acl.may_read(&anon(Some("http://evil.com/"))),
            "last match wins"
        );
    }

    #[test]
    fn groups() {
        let bob = Requester {
            groups: tempauth_groups("AUTH_other", "other:bob"),
            referer: None,
        };
        for acl in ["other:bob", "other", "AUTH_other", "x, other:bob ,y"] {
            let a = Acl::parse(acl, true).unwrap();
            assert!(a.may_read(&bob) && a.may_list(&bob), "{acl}");
        }
        for acl in ["other:alice", "test", "test:tester", "", "*"] {
            assert!(!Acl::parse(acl, true).unwrap().may_read(&bob), "{acl}");
        }
        let project = Requester {
            groups: keystone_groups("AUTH_0123abc"),
            referer: None,
        };
        assert!(Acl::parse("0123abc:*", false).unwrap().may_read(&project));
        assert!(Acl::parse("*:*", false).unwrap().may_read(&project));
        assert!(!Acl::parse("999:*", false).unwrap().may_read(&project));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Acl::parse(".r:*", true),
            Err(AclError::ReferrerInWrite(".r:*".into()))
        );
        assert!(Acl::parse(".rlistings", true).is_err());
        assert!(Acl::parse(".r:", false).is_err());
        assert!(Acl::parse(".r:-", false).is_err());
        assert!(Acl::parse(".admin", false).is_err());
        // A stored malformed ACL grants nothing.
        assert_eq!(
            Acl::stored(Some(&".bogus".to_owned()), false),
            Acl::default()
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(v in "\\PC*", r in proptest::option::of("\\PC*"), w in any::<bool>()) {
            if let Ok(acl) = Acl::parse(&v, w) {
                let _ = acl.may_read(&anon(r.as_deref()));
                // An anonymous requester never gets in through a group.
                prop_assert!(!acl.names_any(&[]));
            }
        }
    }
}
