//! HTTP details shared by both APIs: byte ranges, conditional requests, dates.

use std::time::{Duration, UNIX_EPOCH};

/// Why a `Range` header cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The header is not `bytes=a-b` with valid numbers.
    #[error("malformed range header")]
    Malformed,
    /// No range overlaps the object (416).
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// Parses a single `Range: bytes=...` against an object of `len` bytes into `(start, end)`
/// with `end` exclusive. Multiple ranges are not supported here (S3 serves the whole object
/// for them) and answer `Ok(None)`; Swift's multi-range GETs use [`parse_ranges`].
pub fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or(RangeError::Malformed)?;
    if spec.contains(',') {
        return Ok(None);
    }
    parse_spec(spec, len)?
        .map(Some)
        .ok_or(RangeError::Unsatisfiable)
}

/// Most ranges honoured in one request; more and the header is ignored (as Swift does).
pub const MAX_RANGES: usize = 50;
/// Most pairwise overlaps among the ranges of one request before the header is ignored.
pub const MAX_RANGE_OVERLAPS: usize = 2;
/// Most ranges starting before their predecessor before the header is ignored.
pub const MAX_NONASCENDING_RANGES: usize = 8;

/// Parses `Range: bytes=a-b,c-d,...` as Swift does: `Ok(None)` means the header is ignored
/// (malformed, or more than [`MAX_RANGES`] ranges, or a range set shaped to amplify the
/// response) and the whole object is served; ranges past the end are dropped, and
/// [`RangeError::Unsatisfiable`] (416) means none is left.
pub fn parse_ranges(header: &str, len: u64) -> Result<Option<Vec<(u64, u64)>>, RangeError> {
    let Some(specs) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let specs: Vec<&str> = specs.split(',').map(str::trim).collect();
    if specs.len() > MAX_RANGES {
        return Ok(None);
    }
    let mut out = Vec::new();
    for spec in specs {
        match parse_spec(spec, len) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
    }
    if out.is_empty() {
        return Err(RangeError::Unsatisfiable);
    }
    let mut overlaps = 0;
    for (i, a) in out.iter().enumerate() {
        overlaps += out[i + 1..]
            .iter()
            .filter(|b| a.0 < b.1 && b.0 < a.1)
            .count();
    }
    let nonascending = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
    if overlaps > MAX_RANGE_OVERLAPS || nonascending > MAX_NONASCENDING_RANGES {
        return Ok(None);
    }
    Ok(Some(out))
}

/// One `a-b`, `a-` or `-n`: `Ok(None)` when it lies wholly past the end of `len` bytes.
fn parse_spec(spec: &str, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let (a, b) = spec.split_once('-').ok_or(RangeError::Malformed)?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        s.parse().map_err(|_| RangeError::Malformed)
    };
    if a.is_empty() {
        let suffix = num(b)?;
        if suffix == 0 || len == 0 {
            return Ok(None);
        }
        return Ok(Some((len.saturating_sub(suffix), len)));
    }
    let start = num(a)?;
    let end = if b.is_empty() {
        len
    } else {
        let e = num(b)?;
        if e < start {
            return Err(RangeError::Malformed);
        }
        e.saturating_add(1).min(len)
    };
    if start >= len {
        return Ok(None);
    }
    Ok(Some((start, end)))
}

/// Formats milliseconds since the epoch as an HTTP date.
pub fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Parses an HTTP date into seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    httpdate::parse_http_date(s.trim())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats milliseconds since the epoch as ISO 8601 with milliseconds (`2026-11-22T03:40:20.123Z`).
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

/// Swift's listing timestamp: ISO 8601 with microseconds and no zone.
pub fn swift_listing_date(ms: i64) -> String {
    let s = iso8601(ms);
    format!("{}000", &s[..s.len() - 1])
}

/// Parses an `X-Amz-Date` (`20261122T034020Z`) into seconds since the epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, se) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Outcome of evaluating conditional request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Serve the request.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t.trim_matches('"') == etag
    })
}

/// Evaluates If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since
/// (RFC 9110 order) for an object with `etag` (unquoted) modified at `modified_ms`.
pub fn evaluate(
    headers: &http::HeaderMap,
    etag: &str,
    modified_ms: i64,
    is_get_or_head: bool,
) -> Condition {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let modified = modified_ms / 1000;
    if let Some(im) = get("if-match") {
        if !etag_list_matches(im, etag) {
            return Condition::Failed;
        }
    } else if let Some(ius) = get("if-unmodified-since").and_then(parse_http_date)
        && modified > ius
    {
        return Condition::Failed;
    }
    if let Some(inm) = get("if-none-match") {
        if etag_list_matches(inm, etag) {
            return if is_get_or_head {
                Condition::NotModified
            } else {
                Condition::Failed
            };
        }
    } else if is_get_or_head
        && let Some(ims) = get("if-modified-since").and_then(parse_http_date)
        && modified <= ims
    {
        return Condition::NotModified;
    }
    Condition::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 100))));
        assert_eq!(
            parse_range("bytes=100-", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(parse_range("bytes=5-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse_range("items=0-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
    }

    #[test]
    fn range_sets() {
        assert_eq!(
            parse_ranges("bytes=0-1, 5-6,-3", 100),
            Ok(Some(vec![(0, 2), (5, 7), (97, 100)]))
        );
        // Ranges past the end are dropped; none left is 416.
        assert_eq!(
            parse_ranges("bytes=0-1,200-300", 100),
            Ok(Some(vec![(0, 2)]))
        );
        assert_eq!(
            parse_ranges("bytes=200-,300-400", 100),
            Err(RangeError::Unsatisfiable)
        );
        // Malformed, too many, or too overlapping: ignored (the whole object).
        assert_eq!(parse_ranges("bytes=0-1,x-2", 100), Ok(None));
        assert_eq!(parse_ranges("items=0-1", 100), Ok(None));
        let many = vec!["0-0"; MAX_RANGES + 1].join(",");
        assert_eq!(parse_ranges(&format!("bytes={many}"), 100), Ok(None));
        assert_eq!(parse_ranges("bytes=0-9,0-9,0-9", 100), Ok(None));
        assert_eq!(
            parse_ranges("bytes=0-9,5-14", 100),
            Ok(Some(vec![(0, 10), (5, 15)]))
        );
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(iso8601(1_369_353_600_123), "2013-05-24T00:00:00.123Z");
        assert_eq!(swift_listing_date(0), "1970-01-01T00:00:00.000000");
        assert_eq!(parse_amz_date("2013-05-24T00:00:00Z"), None);
    }

    #[test]
    fn conditions() {
        let mut h = http::HeaderMap::new();
        h.insert("if-none-match", "\"abc\"".parse().unwrap());
        assert_eq!(evaluate(&h, "abc", 0, true), Condition::NotModified);
        assert_eq!(evaluate(&h, "def", 0, true), Condition::Proceed);
        let mut h = http::HeaderMap::new();
        h.insert("if-match", "\"abc\"".parse().unwrap());
        assert_eq!(evaluate(&h, "def", 0, true), Condition::Failed);
        let mut h = http::HeaderMap::new();
        h.insert("if-modified-since", http_date(10_000_000).parse().unwrap());
        assert_eq!(evaluate(&h, "x", 9_000_000, true), Condition::NotModified);
        assert_eq!(evaluate(&h, "x", 11_000_000, true), Condition::Proceed);
    }

    proptest! {
        #[test]
        fn range_is_within_the_object(h in "bytes=[0-9]{0,6}-[0-9]{0,6}", len in 0u64..2_000_000) {
            if let Ok(Some((s, e))) = parse_range(&h, len) {
                prop_assert!(s < e && e <= len);
            }
        }

        #[test]
        fn range_never_panics(h in "\\PC*", len in any::<u64>()) {
            let _ = parse_range(&h, len);
            let _ = parse_ranges(&h, len);
        }

        #[test]
        fn range_sets_are_within_the_object(
            h in "bytes=([0-9]{0,4}-[0-9]{0,4},){0,5}[0-9]{0,4}-[0-9]{0,4}",
            len in 0u64..20_000,
        ) {
            if let Ok(Some(v)) = parse_ranges(&h, len) {
                prop_assert!(!v.is_empty() && v.len() <= MAX_RANGES);
                for (s, e) in v {
                    prop_assert!(s < e && e <= len);
                }
            }
        }

        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
