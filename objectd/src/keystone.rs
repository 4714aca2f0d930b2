//! Keystone tokens: when a Keystone (Ferrostack's `control`) is configured, a Swift token
//! that is not a TempAuth token is validated with `GET /v3/auth/tokens` (the token
//! validating itself, which Keystone's default policy allows its subject to do). The
//! token's project owns the account `AUTH_<project id>`, as with Swift's keystoneauth.
//! Answers are cached until the token expires or `cache-secs` pass, whichever is first.
//!
//! S3 requests signed with a Keystone EC2 credential are checked by Keystone too
//! (`POST /v3/s3tokens`, as Swift's s3token middleware does it): objectd sends the access
//! key, the string to sign and the signature; Keystone, which holds the secret, answers a
//! token for the credential's project, whose account the request then uses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

/// Errors talking to Keystone.
#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    /// The configured URL is not `http://host:port[/prefix]`.
    #[error("keystone url must be http://host:port[/prefix]")]
    BadUrl,
    /// Keystone could not be reached.
    #[error("cannot reach keystone")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("keystone request failed")]
    Http(#[source] hyper::Error),
    /// Keystone answered something that is not a token document.
    #[error("keystone answered a malformed token")]
    Malformed,
    /// The request to Keystone could not be built.
    #[error("cannot build the keystone request")]
    Request(#[source] http::Error),
}

/// What Keystone says of an S3 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Verdict {
    /// Good: the request uses this account (read-only for a reader's credential).
    Account(Grant),
    /// Keystone has no EC2 credential with that access key.
    UnknownKey,
    /// The signature does not match (or the credential's user or project is disabled).
    Mismatch,
}

/// What a valid project-scoped token may do: use this account, read-only unless its roles
/// on the project include `member` or `admin` (Keystone's default role meaning: a `reader`
/// may look; Swift's keystoneauth likewise lets only operator roles write). A token that
/// lists no roles at all may only look too: Keystone never issues a project-scoped token
/// without a role on the project, so such a document is not trusted with changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The storage account (`AUTH_<project id>`).
    pub account: String,
    /// Only GET and HEAD are allowed.
    pub read_only: bool,
    /// The token comes from an application credential restricted to these requests
    /// (`object-store` ones are the ones that count here); `None`: no such limit.
    pub access_rules: Option<Vec<AccessRule>>,
}

/// One request an application credential's tokens may make (Keystone's access rule).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AccessRule {
    /// Catalog service type.
    pub service: String,
    /// HTTP method.
    pub method: String,
    /// Path pattern (see [`path_matches`]).
    pub path: String,
}

impl AccessRule {
    /// Whether the rule lets `method path` through to a service of one of the catalog
    /// types `services`.
    pub fn allows(&self, services: &[&str], method: &str, path: &str) -> bool {
        self.method == method
            && services.contains(&self.service.as_str())
            && path_matches(&self.path, path)
    }
}

impl Grant {
    /// Whether the grant's access rules, if any, let `method path` through to an
    /// object-store service.
    pub fn permits(&self, method: &str, path: &str) -> bool {
        self.access_rules.as_ref().is_none_or(|rules| {
            rules
                .iter()
                .any(|r| r.allows(&["object-store"], method, path))
        })
    }
}

/// Whether `path` matches an access rule's `pattern`, as keystonemiddleware reads one:
/// `*` and `{name}` match one or more characters other than `/`, `**` any characters.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    enum Tok<'a> {
        Lit(&'a str),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("**") {
            toks.push(Tok::Any);
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            toks.push(Tok::One);
            rest = r;
        } else if rest.starts_with('{')
            && let Some(end) = rest.find('}')
        {
            toks.push(Tok::One);
            rest = &rest[end + 1..];
        } else {
            let end = rest
                .char_indices()
                .skip(1)
                .find(|(_, c)| matches!(c, '*' | '{'))
                .map_or(rest.len(), |(i, _)| i);
            toks.push(Tok::Lit(&rest[..end]));
            rest = &rest[end..];
        }
    }
    // Row by row from the last token: `next[j]` says whether the tokens after this one
    // match `path[j..]`. Linear in the path per token, whatever the pattern (no
    // backtracking for a crafted one to blow up).
    let n = path.len();
    let boundary: Vec<bool> = (0..=n).map(|j| path.is_char_boundary(j)).collect();
    // The end of the path segment each position is in.
    let mut seg_end = vec![n; n + 1];
    for j in (0..n).rev() {
        seg_end[j] = if path.as_bytes()[j] == b'/' {
            j
        } else {
            seg_end[j + 1]
        };
    }
    let mut next: Vec<bool> = (0..=n).map(|j| j == n).collect();
    for tok in toks.iter().rev() {
        // How many positions at or after j match the tokens after this one.
        let mut after = vec![0usize; n + 2];
        for j in (0..=n).rev() {
            after[j] = after[j + 1] + usize::from(next[j] && boundary[j]);
        }
        let row: Vec<bool> = match tok {
            Tok::Lit(l) => (0..=n)
                .map(|j| path.as_bytes()[j..].starts_with(l.as_bytes()) && next[j + l.len()])
                .collect(),
            Tok::Any => (0..=n).map(|j| after[j] > 0).collect(),
            Tok::One => (0..=n)
                .map(|j| j < seg_end[j] && after[j + 1] > after[seg_end[j] + 1])
                .collect(),
        };
        next = row
            .into_iter()
            .zip(&boundary)
            .map(|(m, b)| m && *b)
            .collect();
    }
    next[0]
}

/// A Keystone token validator with a cache.
pub struct Keystone {
    authority: String,
    prefix: String,
    cache_for: Duration,
    cache: Mutex<HashMap<String, (Option<Grant>, Instant)>>,
}

impl Keystone {
    /// For a Keystone at `url` (e.g. `http://127.0.0.1:5000` or `.../identity`).
    pub fn new(url: &str, cache_secs: u64) -> Result<Keystone, KeystoneError> {
        let uri: http::Uri = url.parse().map_err(|_| KeystoneError::BadUrl)?;
        if uri.scheme_str() != Some("http") {
            return Err(KeystoneError::BadUrl);
        }
        let authority = uri.authority().ok_or(KeystoneError::BadUrl)?.to_string();
        Ok(Keystone {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            cache_for: Duration::from_secs(cache_secs),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The account a token may use and how, or `None` if Keystone does not accept it.
    pub async fn account_for_token(&self, token: &str) -> Result<Option<Grant>, KeystoneError> {
        let now = Instant::now();
        if let Some((account, until)) = self.cache.lock().expect("cache lock").get(token)
            && *until > now
        {
            return Ok(account.clone());
        }
        let (account, ttl) = self.validate(token).await?;
        let until = now + ttl.unwrap_or(self.cache_for).min(self.cache_for);
        let mut cache = self.cache.lock().expect("cache lock");
        cache.retain(|_, (_, u)| *u > now);
        cache.insert(token.to_owned(), (account.clone(), until));
        Ok(account)
    }

    /// Asks Keystone whether `signature` is the signature of `string_to_sign` with the
    /// secret of the EC2 credential `access`.
    pub async fn check_s3(
        &self,
        access: &str,
        string_to_sign: &str,
        signature: &str,
    ) -> Result<S3Verdict, KeystoneError> {
        let body = serde_json::json!({"credentials": {
            "access": access,
            "token": base64::engine::general_purpose::STANDARD.encode(string_to_sign),
            "signature": signature,
        }});
        let req = http::Request::post(format!("{}/v3/s3tokens", self.prefix))
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(KeystoneError::Request)?;
        let (status, body) = self.exchange(req).await?;
        if status == http::StatusCode::UNAUTHORIZED {
            let unknown = String::from_utf8_lossy(&body).contains("access key not found");
            return Ok(if unknown {
                S3Verdict::UnknownKey
            } else {
                S3Verdict::Mismatch
            });
        }
        if !status.is_success() {
            return Err(KeystoneError::Malformed);
        }
        match parse_token(&body)?.0 {
            Some(grant) => Ok(S3Verdict::Account(grant)),
            None => Err(KeystoneError::Malformed),
        }
    }

    /// One request on a new connection: the status and the whole body.
    async fn exchange<B>(
        &self,
        req: http::Request<B>,
    ) -> Result<(http::StatusCode, Bytes), KeystoneError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(KeystoneError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(KeystoneError::Http)?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(KeystoneError::Http)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(KeystoneError::Http)?
            .to_bytes();
        Ok((status, body))
    }

    async fn validate(
        &self,
        token: &str,
    ) -> Result<(Option<Grant>, Option<Duration>), KeystoneError> {
        let req = http::Request::get(format!("{}/v3/auth/tokens", self.prefix))
            .header("host", &self.authority)
            .header("x-auth-token", token)
            .header("x-subject-token", token)
            .header("accept", "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(KeystoneError::Request)?;
        let (status, body) = self.exchange(req).await?;
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::NOT_FOUND {
            return Ok((None, None));
        }
        if !status.is_success() {
            return Err(KeystoneError::Malformed);
        }
        parse_token(&body)
    }
}

/// The grant and remaining lifetime in a Keystone v3 token document.
pub fn parse_token(body: &[u8]) -> Result<(Option<Grant>, Option<Duration>), KeystoneError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| KeystoneError::Malformed)?;
    let token = v.get("token").ok_or(KeystoneError::Malformed)?;
    let Some(project) = token
        .get("project")
        .and_then(|p| p.get("id"))
        .and_then(|i| i.as_str())
    else {
        // An unscoped token owns no account.
        return Ok((None, None));
    };
    if project.is_empty() || project.contains('/') {
        return Err(KeystoneError::Malformed);
    }
    let ttl = token
        .get("expires_at")
        .and_then(|e| e.as_str())
        .and_then(parse_iso8601)
        .map(|exp| {
            let now = crate::store::now_ms() / 1000;
            Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
        });
    let roles: Vec<&str> = token
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|r| {
            r.iter()
                .filter_map(|x| x.get("name").and_then(|n| n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let read_only = !roles
        .iter()
        .any(|r| r.eq_ignore_ascii_case("member") || r.eq_ignore_ascii_case("admin"));
    // An application credential's access rules, when it has some: a list that does not
    // parse is taken as one that permits nothing.
    let access_rules = token
        .get("application_credential")
        .and_then(|a| a.get("access_rules"))
        .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        .map(|r| serde_json::from_value::<Vec<AccessRule>>(r.clone()).unwrap_or_default());
    let grant = Grant {
        account: format!("AUTH_{project}"),
        read_only,
        access_rules,
    };
    Ok((Some(grant), ttl))
}

/// Parses `2026-11-22T04:30:00[.ffffff]Z` into seconds since the epoch.
fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = crate::api::http::days_from_civil(num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    Some(days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rule_paths_match_as_keystonemiddleware_reads_them() {
        let cases = [
            ("/v2.1/servers", "/v2.1/servers", true),
            ("/v2.1/servers", "/v2.1/servers/x", false),
            ("/v2.1/servers/*", "/v2.1/servers/abc", true),
            ("/v2.1/servers/*", "/v2.1/servers/", false),
            ("/v2.1/servers/*", "/v2.1/servers/abc/action", false),
            ("/v2.1/servers/**", "/v2.1/servers/abc/action", true),
            ("/v2.1/servers/**", "/v2.1/servers/", true),
            ("/v2.1/servers/**", "/v2.1/serversx", false),
            (
                "/v2.1/servers/{id}/action",
                "/v2.1/servers/abc/action",
                true,
            ),
            (
                "/v2.1/servers/{id}/action",
                "/v2.1/servers/a/b/action",
                false,
            ),
            ("/v1/*/c/**", "/v1/AUTH_p/c/dir/obj", true),
            ("/v1/*/c/**", "/v1/AUTH_p/d/obj", false),
            ("/v2/images/*/file", "/v2/images/é/file", true),
            ("**", "/anything/at/all", true),
            ("/a*", "/abc", true),
            ("/a*c", "/abbc", true),
            ("/a*c", "/ac", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(path_matches(pattern, path), want, "{pattern} vs {path}");
        }
        // A pattern made to backtrack takes no time.
        let pattern = "/**a".repeat(60) + "b";
        let path = "/a".repeat(4000);
        let started = std::time::Instant::now();
        assert!(!path_matches(&pattern, &path));
        assert!(path_matches(&pattern, &(path.clone() + "b")));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn token_documents() {
        let doc = br#"{"token": {"project": {"id": "p1", "name": "demo"}, "roles": [{"name": "member"}], "expires_at": "2999-01-01T00:00:00.000000Z"}}"#;
        let (grant, ttl) = parse_token(doc).unwrap();
        let grant = grant.unwrap();
        assert_eq!(
            (grant.account.as_str(), grant.read_only),
            ("AUTH_p1", false)
        );
        // Roles: without `member` or `admin` (only `reader`, or none listed at all) the
        // token is read-only.
        for (roles, read_only) in [
            (r#"[{"name": "reader"}]"#, true),
            (r#"[{"name": "reader"}, {"name": "member"}]"#, false),
            (r#"[{"name": "admin"}]"#, false),
            (r#"[{"name": "Member"}]"#, false),
            (r#"[]"#, true),
            (r#"[{"id": "r1"}]"#, true),
        ] {
            let doc = format!(r#"{{"token": {{"project": {{"id": "p1"}}, "roles": {roles}}}}}"#);
            let g = parse_token(doc.as_bytes()).unwrap().0.unwrap();
            assert_eq!(g.read_only, read_only, "{roles}");
        }
        let no_roles_key = br#"{"token": {"project": {"id": "p1"}}}"#;
        assert!(parse_token(no_roles_key).unwrap().0.unwrap().read_only);
        // An application credential's access rules: only object-store ones count.
        let doc = br#"{"token": {"project": {"id": "p1"}, "roles": [{"name": "member"}],
            "application_credential": {"id": "a", "access_rules": [
                {"id": "r1", "service": "object-store", "method": "GET", "path": "/v1/*/c/**"},
                {"id": "r2", "service": "image", "method": "PUT", "path": "/v1/*/c/**"}]}}}"#;
        let g = parse_token(doc).unwrap().0.unwrap();
        assert!(g.permits("GET", "/v1/AUTH_p1/c/dir/o"));
        assert!(!g.permits("PUT", "/v1/AUTH_p1/c/dir/o"));
        assert!(!g.permits("GET", "/v1/AUTH_p1/d/o"));
        assert!(
            parse_token(no_roles_key)
                .unwrap()
                .0
                .unwrap()
                .permits("PUT", "/v1/x")
        );
        let bad = br#"{"token": {"project": {"id": "p1"},
            "application_credential": {"access_rules": [{"path": 1}]}}}"#;
        assert!(
            !parse_token(bad)
                .unwrap()
                .0
                .unwrap()
                .permits("GET", "/v1/AUTH_p1")
        );
        assert!(ttl.unwrap() > Duration::from_secs(86_400));
        let unscoped = br#"{"token": {"user": {"id": "u"}}}"#;
        assert_eq!(parse_token(unscoped).unwrap().0, None);
        assert!(parse_token(b"[]").is_err());
        assert!(parse_token(br#"{"token": {"project": {"id": "a/b"}}}"#).is_err());
        assert_eq!(parse_iso8601("1970-01-02T00:00:01Z"), Some(86_401));
        assert!(Keystone::new("https://x", 1).is_err());
        assert!(Keystone::new("http://127.0.0.1:5000/identity", 1).is_ok());
    }
}
