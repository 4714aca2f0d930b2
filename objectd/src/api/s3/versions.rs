//! Object versions, as S3 shows them for a bucket that keeps one version of each key
//! (versioning never enabled, or `Suspended`; objectd never enables it): every object is
//! its key's single version, whose id is `null` and which is the latest.
//!
//! [`list`] answers ListObjectVersions (`GET /bucket?versions`) with one `Version` per
//! object, paged by `key-marker`/`version-id-marker`. [`named`] reads the `versionId` of an
//! object request: `null` names the object itself; an id shaped like S3's (which objectd
//! never issues) names a version that does not exist (404 `NoSuchVersion`, or a no-op
//! delete); anything else is refused as S3 refuses it (400 `InvalidArgument`).

use std::fmt::Write as _;

use http::StatusCode;

use super::{MAX_KEYS, NS, XML_HEAD, sigv4, xml, xml_response};
use crate::api::http::iso8601;
use crate::api::{ApiError, Response, State};
use crate::store::{Entry, ListQuery};

/// The id of the version every object has in a bucket without versioning.
pub const NULL: &str = "null";

/// Length of the version ids S3 issues.
const S3_ID_LEN: usize = 32;

/// The version a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// `null`: the object itself.
    Null,
    /// A well-formed id no object here has.
    Absent(String),
}

fn invalid_id() -> ApiError {
    ApiError::bad_request("InvalidArgument", "Invalid version id specified")
}

/// 404 `NoSuchVersion`.
pub fn no_such_version() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NoSuchVersion",
        "The specified version does not exist.",
    )
}

/// Whether `id` has the shape of the version ids S3 issues (32 characters of letters,
/// digits, `.` and `_`). S3 answers such an id it does not know with `NoSuchVersion` and
/// any other string with `InvalidArgument`.
fn s3_shaped(id: &str) -> bool {
    id.len() == S3_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

/// Reads a request's `versionId` (absent: `None`).
pub fn named(version_id: Option<&str>) -> Result<Option<Named>, ApiError> {
    match version_id {
        None => Ok(None),
        Some("") => Err(ApiError::bad_request(
            "InvalidArgument",
            "Version id cannot be the empty string",
        )),
        Some(NULL) => Ok(Some(Named::Null)),
        Some(id) if s3_shaped(id) => Ok(Some(Named::Absent(id.to_owned()))),
        Some(_) => Err(invalid_id()),
    }
}

/// What a named version turns an object request's error into: a request that named a
/// version is told the version does not exist where it would be told the key does not.
pub fn missing_as_version(e: ApiError) -> ApiError {
    if e.code == "NoSuchKey" {
        no_such_version()
    } else {
        e
    }
}

/// ListObjectVersions. `q` is the request's query.
pub async fn list(
    state: &State,
    account: &str,
    bucket: &str,
    q: &[(String, String)],
) -> Result<Response, ApiError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let prefix = get("prefix").unwrap_or_default();
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let key_marker = get("key-marker").unwrap_or_default();
    let version_marker = get("version-id-marker").unwrap_or_default();
    let max_keys = match get("max-keys") {
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| {
                ApiError::bad_request(
                    "InvalidArgument",
                    "max-keys must be an integer between 0 and 2147483647",
                )
            })?
            .min(MAX_KEYS),
        None => MAX_KEYS,
    };
    let url_encode = match get("encoding-type").as_deref() {
        None => false,
        Some("url") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "InvalidArgument",
                "Invalid Encoding Method specified in Request",
            ));
        }
    };
    if !version_marker.is_empty() {
        if key_marker.is_empty() {
            return Err(ApiError::bad_request(
                "InvalidArgument",
                "A version-id marker cannot be specified without a key marker.",
            ));
        }
        // The key marker's only version is `null`, so listing resumes after that key. No
        // other id can place the listing inside a key's versions here.
        if version_marker != NULL {
            return Err(invalid_id());
        }
    }
    super::bucket_exists(state, account, bucket).await?;
    let entries = state
        .store
        .list_objects(
            account,
            bucket,
            ListQuery {
                prefix: prefix.clone(),
                delimiter: delimiter.clone(),
                marker: key_marker.clone(),
                end_marker: None,
                limit: max_keys + 1,
            },
        )
        .await?;
    let truncated = entries.len() > max_keys;
    let entries = &entries[..entries.len().min(max_keys)];
    let enc = |s: &str| {
        if url_encode {
            sigv4::uri_encode(s, false)
        } else {
            xml::escape(s)
        }
    };
    let mut body = format!(
        "{XML_HEAD}<ListVersionsResult xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix><KeyMarker>{}</KeyMarker><VersionIdMarker>{}</VersionIdMarker>",
        xml::escape(bucket),
        enc(&prefix),
        enc(&key_marker),
        xml::escape(&version_marker),
    );
    // Paging resumes after the last entry returned: a key (then its version, `null`) or a
    // common prefix (which has no version).
    if truncated {
        match entries.last() {
            Some(Entry::Object(o)) => {
                let _ = write!(
                    body,
                    "<NextKeyMarker>{}</NextKeyMarker><NextVersionIdMarker>{NULL}</NextVersionIdMarker>",
                    enc(&o.name)
                );
            }
            Some(Entry::Subdir(s)) => {
                let _ = write!(body, "<NextKeyMarker>{}</NextKeyMarker>", enc(s));
            }
            None => {}
        }
    }
    let _ = write!(body, "<MaxKeys>{max_keys}</MaxKeys>");
    if let Some(d) = &delimiter {
        let _ = write!(body, "<Delimiter>{}</Delimiter>", enc(d));
    }
    let _ = write!(body, "<IsTruncated>{truncated}</IsTruncated>");
    if url_encode {
        body.push_str("<EncodingType>url</EncodingType>");
    }
    let owner = xml::escape(account);
    for e in entries {
        match e {
            Entry::Object(o) => {
                let _ = write!(
                    body,
                    "<Version><Key>{}</Key><VersionId>{NULL}</VersionId><IsLatest>true</IsLatest><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><Owner><ID>{owner}</ID><DisplayName>{owner}</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Version>",
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
    body.push_str("</ListVersionsResult>");
    Ok(xml_response(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn version_ids_are_null_absent_or_refused() {
        assert_eq!(named(None).unwrap(), None);
        assert_eq!(named(Some("null")).unwrap(), Some(Named::Null));
        let s3_id = "KC0WuaPTHv7At3olS.BPuH.weAJqMkKJ";
        assert_eq!(
            named(Some(s3_id)).unwrap(),
            Some(Named::Absent(s3_id.to_owned()))
        );
        for bad in [
            "",
            "dsf",
            "NULL",
            "Null",
            &"a".repeat(33),
            "a/b+c=0123456789012345678901234",
        ] {
            let e = named(Some(bad)).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "InvalidArgument"),
                "{bad:?}"
            );
        }
        assert_eq!(
            named(Some("")).unwrap_err().message,
            "Version id cannot be the empty string"
        );
    }

    #[test]
    fn missing_keys_become_missing_versions() {
        let e = missing_as_version(super::super::no_such_key());
        assert_eq!((e.status.as_u16(), e.code), (404, "NoSuchVersion"));
        let e = missing_as_version(super::super::no_such_bucket());
        assert_eq!(e.code, "NoSuchBucket");
    }

    proptest! {
        #[test]
        fn reading_a_version_id_never_panics(s in "\\PC{0,40}") {
            let _ = named(Some(&s));
        }
    }
}
