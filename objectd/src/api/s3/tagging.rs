//! Object and bucket tags: parsed from a `Tagging` document (PutObjectTagging,
//! PutBucketTagging) or the `x-amz-tagging` header (PutObject, CreateMultipartUpload,
//! CopyObject), checked against S3's limits. An object's tags are kept in its metadata in
//! the index under [`META_KEY`], so they are written, copied, archived and dropped with the
//! record; a bucket's in its container's metadata under [`BUCKET_META_KEY`], so they are
//! dropped with the bucket.

use std::fmt::Write as _;

use super::xml;
use crate::api::ApiError;

/// Most tags on one object.
pub const MAX_TAGS: usize = 10;
/// Most tags on one bucket.
pub const MAX_BUCKET_TAGS: usize = 50;
/// Longest tag key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest tag value, in characters.
pub const MAX_VALUE_CHARS: usize = 256;
/// Where an object's tags live in its metadata (hidden from Swift responses, as Swift
/// hides its system metadata).
pub const META_KEY: &str = "x-object-sysmeta-s3-tagging";
/// Where a bucket's tags live in its container metadata (hidden from Swift too).
pub const BUCKET_META_KEY: &str = "x-container-sysmeta-s3-tagging";

/// An object's tags, in the order they were given.
pub type TagSet = Vec<(String, String)>;

fn invalid_key(why: &str) -> ApiError {
    ApiError::bad_request(
        "InvalidTag",
        format!("the TagKey you have provided is invalid: {why}"),
    )
}

fn invalid_value(why: &str) -> ApiError {
    ApiError::bad_request(
        "InvalidTag",
        format!("the TagValue you have provided is invalid: {why}"),
    )
}

fn header_error(why: &str) -> ApiError {
    ApiError::bad_request(
        "InvalidArgument",
        format!(
            "the header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates: {why}"
        ),
    )
}

/// Characters S3 allows in tag keys and values: letters, digits, spaces (not control
/// characters such as tabs) and `_ . : / = + - @`.
fn allowed(c: char) -> bool {
    c.is_alphanumeric() || (c.is_whitespace() && !c.is_control()) || "_.:/=+-@".contains(c)
}

/// Checks one tag against S3's rules.
fn check_tag(key: &str, value: &str) -> Result<(), ApiError> {
    let key_chars = key.chars().count();
    if key_chars == 0 {
        return Err(invalid_key("it is empty"));
    }
    if key_chars > MAX_KEY_CHARS {
        return Err(invalid_key("longer than 128 characters"));
    }
    if key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        return Err(invalid_key("the aws: prefix is reserved"));
    }
    if !key.chars().all(allowed) {
        return Err(invalid_key(
            "only letters, digits, spaces and _ . : / = + - @ are allowed",
        ));
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(invalid_value("longer than 256 characters"));
    }
    if !value.chars().all(allowed) {
        return Err(invalid_value(
            "only letters, digits, spaces and _ . : / = + - @ are allowed",
        ));
    }
    Ok(())
}

fn too_many() -> ApiError {
    ApiError::bad_request("BadRequest", "object tags cannot be greater than 10")
}

fn too_many_on_bucket() -> ApiError {
    ApiError::bad_request("BadRequest", "Bucket tag count cannot be greater than 50")
}

/// Reads a PutObjectTagging body: `<Tagging><TagSet><Tag><Key/><Value/></Tag>...`.
pub fn parse_document(doc: &[u8]) -> Result<TagSet, ApiError> {
    parse(doc, MAX_TAGS, too_many)
}

/// Reads a PutBucketTagging body (the same document; up to 50 tags).
pub fn parse_bucket_document(doc: &[u8]) -> Result<TagSet, ApiError> {
    parse(doc, MAX_BUCKET_TAGS, too_many_on_bucket)
}

fn parse(doc: &[u8], max: usize, too_many: fn() -> ApiError) -> Result<TagSet, ApiError> {
    let (tags, top) = xml::records_under(doc, &["Tagging", "TagSet"], "Tag")?;
    let malformed = |why: &str| {
        ApiError::bad_request(
            "MalformedXML",
            format!("the XML you provided was not well-formed or did not validate: {why}"),
        )
    };
    if xml::field(&top, "TagSet").is_none() {
        return Err(malformed("Tagging has no TagSet"));
    }
    if tags.len() > max {
        return Err(too_many());
    }
    let mut out = TagSet::new();
    for t in &tags {
        let key = xml::field(t, "Key").ok_or_else(|| malformed("a Tag has no Key"))?;
        let value = xml::field(t, "Value").ok_or_else(|| malformed("a Tag has no Value"))?;
        if t.len() != 2 {
            return Err(malformed("a Tag holds exactly one Key and one Value"));
        }
        check_tag(key, value)?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(ApiError::bad_request(
                "InvalidTag",
                "cannot provide multiple Tags with the same key",
            ));
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Reads an `x-amz-tagging` header: URL query parameters, `k1=v1&k2=v2` (a key without
/// `=` has an empty value; empty pieces are skipped).
pub fn parse_header(raw: &str) -> Result<TagSet, ApiError> {
    let mut out = TagSet::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        if k.is_empty() {
            return Err(header_error("a tag has no key"));
        }
        let key = decode(k).ok_or_else(|| header_error("bad percent-encoding"))?;
        let value = decode(v).ok_or_else(|| header_error("bad percent-encoding"))?;
        check_tag(&key, &value)?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(header_error("a key is repeated"));
        }
        out.push((key, value));
    }
    if out.len() > MAX_TAGS {
        return Err(too_many());
    }
    Ok(out)
}

/// Percent-decodes a query component (`+` is a space); `None` for a malformed escape or
/// bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The GetObjectTagging document.
pub fn document(tags: &TagSet) -> String {
    let mut body = String::from("<TagSet>");
    for (k, v) in tags {
        let _ = write!(
            body,
            "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
            xml::escape(k),
            xml::escape(v)
        );
    }
    body.push_str("</TagSet>");
    body
}

/// The tags kept in an object's metadata (none if absent or unreadable).
pub fn stored(meta: &std::collections::BTreeMap<String, String>) -> TagSet {
    meta.get(META_KEY)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// A bucket's tags, from its container metadata; `None` if it has none (S3 then
/// answers GetBucketTagging with `NoSuchTagSet`).
pub fn bucket_stored(meta: &std::collections::BTreeMap<String, String>) -> Option<TagSet> {
    meta.get(BUCKET_META_KEY)
        .and_then(|v| serde_json::from_str::<TagSet>(v).ok())
        .filter(|t| !t.is_empty())
}

/// The metadata value that keeps `tags`; `None` for an empty set (the entry is dropped).
pub fn encode(tags: &TagSet) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).expect("strings serialize"))
}

/// Puts `tags` into `meta`, replacing any there.
pub fn store_into(meta: &mut std::collections::BTreeMap<String, String>, tags: &TagSet) {
    match encode(tags) {
        Some(v) => {
            meta.insert(META_KEY.to_owned(), v);
        }
        None => {
            meta.remove(META_KEY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documents_are_read_and_checked() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet>
  <Tag><Key>project</Key><Value>blue sky</Value></Tag>
  <Tag><Key>empty</Key><Value></Value></Tag>
  <Tag><Key>self</Key><Value/></Tag>
</TagSet></Tagging>"#;
        assert_eq!(
            parse_document(doc).unwrap(),
            vec![
                ("project".to_owned(), "blue sky".to_owned()),
                ("empty".to_owned(), String::new()),
                ("self".to_owned(), String::new()),
            ]
        );
        assert_eq!(
            parse_document(b"<Tagging><TagSet/></Tagging>").unwrap(),
            vec![]
        );
        let tag = |k: &str, v: &str| format!("<Tag><Key>{k}</Key><Value>{v}</Value></Tag>");
        let doc = |tags: &str| format!("<Tagging><TagSet>{tags}</TagSet></Tagging>");
        let code = |d: &str| parse_document(d.as_bytes()).unwrap_err().code;
        let eleven: String = (0..11).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert_eq!(code(&doc(&eleven)), "BadRequest");
        let ten: String = (0..10).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert_eq!(parse_document(doc(&ten).as_bytes()).unwrap().len(), 10);
        assert_eq!(code(&doc(&(tag("a", "1") + &tag("a", "2")))), "InvalidTag");
        assert_eq!(code(&doc(&tag("", "v"))), "InvalidTag");
        assert_eq!(code(&doc(&tag(&"k".repeat(129), "v"))), "InvalidTag");
        assert!(parse_document(doc(&tag(&"k".repeat(128), &"v".repeat(256))).as_bytes()).is_ok());
        assert_eq!(code(&doc(&tag("k", &"v".repeat(257)))), "InvalidTag");
        assert_eq!(code(&doc(&tag("aws:x", "v"))), "InvalidTag");
        assert_eq!(code(&doc(&tag("a#b", "v"))), "InvalidTag");
        assert_eq!(code(&doc(&tag("k", "v?"))), "InvalidTag");
        // Multi-byte characters count as one each.
        assert!(parse_document(doc(&tag(&"\u{e9}".repeat(128), "v")).as_bytes()).is_ok());
        assert_eq!(code(&doc("<Tag><Key>k</Key></Tag>")), "MalformedXML");
        assert_eq!(code(&doc("<Tag><Value>v</Value></Tag>")), "MalformedXML");
        assert_eq!(code("<Tagging></Tagging>"), "MalformedXML");
        assert_eq!(code("<Tagging><TagSet>"), "MalformedXML");
        assert_eq!(code("<Other><TagSet/></Other>"), "MalformedXML");
    }

    #[test]
    fn bucket_documents_take_fifty_tags() {
        let tag = |i: usize| format!("<Tag><Key>k{i}</Key><Value>v</Value></Tag>");
        let doc = |n: usize| {
            format!(
                "<Tagging><TagSet>{}</TagSet></Tagging>",
                (0..n).map(tag).collect::<String>()
            )
        };
        assert_eq!(parse_bucket_document(doc(50).as_bytes()).unwrap().len(), 50);
        let e = parse_bucket_document(doc(51).as_bytes()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("BadRequest", "Bucket tag count cannot be greater than 50")
        );
        assert_eq!(
            parse_document(doc(11).as_bytes()).unwrap_err().code,
            "BadRequest"
        );
        let dup = "<Tagging><TagSet><Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>a</Key><Value>2</Value></Tag></TagSet></Tagging>";
        assert_eq!(
            parse_bucket_document(dup.as_bytes()).unwrap_err().code,
            "InvalidTag"
        );
        let mut meta = std::collections::BTreeMap::new();
        assert_eq!(bucket_stored(&meta), None);
        let tags = vec![("k".to_owned(), "v".to_owned())];
        meta.insert(BUCKET_META_KEY.to_owned(), encode(&tags).unwrap());
        assert_eq!(bucket_stored(&meta), Some(tags));
    }

    #[test]
    fn headers_are_query_strings() {
        assert_eq!(
            parse_header("a=1&b%20c=d+e&flag&&").unwrap(),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b c".to_owned(), "d e".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(parse_header("").unwrap(), vec![]);
        assert_eq!(parse_header("=v").unwrap_err().code, "InvalidArgument");
        assert_eq!(parse_header("a=1&a=2").unwrap_err().code, "InvalidArgument");
        assert_eq!(parse_header("a=%zz").unwrap_err().code, "InvalidArgument");
        assert_eq!(parse_header("a=%").unwrap_err().code, "InvalidArgument");
        assert_eq!(parse_header("a%3F=1").unwrap_err().code, "InvalidTag");
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            parse_header(&eleven.join("&")).unwrap_err().code,
            "BadRequest"
        );
    }

    #[test]
    fn tags_round_trip_through_metadata() {
        let mut meta = std::collections::BTreeMap::new();
        let tags = vec![
            ("k".to_owned(), "v".to_owned()),
            ("a".to_owned(), String::new()),
        ];
        store_into(&mut meta, &tags);
        assert_eq!(stored(&meta), tags);
        store_into(&mut meta, &vec![]);
        assert!(meta.is_empty());
        assert_eq!(stored(&meta), vec![]);
    }

    proptest! {
        #[test]
        fn header_parsing_never_panics(s in "\\PC{0,80}") {
            let _ = parse_header(&s);
        }

        #[test]
        fn documents_round_trip(key in "[a-zA-Z0-9 _.:/=+@-]{1,20}", value in "[a-zA-Z0-9 _.:/=+@-]{0,20}") {
            prop_assume!(!key.to_ascii_lowercase().starts_with("aws:"));
            let tags = vec![(key, value)];
            let doc = format!("<Tagging>{}</Tagging>", document(&tags));
            prop_assert_eq!(parse_document(doc.as_bytes()).unwrap(), tags);
        }
    }
}
