//! S3 ACLs, canned only, mapped onto the Swift container read ACL objectd already
//! enforces: `public-read` on a bucket is `X-Container-Read: .r:*,.rlistings` (anyone may
//! list it and read its objects, through the Swift path), `private` removes the read
//! ACL. Objects have no ACL of their own: they are readable by whoever may read their
//! bucket. `bucket-owner-full-control` (which clients send on writes into buckets of
//! other accounts) is accepted wherever `private` is: an object's writer and its bucket's
//! owner are the same account here, so it grants nothing more. Other canned ACLs, grant
//! headers and XML ACL bodies are not implemented.

use std::collections::BTreeMap;

use http::StatusCode;

use super::{NS, XML_HEAD, xml};
use crate::api::swift::acl::{Acl, Requester};
use crate::api::{ApiError, header};

/// The Swift read ACL that a bucket's `public-read` stands for.
pub const PUBLIC_READ_ACL: &str = ".r:*,.rlistings";

/// The canned ACLs objectd implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canned {
    /// Only the owner.
    Private,
    /// Anyone may read (a bucket: list it and read its objects).
    PublicRead,
    /// The object's owner and the bucket's owner get full control. Both are the
    /// requesting account here, so on an object it is `private`; on a bucket S3 ignores it
    /// at creation, and as a bucket's ACL it too leaves only the owner.
    BucketOwnerFullControl,
}

/// Canned ACLs S3 defines that objectd does not implement.
const UNIMPLEMENTED: [&str; 5] = [
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "log-delivery-write",
];

fn not_implemented(what: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", what)
}

/// The request's `x-amz-acl` (an empty one counts as absent, as in S3); grant headers,
/// and canned ACLs other than `private` and `public-read`, are refused with 501.
pub fn canned(h: &http::HeaderMap) -> Result<Option<Canned>, ApiError> {
    if h.keys().any(|k| k.as_str().starts_with("x-amz-grant-")) {
        return Err(not_implemented(
            "ACL grant headers (x-amz-grant-*) are not implemented; use the canned ACLs private or public-read",
        ));
    }
    match header(h, "x-amz-acl").map(str::trim) {
        None | Some("") => Ok(None),
        Some("private") => Ok(Some(Canned::Private)),
        Some("public-read") => Ok(Some(Canned::PublicRead)),
        Some("bucket-owner-full-control") => Ok(Some(Canned::BucketOwnerFullControl)),
        Some(other) if UNIMPLEMENTED.contains(&other) => Err(not_implemented(format!(
            "the canned ACL {other} is not implemented; use private, public-read or bucket-owner-full-control"
        ))),
        Some(other) => Err(ApiError::bad_request(
            "InvalidArgument",
            format!("x-amz-acl {other:?} is not a canned ACL"),
        )),
    }
}

/// Checks the ACL headers of an object write (PutObject, CopyObject,
/// CreateMultipartUpload, PutObjectAcl): only `private` and `bucket-owner-full-control`
/// (what clients such as `aws s3 cp --acl` send) are accepted, since an object has no ACL
/// apart from its bucket's and both leave it to its owner.
pub fn check_object(h: &http::HeaderMap) -> Result<(), ApiError> {
    match canned(h)? {
        None | Some(Canned::Private) | Some(Canned::BucketOwnerFullControl) => Ok(()),
        Some(Canned::PublicRead) => Err(not_implemented(
            "object ACLs other than private are not implemented: an object is readable by whoever may read its bucket (make the bucket public-read)",
        )),
    }
}

/// The container metadata update for a bucket's canned ACL (an empty value removes the
/// read ACL).
pub fn bucket_meta(c: Canned) -> BTreeMap<String, String> {
    let value = match c {
        Canned::Private | Canned::BucketOwnerFullControl => String::new(),
        Canned::PublicRead => PUBLIC_READ_ACL.to_owned(),
    };
    BTreeMap::from([("x-container-read".to_owned(), value)])
}

/// What anonymous requesters may do in a container, by its stored read ACL:
/// (read objects, list the container).
pub fn anonymous_access(container_meta: &BTreeMap<String, String>) -> (bool, bool) {
    let acl = Acl::stored(container_meta.get("x-container-read"), false);
    let anon = Requester::default();
    (acl.may_read(&anon), acl.may_list(&anon))
}

/// An `AccessControlPolicy` document: the owner with FULL_CONTROL, plus AllUsers READ
/// when `public`.
pub fn policy(owner: &str, public: bool) -> String {
    let o = xml::escape(owner);
    let mut body = format!(
        "{XML_HEAD}<AccessControlPolicy xmlns=\"{NS}\"><Owner><ID>{o}</ID><DisplayName>{o}</DisplayName></Owner><AccessControlList>\
         <Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>{o}</ID><DisplayName>{o}</DisplayName></Grantee><Permission>FULL_CONTROL</Permission></Grant>"
    );
    if public {
        body.push_str(
            "<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>",
        );
    }
    body.push_str("</AccessControlList></AccessControlPolicy>");
    body
}

/// Refuses a PutBucketAcl/PutObjectAcl body (XML ACLs are not implemented); with no
/// body, the canned header is required, as in S3.
pub fn check_put_body(body: &[u8], given: Option<Canned>) -> Result<Canned, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        return Err(not_implemented(
            "XML access control policies are not implemented; use the x-amz-acl header with private or public-read",
        ));
    }
    given.ok_or_else(|| {
        ApiError::bad_request(
            "MissingSecurityHeader",
            "your request was missing a required header: x-amz-acl",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn canned_acls_and_refusals() {
        assert_eq!(canned(&headers(&[])).unwrap(), None);
        assert_eq!(canned(&headers(&[("x-amz-acl", "")])).unwrap(), None);
        assert_eq!(
            canned(&headers(&[("x-amz-acl", "private")])).unwrap(),
            Some(Canned::Private)
        );
        assert_eq!(
            canned(&headers(&[("x-amz-acl", "public-read")])).unwrap(),
            Some(Canned::PublicRead)
        );
        let e = canned(&headers(&[("x-amz-acl", "public-read-write")])).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (501, "NotImplemented"));
        let e = canned(&headers(&[("x-amz-grant-read", "uri=x")])).unwrap_err();
        assert_eq!(e.status.as_u16(), 501);
        let e = canned(&headers(&[("x-amz-acl", "everyone")])).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "InvalidArgument"));
        assert!(check_object(&headers(&[("x-amz-acl", "private")])).is_ok());
        let owner = headers(&[("x-amz-acl", "bucket-owner-full-control")]);
        assert_eq!(
            canned(&owner).unwrap(),
            Some(Canned::BucketOwnerFullControl)
        );
        assert!(check_object(&owner).is_ok());
        assert_eq!(
            bucket_meta(Canned::BucketOwnerFullControl)["x-container-read"],
            ""
        );
        let e = canned(&headers(&[("x-amz-acl", "bucket-owner-read")])).unwrap_err();
        assert_eq!(e.status.as_u16(), 501);
        assert_eq!(
            check_object(&headers(&[("x-amz-acl", "public-read")]))
                .unwrap_err()
                .status
                .as_u16(),
            501
        );
    }

    #[test]
    fn canned_acls_map_onto_swift_read_acls() {
        let public = bucket_meta(Canned::PublicRead);
        assert_eq!(anonymous_access(&public), (true, true));
        assert_eq!(anonymous_access(&BTreeMap::new()), (false, false));
        let objects_only = BTreeMap::from([("x-container-read".to_owned(), ".r:*".to_owned())]);
        assert_eq!(anonymous_access(&objects_only), (true, false));
        assert_eq!(bucket_meta(Canned::Private)["x-container-read"], "");
    }

    #[test]
    fn bodies_and_missing_headers() {
        assert_eq!(
            check_put_body(b"", Some(Canned::PublicRead)).unwrap(),
            Canned::PublicRead
        );
        assert_eq!(
            check_put_body(b"<AccessControlPolicy/>", Some(Canned::Private))
                .unwrap_err()
                .status
                .as_u16(),
            501
        );
        assert_eq!(
            check_put_body(b" \n", None).unwrap_err().code,
            "MissingSecurityHeader"
        );
        let p = policy("AUTH_a<b", true);
        assert!(p.contains("<ID>AUTH_a&lt;b</ID>"), "{p}");
        assert!(p.contains("global/AllUsers</URI></Grantee><Permission>READ"));
        assert!(!policy("o", false).contains("AllUsers"));
    }
}
