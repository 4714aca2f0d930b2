//! The S3 API over the same store: a bucket is a container of the access key's account.
//!
//! Path-style addressing (`/bucket/key`). Every request is SigV4-signed (header or
//! presigned URL); bodies may be plain (signed SHA-256 or `UNSIGNED-PAYLOAD`) or
//! `aws-chunked` (signed chunks, or unsigned with a trailing checksum).
//!
//! Sub-resources are routed before the bucket and object themselves: object and bucket
//! tags ([`tagging`]), bucket versioning (reported, never enabled), the versions listing and
//! `versionId` (every object is its single `null` version: [`versions`]) and canned ACLs
//! ([`acl`]); every other sub-resource S3 defines answers 501, whatever the method.

pub mod acl;
pub mod chunked;
pub mod sigv4;
pub mod tagging;
pub mod versions;
pub mod xml;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Method, StatusCode};
use md5::{Digest, Md5};

use super::body::{ChunkCheck, Source, pieces, stream_pieces};
use super::http::{Condition, RangeError, evaluate, http_date, iso8601, parse_range};
use super::{ApiError, Request, Response, State, header, query_pairs, response, set_header};
use crate::store::{Blob, Entry, Kind, ListQuery, ObjectRecord, Upload, now_ms, random_hex};

const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const XML_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
/// Smallest part S3 accepts, except the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Most parts in one upload.
pub const MAX_PARTS: u32 = 10_000;
/// Most keys listed per request.
pub const MAX_KEYS: usize = 1000;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

fn xml_response(status: StatusCode, body: String) -> Response {
    let mut r = response(status, body);
    set_header(&mut r, "content-type", "application/xml");
    r
}

fn no_such_key() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NoSuchKey",
        "the specified key does not exist",
    )
}

fn no_such_bucket() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NoSuchBucket",
        "the specified bucket does not exist",
    )
}

/// Whether a bucket name follows S3's rules.
pub fn valid_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// Splits `/bucket/key` (raw) into decoded parts.
fn split_path(raw: &str) -> Result<(String, String), ApiError> {
    let rest = raw.trim_start_matches('/');
    let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
    let dec = |s: &str| {
        crate::api::swift::path::percent_decode(s).map_err(|e| {
            ApiError::bad_request(
                "InvalidURI",
                format!("couldn't parse the specified URI: {e}"),
            )
        })
    };
    let key = dec(k)?;
    if key.contains('\0') {
        return Err(ApiError::bad_request("InvalidURI", "key contains NUL"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(
            "KeyTooLongError",
            "your key is too long",
        ));
    }
    Ok((dec(b)?, key))
}

/// Handles one S3 request.
pub async fn handle(state: &State, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let has_auth = parts.headers.contains_key("authorization")
        || parts
            .uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature="));
    if !has_auth {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "anonymous access is not allowed",
        ));
    }
    if header(&parts.headers, "authorization").is_some_and(|a| a.starts_with("AWS ")) {
        return Err(ApiError::bad_request(
            "InvalidRequest",
            "signature version 2 is not supported; use AWS4-HMAC-SHA256",
        ));
    }
    let (verified, account) = state
        .auth
        .verify_s3(state.keystone.as_ref(), &parts, now_ms() / 1000)
        .await?;
    let (bucket, key) = split_path(parts.uri.path())?;
    let q = query_pairs(parts.uri.query());
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let h = &parts.headers;

    let source = || -> Result<(Source, Option<u64>), ApiError> { make_source(h, &verified, body) };

    let m = &parts.method;
    if bucket.is_empty() {
        return match *m {
            Method::GET => list_buckets(state, &account).await,
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the specified method is not allowed against this resource",
            )),
        };
    }
    if key.is_empty() {
        // A request naming a sub-resource is about that sub-resource, never the bucket
        // itself (a DELETE ?policy must not delete the bucket).
        if let Some(sub) = BUCKET_UNIMPLEMENTED.iter().find(|s| has(s)) {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                format!("the bucket sub-resource ?{sub} is not implemented"),
            ));
        }
        if has("versioning") {
            return match *m {
                Method::GET => get_versioning(state, &account, &bucket).await,
                Method::PUT => {
                    let (mut src, _) = source()?;
                    let doc = src.read_all(64 * 1024).await?;
                    check_body_digests(h, &doc)?;
                    put_versioning(state, &account, &bucket, &doc).await
                }
                _ => Err(method_not_allowed()),
            };
        }
        if has("tagging") {
            return match *m {
                Method::GET => {
                    let meta = container_meta(state, &account, &bucket).await?;
                    let tags = tagging::bucket_stored(&meta).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "NoSuchTagSet",
                            "The TagSet does not exist",
                        )
                    })?;
                    Ok(xml_response(
                        StatusCode::OK,
                        format!(
                            "{XML_HEAD}<Tagging xmlns=\"{NS}\">{}</Tagging>",
                            tagging::document(&tags)
                        ),
                    ))
                }
                Method::PUT => {
                    container_meta(state, &account, &bucket).await?;
                    let (mut src, _) = source()?;
                    let doc = src.read_all(64 * 1024).await?;
                    check_body_digests(h, &doc)?;
                    let tags = tagging::parse_bucket_document(&doc)?;
                    set_bucket_tags(state, &account, &bucket, &tags).await?;
                    Ok(response(StatusCode::NO_CONTENT, ""))
                }
                Method::DELETE => {
                    set_bucket_tags(state, &account, &bucket, &Vec::new()).await?;
                    Ok(response(StatusCode::NO_CONTENT, ""))
                }
                _ => Err(method_not_allowed()),
            };
        }
        if has("versions") {
            return match *m {
                Method::GET => versions::list(state, &account, &bucket, &q).await,
                _ => Err(method_not_allowed()),
            };
        }
        if has("acl") {
            return match *m {
                Method::GET => {
                    let meta = container_meta(state, &account, &bucket).await?;
                    let (_, list) = acl::anonymous_access(&meta);
                    Ok(xml_response(StatusCode::OK, acl::policy(&account, list)))
                }
                Method::PUT => {
                    let given = acl::canned(h)?;
                    let (mut src, _) = source()?;
                    let doc = src.read_all(64 * 1024).await?;
                    let c = acl::check_put_body(&doc, given)?;
                    container_meta(state, &account, &bucket).await?;
                    state
                        .store
                        .post_container(&account, &bucket, acl::bucket_meta(c))
                        .await?;
                    Ok(response(StatusCode::OK, ""))
                }
                _ => Err(method_not_allowed()),
            };
        }
        return match *m {
            Method::PUT => {
                if !valid_bucket_name(&bucket) {
                    return Err(ApiError::bad_request(
                        "InvalidBucketName",
                        "the specified bucket is not valid",
                    ));
                }
                let canned = acl::canned(h)?;
                // A CreateBucketConfiguration body is accepted and ignored.
                let (mut src, _) = source()?;
                src.read_all(64 * 1024).await?;
                // x-amz-acl, when given, sets the bucket's read ACL (also on a bucket that
                // already exists); without it an existing bucket keeps its ACL. S3 ignores
                // bucket-owner-full-control when creating a bucket.
                let meta = canned
                    .filter(|c| *c != acl::Canned::BucketOwnerFullControl)
                    .map(acl::bucket_meta)
                    .unwrap_or_default();
                state.store.put_container(&account, &bucket, meta).await?;
                let mut r = response(StatusCode::OK, "");
                set_header(&mut r, "location", &format!("/{bucket}"));
                Ok(r)
            }
            Method::HEAD => {
                state
                    .store
                    .get_container(&account, &bucket)
                    .await?
                    .ok_or_else(no_such_bucket)?;
                Ok(response(StatusCode::OK, ""))
            }
            Method::DELETE => {
                if state.store.delete_container(&account, &bucket).await? {
                    Ok(response(StatusCode::NO_CONTENT, ""))
                } else {
                    Err(no_such_bucket())
                }
            }
            Method::GET if has("location") => {
                bucket_exists(state, &account, &bucket).await?;
                Ok(xml_response(
                    StatusCode::OK,
                    format!("{XML_HEAD}<LocationConstraint xmlns=\"{NS}\"></LocationConstraint>"),
                ))
            }
            Method::GET if has("uploads") => {
                bucket_exists(state, &account, &bucket).await?;
                let mut body = format!(
                    "{XML_HEAD}<ListMultipartUploadsResult xmlns=\"{NS}\"><Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
                    xml::escape(&bucket)
                );
                for (key, id, ms) in state.store.list_uploads(&account, &bucket).await? {
                    let _ = write!(
                        body,
                        "<Upload><Key>{}</Key><UploadId>{id}</UploadId><StorageClass>STANDARD</StorageClass><Initiated>{}</Initiated></Upload>",
                        xml::escape(&key),
                        iso8601(ms)
                    );
                }
                body.push_str("</ListMultipartUploadsResult>");
                Ok(xml_response(StatusCode::OK, body))
            }
            Method::GET => list_objects(state, &account, &bucket, &q).await,
            Method::POST if has("delete") => {
                let (mut src, _) = source()?;
                let doc = src.read_all(2 * 1024 * 1024).await?;
                check_body_digests(h, &doc)?;
                delete_objects(state, &account, &bucket, &doc).await
            }
            _ => Err(method_not_allowed()),
        };
    }
    if let Some(sub) = OBJECT_UNIMPLEMENTED.iter().find(|s| has(s)) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("the object sub-resource ?{sub} is not implemented"),
        ));
    }
    // A `versionId` names a version of the object: `null` is the object itself (its only
    // version), any other id one that does not exist here.
    let about_versions = has("tagging")
        || has("acl")
        || (matches!(*m, Method::GET | Method::HEAD | Method::DELETE) && !has("uploadId"));
    let named = if about_versions {
        versions::named(get("versionId"))?
    } else {
        None
    };
    match named {
        None => object_request(state, account, bucket, key, m, h, &q, source).await,
        Some(versions::Named::Null) => {
            let mut r = object_request(state, account, bucket, key, m, h, &q, source)
                .await
                .map_err(versions::missing_as_version)?;
            set_header(&mut r, "x-amz-version-id", versions::NULL);
            Ok(r)
        }
        Some(versions::Named::Absent(id)) => {
            bucket_exists(state, &account, &bucket).await?;
            if *m == Method::DELETE && !has("tagging") && !has("acl") {
                // As in S3, deleting a version that does not exist succeeds and deletes
                // nothing (the object, if any, is another version).
                let mut r = response(StatusCode::NO_CONTENT, "");
                set_header(&mut r, "x-amz-version-id", &id);
                Ok(r)
            } else {
                Err(versions::no_such_version())
            }
        }
    }
}

/// The object half of [`handle`]: sub-resources, then the object itself.
#[allow(clippy::too_many_arguments)]
async fn object_request(
    state: &State,
    account: String,
    bucket: String,
    key: String,
    m: &Method,
    h: &http::HeaderMap,
    q: &[(String, String)],
    source: impl FnOnce() -> Result<(Source, Option<u64>), ApiError>,
) -> Result<Response, ApiError> {
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if has("tagging") {
        bucket_exists(state, &account, &bucket).await?;
        return match *m {
            Method::GET => {
                let rec = state
                    .store
                    .get_object(&account, &bucket, &key)
                    .await?
                    .ok_or_else(no_such_key)?;
                Ok(xml_response(
                    StatusCode::OK,
                    format!(
                        "{XML_HEAD}<Tagging xmlns=\"{NS}\">{}</Tagging>",
                        tagging::document(&tagging::stored(&rec.meta))
                    ),
                ))
            }
            Method::PUT => {
                let (mut src, _) = source()?;
                let doc = src.read_all(64 * 1024).await?;
                check_body_digests(h, &doc)?;
                let tags = tagging::parse_document(&doc)?;
                set_tags(state, &account, &bucket, &key, &tags).await?;
                Ok(response(StatusCode::OK, ""))
            }
            Method::DELETE => {
                set_tags(state, &account, &bucket, &key, &Vec::new()).await?;
                Ok(response(StatusCode::NO_CONTENT, ""))
            }
            _ => Err(method_not_allowed()),
        };
    }
    if has("acl") {
        let meta = container_meta(state, &account, &bucket).await?;
        return match *m {
            Method::GET => {
                state
                    .store
                    .get_object(&account, &bucket, &key)
                    .await?
                    .ok_or_else(no_such_key)?;
                let (read, _) = acl::anonymous_access(&meta);
                Ok(xml_response(StatusCode::OK, acl::policy(&account, read)))
            }
            Method::PUT => {
                // An object has no ACL of its own: only `private` is accepted, and only
                // where it holds (the bucket is not readable by anyone).
                acl::check_object(h)?;
                let given = acl::canned(h)?;
                let (mut src, _) = source()?;
                let doc = src.read_all(64 * 1024).await?;
                acl::check_put_body(&doc, given)?;
                state
                    .store
                    .get_object(&account, &bucket, &key)
                    .await?
                    .ok_or_else(no_such_key)?;
                if acl::anonymous_access(&meta).0 {
                    return Err(ApiError::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "NotImplemented",
                        "this bucket is public-read, so its objects are readable by anyone; a private ACL for one object is not implemented",
                    ));
                }
                Ok(response(StatusCode::OK, ""))
            }
            _ => Err(method_not_allowed()),
        };
    }
    match *m {
        Method::PUT if has("uploadId") => {
            let upload_id = get("uploadId").unwrap_or_default().to_owned();
            let number: u32 = get("partNumber")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=MAX_PARTS).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request("InvalidArgument", "part number must be 1..=10000")
                })?;
            let up = state.store.get_upload(&account, &upload_id).await?;
            if up.container != bucket || up.name != key {
                return Err(ApiError::not_found("NoSuchUpload"));
            }
            let copy = h.contains_key("x-amz-copy-source");
            let blob = if copy {
                upload_part_copy(state, &account, h).await?
            } else {
                let (src, expected) = source()?;
                receive(state, src, expected, h).await?
            };
            let etag = blob.md5.clone();
            if let Some(old) = state.store.put_part(&upload_id, number, blob).await? {
                state.store.remove_blobs(vec![old]).await;
            }
            if copy {
                return Ok(xml_response(
                    StatusCode::OK,
                    format!(
                        "{XML_HEAD}<CopyPartResult xmlns=\"{NS}\"><LastModified>{}</LastModified><ETag>&quot;{etag}&quot;</ETag></CopyPartResult>",
                        iso8601(now_ms())
                    ),
                ));
            }
            let mut r = response(StatusCode::OK, "");
            set_header(&mut r, "etag", &format!("\"{etag}\""));
            Ok(r)
        }
        Method::GET if has("uploadId") => {
            let upload_id = get("uploadId").unwrap_or_default();
            let up = state.store.get_upload(&account, upload_id).await?;
            if up.container != bucket || up.name != key {
                return Err(ApiError::not_found("NoSuchUpload"));
            }
            let parts = state.store.parts(upload_id).await?;
            let mut body = format!(
                "{XML_HEAD}<ListPartsResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId><MaxParts>{MAX_PARTS}</MaxParts><IsTruncated>false</IsTruncated>",
                xml::escape(&bucket),
                xml::escape(&key),
                xml::escape(upload_id)
            );
            for (n, b) in parts {
                let _ = write!(
                    body,
                    "<Part><PartNumber>{n}</PartNumber><ETag>&quot;{}&quot;</ETag><Size>{}</Size></Part>",
                    b.md5, b.size
                );
            }
            body.push_str("</ListPartsResult>");
            Ok(xml_response(StatusCode::OK, body))
        }
        Method::PUT if h.contains_key("x-amz-copy-source") => {
            copy_object(state, &account, &bucket, &key, h).await
        }
        Method::PUT => {
            acl::check_object(h)?;
            let tags = header_tags(h)?;
            bucket_exists(state, &account, &bucket).await?;
            let (src, expected) = source()?;
            let blob = receive(state, src, expected, h).await?;
            let mut meta = user_meta(h);
            tagging::store_into(&mut meta, &tags);
            let rec = ObjectRecord {
                name: key.clone(),
                size: blob.size,
                etag: blob.md5.clone(),
                content_type: content_type(h),
                last_modified_ms: now_ms(),
                meta,
                delete_at: None,
                blobs: vec![blob],
                kind: Kind::Plain,
            };
            let etag = rec.etag.clone();
            let old = match state.store.put_object(&account, &bucket, rec.clone()).await {
                Ok(old) => old,
                Err(e) => {
                    state.store.remove_blobs(rec.blobs).await;
                    return Err(e.into());
                }
            };
            state.store.remove_blobs(old).await;
            let mut r = response(StatusCode::OK, "");
            set_header(&mut r, "etag", &format!("\"{etag}\""));
            Ok(r)
        }
        Method::GET | Method::HEAD => {
            get_object(state, &account, &bucket, &key, h, *m == Method::HEAD).await
        }
        Method::DELETE if has("uploadId") => {
            let blobs = state
                .store
                .abort_upload(&account, get("uploadId").unwrap_or_default())
                .await?;
            state.store.remove_blobs(blobs).await;
            Ok(response(StatusCode::NO_CONTENT, ""))
        }
        Method::DELETE => {
            bucket_exists(state, &account, &bucket).await?;
            state.store.delete_object(&account, &bucket, &key).await?;
            Ok(response(StatusCode::NO_CONTENT, ""))
        }
        Method::POST if has("uploads") => {
            acl::check_object(h)?;
            let tags = header_tags(h)?;
            bucket_exists(state, &account, &bucket).await?;
            let id = random_hex(16);
            // The tags ride in the upload's metadata and become the object's on complete.
            let mut meta = user_meta(h);
            tagging::store_into(&mut meta, &tags);
            state
                .store
                .create_upload(
                    &account,
                    Upload {
                        id: id.clone(),
                        container: bucket.clone(),
                        name: key.clone(),
                        content_type: content_type(h),
                        meta,
                    },
                )
                .await?;
            Ok(xml_response(
                StatusCode::OK,
                format!(
                    "{XML_HEAD}<InitiateMultipartUploadResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    xml::escape(&bucket),
                    xml::escape(&key)
                ),
            ))
        }
        Method::POST if has("uploadId") => {
            let (mut src, _) = source()?;
            let doc = src.read_all(4 * 1024 * 1024).await?;
            complete_upload(
                state,
                &account,
                &bucket,
                &key,
                get("uploadId").unwrap_or_default(),
                &doc,
            )
            .await
        }
        _ => Err(method_not_allowed()),
    }
}

/// Bucket sub-resources S3 has and objectd does not implement.
const BUCKET_UNIMPLEMENTED: [&str; 20] = [
    "policy",
    "policyStatus",
    "cors",
    "lifecycle",
    "encryption",
    "website",
    "logging",
    "notification",
    "replication",
    "ownershipControls",
    "publicAccessBlock",
    "object-lock",
    "accelerate",
    "requestPayment",
    "analytics",
    "metrics",
    "inventory",
    "intelligent-tiering",
    "metadataTable",
    "session",
];

/// Object sub-resources S3 has and objectd does not implement.
const OBJECT_UNIMPLEMENTED: [&str; 6] = [
    "retention",
    "legal-hold",
    "torrent",
    "attributes",
    "restore",
    "select",
];

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the specified method is not allowed against this resource",
    )
}

/// Where S3 keeps a bucket's versioning state in its container metadata: only
/// `Suspended` is ever stored (see [`put_versioning`]).
const VERSIONING_META: &str = "x-container-sysmeta-s3-versioning";

/// GetBucketVersioning: S3's empty configuration for a bucket whose versioning was never
/// set, `Suspended` once a client suspended it.
async fn get_versioning(state: &State, account: &str, bucket: &str) -> Result<Response, ApiError> {
    let meta = container_meta(state, account, bucket).await?;
    let body = match meta.get(VERSIONING_META).map(String::as_str) {
        Some("Suspended") => format!(
            "{XML_HEAD}<VersioningConfiguration xmlns=\"{NS}\"><Status>Suspended</Status></VersioningConfiguration>"
        ),
        _ => format!("{XML_HEAD}<VersioningConfiguration xmlns=\"{NS}\"/>"),
    };
    Ok(xml_response(StatusCode::OK, body))
}

/// PutBucketVersioning. objectd keeps one version of each S3 object, so `Enabled` is
/// refused with 501. `Suspended` is accepted, as S3 accepts it on any bucket: a suspended
/// bucket writes every object as its single "null" version, which is what objectd does,
/// and GetBucketVersioning reports the state from then on, as S3 does.
async fn put_versioning(
    state: &State,
    account: &str,
    bucket: &str,
    doc: &[u8],
) -> Result<Response, ApiError> {
    container_meta(state, account, bucket).await?;
    let (_, top) = xml::records(doc, "VersioningConfiguration", "-")?;
    if xml::field(&top, "MfaDelete") == Some("Enabled") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "MFA delete is not implemented",
        ));
    }
    match xml::field(&top, "Status") {
        Some("Suspended") => {
            let meta = BTreeMap::from([(VERSIONING_META.to_owned(), "Suspended".to_owned())]);
            state.store.post_container(account, bucket, meta).await?;
            Ok(response(StatusCode::OK, ""))
        }
        Some("Enabled") => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "S3 versioning is not implemented: objectd keeps one version of each object (the Swift API's X-Versions-Location keeps older versions)",
        )),
        _ => Err(ApiError::bad_request(
            "MalformedXML",
            "the XML you provided was not well-formed or did not validate: Status must be Enabled or Suspended",
        )),
    }
}

/// A bucket's container metadata; NoSuchBucket if it does not exist.
async fn container_meta(
    state: &State,
    account: &str,
    bucket: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    state
        .store
        .container_meta(account, bucket)
        .await?
        .ok_or_else(no_such_bucket)
}

/// The tags of an object write's `x-amz-tagging` header (none without it).
fn header_tags(h: &http::HeaderMap) -> Result<tagging::TagSet, ApiError> {
    match h.get("x-amz-tagging") {
        None => Ok(Vec::new()),
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::bad_request(
                    "InvalidArgument",
                    "the header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters",
                )
            })?;
            tagging::parse_header(s)
        }
    }
}

/// Replaces a bucket's tags (an empty set removes them), in its container metadata with
/// one index transaction; NoSuchBucket if it is absent.
async fn set_bucket_tags(
    state: &State,
    account: &str,
    bucket: &str,
    tags: &tagging::TagSet,
) -> Result<(), ApiError> {
    let value = tagging::encode(tags).unwrap_or_default();
    let update = BTreeMap::from([(tagging::BUCKET_META_KEY.to_owned(), value)]);
    Ok(state.store.post_container(account, bucket, update).await?)
}

/// Replaces an object's tags (an empty set removes them); NoSuchKey if it is absent.
async fn set_tags(
    state: &State,
    account: &str,
    bucket: &str,
    key: &str,
    tags: &tagging::TagSet,
) -> Result<(), ApiError> {
    let found = state
        .store
        .set_object_meta_entry(
            account,
            bucket,
            key,
            tagging::META_KEY,
            tagging::encode(tags),
        )
        .await?;
    if found { Ok(()) } else { Err(no_such_key()) }
}

/// Checks a small request document against the digests the client sent with it
/// (`Content-MD5`, `x-amz-checksum-*`).
fn check_body_digests(h: &http::HeaderMap, doc: &[u8]) -> Result<(), ApiError> {
    if let Some(md5) = header(h, "content-md5")
        && B64.encode(Md5::digest(doc)) != md5.trim()
    {
        return Err(bad_digest());
    }
    type Digest = fn(&[u8]) -> Vec<u8>;
    let checks: [(&str, Digest); 4] = [
        ("x-amz-checksum-crc32", |d| {
            crc32fast::hash(d).to_be_bytes().to_vec()
        }),
        ("x-amz-checksum-crc32c", |d| {
            crc32c::crc32c(d).to_be_bytes().to_vec()
        }),
        ("x-amz-checksum-crc64nvme", |d| {
            let mut c = crc64fast_nvme::Digest::new();
            c.write(d);
            c.sum64().to_be_bytes().to_vec()
        }),
        ("x-amz-checksum-sha256", |d| {
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(d)).to_vec()
        }),
    ];
    for (name, digest) in checks {
        if let Some(want) = header(h, name)
            && want.trim() != B64.encode(digest(doc))
        {
            return Err(bad_digest());
        }
    }
    Ok(())
}

fn bad_digest() -> ApiError {
    ApiError::bad_request(
        "BadDigest",
        "the Content-MD5 or checksum you specified did not match what we received",
    )
}

async fn bucket_exists(state: &State, account: &str, bucket: &str) -> Result<(), ApiError> {
    state
        .store
        .get_container(account, bucket)
        .await?
        .ok_or_else(no_such_bucket)
        .map(|_| ())
}

fn content_type(h: &http::HeaderMap) -> String {
    header(h, "content-type")
        .unwrap_or("binary/octet-stream")
        .to_owned()
}

/// `x-amz-meta-*` headers, stored under Swift's `x-object-meta-*` names.
fn user_meta(h: &http::HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-amz-meta-")?;
            Some((format!("x-object-meta-{name}"), v.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// Builds the body source the client's `x-amz-content-sha256` announces.
fn make_source(
    h: &http::HeaderMap,
    v: &sigv4::Verified,
    body: hyper::body::Incoming,
) -> Result<(Source, Option<u64>), ApiError> {
    let content_length = header(h, "content-length").and_then(|s| s.parse::<u64>().ok());
    // An aws-chunked body says how many bytes it decodes to; S3 refuses it without that
    // count, and the body must then hold exactly that many (checked as it streams in).
    let decoded_length = || -> Result<Option<u64>, ApiError> {
        match header(h, "x-amz-decoded-content-length") {
            None => Err(ApiError::new(
                http::StatusCode::LENGTH_REQUIRED,
                "MissingContentLength",
                "an aws-chunked body needs the x-amz-decoded-content-length header",
            )),
            Some(s) => s.trim().parse().map(Some).map_err(|_| {
                ApiError::bad_request(
                    "InvalidArgument",
                    format!("x-amz-decoded-content-length is not a byte count: {s:?}"),
                )
            }),
        }
    };
    let mut src = match v.payload_hash.as_str() {
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => (
            Source::chunked(body, Some(ChunkCheck::new(v))),
            decoded_length()?,
        ),
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => (Source::chunked(body, None), decoded_length()?),
        "UNSIGNED-PAYLOAD" => (Source::plain(body), content_length),
        p if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let mut s = Source::plain(body);
            s.digests.sha256 = Some(sha2::Sha256::default());
            (s, content_length)
        }
        _ => {
            return Err(ApiError::bad_request(
                "InvalidArgument",
                "unsupported x-amz-content-sha256 value",
            ));
        }
    };
    let algo = header(h, "x-amz-sdk-checksum-algorithm")
        .map(|s| s.to_ascii_lowercase())
        .or_else(|| {
            header(h, "x-amz-trailer")
                .and_then(|t| t.strip_prefix("x-amz-checksum-"))
                .map(str::to_owned)
        })
        .or_else(|| {
            h.keys()
                .find_map(|k| k.as_str().strip_prefix("x-amz-checksum-"))
                .filter(|a| *a != "mode" && *a != "type")
                .map(str::to_owned)
        });
    match algo.as_deref() {
        None => {}
        Some("crc32") => src.0.digests.crc32 = Some(crc32fast::Hasher::new()),
        Some("sha256") => {
            src.0
                .digests
                .sha256
                .get_or_insert_with(sha2::Sha256::default);
        }
        Some("crc32c") => src.0.digests.crc32c = Some(0),
        Some("crc64nvme") => src.0.digests.crc64nvme = Some(crc64fast_nvme::Digest::new()),
        Some(other) => {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                format!(
                    "checksum algorithm {other} is not supported; use crc32, crc32c, crc64nvme or sha256"
                ),
            ));
        }
    }
    Ok(src)
}

/// Streams a body into a durable blob and checks every digest the client gave.
async fn receive(
    state: &State,
    mut src: Source,
    expected: Option<u64>,
    h: &http::HeaderMap,
) -> Result<Blob, ApiError> {
    let (writer, _) = src
        .to_blob(&state.store, state.config.max_object_size, expected)
        .await?;
    let find = |name: &str| -> Option<String> {
        header(h, name).map(str::to_owned).or_else(|| {
            src.trailers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    if let Some(crc) = src.digests.crc32.take() {
        let got = B64.encode(crc.finalize().to_be_bytes());
        match find("x-amz-checksum-crc32") {
            Some(want) if want == got => {}
            Some(_) => return Err(bad_digest()),
            None => {
                return Err(ApiError::bad_request(
                    "InvalidRequest",
                    "x-amz-checksum-crc32 was announced but not sent",
                ));
            }
        }
    }
    let checks: [(&str, Option<Vec<u8>>); 2] = [
        (
            "x-amz-checksum-crc32c",
            src.digests.crc32c.take().map(|c| c.to_be_bytes().to_vec()),
        ),
        (
            "x-amz-checksum-crc64nvme",
            src.digests
                .crc64nvme
                .take()
                .map(|c| c.sum64().to_be_bytes().to_vec()),
        ),
    ];
    for (name, got) in checks {
        if let Some(got) = got {
            match find(name) {
                Some(want) if want == B64.encode(&got) => {}
                Some(_) => return Err(bad_digest()),
                None => {
                    return Err(ApiError::bad_request(
                        "InvalidRequest",
                        format!("{name} was announced but not sent"),
                    ));
                }
            }
        }
    }
    if let Some(sha) = src.digests.sha256.take() {
        let digest = sha2::Digest::finalize(sha);
        let verified_hash = header(h, "x-amz-content-sha256").unwrap_or("");
        if verified_hash.len() == 64 && !verified_hash.eq_ignore_ascii_case(&hex::encode(digest)) {
            return Err(ApiError::bad_request(
                "XAmzContentSHA256Mismatch",
                "the provided 'x-amz-content-sha256' header does not match what was computed",
            ));
        }
        if let Some(want) = find("x-amz-checksum-sha256")
            && want != B64.encode(digest)
        {
            return Err(bad_digest());
        }
    }
    let blob = writer.finish().await?;
    if let Some(md5) = header(h, "content-md5")
        && hex::decode(&blob.md5)
            .map(|m| B64.encode(m))
            .ok()
            .as_deref()
            != Some(md5.trim())
    {
        state.store.remove_blobs(vec![blob]).await;
        return Err(bad_digest());
    }
    Ok(blob)
}

async fn list_buckets(state: &State, account: &str) -> Result<Response, ApiError> {
    let cs = state
        .store
        .list_containers(
            account,
            ListQuery {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let mut body = format!(
        "{XML_HEAD}<ListAllMyBucketsResult xmlns=\"{NS}\"><Owner><ID>{a}</ID><DisplayName>{a}</DisplayName></Owner><Buckets>",
        a = xml::escape(account)
    );
    for c in cs {
        let _ = write!(
            body,
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            xml::escape(&c.name),
            iso8601(c.created_ms)
        );
    }
    body.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml_response(StatusCode::OK, body))
}

async fn list_objects(
    state: &State,
    account: &str,
    bucket: &str,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    bucket_exists(state, account, bucket).await?;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let v2 = get("list-type").as_deref() == Some("2");
    let prefix = get("prefix").unwrap_or_default();
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let max_keys = match get("max-keys") {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("InvalidArgument", "max-keys must be a number"))?
            .min(MAX_KEYS),
        None => MAX_KEYS,
    };
    let url_encode = get("encoding-type").as_deref() == Some("url");
    let enc = |s: &str| {
        if url_encode {
            sigv4::uri_encode(s, false)
        } else {
            xml::escape(s)
        }
    };
    let marker = if v2 {
        match get("continuation-token") {
            Some(t) => String::from_utf8(B64.decode(t.as_bytes()).map_err(|_| {
                ApiError::bad_request("InvalidArgument", "the continuation token is not valid")
            })?)
            .map_err(|_| ApiError::bad_request("InvalidArgument", "bad continuation token"))?,
            None => get("start-after").unwrap_or_default(),
        }
    } else {
        get("marker").unwrap_or_default()
    };
    let entries = state
        .store
        .list_objects(
            account,
            bucket,
            ListQuery {
                prefix: prefix.clone(),
                delimiter: delimiter.clone(),
                marker: marker.clone(),
                end_marker: None,
                limit: max_keys + 1,
            },
        )
        .await?;
    let truncated = entries.len() > max_keys;
    let entries = &entries[..entries.len().min(max_keys)];
    let last = entries.last().map(|e| match e {
        Entry::Object(o) => o.name.clone(),
        Entry::Subdir(s) => s.clone(),
    });
    let root = "ListBucketResult";
    let mut body = format!(
        "{XML_HEAD}<{root} xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{max_keys}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        xml::escape(bucket),
        enc(&prefix)
    );
    if let Some(d) = &delimiter {
        let _ = write!(body, "<Delimiter>{}</Delimiter>", enc(d));
    }
    if url_encode {
        body.push_str("<EncodingType>url</EncodingType>");
    }
    if v2 {
        let _ = write!(body, "<KeyCount>{}</KeyCount>", entries.len());
        if let Some(t) = get("continuation-token") {
            let _ = write!(
                body,
                "<ContinuationToken>{}</ContinuationToken>",
                xml::escape(&t)
            );
        }
        if let Some(s) = get("start-after") {
            let _ = write!(body, "<StartAfter>{}</StartAfter>", enc(&s));
        }
        if truncated && let Some(l) = &last {
            let _ = write!(
                body,
                "<NextContinuationToken>{}</NextContinuationToken>",
                B64.encode(l.as_bytes())
            );
        }
    } else {
        let _ = write!(body, "<Marker>{}</Marker>", enc(&marker));
        if truncated && let Some(l) = &last {
            let _ = write!(body, "<NextMarker>{}</NextMarker>", enc(l));
        }
    }
    for e in entries {
        match e {
            Entry::Object(o) => {
                let _ = write!(
                    body,
                    "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                    enc(&o.name),
                    iso8601(o.last_modified_ms),
                    xml::escape(&o.etag),
                    o.size
                );
            }
            Entry::Subdir(s) => {
                let _ = write!(
                    body,
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    enc(s)
                );
            }
        }
    }
    let _ = write!(body, "</{root}>");
    Ok(xml_response(StatusCode::OK, body))
}

async fn delete_objects(
    state: &State,
    account: &str,
    bucket: &str,
    doc: &[u8],
) -> Result<Response, ApiError> {
    bucket_exists(state, account, bucket).await?;
    let (objs, top) = xml::records(doc, "Delete", "Object")?;
    if objs.len() > 1000 {
        return Err(ApiError::bad_request(
            "MalformedXML",
            "at most 1000 keys per request",
        ));
    }
    let quiet = xml::field(&top, "Quiet") == Some("true");
    // Every Object is checked before anything is deleted.
    let mut keys = Vec::with_capacity(objs.len());
    for o in &objs {
        let Some(key) = xml::field(o, "Key") else {
            return Err(ApiError::bad_request(
                "MalformedXML",
                "an Object has no Key",
            ));
        };
        keys.push((key, xml::field(o, "VersionId")));
    }
    let mut body = format!("{XML_HEAD}<DeleteResult xmlns=\"{NS}\">");
    for (key, version) in keys {
        // A VersionId names a version as a DELETE's versionId does: `null` is the object,
        // another well-formed id a version that does not exist (deleting it deletes
        // nothing and succeeds, as in S3), anything else is refused for that key.
        let named = match versions::named(version) {
            Ok(n) => n,
            Err(e) => {
                let _ = write!(
                    body,
                    "<Error><Key>{}</Key><VersionId>{}</VersionId><Code>{}</Code><Message>{}</Message></Error>",
                    xml::escape(key),
                    xml::escape(version.unwrap_or_default()),
                    e.code,
                    xml::escape(&e.message)
                );
                continue;
            }
        };
        if !matches!(named, Some(versions::Named::Absent(_))) {
            state.store.delete_object(account, bucket, key).await?;
        }
        if !quiet {
            let _ = write!(body, "<Deleted><Key>{}</Key>", xml::escape(key));
            if let Some(v) = version {
                let _ = write!(body, "<VersionId>{}</VersionId>", xml::escape(v));
            }
            body.push_str("</Deleted>");
        }
    }
    body.push_str("</DeleteResult>");
    Ok(xml_response(StatusCode::OK, body))
}

/// The S3 multipart ETag: MD5 of the parts' binary MD5s, `-N`.
pub fn multipart_etag(md5s: &[&str]) -> String {
    let mut h = Md5::new();
    for m in md5s {
        h.update(hex::decode(m).unwrap_or_default());
    }
    format!("{}-{}", hex::encode(h.finalize()), md5s.len())
}

async fn complete_upload(
    state: &State,
    account: &str,
    bucket: &str,
    key: &str,
    upload_id: &str,
    doc: &[u8],
) -> Result<Response, ApiError> {
    let up = state.store.get_upload(account, upload_id).await?;
    if up.container != bucket || up.name != key {
        return Err(ApiError::not_found("NoSuchUpload"));
    }
    let (listed, _) = xml::records(doc, "CompleteMultipartUpload", "Part")?;
    if listed.is_empty() {
        return Err(ApiError::bad_request("MalformedXML", "no parts listed"));
    }
    let stored = state.store.parts(upload_id).await?;
    let invalid_part = || {
        ApiError::bad_request(
            "InvalidPart",
            "one or more of the specified parts could not be found or its entity tag did not match",
        )
    };
    let mut blobs = Vec::new();
    let mut prev = 0u32;
    for p in &listed {
        let n: u32 = xml::field(p, "PartNumber")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("MalformedXML", "bad PartNumber"))?;
        if n <= prev {
            return Err(ApiError::bad_request(
                "InvalidPartOrder",
                "the list of parts was not in ascending order",
            ));
        }
        prev = n;
        let blob = stored.get(&n).ok_or_else(invalid_part)?;
        let etag = xml::field(p, "ETag").unwrap_or("").trim().trim_matches('"');
        if etag != blob.md5 {
            return Err(invalid_part());
        }
        blobs.push(blob.clone());
    }
    for b in &blobs[..blobs.len() - 1] {
        if b.size < MIN_PART_SIZE {
            return Err(ApiError::bad_request(
                "EntityTooSmall",
                "your proposed upload is smaller than the minimum allowed object size",
            ));
        }
    }
    let etag = multipart_etag(&blobs.iter().map(|b| b.md5.as_str()).collect::<Vec<_>>());
    let rec = ObjectRecord {
        name: key.to_owned(),
        size: blobs.iter().map(|b| b.size).sum(),
        etag: etag.clone(),
        content_type: up.content_type,
        last_modified_ms: now_ms(),
        meta: up.meta,
        delete_at: None,
        blobs,
        kind: Kind::Plain,
    };
    let unused = state
        .store
        .complete_upload(account, upload_id, rec, bucket)
        .await?;
    state.store.remove_blobs(unused).await;
    Ok(xml_response(
        StatusCode::OK,
        format!(
            "{XML_HEAD}<CompleteMultipartUploadResult xmlns=\"{NS}\"><Location>/{b}/{k}</Location><Bucket>{b}</Bucket><Key>{k}</Key><ETag>&quot;{etag}&quot;</ETag></CompleteMultipartUploadResult>",
            b = xml::escape(bucket),
            k = xml::escape(key)
        ),
    ))
}

/// The object `x-amz-copy-source` names (`/bucket/key`, optionally `?versionId=`: `null`
/// is the object itself, as for a GET).
async fn copy_source(
    state: &State,
    account: &str,
    h: &http::HeaderMap,
) -> Result<ObjectRecord, ApiError> {
    let src = header(h, "x-amz-copy-source").unwrap_or("");
    let (path, query) = src.split_once('?').unwrap_or((src, ""));
    let (sb, sk) = split_path(path)?;
    let q = query_pairs(Some(query));
    let version = q
        .iter()
        .find(|(n, _)| n == "versionId")
        .map(|(_, v)| v.as_str());
    match versions::named(version)? {
        None => state
            .store
            .get_object(account, &sb, &sk)
            .await?
            .ok_or_else(no_such_key),
        Some(versions::Named::Null) => state
            .store
            .get_object(account, &sb, &sk)
            .await?
            .ok_or_else(versions::no_such_version),
        Some(versions::Named::Absent(_)) => Err(versions::no_such_version()),
    }
}

/// The blob of an UploadPartCopy: `x-amz-copy-source`, optionally ranged.
async fn upload_part_copy(
    state: &State,
    account: &str,
    h: &http::HeaderMap,
) -> Result<Blob, ApiError> {
    let rec = copy_source(state, account, h).await?;
    let (blobs, size, _) = crate::api::swift::resolve(state, account, &rec, None).await?;
    let (start, end) = match header(h, "x-amz-copy-source-range") {
        Some(r) => match parse_range(r, size) {
            Ok(Some(r)) => r,
            _ => {
                return Err(ApiError::bad_request(
                    "InvalidArgument",
                    "the x-amz-copy-source-range value must be of the form bytes=first-last within the object",
                ));
            }
        },
        None => (0, size),
    };
    super::body::copy_pieces(&state.store, pieces(&blobs, start, end)).await
}

async fn copy_object(
    state: &State,
    account: &str,
    bucket: &str,
    key: &str,
    h: &http::HeaderMap,
) -> Result<Response, ApiError> {
    acl::check_object(h)?;
    let replace_tags = match header(h, "x-amz-tagging-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "InvalidArgument",
                "unknown tagging directive: x-amz-tagging-directive must be COPY or REPLACE",
            ));
        }
    };
    let new_tags = if replace_tags {
        Some(header_tags(h)?)
    } else {
        None
    };
    bucket_exists(state, account, bucket).await?;
    let rec = copy_source(state, account, h).await?;
    let (blobs, _, _) = crate::api::swift::resolve(state, account, &rec, None).await?;
    let blob = super::body::copy_into_blob(&state.store, &blobs).await?;
    let replace = header(h, "x-amz-metadata-directive") == Some("REPLACE");
    let mut meta = if replace {
        user_meta(h)
    } else {
        rec.meta.clone()
    };
    // COPY (the default) keeps the source's tags, REPLACE takes the request's.
    let tags = new_tags.unwrap_or_else(|| tagging::stored(&rec.meta));
    tagging::store_into(&mut meta, &tags);
    let new = ObjectRecord {
        name: key.to_owned(),
        size: blob.size,
        etag: blob.md5.clone(),
        content_type: if replace {
            content_type(h)
        } else {
            rec.content_type.clone()
        },
        last_modified_ms: now_ms(),
        meta,
        delete_at: None,
        blobs: vec![blob],
        kind: Kind::Plain,
    };
    let etag = new.etag.clone();
    let ms = new.last_modified_ms;
    let old = state.store.put_object(account, bucket, new).await?;
    state.store.remove_blobs(old).await;
    Ok(xml_response(
        StatusCode::OK,
        format!(
            "{XML_HEAD}<CopyObjectResult xmlns=\"{NS}\"><LastModified>{}</LastModified><ETag>&quot;{etag}&quot;</ETag></CopyObjectResult>",
            iso8601(ms)
        ),
    ))
}

async fn get_object(
    state: &State,
    account: &str,
    bucket: &str,
    key: &str,
    h: &http::HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    bucket_exists(state, account, bucket).await?;
    let rec = state
        .store
        .get_object(account, bucket, key)
        .await?
        .ok_or_else(no_such_key)?;
    let (blobs, size, etag) = crate::api::swift::resolve(state, account, &rec, None).await?;
    let mut status = StatusCode::OK;
    let mut range = (0, size);
    match evaluate(h, &etag, rec.last_modified_ms, true) {
        Condition::Proceed => {}
        Condition::NotModified => {
            let mut r = response(StatusCode::NOT_MODIFIED, "");
            set_header(&mut r, "etag", &format!("\"{etag}\""));
            return Ok(r);
        }
        Condition::Failed => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "at least one of the preconditions you specified did not hold",
            ));
        }
    }
    if let Some(r) = header(h, "range") {
        match parse_range(r, size) {
            Ok(Some(r)) => {
                range = r;
                status = StatusCode::PARTIAL_CONTENT;
            }
            Ok(None) | Err(RangeError::Malformed) => {}
            Err(RangeError::Unsatisfiable) => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "the requested range is not satisfiable",
                ));
            }
        }
    }
    let body = if head {
        super::RespBody::empty()
    } else {
        stream_pieces(&state.store, pieces(&blobs, range.0, range.1)).await?
    };
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    set_header(&mut r, "content-length", &(range.1 - range.0).to_string());
    set_header(&mut r, "etag", &format!("\"{etag}\""));
    set_header(&mut r, "content-type", &rec.content_type);
    set_header(&mut r, "last-modified", &http_date(rec.last_modified_ms));
    set_header(&mut r, "accept-ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set_header(
            &mut r,
            "content-range",
            &format!("bytes {}-{}/{size}", range.0, range.1 - 1),
        );
    }
    for (k, v) in &rec.meta {
        if let Some(name) = k.strip_prefix("x-object-meta-") {
            set_header(&mut r, &format!("x-amz-meta-{name}"), v);
        }
    }
    let tags = tagging::stored(&rec.meta).len();
    if tags > 0 {
        set_header(&mut r, "x-amz-tagging-count", &tags.to_string());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_crates_match_the_catalogued_check_values() {
        // The standard "check" inputs of the CRC catalogue.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut d = crc64fast_nvme::Digest::new();
        d.write(b"123456789");
        assert_eq!(d.sum64(), 0xAE8B_1486_0A79_9888);
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket_name("my-bucket.1"));
        for bad in [
            "ab",
            "Upper",
            "-start",
            "end-",
            "has_underscore",
            &"x".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn multipart_etag_follows_s3() {
        // Two parts whose MD5s are those of "a" and "b".
        let a = hex::encode(Md5::digest(b"a"));
        let b = hex::encode(Md5::digest(b"b"));
        let mut cat = Md5::digest(b"a").to_vec();
        cat.extend_from_slice(&Md5::digest(b"b"));
        assert_eq!(
            multipart_etag(&[&a, &b]),
            format!("{}-2", hex::encode(Md5::digest(&cat)))
        );
    }

    #[test]
    fn paths_split_and_reject_overlong_keys() {
        assert_eq!(
            split_path("/b/dir/a%20b").unwrap(),
            ("b".to_owned(), "dir/a b".to_owned())
        );
        assert_eq!(split_path("/b").unwrap(), ("b".to_owned(), String::new()));
        let long = format!("/b/{}", "k".repeat(MAX_KEY_LEN + 1));
        assert_eq!(split_path(&long).unwrap_err().code, "KeyTooLongError");
    }
}
