//! The little XML S3 needs: escaping for responses, and reading request documents
//! (CompleteMultipartUpload, Delete, Tagging, VersioningConfiguration) into flat records.

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::api::ApiError;

/// Escapes text for XML content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One record: the text of each child element of a repeated element.
pub type Record = Vec<(String, String)>;

/// Reads `doc`, checking its root element is `root`, and returns the children of each
/// `record` element plus the root's own simple children (e.g. `Quiet`).
pub fn records(doc: &[u8], root: &str, record: &str) -> Result<(Vec<Record>, Record), ApiError> {
    records_under(doc, &[root], record)
}

/// [`records`] for `record` elements nested deeper: `path` names the root and the
/// elements down to the records' parent (`["Tagging", "TagSet"]` for `Tag`). The root's
/// own children (including that parent, if it appears) are returned as the second value.
pub fn records_under(
    doc: &[u8],
    path: &[&str],
    record: &str,
) -> Result<(Vec<Record>, Record), ApiError> {
    let malformed = |why: String| {
        ApiError::bad_request(
            "MalformedXML",
            format!("the XML you provided was not well-formed or did not validate: {why}"),
        )
    };
    let root = path.first().copied().unwrap_or_default();
    let mut reader = Reader::from_reader(doc);
    // No trimming: keys may begin or end with spaces, and text around entity references
    // must be kept whole. Whitespace between elements is dropped at each start tag.
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut current: Option<Record> = None;
    let mut top = Vec::new();
    let mut text = String::new();
    let mut seen_root = false;
    let at_parent =
        |stack: &[String]| stack.len() == path.len() && stack.iter().zip(path).all(|(a, b)| a == b);
    let depth = path.len();
    loop {
        match reader.read_event() {
            Err(e) => return Err(malformed(e.to_string())),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                let name = {
                    let ln = e.local_name();
                    let n: &str = ln.as_ref();
                    n.to_owned()
                };
                if stack.is_empty() {
                    if name != root || seen_root {
                        return Err(malformed(format!("root element must be {root}")));
                    }
                    seen_root = true;
                }
                if name == record && at_parent(&stack) {
                    current = Some(Vec::new());
                }
                stack.push(name);
                text.clear();
            }
            Ok(Event::Empty(e)) => {
                let name = {
                    let ln = e.local_name();
                    let n: &str = ln.as_ref();
                    n.to_owned()
                };
                if stack.is_empty() {
                    return Err(malformed(format!(
                        "root element must be {root} and not empty"
                    )));
                }
                if name == record && at_parent(&stack) {
                    out.push(Vec::new());
                } else if stack.len() == depth + 1 {
                    if let Some(c) = current.as_mut() {
                        c.push((name, String::new()));
                    }
                } else if stack.len() == 1 {
                    top.push((name, String::new()));
                }
            }
            Ok(Event::Text(t)) => {
                text.push_str(&t.xml10_content());
            }
            Ok(Event::GeneralRef(r)) => {
                let name = {
                    let n: &str = &r;
                    n.to_owned()
                };
                let resolved = match name.as_str() {
                    "amp" => "&".to_owned(),
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "quot" => "\"".to_owned(),
                    "apos" => "'".to_owned(),
                    n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| malformed("bad character reference".into()))?
                        .to_string(),
                    n if n.starts_with('#') => n[1..]
                        .parse::<u32>()
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| malformed("bad character reference".into()))?
                        .to_string(),
                    _ => return Err(malformed(format!("unknown entity {name}"))),
                };
                text.push_str(&resolved);
            }
            Ok(Event::CData(c)) => {
                let n: &str = &c;
                text.push_str(n)
            }
            Ok(Event::End(_)) => {
                let name = stack.pop().ok_or_else(|| malformed("unbalanced".into()))?;
                if name == record && at_parent(&stack) {
                    if let Some(c) = current.take() {
                        out.push(c);
                    }
                } else if stack.len() == depth + 1 && at_parent(&stack[..depth]) {
                    if let Some(c) = current.as_mut() {
                        c.push((name, std::mem::take(&mut text)));
                    }
                } else if stack.len() == 1 {
                    top.push((name, std::mem::take(&mut text).trim().to_owned()));
                }
                text.clear();
            }
            Ok(_) => {}
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err(malformed("document is incomplete".into()));
    }
    Ok((out, top))
}

/// The value of a field in a record.
pub fn field<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn complete_multipart_document() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><ETag>"a&amp;b"</ETag><PartNumber>1</PartNumber></Part>
  <Part><PartNumber>2</PartNumber><ETag>"cd"</ETag></Part>
</CompleteMultipartUpload>"#;
        let (parts, _) = records(doc, "CompleteMultipartUpload", "Part").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(field(&parts[0], "ETag"), Some("\"a&b\""));
        assert_eq!(field(&parts[1], "PartNumber"), Some("2"));
    }

    #[test]
    fn delete_document_and_malformed_ones() {
        let doc = b"<Delete><Quiet>true</Quiet><Object><Key>a b</Key></Object><Object><Key>c</Key></Object></Delete>";
        let (objs, top) = records(doc, "Delete", "Object").unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(field(&top, "Quiet"), Some("true"));
        for bad in [
            &b"<Delete><Object>"[..],
            b"<Other/>",
            b"not xml",
            b"<Delete></Oops>",
            b"",
        ] {
            assert_eq!(
                records(bad, "Delete", "Object").unwrap_err().code,
                "MalformedXML"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(doc in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = records(&doc, "Delete", "Object");
        }

        #[test]
        fn keys_round_trip_through_escape(key in "\\PC{1,40}") {
            let doc = format!("<Delete><Object><Key>{}</Key></Object></Delete>", escape(&key));
            let (objs, _) = records(doc.as_bytes(), "Delete", "Object").unwrap();
            prop_assert_eq!(field(&objs[0], "Key"), Some(key.as_str()));
        }
    }
}
