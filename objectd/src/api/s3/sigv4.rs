//! AWS Signature Version 4: the `Authorization` header, presigned URLs, and signed
//! `aws-chunked` chunks.

use hmac::{Hmac, KeyInit, Mac};
use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// Largest accepted clock difference for header-signed requests, in seconds.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// Longest presigned URL lifetime S3 accepts (7 days), in seconds.
pub const MAX_PRESIGN_SECS: i64 = 7 * 86_400;

/// Why a signature could not be checked or did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The Authorization header or presign query is malformed.
    #[error("malformed authorization: {0}")]
    Malformed(&'static str),
    /// The access key is unknown.
    #[error("the access key id does not exist")]
    UnknownKey,
    /// The signature is wrong.
    #[error("the request signature does not match")]
    Mismatch,
    /// The request time is too far from ours.
    #[error("the difference between the request time and the server's time is too large")]
    Skewed,
    /// The presigned URL has expired.
    #[error("request has expired")]
    Expired,
}

impl From<SigError> for ApiError {
    fn from(e: SigError) -> ApiError {
        let (status, code) = match e {
            SigError::Malformed(_) => (StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed"),
            SigError::UnknownKey => (StatusCode::FORBIDDEN, "InvalidAccessKeyId"),
            SigError::Mismatch => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
            SigError::Skewed => (StatusCode::FORBIDDEN, "RequestTimeTooSkewed"),
            SigError::Expired => (StatusCode::FORBIDDEN, "AccessDenied"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    /// Scope region.
    pub region: String,
    /// Scope service.
    pub service: String,
    /// Signed header names, lowercase, in the client's order.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl Credentials {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

fn parse_credential(c: &str) -> Result<(String, String, String, String), SigError> {
    let parts: Vec<&str> = c.split('/').collect();
    if parts.len() != 5 || parts[4] != "aws4_request" || parts[0].is_empty() {
        return Err(SigError::Malformed(
            "credential must be key/date/region/service/aws4_request",
        ));
    }
    if parts[1].len() != 8 || !parts[1].bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Malformed("credential date must be YYYYMMDD"));
    }
    Ok((
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    ))
}

fn parse_signature(s: &str) -> Result<String, SigError> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::Malformed("signature must be 64 hex digits"));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_signed_headers(s: &str) -> Result<Vec<String>, SigError> {
    let v: Vec<String> = s
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if v.iter().any(|h| h.is_empty()) {
        return Err(SigError::Malformed("empty signed header name"));
    }
    Ok(v)
}

/// Parses an `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<Credentials, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or(SigError::Malformed("only AWS4-HMAC-SHA256 is supported"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or(SigError::Malformed("expected key=value"))?;
        match k.trim() {
            "Credential" => cred = Some(parse_credential(v.trim())?),
            "SignedHeaders" => signed = Some(parse_signed_headers(v.trim())?),
            "Signature" => sig = Some(parse_signature(v.trim())?),
            _ => return Err(SigError::Malformed("unknown authorization component")),
        }
    }
    let (access_key, date, region, service) = cred.ok_or(SigError::Malformed("no Credential"))?;
    Ok(Credentials {
        access_key,
        date,
        region,
        service,
        signed_headers: signed.ok_or(SigError::Malformed("no SignedHeaders"))?,
        signature: sig.ok_or(SigError::Malformed("no Signature"))?,
    })
}

/// URI-encodes per SigV4: unreserved bytes stay, everything else `%XX` (uppercase);
/// `/` stays unless `encode_slash`.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn pct_decode(s: &str) -> String {
    crate::api::swift::path::percent_decode(s).unwrap_or_else(|_| s.to_owned())
}

/// The canonical query string; `X-Amz-Signature` is left out (presigned URLs).
pub fn canonical_query(raw: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&pct_decode(&k.replace('+', "%20")), true),
                uri_encode(&pct_decode(&v.replace('+', "%20")), true),
            )
        })
        .filter(|(k, _)| k != "X-Amz-Signature")
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request.
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &http::HeaderMap,
    signed: &[String],
    payload_hash: &str,
) -> Result<String, SigError> {
    let mut out = String::new();
    out.push_str(method);
    out.push('\n');
    out.push_str(&uri_encode(&pct_decode(raw_path), false));
    out.push('\n');
    out.push_str(&canonical_query(raw_query));
    out.push('\n');
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SigError::Malformed("a signed header is missing"));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The signing key for a secret and scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Signs a string with a signing key, hex.
pub fn sign(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A request whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The access key used.
    pub access_key: String,
    /// The signing key (for chunk signatures).
    pub key: [u8; 32],
    /// `X-Amz-Date`.
    pub amz_date: String,
    /// The credential scope.
    pub scope: String,
    /// The request's signature (seed for chunk signatures).
    pub signature: String,
    /// The payload hash the client declared (`x-amz-content-sha256`).
    pub payload_hash: String,
}

/// A header- or query-signed request checked for form and time, whose signature is still
/// to be checked by whoever holds the access key's secret.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The access key used.
    pub access_key: String,
    creds: Credentials,
    amz_date: String,
    scope: String,
    /// The payload hash the client declared (`x-amz-content-sha256`).
    pub payload_hash: String,
    /// The string the client signed.
    pub string_to_sign: String,
}

impl Prepared {
    /// The client's signature (lowercase hex).
    pub fn signature(&self) -> &str {
        &self.creds.signature
    }

    /// Checks the signature with the access key's secret.
    pub fn check(self, secret: &str) -> Result<Verified, SigError> {
        let c = &self.creds;
        let key = signing_key(secret, &c.date, &c.region, &c.service);
        if !constant_time_eq(&sign(&key, &self.string_to_sign), &c.signature) {
            tracing::debug!(string_to_sign = %self.string_to_sign, "signature mismatch");
            return Err(SigError::Mismatch);
        }
        Ok(self.verified(key))
    }

    /// A request whose signature the holder of the secret (Keystone) checked. The signing
    /// key stays unknown here, so signed `aws-chunked` bodies cannot be checked: callers
    /// refuse them before accepting.
    pub fn accept_checked_elsewhere(self) -> Verified {
        self.verified([0; 32])
    }

    fn verified(self, key: [u8; 32]) -> Verified {
        Verified {
            access_key: self.access_key,
            key,
            amz_date: self.amz_date,
            scope: self.scope,
            signature: self.creds.signature,
            payload_hash: self.payload_hash,
        }
    }
}

/// Verifies a header- or query-signed request; `secret_of` maps an access key to its secret.
pub fn verify(
    method: &str,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    now: i64,
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<Verified, SigError> {
    let p = prepare(method, uri, headers, now)?;
    let secret = secret_of(&p.access_key).ok_or(SigError::UnknownKey)?;
    p.check(&secret)
}

/// Parses a header- or query-signed request and checks its form and time; the signature
/// is checked by [`Prepared::check`].
pub fn prepare(
    method: &str,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    now: i64,
) -> Result<Prepared, SigError> {
    let query = uri.query();
    let presigned = query.is_some_and(|q| q.contains("X-Amz-Signature="));
    let (creds, amz_date, payload_hash) = if presigned {
        let pairs = crate::api::query_pairs(query);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
            return Err(SigError::Malformed(
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256",
            ));
        }
        let (access_key, date, region, service) = parse_credential(
            &get("X-Amz-Credential").ok_or(SigError::Malformed("no X-Amz-Credential"))?,
        )?;
        let amz_date = get("X-Amz-Date").ok_or(SigError::Malformed("no X-Amz-Date"))?;
        let expires: i64 = get("X-Amz-Expires")
            .ok_or(SigError::Malformed("no X-Amz-Expires"))?
            .parse()
            .map_err(|_| SigError::Malformed("X-Amz-Expires is not a number"))?;
        if !(0..=MAX_PRESIGN_SECS).contains(&expires) {
            return Err(SigError::Malformed("X-Amz-Expires out of range"));
        }
        let t = crate::api::http::parse_amz_date(&amz_date)
            .ok_or(SigError::Malformed("bad X-Amz-Date"))?;
        if now > t + expires {
            return Err(SigError::Expired);
        }
        if t > now + MAX_SKEW_SECS {
            return Err(SigError::Skewed);
        }
        let creds = Credentials {
            access_key,
            date,
            region,
            service,
            signed_headers: parse_signed_headers(
                &get("X-Amz-SignedHeaders").ok_or(SigError::Malformed("no X-Amz-SignedHeaders"))?,
            )?,
            signature: parse_signature(
                &get("X-Amz-Signature").ok_or(SigError::Malformed("no X-Amz-Signature"))?,
            )?,
        };
        (creds, amz_date, "UNSIGNED-PAYLOAD".to_owned())
    } else {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(SigError::Malformed("no Authorization header"))?;
        let creds = parse_authorization(auth)?;
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or(SigError::Malformed("no X-Amz-Date header"))?
            .to_owned();
        let t = crate::api::http::parse_amz_date(&amz_date)
            .ok_or(SigError::Malformed("bad X-Amz-Date"))?;
        if (now - t).abs() > MAX_SKEW_SECS {
            return Err(SigError::Skewed);
        }
        let payload = headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("UNSIGNED-PAYLOAD")
            .to_owned();
        (creds, amz_date, payload)
    };
    if !amz_date.starts_with(&creds.date) {
        return Err(SigError::Malformed(
            "credential date does not match X-Amz-Date",
        ));
    }
    let canonical = canonical_request(
        method,
        uri.path(),
        query,
        headers,
        &creds.signed_headers,
        &payload_hash,
    )?;
    let scope = creds.scope();
    Ok(Prepared {
        access_key: creds.access_key.clone(),
        string_to_sign: string_to_sign(&amz_date, &scope, &canonical),
        creds,
        amz_date,
        scope,
        payload_hash,
    })
}

/// Checks the signature chain of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body.
pub struct ChunkVerifier {
    key: [u8; 32],
    amz_date: String,
    scope: String,
    prev: String,
    pending: Option<String>,
    hasher: Sha256,
}

impl ChunkVerifier {
    /// Starts from the request's seed signature.
    pub fn new(v: &Verified) -> ChunkVerifier {
        ChunkVerifier {
            key: v.key,
            amz_date: v.amz_date.clone(),
            scope: v.scope.clone(),
            prev: v.signature.clone(),
            pending: None,
            hasher: Sha256::new(),
        }
    }

    fn check_pending(&mut self) -> Result<(), ApiError> {
        if let Some(sig) = self.pending.take() {
            let hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
            let sts = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
                self.amz_date,
                self.scope,
                self.prev,
                sha256_hex(b""),
                hash
            );
            let expected = sign(&self.key, &sts);
            if !constant_time_eq(&expected, &sig) {
                return Err(SigError::Mismatch.into());
            }
            self.prev = sig;
        }
        Ok(())
    }

    /// A chunk header arrived.
    pub fn header(&mut self, signature: Option<&str>) -> Result<(), ApiError> {
        self.check_pending()?;
        let sig = signature.ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "chunk without a signature",
            )
        })?;
        self.pending = Some(sig.to_ascii_lowercase());
        Ok(())
    }

    /// Chunk data arrived.
    pub fn data(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The body ended.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        self.check_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// AWS's documented example: GET /test.txt with a Range header.
    #[test]
    fn aws_documented_get_object_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let mut h = http::HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("range", "bytes=0-9".parse().unwrap());
        let empty = sha256_hex(b"");
        h.insert("x-amz-content-sha256", empty.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature={}",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        h.insert("authorization", auth.parse().unwrap());
        let uri: http::Uri = "/test.txt".parse().unwrap();
        let now = crate::api::http::parse_amz_date("20130524T000000Z").unwrap();
        let v = verify("GET", &uri, &h, now, |k| {
            (k == "AKIAIOSFODNN7EXAMPLE").then(|| secret.to_owned())
        })
        .unwrap();
        assert_eq!(v.access_key, "AKIAIOSFODNN7EXAMPLE");
        // Any change breaks it.
        h.insert("range", "bytes=0-10".parse().unwrap());
        assert_eq!(
            verify("GET", &uri, &h, now, |_| Some(secret.to_owned())).unwrap_err(),
            SigError::Mismatch
        );
        assert_eq!(
            verify("GET", &uri, &h, now + 3600, |_| Some(secret.to_owned())).unwrap_err(),
            SigError::Skewed
        );
    }

    /// AWS's documented presigned URL example (GET /test.txt, 86400 s).
    #[test]
    fn aws_documented_presigned_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let uri: http::Uri = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        let t = crate::api::http::parse_amz_date("20130524T000000Z").unwrap();
        verify("GET", &uri, &h, t + 10, |_| Some(secret.to_owned())).unwrap();
        assert_eq!(
            verify("GET", &uri, &h, t + 86_401, |_| Some(secret.to_owned())).unwrap_err(),
            SigError::Expired
        );
    }

    /// AWS's documented streaming example: a 66560-byte body in signed chunks.
    #[test]
    fn aws_documented_signed_chunks() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature={seed}"
        );
        h.insert("authorization", auth.parse().unwrap());
        let uri: http::Uri = "/examplebucket/chunkObject.txt".parse().unwrap();
        let now = crate::api::http::parse_amz_date("20130524T000000Z").unwrap();
        let v = verify("PUT", &uri, &h, now, |_| Some(secret.to_owned())).unwrap();
        let chunks: [(&str, usize); 3] = [
            (
                "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                65536,
            ),
            (
                "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                1024,
            ),
            (
                "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
                0,
            ),
        ];
        let mut c = ChunkVerifier::new(&v);
        for (sig, len) in chunks {
            c.header(Some(sig)).unwrap();
            c.data(&vec![b'a'; len]);
        }
        c.finish().unwrap();
        // One changed byte breaks the chain.
        let mut c = ChunkVerifier::new(&v);
        c.header(Some(chunks[0].0)).unwrap();
        let mut data = vec![b'a'; 65536];
        data[7] = b'b';
        c.data(&data);
        assert_eq!(
            c.header(Some(chunks[1].0)).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn malformed_headers() {
        assert!(matches!(
            parse_authorization("AWS abc:def"),
            Err(SigError::Malformed(_))
        ));
        assert!(matches!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00"
            ),
            Err(SigError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_authorization(&s);
            let _ = parse_authorization(&format!("AWS4-HMAC-SHA256 {s}"));
        }

        #[test]
        fn well_formed_headers_parse(key in "[A-Z0-9]{4,20}", region in "[a-z0-9-]{1,15}",
                                     sig in "[0-9a-f]{64}", hs in proptest::collection::vec("[a-z-]{1,12}", 1..5)) {
            let v = format!("AWS4-HMAC-SHA256 Credential={key}/20260101/{region}/s3/aws4_request, SignedHeaders={}, Signature={sig}", hs.join(";"));
            let c = parse_authorization(&v).unwrap();
            prop_assert_eq!(c.access_key, key);
            prop_assert_eq!(c.region, region);
            prop_assert_eq!(c.signed_headers, hs);
            prop_assert_eq!(c.signature, sig);
        }
    }
}
