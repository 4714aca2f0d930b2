//! Swift request paths: `/v1/{account}[/{container}[/{object}]]`.
//!
//! Names arrive percent-encoded; they are decoded here, must be valid UTF-8, and obey
//! Swift's default constraints (container names up to 256 bytes without `/`, object names
//! up to 1024 bytes, no NUL anywhere).

/// Longest container name Swift accepts by default, in bytes.
pub const MAX_CONTAINER_NAME: usize = 256;
/// Longest object name Swift accepts by default, in bytes.
pub const MAX_OBJECT_NAME: usize = 1024;
/// Longest account name we accept, in bytes.
pub const MAX_ACCOUNT_NAME: usize = 256;

/// What a Swift path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/v1/{account}`
    Account {
        /// The account.
        account: String,
    },
    /// `/v1/{account}/{container}`
    Container {
        /// The account.
        account: String,
        /// The container.
        container: String,
    },
    /// `/v1/{account}/{container}/{object}`
    Object {
        /// The account.
        account: String,
        /// The container.
        container: String,
        /// The object; may contain `/`.
        object: String,
    },
}

/// Why a path is not a valid Swift path (answered with 400 or 412 by the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/v1/`.
    #[error("path must start with /v1/")]
    NotV1,
    /// The account segment is empty.
    #[error("account name is empty")]
    EmptyAccount,
    /// A `%` escape is malformed.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// The decoded name is not UTF-8.
    #[error("name is not valid UTF-8")]
    NotUtf8,
    /// The decoded name contains NUL.
    #[error("name contains a NUL byte")]
    Nul,
    /// A name is longer than Swift allows.
    #[error("{what} name is {len} bytes, longer than {max}")]
    TooLong {
        /// `account`, `container` or `object`.
        what: &'static str,
        /// Its decoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Parses a raw (still percent-encoded) request path, without the query string.
pub fn parse(raw: &str) -> Result<Target, PathError> {
    let rest = raw.strip_prefix("/v1/").ok_or(PathError::NotV1)?;
    let (account, rest) = split_once(rest);
    let account = decode_checked(account, "account", MAX_ACCOUNT_NAME)?;
    if account.is_empty() {
        return Err(PathError::EmptyAccount);
    }
    let Some(rest) = rest else {
        return Ok(Target::Account { account });
    };
    let (container, rest) = split_once(rest);
    if container.is_empty() {
        // `/v1/acct/` is the account itself, as Swift treats it.
        return Ok(Target::Account { account });
    }
    let container = decode_checked(container, "container", MAX_CONTAINER_NAME)?;
    match rest {
        None | Some("") => Ok(Target::Container { account, container }),
        Some(object) => {
            let object = decode_checked(object, "object", MAX_OBJECT_NAME)?;
            Ok(Target::Object {
                account,
                container,
                object,
            })
        }
    }
}

fn split_once(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((head, tail)) => (head, Some(tail)),
        None => (s, None),
    }
}

fn decode_checked(raw: &str, what: &'static str, max: usize) -> Result<String, PathError> {
    let name = percent_decode(raw)?;
    if name.contains('\0') {
        return Err(PathError::Nul);
    }
    if name.len() > max {
        return Err(PathError::TooLong {
            what,
            len: name.len(),
            max,
        });
    }
    Ok(name)
}

/// Decodes `%XX` escapes; `+` stays a plus, as in paths.
pub fn percent_decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hi = hex_val(hex[0]).ok_or(PathError::BadEscape)?;
            let lo = hex_val(hex[1]).ok_or(PathError::BadEscape)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn account_container_object() {
        assert_eq!(
            parse("/v1/AUTH_a"),
            Ok(Target::Account {
                account: "AUTH_a".into()
            })
        );
        assert_eq!(
            parse("/v1/AUTH_a/"),
            Ok(Target::Account {
                account: "AUTH_a".into()
            })
        );
        assert_eq!(
            parse("/v1/AUTH_a/photos"),
            Ok(Target::Container {
                account: "AUTH_a".into(),
                container: "photos".into()
            })
        );
        assert_eq!(
            parse("/v1/AUTH_a/photos/2026/cat%20one.jpg"),
            Ok(Target::Object {
                account: "AUTH_a".into(),
                container: "photos".into(),
                object: "2026/cat one.jpg".into(),
            })
        );
    }

    #[test]
    fn rejects_what_swift_rejects() {
        assert_eq!(parse("/v2/a"), Err(PathError::NotV1));
        assert_eq!(parse("/v1/"), Err(PathError::EmptyAccount));
        assert_eq!(parse("/v1/a/c/%zz"), Err(PathError::BadEscape));
        assert_eq!(parse("/v1/a/c/%e2%28"), Err(PathError::NotUtf8));
        assert_eq!(parse("/v1/a/c/x%00y"), Err(PathError::Nul));
        let long = "c".repeat(MAX_CONTAINER_NAME + 1);
        assert_eq!(
            parse(&format!("/v1/a/{long}")),
            Err(PathError::TooLong {
                what: "container",
                len: 257,
                max: 256
            })
        );
        let ok = "o".repeat(MAX_OBJECT_NAME);
        assert!(parse(&format!("/v1/a/c/{ok}")).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_paths(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn encoded_object_names_round_trip(name in "[^\u{0}]{1,200}") {
            let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
            let parsed = parse(&format!("/v1/acct/cont/{encoded}")).unwrap();
            prop_assert_eq!(parsed, Target::Object {
                account: "acct".into(),
                container: "cont".into(),
                object: name,
            });
        }
    }
}
