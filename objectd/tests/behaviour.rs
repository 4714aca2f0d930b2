//! Protocol behaviour over raw HTTP: bad input answered as the real services answer it
//! (and nothing stored), listings, ranges, conditions, expiry, crash safety, corruption.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use objectd::api::s3::sigv4;

fn swift_put(d: &Daemon, token: &str, path: &str, body: &[u8]) -> Resp {
    http(d.port, "PUT", path, &[("X-Auth-Token", token)], body)
}

#[test]
fn swift_bad_input_is_refused_and_nothing_is_stored() {
    let d = Daemon::start();
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/c", b"").status, 201);
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/c", b"").status, 202);

    // Wrong ETag: 422, nothing stored.
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/o",
        &[
            ("X-Auth-Token", &t),
            ("ETag", "00000000000000000000000000000000"),
        ],
        b"hello",
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        http(d.port, "HEAD", "/v1/AUTH_test/c/o", &auth, b"").status,
        404
    );
    // Right ETag: 201 and the MD5 back.
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/o",
        &[
            ("X-Auth-Token", &t),
            ("ETag", "5d41402abc4b2a76b9719d911017c592"),
        ],
        b"hello",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.header("etag"), Some("5d41402abc4b2a76b9719d911017c592"));

    // A static large object manifest: a bad etag, a missing segment and an unsupported
    // key are refused; a good one serves the segments' bytes.
    let o_etag = "5d41402abc4b2a76b9719d911017c592";
    let manifest = |body: &str| {
        http(
            d.port,
            "PUT",
            "/v1/AUTH_test/c/slo?multipart-manifest=put",
            &auth,
            body.as_bytes(),
        )
    };
    let bad = manifest(
        r#"[{"path": "/c/o", "etag": "00000000000000000000000000000000", "size_bytes": 5}]"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        manifest(r#"[{"path": "/c/none", "etag": null, "size_bytes": null}]"#).status,
        400
    );
    assert_eq!(
        manifest(r#"[{"path": "/c/o", "range": "0-1"}]"#).status,
        400
    );
    assert_eq!(
        http(d.port, "HEAD", "/v1/AUTH_test/c/slo", &auth, b"").status,
        404
    );
    let ok = manifest(&format!(
        r#"[{{"path": "/c/o", "etag": "{o_etag}", "size_bytes": 5}}, {{"path": "/c/o"}}]"#
    ));
    assert_eq!(ok.status, 201, "{}", ok.text());
    let r = http(d.port, "GET", "/v1/AUTH_test/c/slo", &auth, b"");
    assert_eq!(r.body, b"hellohello");
    assert_eq!(r.header("x-static-large-object"), Some("True"));
    // Swift's rule: the MD5 of the concatenated segment ETags, quoted.
    let slo_etag = format!("\"{:x}\"", md5_of(format!("{o_etag}{o_etag}").as_bytes()));
    assert_eq!(r.header("etag"), Some(slo_etag.as_str()));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/c/slo",
        &[("X-Auth-Token", &t), ("Range", "bytes=3-6")],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b"lohe"[..]));
    assert_eq!(
        http(d.port, "DELETE", "/v1/AUTH_test/c/slo", &auth, b"").status,
        204
    );

    // An empty object is an object.
    let r = swift_put(&d, &t, "/v1/AUTH_test/c/empty", b"");
    assert_eq!(r.header("etag"), Some("d41d8cd98f00b204e9800998ecf8427e"));
    let r = http(d.port, "GET", "/v1/AUTH_test/c/empty", &auth, b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("0"));

    // Truncated body: the client announces 100 bytes, sends 10 and hangs up.
    {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        write!(
            s,
            "PUT /v1/AUTH_test/c/trunc HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = read_response_or_eof(&mut s);
    }
    assert_eq!(
        http(d.port, "HEAD", "/v1/AUTH_test/c/trunc", &auth, b"").status,
        404
    );

    // Names: NUL, over the limit, at the limit, path traversal stays a plain name.
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/c/a%00b", b"x").status, 412);
    let long = "o".repeat(1025);
    assert_eq!(
        swift_put(&d, &t, &format!("/v1/AUTH_test/c/{long}"), b"x").status,
        400
    );
    let long_container = "c".repeat(257);
    assert_eq!(
        swift_put(&d, &t, &format!("/v1/AUTH_test/{long_container}"), b"").status,
        400
    );
    assert_eq!(
        swift_put(&d, &t, &format!("/v1/AUTH_test/{}", "c".repeat(256)), b"").status,
        201
    );
    let max = "o".repeat(1024);
    assert_eq!(
        swift_put(&d, &t, &format!("/v1/AUTH_test/c/{max}"), b"x").status,
        201
    );
    assert_eq!(
        swift_put(&d, &t, "/v1/AUTH_test/c/../../etc/passwd", b"x").status,
        201
    );
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/c/../../etc/passwd",
        &auth,
        b"",
    );
    assert_eq!(r.body, b"x");
    assert!(!d.data().join("etc").exists());

    // No token: 401; another account: 403; missing container: 404.
    assert_eq!(http(d.port, "GET", "/v1/AUTH_test/c", &[], b"").status, 401);
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_other/c", &auth, b"").status,
        403
    );
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/nope/o", b"x").status, 404);
    assert_eq!(
        http(
            d.port,
            "GET",
            "/auth/v1.0",
            &[("X-Auth-User", USER), ("X-Auth-Key", "bad")],
            b""
        )
        .status,
        401
    );
    // Server-side copy with X-Copy-From keeps the bytes and merges metadata.
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/o.copy",
        &[
            ("X-Auth-Token", &t),
            ("X-Copy-From", "c/o"),
            ("X-Object-Meta-Copied", "yes"),
        ],
        b"",
    );
    assert_eq!(r.status, 201);
    let r = http(d.port, "GET", "/v1/AUTH_test/c/o.copy", &auth, b"");
    assert_eq!(
        (r.body.as_slice(), r.header("x-object-meta-copied")),
        (&b"hello"[..], Some("yes"))
    );
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/x",
        &[("X-Auth-Token", &t), ("X-Copy-From", "c/missing")],
        b"",
    );
    assert_eq!(r.status, 404);
    // /info advertises the large-object middlewares swiftclient looks for.
    let info: serde_json::Value =
        serde_json::from_slice(&http(d.port, "GET", "/info", &[], b"").body).unwrap();
    assert_eq!(info["swift"]["max_object_name_length"], 1024);
    assert!(info["slo"].is_object());
    // A non-empty container cannot be deleted.
    assert_eq!(
        http(d.port, "DELETE", "/v1/AUTH_test/c", &auth, b"").status,
        409
    );
}

/// Reads whatever comes back (the server may answer or just close).
fn read_response_or_eof(s: &mut TcpStream) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

#[test]
fn swift_listings_ranges_conditions_metadata_and_expiry() {
    let d = Daemon::start();
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    swift_put(&d, &t, "/v1/AUTH_test/photos", b"");
    for name in ["a/1.jpg", "a/2.jpg", "b.jpg", "c/x/y.jpg", "d.jpg"] {
        assert_eq!(
            swift_put(
                &d,
                &t,
                &format!("/v1/AUTH_test/photos/{name}"),
                name.as_bytes()
            )
            .status,
            201
        );
    }
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos?delimiter=/",
        &auth,
        b"",
    );
    assert_eq!(r.text(), "a/\nb.jpg\nc/\nd.jpg\n");
    assert_eq!(r.header("x-container-object-count"), Some("5"));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos?prefix=a/&format=json",
        &auth,
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["name"], "a/1.jpg");
    assert_eq!(v[0]["bytes"], 7);
    assert_eq!(v[0]["hash"], format!("{:x}", md5_of(b"a/1.jpg")));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos?limit=2&marker=a/2.jpg&format=xml",
        &auth,
        b"",
    );
    let x = r.text();
    assert!(
        x.contains("<name>b.jpg</name>")
            && x.contains("<name>c/x/y.jpg</name>")
            && !x.contains("d.jpg"),
        "{x}"
    );
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos?end_marker=b.jpg",
        &auth,
        b"",
    );
    assert_eq!(r.text(), "a/1.jpg\na/2.jpg\n");
    let r = http(d.port, "GET", "/v1/AUTH_test/photos?marker=zzz", &auth, b"");
    assert_eq!(r.status, 204);
    let r = http(d.port, "GET", "/v1/AUTH_test?format=json", &auth, b"");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v[0]["name"], "photos");
    assert_eq!(v[0]["count"], 5);
    assert_eq!(r.header("x-account-object-count"), Some("5"));

    // Ranges.
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("Range", "bytes=1-3")],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b".jp"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 1-3/5"));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("Range", "bytes=9-")],
        b"",
    );
    assert_eq!(r.status, 416);

    // Conditions.
    let etag = format!("{:x}", md5_of(b"b.jpg"));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 304);
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("If-Match", "\"nope\"")],
        b"",
    );
    assert_eq!(r.status, 412);
    let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("If-Modified-Since", &future)],
        b"",
    );
    assert_eq!(r.status, 304);

    // Metadata: PUT, POST replaces, HEAD shows.
    let r = http(
        d.port,
        "POST",
        "/v1/AUTH_test/photos/b.jpg",
        &[("X-Auth-Token", &t), ("X-Object-Meta-Colour", "blue")],
        b"",
    );
    assert_eq!(r.status, 202);
    let r = http(d.port, "HEAD", "/v1/AUTH_test/photos/b.jpg", &auth, b"");
    assert_eq!(r.header("x-object-meta-colour"), Some("blue"));
    assert_eq!(r.header("content-length"), Some("5"));
    http(
        d.port,
        "POST",
        "/v1/AUTH_test/photos",
        &[("X-Auth-Token", &t), ("X-Container-Meta-Owner", "me")],
        b"",
    );
    let r = http(d.port, "HEAD", "/v1/AUTH_test/photos", &auth, b"");
    assert_eq!(r.header("x-container-meta-owner"), Some("me"));
    assert_eq!(r.header("x-container-bytes-used"), Some("33"));

    // Expiry.
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/photos/tmp",
        &[("X-Auth-Token", &t), ("X-Delete-After", "1")],
        b"soon gone",
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/photos/tmp", &auth, b"").status,
        200
    );
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/photos/past",
        &[("X-Auth-Token", &t), ("X-Delete-At", "1000")],
        b"x",
    );
    assert_eq!(r.status, 400);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/photos/tmp", &auth, b"").status,
        404
    );

    // Metrics count what happened.
    let m = scrape(&d);
    assert!(
        m.sum(
            "ferrostack_objectd_requests_total",
            &[("method", "PUT"), ("status", "201")]
        ) >= 6.0
    );
}

/// Scrapes `/metrics` and checks it with the Prometheus parser.
fn scrape(d: &Daemon) -> caps::prom::Scrape {
    let r = http(d.port, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    caps::prom::must_scrape("objectd", &r.text())
}

#[test]
fn metrics_count_exactly_the_objects_written_and_read() {
    let d = Daemon::start();
    let t = d.token();
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/m", b"").status, 201);
    assert_eq!(s3(&d, "PUT", "/mbkt", &[], b"", SECRET_KEY).status, 200);
    let before = scrape(&d);

    let sizes = [1usize, 4096, 70_000];
    for (i, n) in sizes.iter().enumerate() {
        let body = vec![b'a' + i as u8; *n];
        assert_eq!(
            swift_put(&d, &t, &format!("/v1/AUTH_test/m/o{i}"), &body).status,
            201
        );
    }
    for i in 0..2 {
        assert_eq!(
            s3(
                &d,
                "PUT",
                &format!("/mbkt/k{i}"),
                &[],
                b"s3-bytes",
                SECRET_KEY
            )
            .status,
            200
        );
    }
    let got = http(
        d.port,
        "GET",
        "/v1/AUTH_test/m/o1",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!((got.status, got.body.len()), (200, 4096));
    let missing = http(
        d.port,
        "GET",
        "/v1/AUTH_test/m/none",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!(missing.status, 404);

    let after = scrape(&d);
    let d_req = |api, method, status| {
        let l = [("api", api), ("method", method), ("status", status)];
        after.sum("ferrostack_objectd_requests_total", &l)
            - before.sum("ferrostack_objectd_requests_total", &l)
    };
    let d_sum =
        |name: &str, api| after.sum(name, &[("api", api)]) - before.sum(name, &[("api", api)]);
    assert_eq!(d_req("swift", "PUT", "201"), 3.0);
    assert_eq!(d_req("s3", "PUT", "200"), 2.0);
    assert_eq!(d_req("swift", "GET", "200"), 1.0);
    assert_eq!(d_req("swift", "GET", "404"), 1.0);
    // Exactly the 7 requests above, and the first scrape (the second is counted after
    // its response is rendered).
    assert_eq!(d_sum("ferrostack_objectd_requests_total", "swift"), 5.0);
    assert_eq!(d_sum("ferrostack_objectd_requests_total", "s3"), 2.0);
    assert_eq!(d_sum("ferrostack_objectd_requests_total", "internal"), 1.0);
    let total: usize = sizes.iter().sum();
    assert_eq!(
        d_sum("ferrostack_objectd_received_bytes_total", "swift"),
        total as f64
    );
    assert_eq!(d_sum("ferrostack_objectd_received_bytes_total", "s3"), 16.0);
    let put = [("api", "swift"), ("method", "PUT")];
    assert_eq!(
        after.sum("ferrostack_objectd_request_latency_seconds_count", &put)
            - before.sum("ferrostack_objectd_request_latency_seconds_count", &put),
        3.0
    );
    assert_eq!(
        after.get("ferrostack_objectd_quarantined_blobs_total", &[]),
        0.0
    );
}

fn md5_of(b: &[u8]) -> impl std::fmt::LowerHex {
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(b).into())
}

fn amz_date(now: i64) -> String {
    let (y, m, d) = objectd::api::http::civil_from_days(now.div_euclid(86_400));
    let t = now.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// A SigV4-signed request (payload hash signed, or a given x-amz-content-sha256).
fn s3(
    d: &Daemon,
    method: &str,
    path_query: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    secret: &str,
) -> Resp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = amz_date(now);
    let host = format!("127.0.0.1:{}", d.port);
    let payload = extra
        .iter()
        .find(|(k, _)| *k == "x-amz-content-sha256")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| sigv4::sha256_hex(body));
    let mut headers = http::HeaderMap::new();
    headers.insert("host", host.parse().unwrap());
    headers.insert("x-amz-date", date.parse().unwrap());
    headers.insert("x-amz-content-sha256", payload.parse().unwrap());
    for (k, v) in extra {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut signed: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    signed.sort();
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let canonical =
        sigv4::canonical_request(method, path, query, &headers, &signed, &payload).unwrap();
    let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
    let key = sigv4::signing_key(secret, &date[..8], "us-east-1", "s3");
    let sig = sigv4::sign(&key, &sigv4::string_to_sign(&date, &scope, &canonical));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={}, Signature={sig}",
        signed.join(";")
    );
    let mut h: Vec<(String, String)> = vec![
        ("x-amz-date".into(), date),
        ("x-amz-content-sha256".into(), payload),
        ("Authorization".into(), auth),
    ];
    for (k, v) in extra {
        if *k != "x-amz-content-sha256" {
            h.push((k.to_string(), v.to_string()));
        }
    }
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http(d.port, method, path_query, &h, body)
}

#[test]
fn s3_bad_input_is_refused_and_nothing_is_stored() {
    let d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/bkt", &[], b"", SECRET_KEY).status, 200);

    // Bad signature.
    let r = s3(&d, "PUT", "/bkt/k", &[], b"data", "not-the-secret");
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("<Code>SignatureDoesNotMatch</Code>"),
        "{}",
        r.text()
    );
    // Payload differs from the signed hash.
    let r = s3(
        &d,
        "PUT",
        "/bkt/k",
        &[("x-amz-content-sha256", &sigv4::sha256_hex(b"other"))],
        b"data",
        SECRET_KEY,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("XAmzContentSHA256Mismatch"));
    // Wrong CRC32.
    let r = s3(
        &d,
        "PUT",
        "/bkt/k",
        &[("x-amz-checksum-crc32", "AAAAAA==")],
        b"data",
        SECRET_KEY,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("<Code>BadDigest</Code>"), "{}", r.text());
    // Wrong Content-MD5.
    let r = s3(
        &d,
        "PUT",
        "/bkt/k",
        &[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")],
        b"data",
        SECRET_KEY,
    );
    assert_eq!(r.status, 400);
    assert_eq!(s3(&d, "HEAD", "/bkt/k", &[], b"", SECRET_KEY).status, 404);
    // Malformed XML.
    let r = s3(
        &d,
        "POST",
        "/bkt?delete",
        &[],
        b"<Delete><Object><Key>k</Key>",
        SECRET_KEY,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("MalformedXML"));
    // Overlong key, invalid bucket name, no auth.
    let long = format!("/bkt/{}", "k".repeat(1025));
    let r = s3(&d, "PUT", &long, &[], b"x", SECRET_KEY);
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("<Code>KeyTooLongError</Code>"),
        "{}",
        r.text()
    );
    let at_limit = format!("/bkt/{}", "k".repeat(1024));
    assert_eq!(s3(&d, "PUT", &at_limit, &[], b"x", SECRET_KEY).status, 200);
    assert_eq!(s3(&d, "GET", &at_limit, &[], b"", SECRET_KEY).body, b"x");
    assert_eq!(
        s3(&d, "PUT", "/Bad_Bucket", &[], b"", SECRET_KEY).status,
        400
    );
    assert_eq!(http(d.port, "GET", "/bkt/k", &[], b"").status, 403);

    // CRC32C and CRC64/NVME, as newer SDKs send them: right values stored, wrong refused.
    let c32c = base64_bytes(&crc32c::crc32c(b"data").to_be_bytes());
    let mut c64 = crc64fast_nvme::Digest::new();
    c64.write(b"data");
    let c64 = base64_bytes(&c64.sum64().to_be_bytes());
    for (name, good) in [
        ("x-amz-checksum-crc32c", &c32c),
        ("x-amz-checksum-crc64nvme", &c64),
    ] {
        let r = s3(
            &d,
            "PUT",
            "/bkt/crc",
            &[(name, "AAAAAAAAAAA=")],
            b"data",
            SECRET_KEY,
        );
        assert_eq!(r.status, 400, "{name}");
        let r = s3(
            &d,
            "PUT",
            "/bkt/crc",
            &[(name, good.as_str())],
            b"data",
            SECRET_KEY,
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    // A correct CRC32 ("data" -> 0xadf3f363) and an unsigned aws-chunked body with a
    // trailing checksum, as SDKs send over HTTPS.
    let r = s3(
        &d,
        "PUT",
        "/bkt/k",
        &[("x-amz-checksum-crc32", "rfPzYw==")],
        b"data",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let crc = base64_be(crc32fast::hash(b"datamor"));
    let chunked = format!("4\r\ndata\r\n3\r\nmor\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n");
    let r = s3(
        &d,
        "PUT",
        "/bkt/chunked",
        &[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "7"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        chunked.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3(&d, "GET", "/bkt/chunked", &[], b"", SECRET_KEY);
    assert_eq!(r.body, b"datamor");
    // The same body with a wrong trailer is refused and not stored.
    let bad = b"4\r\ndata\r\n3\r\nmor\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
    let r = s3(
        &d,
        "PUT",
        "/bkt/chunked2",
        &[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "7"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        bad,
        SECRET_KEY,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        s3(&d, "HEAD", "/bkt/chunked2", &[], b"", SECRET_KEY).status,
        404
    );
    // x-amz-decoded-content-length is checked against the decoded bytes: fewer, more, a
    // missing or a malformed count are each refused, and nothing is stored.
    let body = format!("4\r\ndata\r\n3\r\nmor\r\n0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n");
    for (i, (decoded, status, code)) in [
        (Some("8"), 400, "IncompleteBody"),
        (Some("6"), 400, "IncompleteBody"),
        (Some("5"), 400, "IncompleteBody"),
        (None, 411, "MissingContentLength"),
        (Some("seven"), 400, "InvalidArgument"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut hs = vec![
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ];
        if let Some(n) = decoded {
            hs.push(("x-amz-decoded-content-length", n));
        }
        let key = format!("/bkt/counted{i}");
        let r = s3(&d, "PUT", &key, &hs, body.as_bytes(), SECRET_KEY);
        assert_eq!(r.status, status, "{decoded:?}: {}", r.text());
        assert!(r.text().contains(code), "{decoded:?}: {}", r.text());
        assert_eq!(s3(&d, "HEAD", &key, &[], b"", SECRET_KEY).status, 404);
    }
    // A large aws-chunked body (several pieces) whose count is one byte short is refused
    // as soon as it overflows, and leaves no temporary file behind.
    let big = data(3 << 20, 7);
    let mut chunked = Vec::new();
    for c in big.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let short = (big.len() - 1).to_string();
    let r = s3(
        &d,
        "PUT",
        "/bkt/big-counted",
        &[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", &short),
        ],
        &chunked,
        SECRET_KEY,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("IncompleteBody"), "{}", r.text());
    let exact = big.len().to_string();
    let r = s3(
        &d,
        "PUT",
        "/bkt/big-counted",
        &[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", &exact),
        ],
        &chunked,
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s3(&d, "GET", "/bkt/big-counted", &[], b"", SECRET_KEY).body,
        big
    );
    // The temp dir holds nothing after all those refusals.
    assert!(files_under(&d.data().join("tmp")).is_empty());
}

fn base64_bytes(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn base64_be(v: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v.to_be_bytes())
}

#[test]
fn kill_9_mid_upload_leaves_no_partial_object_and_keeps_acknowledged_ones() {
    let mut d = Daemon::start();
    let t = d.token();
    swift_put(&d, &t, "/v1/AUTH_test/c", b"");
    let acked = data(300_000, 11);
    assert_eq!(
        swift_put(&d, &t, "/v1/AUTH_test/c/acked", &acked).status,
        201
    );

    // Start a 20 MB upload, send half, then SIGKILL the daemon.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(
        s,
        "PUT /v1/AUTH_test/c/partial HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\nContent-Length: 20000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&data(10_000_000, 12)).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !files_under(&d.data().join("tmp")).is_empty(),
        "the upload was in progress"
    );
    d.restart();
    drop(s);

    let t = d.token();
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/c/acked",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, acked);
    assert_eq!(
        http(
            d.port,
            "HEAD",
            "/v1/AUTH_test/c/partial",
            &[("X-Auth-Token", &t)],
            b""
        )
        .status,
        404
    );
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/c",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!(r.text(), "acked\n");
    assert!(
        files_under(&d.data().join("tmp")).is_empty(),
        "leftovers were swept"
    );
}

#[test]
fn a_flipped_byte_fails_the_read_and_the_blob_is_quarantined() {
    let d = Daemon::start();
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    swift_put(&d, &t, "/v1/AUTH_test/c", b"");
    let small = data(1000, 21); // inline in the index
    let big = data(1_000_000, 22); // a blob file
    swift_put(&d, &t, "/v1/AUTH_test/c/small", &small);
    swift_put(&d, &t, "/v1/AUTH_test/c/big", &big);
    let blobs = files_under(&d.data().join("blobs"));
    assert_eq!(blobs.len(), 1);
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    bytes[500] ^= 0x01;
    std::fs::write(&blobs[0], bytes).unwrap();
    let db = rusqlite::Connection::open(d.data().join("index.sqlite")).unwrap();
    let n = db
        .execute("UPDATE inline_blobs SET data = ?1", [&data(1000, 99)])
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    // Small: an error status. Big: the response is cut short (the ETag cannot match).
    let r = http(d.port, "GET", "/v1/AUTH_test/c/small", &auth, b"");
    assert_eq!(r.status, 500);
    let r = http(d.port, "GET", "/v1/AUTH_test/c/big", &auth, b"");
    assert_eq!(r.status, 200);
    assert!(r.body.len() < big.len(), "a corrupt body was served whole");
    std::thread::sleep(Duration::from_millis(200));
    // Both are quarantined and no longer listed.
    assert_eq!(files_under(&d.data().join("quarantine")).len(), 2);
    assert_eq!(
        http(d.port, "HEAD", "/v1/AUTH_test/c/small", &auth, b"").status,
        404
    );
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/c", &auth, b"").status,
        204
    );
}

#[test]
fn the_auditor_quarantines_without_any_read() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = objectd::store::Store::open(dir.path()).unwrap();
        store
            .put_container("A", "c", Default::default())
            .await
            .unwrap();
        let mut w = store.blob_writer().await.unwrap();
        w.write(&[3u8; 100_000]).await.unwrap();
        let blob = w.finish().await.unwrap();
        let path = store.blob_path(&blob.id);
        store
            .put_object(
                "A",
                "c",
                objectd::store::ObjectRecord {
                    name: "o".into(),
                    size: blob.size,
                    etag: blob.md5.clone(),
                    content_type: "x".into(),
                    last_modified_ms: 0,
                    meta: Default::default(),
                    delete_at: None,
                    blobs: vec![blob],
                    kind: objectd::store::Kind::Plain,
                },
            )
            .await
            .unwrap();
        assert_eq!(objectd::server::audit(&store).await.unwrap(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[99_999] = 4;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(objectd::server::audit(&store).await.unwrap(), 1);
        assert!(store.get_object("A", "c", "o").await.unwrap().is_none());
        assert!(!path.exists());
    });
}

#[test]
fn the_same_api_is_served_on_a_unix_socket() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("objectd.sock");
    let d = Daemon::start_with(&format!("unix-socket = \"{}\"\n", sock.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no unix socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\r\n\r\n# HELP ferrostack_objectd_requests_total "),
        "{out}"
    );
    drop(d);
}

#[test]
fn systemd_is_told_when_the_daemon_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let unit = include_str!("../etc/objectd.service");
    assert!(unit.contains("Type=notify"), "{unit}");
    let d = Daemon::start_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("a READY notification");
    assert_eq!(&buf[..n], b"READY=1");
    drop(d);
}

/// A stand-in Keystone: `good-token` (member) and `reader-token` (reader only) are scoped
/// to project `p1`; anything else is unknown.
fn fake_keystone() -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        // Serve a few validations, then stop (the daemon caches answers).
        for stream in listener.incoming().take(3) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut subject = String::new();
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split(' ').nth(1).unwrap_or("").to_owned();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-subject-token:") {
                    subject = v.trim().to_owned();
                }
            }
            let (status, body) = if path == "/v3/auth/tokens" && subject == "good-token" {
                (
                    "200 OK",
                    r#"{"token": {"project": {"id": "p1"}, "roles": [{"name": "member"}, {"name": "reader"}], "expires_at": "2999-01-01T00:00:00.000000Z"}}"#,
                )
            } else if path == "/v3/auth/tokens" && subject == "reader-token" {
                (
                    "200 OK",
                    r#"{"token": {"project": {"id": "p1"}, "roles": [{"name": "reader"}], "expires_at": "2999-01-01T00:00:00.000000Z"}}"#,
                )
            } else {
                ("404 Not Found", r#"{"error": {"code": 404}}"#)
            };
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    (port, handle)
}

#[test]
fn keystone_tokens_are_validated_and_scoped_to_their_project() {
    let (ks_port, ks) = fake_keystone();
    let d = Daemon::start_with(&format!(
        "[keystone]\nurl = \"http://127.0.0.1:{ks_port}\"\ncache-secs = 60\n"
    ));
    let good = [("X-Auth-Token", "good-token")];
    assert_eq!(http(d.port, "PUT", "/v1/AUTH_p1/c", &good, b"").status, 201);
    assert_eq!(
        http(d.port, "PUT", "/v1/AUTH_p1/c/o", &good, b"ks").status,
        201
    );
    // Cached: no further validation needed for the same token.
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_p1/c/o", &good, b"").body,
        b"ks"
    );
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/c", &good, b"").status,
        403
    );
    let bad = [("X-Auth-Token", "bad-token")];
    assert_eq!(http(d.port, "GET", "/v1/AUTH_p1/c", &bad, b"").status, 401);
    // A reader of the project reads its account but changes nothing.
    let reader = [("X-Auth-Token", "reader-token")];
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_p1/c/o", &reader, b"").body,
        b"ks"
    );
    for (m, path) in [
        ("PUT", "/v1/AUTH_p1/c/o"),
        ("PUT", "/v1/AUTH_p1/c2"),
        ("POST", "/v1/AUTH_p1/c"),
        ("DELETE", "/v1/AUTH_p1/c/o"),
    ] {
        let r = http(d.port, m, path, &reader, b"changed");
        assert_eq!(r.status, 403, "{m} {path}");
    }
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_p1/c/o", &good, b"").body,
        b"ks"
    );
    assert_eq!(
        http(d.port, "HEAD", "/v1/AUTH_p1/c2", &good, b"").status,
        404
    );
    ks.join().unwrap();
    // TempAuth still works next to Keystone.
    let t = d.token();
    assert_eq!(
        http(
            d.port,
            "HEAD",
            "/v1/AUTH_test",
            &[("X-Auth-Token", &t)],
            b""
        )
        .status,
        204
    );
}

/// A PUT that reports transport failures as `None` instead of panicking.
fn try_put(port: u16, path: &str, token: &str, body: &[u8]) -> Option<u16> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let head = String::from_utf8_lossy(&out);
    head.split(' ').nth(1)?.parse().ok()
}

#[test]
fn kill_9_under_concurrent_small_writes_loses_nothing_acknowledged() {
    let mut d = Daemon::start();
    let t = d.token();
    swift_put(&d, &t, "/v1/AUTH_test/c", b"");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = d.port;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("w{w}-{i}");
                    let body = data(100 + (i as usize * 37) % 5000, w * 1_000_000 + i);
                    // A connection that dies mid-request is simply not acknowledged.
                    if try_put(port, &format!("/v1/AUTH_test/c/{name}"), &t, &body) == Some(201) {
                        acked.push((name, body));
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<(String, Vec<u8>)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    d.restart();
    let t = d.token();
    for (name, body) in &acked {
        let r = http(
            d.port,
            "GET",
            &format!("/v1/AUTH_test/c/{name}"),
            &[("X-Auth-Token", &t)],
            b"",
        );
        assert_eq!(r.status, 200, "{name} was acknowledged but is gone");
        assert_eq!(&r.body, body, "{name} changed");
    }
}

/// Splits a `multipart/byteranges` body into (part headers, part body) pairs.
fn byteranges(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .strip_prefix("multipart/byteranges;boundary=")
        .unwrap_or_else(|| panic!("not multipart/byteranges: {content_type}"));
    let delim = format!("--{boundary}");
    let end = format!("\r\n--{boundary}--");
    assert!(body.ends_with(end.as_bytes()), "body not closed by {end}");
    let body = &body[..body.len() - end.len()];
    let mut parts = Vec::new();
    let sep = format!("\r\n{delim}\r\n");
    let first = format!("{delim}\r\n");
    assert!(body.starts_with(first.as_bytes()));
    let mut rest = &body[first.len()..];
    loop {
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part head");
        let head = String::from_utf8(rest[..head_end].to_vec()).unwrap();
        rest = &rest[head_end + 4..];
        // Part bodies here never contain the separator (checked by the caller's data).
        match rest.windows(sep.len()).position(|w| w == sep.as_bytes()) {
            Some(i) => {
                parts.push((head, rest[..i].to_vec()));
                rest = &rest[i + sep.len()..];
            }
            None => {
                parts.push((head, rest.to_vec()));
                return parts;
            }
        }
    }
}

#[test]
fn swift_multi_range_gets_answer_multipart_byteranges() {
    let d = Daemon::start();
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/c", b"").status, 201);
    // A file-backed object (over the inline limit) and a small inline one.
    let big = data(300_000, 11);
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/big",
        &[("X-Auth-Token", &t), ("Content-Type", "image/x-test")],
        &big,
    );
    assert_eq!(r.status, 201);
    let get = |path: &str, range: &str| {
        http(
            d.port,
            "GET",
            path,
            &[("X-Auth-Token", &t), ("Range", range)],
            b"",
        )
    };
    let r = get("/v1/AUTH_test/c/big", "bytes=0-9, 150000-150099,-5");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    let parts = byteranges(r.header("content-type").unwrap(), &r.body);
    let want: [(usize, usize); 3] = [(0, 10), (150_000, 150_100), (299_995, 300_000)];
    assert_eq!(parts.len(), 3);
    for ((head, body), (s, e)) in parts.iter().zip(want) {
        assert!(head.contains("Content-Type: image/x-test"), "{head}");
        assert!(
            head.contains(&format!("Content-Range: bytes {s}-{}/300000", e - 1)),
            "{head}"
        );
        assert_eq!(body, &big[s..e]);
    }
    // Ranges past the end are dropped: one left is an ordinary single-range answer.
    let r = get("/v1/AUTH_test/c/big", "bytes=10-19,400000-");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/300000"));
    assert_eq!(r.body, &big[10..20]);
    // None left: 416 with the size.
    let r = get("/v1/AUTH_test/c/big", "bytes=300000-,400000-400001");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    // A malformed set, or more than 50 ranges, is ignored: the whole object.
    let r = get("/v1/AUTH_test/c/big", "bytes=0-1,x-2");
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    let many = format!("bytes={}", vec!["0-0"; 51].join(","));
    let r = get("/v1/AUTH_test/c/big", &many);
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    // An inline object, and a static large object whose ranges cross segments.
    assert_eq!(
        swift_put(&d, &t, "/v1/AUTH_test/c/small", b"0123456789").status,
        201
    );
    let r = get("/v1/AUTH_test/c/small", "bytes=1-2,8-");
    let parts = byteranges(r.header("content-type").unwrap(), &r.body);
    let bodies: Vec<&[u8]> = parts.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, [&b"12"[..], b"89"]);
    let seg = data(100_000, 12);
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/c/s1", &seg).status, 201);
    let manifest = r#"[{"path":"/c/big"},{"path":"/c/s1"}]"#;
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/slo?multipart-manifest=put",
        &auth,
        manifest.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let whole: Vec<u8> = big.iter().chain(seg.iter()).copied().collect();
    let r = get("/v1/AUTH_test/c/slo", "bytes=299990-300009,0-3");
    assert_eq!(r.status, 206);
    let parts = byteranges(r.header("content-type").unwrap(), &r.body);
    assert_eq!(parts[0].1, &whole[299_990..300_010]);
    assert_eq!(parts[1].1, &whole[0..4]);
    assert!(
        parts[0]
            .0
            .contains("Content-Range: bytes 299990-300009/400000")
    );
}

fn bob_token(d: &Daemon) -> String {
    let r = http(
        d.port,
        "GET",
        "/auth/v1.0",
        &[("X-Auth-User", "other:bob"), ("X-Auth-Key", "bobkey")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-storage-url")
            .unwrap()
            .ends_with("/v1/AUTH_other")
    );
    r.header("x-auth-token").unwrap().to_owned()
}

#[test]
fn swift_container_acls_are_the_only_way_into_another_account() {
    let d = Daemon::start();
    let t = d.token();
    let bob = bob_token(&d);
    let req = |tok: Option<&str>, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        let mut h: Vec<(&str, &str)> = extra.to_vec();
        if let Some(tok) = tok {
            h.push(("X-Auth-Token", tok));
        }
        http(d.port, method, path, &h, body)
    };
    let owner = Some(t.as_str());
    let bob = Some(bob.as_str());
    assert_eq!(req(owner, "PUT", "/v1/AUTH_test/c", &[], b"").status, 201);
    assert_eq!(
        req(owner, "PUT", "/v1/AUTH_test/secret", &[], b"").status,
        201
    );
    assert_eq!(
        req(owner, "PUT", "/v1/AUTH_test/c/o", &[], b"shared").status,
        201
    );
    assert_eq!(
        req(owner, "PUT", "/v1/AUTH_test/secret/s", &[], b"private").status,
        201
    );
    assert_eq!(req(bob, "PUT", "/v1/AUTH_other/mine", &[], b"").status, 201);

    // Without ACLs: bob gets 403 everywhere, an anonymous request 401, and nothing changes.
    for (method, path, body) in [
        ("GET", "/v1/AUTH_test", &b""[..]),
        ("GET", "/v1/AUTH_test/c", b""),
        ("HEAD", "/v1/AUTH_test/c", b""),
        ("GET", "/v1/AUTH_test/c/o", b""),
        ("PUT", "/v1/AUTH_test/c/o", b"bob was here"),
        ("POST", "/v1/AUTH_test/c/o", b""),
        ("DELETE", "/v1/AUTH_test/c/o", b""),
        ("PUT", "/v1/AUTH_test/c/new", b"x"),
        ("GET", "/v1/AUTH_test/nonexistent/o", b""),
    ] {
        let r = req(bob, method, path, &[], body);
        assert_eq!(r.status, 403, "bob {method} {path}: {}", r.text());
        let r = req(None, method, path, &[], body);
        assert_eq!(r.status, 401, "anonymous {method} {path}");
        let r = req(Some("AUTH_tkforged"), method, path, &[], body);
        assert_eq!(r.status, 401, "bad token {method} {path}");
    }
    // The owner is refused from bob's account in the same way.
    assert_eq!(
        req(owner, "GET", "/v1/AUTH_other/mine", &[], b"").status,
        403
    );
    assert_eq!(
        req(owner, "GET", "/v1/AUTH_test/c/o", &[], b"").body,
        b"shared"
    );

    // Malformed ACLs are refused (referrers in a write ACL, empty referrer, unknown
    // designator), and only the owner may set ACLs at all.
    for (name, value) in [
        ("X-Container-Write", ".r:*"),
        ("X-Container-Write", ".rlistings"),
        ("X-Container-Read", ".r:"),
        ("X-Container-Read", ".admin"),
    ] {
        let r = req(owner, "POST", "/v1/AUTH_test/c", &[(name, value)], b"");
        assert_eq!(r.status, 400, "{name}: {value}");
        assert!(r.text().contains(value), "{}", r.text());
    }
    let r = req(
        bob,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", "other")],
        b"",
    );
    assert_eq!(r.status, 403);

    // A read grant to bob's user: reads and listings, no writes, no ACL headers shown.
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", "other:bob")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        req(bob, "GET", "/v1/AUTH_test/c/o", &[], b"").body,
        b"shared"
    );
    let r = req(bob, "GET", "/v1/AUTH_test/c", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "o\n"));
    assert_eq!(r.header("x-container-read"), None);
    let r = req(owner, "HEAD", "/v1/AUTH_test/c", &[], b"");
    assert_eq!(r.header("x-container-read"), Some("other:bob"));
    assert_eq!(
        req(bob, "PUT", "/v1/AUTH_test/c/o", &[], b"bob").status,
        403
    );
    assert_eq!(
        req(bob, "DELETE", "/v1/AUTH_test/c/o", &[], b"").status,
        403
    );
    assert_eq!(req(bob, "DELETE", "/v1/AUTH_test/c", &[], b"").status, 403);
    assert_eq!(
        req(bob, "GET", "/v1/AUTH_test/secret/s", &[], b"").status,
        403
    );
    assert_eq!(req(None, "GET", "/v1/AUTH_test/c/o", &[], b"").status, 401);
    // A large object in the readable container does not open the segments' container.
    let r = req(
        owner,
        "PUT",
        "/v1/AUTH_test/c/slo?multipart-manifest=put",
        &[],
        br#"[{"path":"/secret/s"}]"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        req(owner, "GET", "/v1/AUTH_test/c/slo", &[], b"").body,
        b"private"
    );
    assert_eq!(req(bob, "GET", "/v1/AUTH_test/c/slo", &[], b"").status, 403);
    let r = req(
        owner,
        "PUT",
        "/v1/AUTH_test/c/dlo",
        &[("X-Object-Manifest", "secret/s")],
        b"",
    );
    assert_eq!(r.status, 201);
    assert_eq!(req(bob, "GET", "/v1/AUTH_test/c/dlo", &[], b"").status, 403);

    // A write grant to bob's whole account: bob writes and deletes, the owner reads
    // bob's bytes; a copy still needs reads on its source and writes on its destination.
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Write", "other")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        req(bob, "PUT", "/v1/AUTH_test/c/from-bob", &[], b"bob's").status,
        201
    );
    assert_eq!(
        req(owner, "GET", "/v1/AUTH_test/c/from-bob", &[], b"").body,
        b"bob's"
    );
    let r = req(
        bob,
        "PUT",
        "/v1/AUTH_test/c/stolen",
        &[("X-Copy-From", "secret/s")],
        b"",
    );
    assert_eq!(r.status, 403);
    let r = req(
        bob,
        "PUT",
        "/v1/AUTH_test/c/o2",
        &[("X-Copy-From", "c/o")],
        b"",
    );
    assert_eq!(r.status, 201);
    let r = req(
        bob,
        "COPY",
        "/v1/AUTH_test/c/o",
        &[("Destination", "secret/o")],
        b"",
    );
    assert_eq!(r.status, 403);
    let r = req(
        bob,
        "PUT",
        "/v1/AUTH_test/c/m?multipart-manifest=put",
        &[],
        br#"[{"path":"/secret/s"}]"#,
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        req(owner, "HEAD", "/v1/AUTH_test/c/m", &[], b"").status,
        404
    );
    assert_eq!(
        req(owner, "HEAD", "/v1/AUTH_test/c/stolen", &[], b"").status,
        404
    );
    assert_eq!(
        req(bob, "DELETE", "/v1/AUTH_test/c/from-bob", &[], b"").status,
        204
    );
    assert_eq!(
        req(owner, "HEAD", "/v1/AUTH_test/c/from-bob", &[], b"").status,
        404
    );
    // Container changes stay the owner's, and bob's S3 keys only see bob's account.
    let r = req(
        bob,
        "PUT",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", ".r:*")],
        b"",
    );
    assert_eq!(r.status, 403);
    let r = s3_as(&d, "GET", "/c/o", "AKIDOTHER", "other-secret");
    assert_eq!(r.status, 404, "{}", r.text());

    // Public reads by referrer: objects without a token, listings only with .rlistings.
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", ".r:*")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        req(None, "GET", "/v1/AUTH_test/c/o", &[], b"").body,
        b"shared"
    );
    assert_eq!(
        req(Some("AUTH_tkforged"), "GET", "/v1/AUTH_test/c/o", &[], b"").status,
        200
    );
    assert_eq!(req(None, "GET", "/v1/AUTH_test/c", &[], b"").status, 401);
    assert_eq!(
        req(None, "PUT", "/v1/AUTH_test/c/o", &[], b"anon").status,
        401
    );
    assert_eq!(
        req(bob, "GET", "/v1/AUTH_test/secret/s", &[], b"").status,
        403
    );
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", ".r:*,.rlistings")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        req(None, "GET", "/v1/AUTH_test/c?format=json", &[], b"").status,
        200
    );
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Read", ".r:.example.com,.r:-bad.example.com")],
        b"",
    );
    assert_eq!(r.status, 204);
    let with_ref = |referer: &str| {
        req(
            None,
            "GET",
            "/v1/AUTH_test/c/o",
            &[("Referer", referer)],
            b"",
        )
        .status
    };
    assert_eq!(with_ref("http://www.example.com/page"), 200);
    assert_eq!(with_ref("http://bad.example.com/page"), 401);
    assert_eq!(with_ref("http://example.org/"), 401);

    // Removing the grants closes the container again.
    let r = req(
        owner,
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Remove-Container-Read", "x"), ("X-Container-Write", "")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        req(
            None,
            "GET",
            "/v1/AUTH_test/c/o",
            &[("Referer", "http://www.example.com/")],
            b""
        )
        .status,
        401
    );
    assert_eq!(
        req(bob, "PUT", "/v1/AUTH_test/c/again", &[], b"x").status,
        403
    );
    assert_eq!(
        req(owner, "GET", "/v1/AUTH_test/c/o", &[], b"").body,
        b"shared"
    );
}

/// A signed S3 request with another key pair.
fn s3_as(d: &Daemon, method: &str, path: &str, access: &str, secret: &str) -> Resp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = amz_date(now);
    let payload = sigv4::sha256_hex(b"");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", format!("127.0.0.1:{}", d.port).parse().unwrap());
    headers.insert("x-amz-date", date.parse().unwrap());
    headers.insert("x-amz-content-sha256", payload.parse().unwrap());
    let signed = [
        "host".to_owned(),
        "x-amz-content-sha256".into(),
        "x-amz-date".into(),
    ];
    let canonical =
        sigv4::canonical_request(method, path, None, &headers, &signed, &payload).unwrap();
    let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
    let key = sigv4::signing_key(secret, &date[..8], "us-east-1", "s3");
    let sig = sigv4::sign(&key, &sigv4::string_to_sign(&date, &scope, &canonical));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={}, Signature={sig}",
        signed.join(";")
    );
    http(
        d.port,
        method,
        path,
        &[
            ("x-amz-date", &date),
            ("x-amz-content-sha256", &payload),
            ("Authorization", &auth),
        ],
        b"",
    )
}

#[test]
fn swift_versioned_containers_keep_a_stack_or_a_history() {
    let d = Daemon::start();
    let t = d.token();
    let req = |method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        let mut h: Vec<(&str, &str)> = extra.to_vec();
        h.push(("X-Auth-Token", &t));
        http(d.port, method, path, &h, body)
    };
    let listing = |c: &str| -> Vec<String> {
        req("GET", &format!("/v1/AUTH_test/{c}"), &[], b"")
            .text()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let get = |path: &str| req("GET", path, &[], b"");

    // Both modes at once, or a name with a slash, are refused.
    let r = req(
        "PUT",
        "/v1/AUTH_test/c",
        &[("X-Versions-Location", "a"), ("X-History-Location", "b")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Only one of"), "{}", r.text());
    let r = req(
        "PUT",
        "/v1/AUTH_test/c",
        &[("X-Versions-Location", "a/b")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(req("HEAD", "/v1/AUTH_test/c", &[], b"").status, 404);

    // A stack (X-Versions-Location): each overwrite archives the old content under
    // `<len:03x><name>/<timestamp>`; each delete brings the newest version back.
    assert_eq!(req("PUT", "/v1/AUTH_test/old", &[], b"").status, 201);
    let r = req(
        "PUT",
        "/v1/AUTH_test/c",
        &[("X-Versions-Location", "old")],
        b"",
    );
    assert_eq!(r.status, 201);
    let r = req("HEAD", "/v1/AUTH_test/c", &[], b"");
    assert_eq!(r.header("x-versions-location"), Some("old"));
    let big = data(200_000, 9);
    for (i, body) in [&b"v1"[..], &big, b"v3"].into_iter().enumerate() {
        assert_eq!(req("PUT", "/v1/AUTH_test/c/o", &[], body).status, 201);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(listing("old").len(), i);
    }
    assert_eq!(get("/v1/AUTH_test/c/o").body, b"v3");
    let versions = listing("old");
    for v in &versions {
        let stamp = v.strip_prefix("001o/").expect("version prefix");
        assert_eq!(stamp.len(), 16, "{v}");
        assert!(stamp.parse::<f64>().is_ok(), "{v}");
    }
    assert_eq!(
        get(&format!("/v1/AUTH_test/old/{}", versions[0])).body,
        b"v1"
    );
    assert_eq!(get(&format!("/v1/AUTH_test/old/{}", versions[1])).body, big);
    assert_eq!(req("DELETE", "/v1/AUTH_test/c/o", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/c/o").body, big);
    assert_eq!(req("DELETE", "/v1/AUTH_test/c/o", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/c/o").body, b"v1");
    assert!(listing("old").is_empty());
    assert_eq!(req("DELETE", "/v1/AUTH_test/c/o", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/c/o").status, 404);
    assert_eq!(req("DELETE", "/v1/AUTH_test/c/o", &[], b"").status, 404);
    // Copies into the container are versioned too.
    assert_eq!(
        req("PUT", "/v1/AUTH_test/old/src", &[], b"copied").status,
        201
    );
    assert_eq!(req("PUT", "/v1/AUTH_test/c/o", &[], b"before").status, 201);
    let r = req(
        "PUT",
        "/v1/AUTH_test/c/o",
        &[("X-Copy-From", "old/src")],
        b"",
    );
    assert_eq!(r.status, 201);
    assert_eq!(get("/v1/AUTH_test/c/o").body, b"copied");
    assert_eq!(req("DELETE", "/v1/AUTH_test/c/o", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/c/o").body, b"before");

    // A history (X-History-Location): a delete archives the current content too, and
    // nothing comes back.
    assert_eq!(req("PUT", "/v1/AUTH_test/hist", &[], b"").status, 201);
    let r = req(
        "PUT",
        "/v1/AUTH_test/h",
        &[("X-History-Location", "hist")],
        b"",
    );
    assert_eq!(r.status, 201);
    assert_eq!(req("PUT", "/v1/AUTH_test/h/doc", &[], b"one").status, 201);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(req("PUT", "/v1/AUTH_test/h/doc", &[], b"two").status, 201);
    assert_eq!(req("DELETE", "/v1/AUTH_test/h/doc", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/h/doc").status, 404);
    let hist = listing("hist");
    assert_eq!(hist.len(), 2);
    assert_eq!(get(&format!("/v1/AUTH_test/hist/{}", hist[0])).body, b"one");
    assert_eq!(get(&format!("/v1/AUTH_test/hist/{}", hist[1])).body, b"two");
    assert_eq!(req("DELETE", "/v1/AUTH_test/h/doc", &[], b"").status, 404);
    // Switching modes clears the other one.
    let r = req(
        "POST",
        "/v1/AUTH_test/h",
        &[("X-Versions-Location", "old")],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = req("HEAD", "/v1/AUTH_test/h", &[], b"");
    assert_eq!(r.header("x-versions-location"), Some("old"));
    assert_eq!(r.header("x-history-location"), None);

    // A missing archive container fails the write (412) and leaves the object as it was.
    let r = req(
        "POST",
        "/v1/AUTH_test/h",
        &[("X-Versions-Location", "gone")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(req("PUT", "/v1/AUTH_test/h/k", &[], b"first").status, 412);
    assert_eq!(get("/v1/AUTH_test/h/k").status, 404);
    // X-Remove-Versions-Location turns versioning off: overwrites replace.
    let r = req(
        "POST",
        "/v1/AUTH_test/h",
        &[("X-Remove-Versions-Location", "x")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(req("PUT", "/v1/AUTH_test/h/k", &[], b"first").status, 201);
    assert_eq!(req("PUT", "/v1/AUTH_test/h/k", &[], b"second").status, 201);
    assert_eq!(req("DELETE", "/v1/AUTH_test/h/k", &[], b"").status, 204);
    assert_eq!(get("/v1/AUTH_test/h/k").status, 404);

    // A user granted writes on the container but not on its archive cannot overwrite.
    let r = req(
        "POST",
        "/v1/AUTH_test/c",
        &[("X-Container-Write", "other")],
        b"",
    );
    assert_eq!(r.status, 204);
    let bob = bob_token(&d);
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/o",
        &[("X-Auth-Token", &bob)],
        b"bob",
    );
    assert_eq!(r.status, 403);
    let r = req(
        "POST",
        "/v1/AUTH_test/old",
        &[("X-Container-Write", "other")],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/c/o",
        &[("X-Auth-Token", &bob)],
        b"bob",
    );
    assert_eq!(r.status, 201);
    assert_eq!(get("/v1/AUTH_test/c/o").body, b"bob");
    // Archived records keep their blobs: after a restart (which sweeps unreferenced
    // blobs) the archived version still comes back on delete.
    let mut d = d;
    d.restart();
    let t = d.token();
    let r = http(
        d.port,
        "DELETE",
        "/v1/AUTH_test/c/o",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = http(
        d.port,
        "GET",
        "/v1/AUTH_test/c/o",
        &[("X-Auth-Token", &t)],
        b"",
    );
    assert_eq!(r.body, b"before");
}

#[test]
fn kill_9_mid_overwrite_of_a_versioned_object_keeps_the_old_version_current() {
    let mut d = Daemon::start();
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/arch", b"").status, 201);
    let r = http(
        d.port,
        "PUT",
        "/v1/AUTH_test/v",
        &[("X-Auth-Token", &t), ("X-Versions-Location", "arch")],
        b"",
    );
    assert_eq!(r.status, 201);
    let first = data(2_000_000, 21);
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/v/o", &first).status, 201);
    let second = data(2_000_000, 22);
    assert_eq!(swift_put(&d, &t, "/v1/AUTH_test/v/o", &second).status, 201);
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/arch", &auth, b"")
            .text()
            .lines()
            .count(),
        1
    );

    // A third version is cut off by SIGKILL half-way through its body.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(
        s,
        "PUT /v1/AUTH_test/v/o HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\nContent-Length: 8000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&data(4_000_000, 23)).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    drop(s);

    // The acknowledged versions are intact: the second current, the first archived, and
    // deleting brings the first back.
    let t = d.token();
    let auth = [("X-Auth-Token", t.as_str())];
    let r = http(d.port, "GET", "/v1/AUTH_test/v/o", &auth, b"");
    assert_eq!((r.status, r.body == second), (200, true));
    let arch = http(d.port, "GET", "/v1/AUTH_test/arch", &auth, b"").text();
    assert_eq!(arch.lines().count(), 1, "{arch}");
    assert_eq!(
        http(d.port, "DELETE", "/v1/AUTH_test/v/o", &auth, b"").status,
        204
    );
    let r = http(d.port, "GET", "/v1/AUTH_test/v/o", &auth, b"");
    assert_eq!((r.status, r.body == first), (200, true));
    assert!(files_under(&d.data().join("tmp")).is_empty());
}

fn tagging_doc(tags: &[(&str, &str)]) -> String {
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("<Tag><Key>{k}</Key><Value>{v}</Value></Tag>"))
        .collect();
    format!(
        "<Tagging xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet>{tags}</TagSet></Tagging>"
    )
}

/// The `<Code>` of an S3 error body.
fn s3_code(r: &Resp) -> String {
    let t = r.text();
    t.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(c, _)| c.to_owned())
        .unwrap_or_else(|| panic!("no error code in {t:?}"))
}

#[test]
fn s3_object_tags_are_stored_checked_and_survive_a_restart() {
    let mut d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/tags", &[], b"", SECRET_KEY).status, 200);
    // PutObject with x-amz-tagging (URL query form).
    let r = s3(
        &d,
        "PUT",
        "/tags/k",
        &[("x-amz-tagging", "project=blue&note=two%20words&flag")],
        b"content",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = r.header("etag").unwrap().to_owned();
    let head = s3(&d, "HEAD", "/tags/k", &[], b"", SECRET_KEY);
    assert_eq!(head.header("x-amz-tagging-count"), Some("3"));
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with(
            "<TagSet><Tag><Key>project</Key><Value>blue</Value></Tag><Tag><Key>note</Key><Value>two words</Value></Tag><Tag><Key>flag</Key><Value></Value></Tag></TagSet></Tagging>"
        ),
        "{}",
        r.text()
    );
    // PutObjectTagging replaces the set, and leaves the content, ETag and time alone.
    let before = s3(&d, "GET", "/tags/k", &[], b"", SECRET_KEY);
    let doc = tagging_doc(&[("colour", "red"), ("size", "")]);
    let r = s3(
        &d,
        "PUT",
        "/tags/k?tagging",
        &[],
        doc.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let after = s3(&d, "GET", "/tags/k", &[], b"", SECRET_KEY);
    assert_eq!(after.body, b"content");
    assert_eq!(after.header("etag"), Some(etag.as_str()));
    assert_eq!(
        after.header("last-modified"),
        before.header("last-modified")
    );
    assert_eq!(after.header("x-amz-tagging-count"), Some("2"));
    // Swift never shows them.
    let token = d.token();
    let sw = http(
        d.port,
        "HEAD",
        "/v1/AUTH_test/tags/k",
        &[("X-Auth-Token", &token)],
        b"",
    );
    assert_eq!(sw.status, 200);
    assert!(
        !sw.headers
            .iter()
            .any(|(k, _)| k.contains("sysmeta") || k.contains("tagging")),
        "{:?}",
        sw.headers
    );

    // Bad tag sets are refused with S3's codes, and the stored set is unchanged.
    let eleven: Vec<(String, String)> = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
    let eleven: Vec<(&str, &str)> = eleven
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let long_key = "k".repeat(129);
    let long_value = "v".repeat(257);
    for (doc, status, code) in [
        (tagging_doc(&eleven), 400, "BadRequest"),
        (tagging_doc(&[("a", "1"), ("a", "2")]), 400, "InvalidTag"),
        (tagging_doc(&[(&long_key, "v")]), 400, "InvalidTag"),
        (tagging_doc(&[("k", &long_value)]), 400, "InvalidTag"),
        (tagging_doc(&[("", "v")]), 400, "InvalidTag"),
        (tagging_doc(&[("aws:reserved", "v")]), 400, "InvalidTag"),
        (tagging_doc(&[("bad?key", "v")]), 400, "InvalidTag"),
        (
            "<Tagging><TagSet><Tag><Key>k</Key>".into(),
            400,
            "MalformedXML",
        ),
        (
            "<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>".into(),
            400,
            "MalformedXML",
        ),
        ("<Tagging/>".into(), 400, "MalformedXML"),
    ] {
        let r = s3(
            &d,
            "PUT",
            "/tags/k?tagging",
            &[],
            doc.as_bytes(),
            SECRET_KEY,
        );
        assert_eq!((r.status, s3_code(&r).as_str()), (status, code), "{doc}");
    }
    let ok = tagging_doc(&[(&"k".repeat(128), &"v".repeat(256))]);
    let r = s3(
        &d,
        "PUT",
        "/tags/k?tagging",
        &[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")],
        ok.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (400, "BadDigest"));
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert!(
        r.text().contains("<Key>colour</Key><Value>red</Value>"),
        "{}",
        r.text()
    );
    // Unknown object or bucket.
    let doc = tagging_doc(&[("a", "1")]);
    let r = s3(
        &d,
        "PUT",
        "/tags/nope?tagging",
        &[],
        doc.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchKey"));
    let r = s3(&d, "GET", "/tags/nope?tagging", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchKey"));
    let r = s3(&d, "DELETE", "/tags/nope?tagging", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchKey"));
    let r = s3(&d, "GET", "/nobucket/k?tagging", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchBucket"));
    assert_eq!(
        s3(&d, "HEAD", "/tags/nope", &[], b"", SECRET_KEY).status,
        404
    );
    // A bad x-amz-tagging header refuses the whole PutObject: nothing is stored.
    for (tagging, code) in [
        ("a=1&a=2", "InvalidArgument"),
        ("=v", "InvalidArgument"),
        ("a=%zz", "InvalidArgument"),
        ("a%3F=1", "InvalidTag"),
    ] {
        let r = s3(
            &d,
            "PUT",
            "/tags/h",
            &[("x-amz-tagging", tagging)],
            b"x",
            SECRET_KEY,
        );
        assert_eq!((r.status, s3_code(&r).as_str()), (400, code), "{tagging}");
        assert_eq!(s3(&d, "HEAD", "/tags/h", &[], b"", SECRET_KEY).status, 404);
    }
    let r = s3(
        &d,
        "PUT",
        "/tags/copy",
        &[
            ("x-amz-copy-source", "/tags/k"),
            ("x-amz-tagging-directive", "MERGE"),
        ],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (400, "InvalidArgument"));

    // Tags are in the index with the object: they survive a kill -9 and a restart.
    d.restart();
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert!(
        r.text().contains("<Tag><Key>colour</Key><Value>red</Value></Tag><Tag><Key>size</Key><Value></Value></Tag></TagSet>"),
        "{}",
        r.text()
    );
    // DeleteObjectTagging empties the set; an overwrite or a delete drops tags.
    let r = s3(&d, "DELETE", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 204);
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert!(r.text().contains("<TagSet></TagSet>"), "{}", r.text());
    assert_eq!(
        s3(&d, "GET", "/tags/k", &[], b"", SECRET_KEY).header("x-amz-tagging-count"),
        None
    );
    assert_eq!(
        s3(
            &d,
            "PUT",
            "/tags/k?tagging",
            &[],
            doc.as_bytes(),
            SECRET_KEY
        )
        .status,
        200
    );
    assert_eq!(
        s3(&d, "PUT", "/tags/k", &[], b"new", SECRET_KEY).status,
        200
    );
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert!(r.text().contains("<TagSet></TagSet>"), "{}", r.text());
    assert_eq!(
        s3(
            &d,
            "PUT",
            "/tags/k?tagging",
            &[],
            doc.as_bytes(),
            SECRET_KEY
        )
        .status,
        200
    );
    assert_eq!(
        s3(&d, "DELETE", "/tags/k", &[], b"", SECRET_KEY).status,
        204
    );
    assert_eq!(
        s3(&d, "PUT", "/tags/k", &[], b"again", SECRET_KEY).status,
        200
    );
    let r = s3(&d, "GET", "/tags/k?tagging", &[], b"", SECRET_KEY);
    assert!(r.text().contains("<TagSet></TagSet>"), "{}", r.text());
}

#[test]
fn s3_versioning_is_reported_honestly_and_unknown_sub_resources_touch_nothing() {
    let d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/ver", &[], b"", SECRET_KEY).status, 200);
    assert_eq!(
        s3(&d, "PUT", "/ver/k", &[], b"data", SECRET_KEY).status,
        200
    );
    let r = s3(&d, "GET", "/ver?versioning", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with(
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"/>"
        ),
        "{}",
        r.text()
    );
    let cfg = |s: &str| {
        format!(
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{s}</Status></VersioningConfiguration>"
        )
    };
    let r = s3(
        &d,
        "PUT",
        "/ver?versioning",
        &[],
        cfg("Enabled").as_bytes(),
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));
    assert!(
        r.text().contains("versioning is not implemented"),
        "{}",
        r.text()
    );
    let r = s3(
        &d,
        "PUT",
        "/ver?versioning",
        &[],
        cfg("Sometimes").as_bytes(),
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (400, "MalformedXML"));
    let r = s3(&d, "GET", "/ver?versioning", &[], b"", SECRET_KEY);
    assert!(!r.text().contains("Status"), "{}", r.text());
    // Suspended is accepted (as S3 accepts it on any bucket) and reported from then on.
    let r = s3(
        &d,
        "PUT",
        "/ver?versioning",
        &[],
        cfg("Suspended").as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3(&d, "GET", "/ver?versioning", &[], b"", SECRET_KEY);
    assert!(
        r.text().contains("<Status>Suspended</Status>"),
        "{}",
        r.text()
    );
    let r = s3(&d, "GET", "/none?versioning", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchBucket"));
    // Sub-resources objectd does not implement answer 501 for every method and leave the
    // bucket and its objects alone (a DELETE ?policy once deleted an empty bucket, a
    // PUT ?tagging on an object once overwrote it).
    for (method, path) in [
        ("DELETE", "/ver?policy"),
        ("DELETE", "/ver?cors"),
        ("PUT", "/ver?lifecycle"),
        ("GET", "/ver?website"),
        ("GET", "/ver?logging"),
        ("PUT", "/ver/k?retention"),
    ] {
        let r = s3(&d, method, path, &[], b"<x/>", SECRET_KEY);
        assert_eq!(
            (r.status, s3_code(&r).as_str()),
            (501, "NotImplemented"),
            "{method} {path}"
        );
    }
    let r = s3(&d, "DELETE", "/ver?versioning", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 405);
    assert_eq!(s3(&d, "GET", "/ver/k", &[], b"", SECRET_KEY).body, b"data");
}

#[test]
fn s3_canned_acls_map_onto_the_swift_read_acl() {
    let d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/pub", &[], b"", SECRET_KEY).status, 200);
    assert_eq!(
        s3(&d, "PUT", "/pub/o", &[], b"public bytes", SECRET_KEY).status,
        200
    );
    let anonymous_swift = || http(d.port, "GET", "/v1/AUTH_test/pub/o", &[], b"");
    let r = s3(&d, "GET", "/pub?acl", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<ID>AUTH_test</ID>"), "{}", r.text());
    assert!(r.text().contains("<Permission>FULL_CONTROL</Permission>"));
    assert!(!r.text().contains("AllUsers"), "{}", r.text());
    assert_eq!(anonymous_swift().status, 401);

    let r = s3(
        &d,
        "PUT",
        "/pub?acl",
        &[("x-amz-acl", "public-read")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for path in ["/pub?acl", "/pub/o?acl"] {
        let r = s3(&d, "GET", path, &[], b"", SECRET_KEY);
        assert!(
            r.text().contains("<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission>"),
            "{path}: {}",
            r.text()
        );
    }
    let token = d.token();
    let stat = http(
        d.port,
        "HEAD",
        "/v1/AUTH_test/pub",
        &[("X-Auth-Token", &token)],
        b"",
    );
    assert_eq!(stat.header("x-container-read"), Some(".r:*,.rlistings"));
    let r = anonymous_swift();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"public bytes"[..]));
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/pub", &[], b"").status,
        200
    );
    // objectd has no anonymous S3 access (an S3 path names no account): refused.
    let r = http(d.port, "GET", "/pub/o", &[], b"");
    assert_eq!((r.status, s3_code(&r).as_str()), (403, "AccessDenied"));

    // Unsupported forms are refused and change nothing.
    for (hs, body, status, code) in [
        (
            vec![("x-amz-acl", "public-read-write")],
            &b""[..],
            501,
            "NotImplemented",
        ),
        (
            vec![(
                "x-amz-grant-read",
                "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
            )],
            b"",
            501,
            "NotImplemented",
        ),
        (vec![], b"<AccessControlPolicy/>", 501, "NotImplemented"),
        (vec![], b"", 400, "MissingSecurityHeader"),
        (vec![("x-amz-acl", "everyone")], b"", 400, "InvalidArgument"),
    ] {
        let r = s3(&d, "PUT", "/pub?acl", &hs, body, SECRET_KEY);
        assert_eq!((r.status, s3_code(&r).as_str()), (status, code), "{hs:?}");
    }
    assert_eq!(anonymous_swift().status, 200);
    // A private object ACL cannot hold in a public bucket.
    let r = s3(
        &d,
        "PUT",
        "/pub/o?acl",
        &[("x-amz-acl", "private")],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));

    let r = s3(
        &d,
        "PUT",
        "/pub?acl",
        &[("x-amz-acl", "private")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200);
    assert_eq!(anonymous_swift().status, 401);
    let r = s3(&d, "GET", "/pub/o?acl", &[], b"", SECRET_KEY);
    assert!(!r.text().contains("AllUsers"), "{}", r.text());
    let r = s3(
        &d,
        "PUT",
        "/pub/o?acl",
        &[("x-amz-acl", "private")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3(&d, "GET", "/pub/none?acl", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchKey"));

    // Object writes accept x-amz-acl: private only.
    let r = s3(
        &d,
        "PUT",
        "/pub/p",
        &[("x-amz-acl", "private")],
        b"x",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200);
    let r = s3(
        &d,
        "PUT",
        "/pub/q",
        &[("x-amz-acl", "public-read")],
        b"x",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));
    assert_eq!(s3(&d, "HEAD", "/pub/q", &[], b"", SECRET_KEY).status, 404);

    // CreateBucket's x-amz-acl.
    let r = s3(
        &d,
        "PUT",
        "/born-public",
        &[("x-amz-acl", "public-read")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s3(&d, "PUT", "/born-public/o", &[], b"hi", SECRET_KEY).status,
        200
    );
    assert_eq!(
        http(d.port, "GET", "/v1/AUTH_test/born-public/o", &[], b"").body,
        b"hi"
    );
    let r = s3(
        &d,
        "PUT",
        "/never",
        &[("x-amz-acl", "authenticated-read")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 501);
    assert_eq!(s3(&d, "HEAD", "/never", &[], b"", SECRET_KEY).status, 404);
}

/// The contents of each `<name>...</name>` element in `text`, in order.
fn elements(text: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let end = after.find(&close).expect("a closed element");
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}

/// The contents of the first `<name>` element, if any.
fn element(text: &str, name: &str) -> Option<String> {
    elements(text, name).into_iter().next()
}

/// A ListObjectVersions page: (key of each Version, each CommonPrefix, NextKeyMarker,
/// NextVersionIdMarker, IsTruncated).
type VersionsPage = (
    Vec<String>,
    Vec<String>,
    Option<String>,
    Option<String>,
    bool,
);

fn versions_page(d: &Daemon, bucket: &str, query: &str) -> VersionsPage {
    let r = s3(
        d,
        "GET",
        &format!("/{bucket}?versions{query}"),
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    let t = r.text();
    assert!(t.contains("<ListVersionsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"));
    assert!(!t.contains("<DeleteMarker>"), "{t}");
    let versions = elements(&t, "Version");
    for v in &versions {
        assert_eq!(element(v, "VersionId").as_deref(), Some("null"), "{v}");
        assert_eq!(element(v, "IsLatest").as_deref(), Some("true"), "{v}");
        assert_eq!(
            element(v, "StorageClass").as_deref(),
            Some("STANDARD"),
            "{v}"
        );
        assert!(
            v.contains("<Owner><ID>AUTH_test</ID><DisplayName>AUTH_test</DisplayName></Owner>"),
            "{v}"
        );
    }
    let prefixes = elements(&t, "CommonPrefixes")
        .iter()
        .map(|p| element(p, "Prefix").unwrap())
        .collect();
    (
        versions
            .iter()
            .map(|v| element(v, "Key").unwrap())
            .collect(),
        prefixes,
        element(&t, "NextKeyMarker"),
        element(&t, "NextVersionIdMarker"),
        element(&t, "IsTruncated").unwrap() == "true",
    )
}

#[test]
fn s3_object_versions_are_each_object_as_its_null_version() {
    let d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/vers", &[], b"", SECRET_KEY).status, 200);
    let keys = ["a", "b/1", "b/2", "c", "d e&f", "z"];
    for k in keys {
        let path = format!("/vers/{}", sigv4::uri_encode(k, false));
        assert_eq!(
            s3(&d, "PUT", &path, &[], k.as_bytes(), SECRET_KEY).status,
            200
        );
    }
    // Everything, with each Version's fields.
    let r = s3(&d, "GET", "/vers?versions", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/xml"));
    let t = r.text();
    for marker in [
        "<KeyMarker></KeyMarker>",
        "<VersionIdMarker></VersionIdMarker>",
        "<MaxKeys>1000</MaxKeys>",
        "<IsTruncated>false</IsTruncated>",
        "<Name>vers</Name>",
    ] {
        assert!(t.contains(marker), "{marker}: {t}");
    }
    let first = &elements(&t, "Version")[0];
    assert_eq!(element(first, "Key").as_deref(), Some("a"));
    assert_eq!(element(first, "Size").as_deref(), Some("1"));
    assert_eq!(
        element(first, "ETag"),
        Some(format!("&quot;{:032x}&quot;", md5_of(b"a")))
    );
    assert!(element(first, "LastModified").unwrap().ends_with('Z'));
    let (listed, prefixes, next, next_version, truncated) = versions_page(&d, "vers", "");
    assert_eq!(listed, ["a", "b/1", "b/2", "c", "d e&amp;f", "z"]);
    assert!(prefixes.is_empty());
    assert_eq!((next, next_version, truncated), (None, None, false));

    // Prefix, delimiter and url encoding.
    let (listed, prefixes, ..) = versions_page(&d, "vers", "&delimiter=%2F");
    assert_eq!(listed, ["a", "c", "d e&amp;f", "z"]);
    assert_eq!(prefixes, ["b/"]);
    let (listed, ..) = versions_page(&d, "vers", "&prefix=b%2F");
    assert_eq!(listed, ["b/1", "b/2"]);
    let r = s3(
        &d,
        "GET",
        "/vers?versions&encoding-type=url&prefix=d%20",
        &[],
        b"",
        SECRET_KEY,
    );
    let t = r.text();
    assert!(t.contains("<Key>d%20e%26f</Key>"), "{t}");
    assert!(t.contains("<Prefix>d%20</Prefix>"), "{t}");
    assert!(t.contains("<EncodingType>url</EncodingType>"), "{t}");

    // Paging two at a time with a delimiter: every entry once, in order; a page that ends
    // on a common prefix resumes after it and names no version.
    let mut seen = Vec::new();
    let mut query = String::new();
    let mut pages = 0;
    loop {
        let (listed, prefixes, next, next_version, truncated) =
            versions_page(&d, "vers", &format!("&delimiter=%2F&max-keys=2{query}"));
        pages += 1;
        assert!(listed.len() + prefixes.len() <= 2);
        seen.extend(listed.iter().cloned());
        seen.extend(prefixes.iter().cloned());
        if !truncated {
            assert_eq!((next, next_version), (None, None));
            break;
        }
        let next = next.expect("a truncated page names the next key marker");
        if prefixes.last() == Some(&next) {
            assert_eq!(next_version, None);
            query = format!("&key-marker={}", sigv4::uri_encode(&next, true));
        } else {
            assert_eq!(next_version.as_deref(), Some("null"));
            let key = next.replace("&amp;", "&");
            query = format!(
                "&key-marker={}&version-id-marker=null",
                sigv4::uri_encode(&key, true)
            );
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b/", "c", "d e&amp;f", "z"]);
    assert_eq!(pages, 3);
    let (listed, ..) = versions_page(&d, "vers", "&key-marker=c");
    assert_eq!(listed, ["d e&amp;f", "z"]);
    let (listed, ..) = versions_page(&d, "vers", "&key-marker=c&version-id-marker=null");
    assert_eq!(listed, ["d e&amp;f", "z"]);
    let (listed, _, next, _, truncated) = versions_page(&d, "vers", "&max-keys=0");
    assert_eq!((listed.len(), next, truncated), (0, None, true));
    let (listed, ..) = versions_page(&d, "vers", "&max-keys=5000");
    assert_eq!(listed.len(), 6);

    // Bad parameters, S3's answers.
    for (query, code) in [
        ("&version-id-marker=null", "InvalidArgument"),
        ("&key-marker=a&version-id-marker=bogus", "InvalidArgument"),
        ("&encoding-type=base64", "InvalidArgument"),
        ("&max-keys=-1", "InvalidArgument"),
        ("&max-keys=many", "InvalidArgument"),
    ] {
        let r = s3(
            &d,
            "GET",
            &format!("/vers?versions{query}"),
            &[],
            b"",
            SECRET_KEY,
        );
        assert_eq!((r.status, s3_code(&r).as_str()), (400, code), "{query}");
    }
    let r = s3(&d, "GET", "/nobucket?versions", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchBucket"));
    // Other methods on ?versions are refused and leave the bucket alone.
    for method in ["PUT", "DELETE", "POST"] {
        let r = s3(&d, method, "/vers?versions", &[], b"", SECRET_KEY);
        assert_eq!(r.status, 405, "{method}");
    }
    assert_eq!(s3(&d, "HEAD", "/vers", &[], b"", SECRET_KEY).status, 200);

    // versionId=null is the object itself; an S3-shaped id a version that does not exist;
    // anything else is refused.
    let s3_id = "KC0WuaPTHv7At3olS.BPuH.weAJqMkKJ";
    let r = s3(&d, "GET", "/vers/a?versionId=null", &[], b"", SECRET_KEY);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));
    assert_eq!(r.header("x-amz-version-id"), Some("null"));
    let r = s3(&d, "HEAD", "/vers/a?versionId=null", &[], b"", SECRET_KEY);
    assert_eq!((r.status, r.header("content-length")), (200, Some("1")));
    let r = s3(
        &d,
        "GET",
        &format!("/vers/a?versionId={s3_id}"),
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchVersion"));
    assert_eq!(
        s3(
            &d,
            "HEAD",
            &format!("/vers/a?versionId={s3_id}"),
            &[],
            b"",
            SECRET_KEY
        )
        .status,
        404
    );
    for bad in ["bogus", "", "NULL"] {
        let r = s3(
            &d,
            "GET",
            &format!("/vers/a?versionId={bad}"),
            &[],
            b"",
            SECRET_KEY,
        );
        assert_eq!(
            (r.status, s3_code(&r).as_str()),
            (400, "InvalidArgument"),
            "{bad:?}"
        );
    }
    // A sub-resource objectd does not implement answers 501 whatever version it names.
    let r = s3(
        &d,
        "GET",
        "/vers/a?retention&versionId=bogus",
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));
    let r = s3(
        &d,
        "GET",
        "/vers/missing?versionId=null",
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchVersion"));
    let r = s3(&d, "GET", "/vers/missing", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchKey"));
    let r = s3(
        &d,
        "GET",
        "/nobucket/a?versionId=null",
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchBucket"));

    // Deleting a version that does not exist deletes nothing; a bad id deletes nothing;
    // deleting the null version deletes the object.
    let r = s3(
        &d,
        "DELETE",
        &format!("/vers/a?versionId={s3_id}"),
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, r.header("x-amz-version-id")), (204, Some(s3_id)));
    let r = s3(
        &d,
        "DELETE",
        "/vers/a?versionId=bogus",
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (400, "InvalidArgument"));
    assert_eq!(s3(&d, "GET", "/vers/a", &[], b"", SECRET_KEY).body, b"a");
    let r = s3(&d, "DELETE", "/vers/a?versionId=null", &[], b"", SECRET_KEY);
    assert_eq!(
        (r.status, r.header("x-amz-version-id")),
        (204, Some("null"))
    );
    let r = s3(&d, "GET", "/vers/a?versionId=null", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchVersion"));
    assert_eq!(
        s3(&d, "DELETE", "/vers/a?versionId=null", &[], b"", SECRET_KEY).status,
        204
    );
    assert_eq!(versions_page(&d, "vers", "").0[0], "b/1");

    // Tags and copies take versionId=null too.
    let doc = tagging_doc(&[("k", "v")]);
    let r = s3(
        &d,
        "PUT",
        "/vers/c?tagging&versionId=null",
        &[],
        doc.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(
        (r.status, r.header("x-amz-version-id")),
        (200, Some("null")),
        "{}",
        r.text()
    );
    let r = s3(
        &d,
        "GET",
        "/vers/c?tagging&versionId=null",
        &[],
        b"",
        SECRET_KEY,
    );
    assert!(
        r.text().contains("<Key>k</Key><Value>v</Value>"),
        "{}",
        r.text()
    );
    let r = s3(
        &d,
        "GET",
        &format!("/vers/c?tagging&versionId={s3_id}"),
        &[],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchVersion"));
    let r = s3(
        &d,
        "PUT",
        "/vers/c2",
        &[("x-amz-copy-source", "/vers/c?versionId=null")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3(&d, "GET", "/vers/c2", &[], b"", SECRET_KEY).body, b"c");
    let src = format!("/vers/c?versionId={s3_id}");
    let r = s3(
        &d,
        "PUT",
        "/vers/c3",
        &[("x-amz-copy-source", &src)],
        b"",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchVersion"));
    assert_eq!(s3(&d, "HEAD", "/vers/c3", &[], b"", SECRET_KEY).status, 404);

    // DeleteObjects: a VersionId works as a DELETE's versionId, per key.
    let doc = format!(
        "<Delete><Object><Key>c</Key><VersionId>null</VersionId></Object><Object><Key>z</Key><VersionId>{s3_id}</VersionId></Object><Object><Key>b/1</Key><VersionId>bogus</VersionId></Object></Delete>"
    );
    let r = s3(&d, "POST", "/vers?delete", &[], doc.as_bytes(), SECRET_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(
        t.contains("<Deleted><Key>c</Key><VersionId>null</VersionId></Deleted>"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "<Deleted><Key>z</Key><VersionId>{s3_id}</VersionId></Deleted>"
        )),
        "{t}"
    );
    assert!(
        t.contains("<Error><Key>b/1</Key><VersionId>bogus</VersionId><Code>InvalidArgument</Code>"),
        "{t}"
    );
    let (listed, ..) = versions_page(&d, "vers", "");
    assert_eq!(listed, ["b/1", "b/2", "c2", "d e&amp;f", "z"]);

    // A suspended bucket lists the same way.
    let cfg = "<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>";
    assert_eq!(
        s3(
            &d,
            "PUT",
            "/vers?versioning",
            &[],
            cfg.as_bytes(),
            SECRET_KEY
        )
        .status,
        200
    );
    assert_eq!(versions_page(&d, "vers", "").0, listed);
}

#[test]
fn s3_bucket_tags_are_checked_kept_with_the_bucket_and_survive_a_restart() {
    let mut d = Daemon::start();
    assert_eq!(s3(&d, "PUT", "/btag", &[], b"", SECRET_KEY).status, 200);
    assert_eq!(
        s3(&d, "PUT", "/btag/o", &[], b"obj", SECRET_KEY).status,
        200
    );
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchTagSet"));
    assert!(
        r.text().contains("The TagSet does not exist"),
        "{}",
        r.text()
    );

    // Fifty tags, the longest key and value, with Content-MD5: stored as given.
    let keys: Vec<String> = (0..49).map(|i| format!("k{i:02}")).collect();
    let long_key = "K".repeat(128);
    let long_value = "v".repeat(256);
    let mut tags: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "x y")).collect();
    tags.push((&long_key, &long_value));
    let doc = tagging_doc(&tags);
    let digest = {
        use md5::{Digest, Md5};
        base64_bytes(&Md5::digest(doc.as_bytes()))
    };
    let r = s3(
        &d,
        "PUT",
        "/btag?tagging",
        &[("content-md5", &digest)],
        doc.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(t.starts_with("<?xml"), "{t}");
    assert_eq!(elements(&t, "Tag").len(), 50, "{t}");
    assert!(
        t.contains("<Tag><Key>k00</Key><Value>x y</Value></Tag>"),
        "{t}"
    );
    assert!(t.contains(&format!(
        "<Tag><Key>{long_key}</Key><Value>{long_value}</Value></Tag>"
    )));
    // The bucket's objects and its listing are untouched; Swift never shows the tags.
    assert_eq!(s3(&d, "GET", "/btag/o", &[], b"", SECRET_KEY).body, b"obj");
    let r = s3(&d, "GET", "/btag/o?tagging", &[], b"", SECRET_KEY);
    assert!(r.text().contains("<TagSet></TagSet>"), "{}", r.text());
    let token = d.token();
    let sw = http(
        d.port,
        "HEAD",
        "/v1/AUTH_test/btag",
        &[("X-Auth-Token", &token)],
        b"",
    );
    assert_eq!(sw.status, 204);
    assert!(
        !sw.headers
            .iter()
            .any(|(k, _)| k.contains("sysmeta") || k.contains("tagging")),
        "{:?}",
        sw.headers
    );
    // A Swift POST of container metadata keeps them.
    let r = http(
        d.port,
        "POST",
        "/v1/AUTH_test/btag",
        &[
            ("X-Auth-Token", &token),
            ("X-Container-Meta-Colour", "blue"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);

    // Bad tag sets are refused with S3's codes and leave the stored set alone.
    let fifty_one: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    let fifty_one: Vec<(&str, &str)> = fifty_one.iter().map(|k| (k.as_str(), "v")).collect();
    let too_long_key = "k".repeat(129);
    let too_long_value = "v".repeat(257);
    for (doc, code) in [
        (tagging_doc(&fifty_one), "BadRequest"),
        (tagging_doc(&[("a", "1"), ("a", "2")]), "InvalidTag"),
        (tagging_doc(&[(&too_long_key, "v")]), "InvalidTag"),
        (tagging_doc(&[("k", &too_long_value)]), "InvalidTag"),
        (tagging_doc(&[("", "v")]), "InvalidTag"),
        (tagging_doc(&[("aws:cloudformation", "v")]), "InvalidTag"),
        (
            "<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>".into(),
            "MalformedXML",
        ),
        ("<Tagging/>".into(), "MalformedXML"),
        ("<Tagging><TagSet>".into(), "MalformedXML"),
        ("not xml".into(), "MalformedXML"),
    ] {
        let r = s3(&d, "PUT", "/btag?tagging", &[], doc.as_bytes(), SECRET_KEY);
        assert_eq!((r.status, s3_code(&r).as_str()), (400, code), "{doc}");
    }
    let r = s3(
        &d,
        "PUT",
        "/btag?tagging",
        &[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")],
        tagging_doc(&[("a", "1")]).as_bytes(),
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (400, "BadDigest"));
    assert_eq!(
        elements(
            &s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY).text(),
            "Tag"
        )
        .len(),
        50
    );
    // Unknown buckets; methods that are not tagging's.
    let doc = tagging_doc(&[("a", "1")]);
    for (method, body) in [("GET", ""), ("PUT", doc.as_str()), ("DELETE", "")] {
        let r = s3(
            &d,
            method,
            "/nobucket?tagging",
            &[],
            body.as_bytes(),
            SECRET_KEY,
        );
        assert_eq!(
            (r.status, s3_code(&r).as_str()),
            (404, "NoSuchBucket"),
            "{method}"
        );
    }
    assert_eq!(
        s3(&d, "HEAD", "/nobucket", &[], b"", SECRET_KEY).status,
        404
    );
    assert_eq!(
        s3(&d, "POST", "/btag?tagging", &[], b"", SECRET_KEY).status,
        405
    );

    // Kept in the index with the bucket: a kill -9 and a restart lose nothing.
    d.restart();
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!(elements(&r.text(), "Tag").len(), 50, "{}", r.text());
    let token = d.token();
    let sw = http(
        d.port,
        "HEAD",
        "/v1/AUTH_test/btag",
        &[("X-Auth-Token", &token)],
        b"",
    );
    assert_eq!(sw.header("x-container-meta-colour"), Some("blue"));
    // A PUT replaces the whole set; DELETE removes it (twice is fine).
    let r = s3(
        &d,
        "PUT",
        "/btag?tagging",
        &[],
        tagging_doc(&[("only", "one")]).as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 204);
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert!(
        r.text()
            .contains("<TagSet><Tag><Key>only</Key><Value>one</Value></Tag></TagSet>"),
        "{}",
        r.text()
    );
    for _ in 0..2 {
        assert_eq!(
            s3(&d, "DELETE", "/btag?tagging", &[], b"", SECRET_KEY).status,
            204
        );
        let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
        assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchTagSet"));
    }
    // An empty TagSet leaves none.
    assert_eq!(
        s3(&d, "PUT", "/btag?tagging", &[], doc.as_bytes(), SECRET_KEY).status,
        204
    );
    let r = s3(
        &d,
        "PUT",
        "/btag?tagging",
        &[],
        tagging_doc(&[]).as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 204);
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!(s3_code(&r), "NoSuchTagSet");
    // A DELETE ?tagging never deletes the bucket, even an empty one.
    assert_eq!(
        s3(&d, "DELETE", "/btag/o", &[], b"", SECRET_KEY).status,
        204
    );
    assert_eq!(
        s3(&d, "DELETE", "/btag?tagging", &[], b"", SECRET_KEY).status,
        204
    );
    assert_eq!(s3(&d, "HEAD", "/btag", &[], b"", SECRET_KEY).status, 200);

    // Gone with the bucket: a bucket made again under the name starts without tags.
    assert_eq!(
        s3(&d, "PUT", "/btag?tagging", &[], doc.as_bytes(), SECRET_KEY).status,
        204
    );
    assert_eq!(s3(&d, "DELETE", "/btag", &[], b"", SECRET_KEY).status, 204);
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!(s3_code(&r), "NoSuchBucket");
    assert_eq!(s3(&d, "PUT", "/btag", &[], b"", SECRET_KEY).status, 200);
    let r = s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (404, "NoSuchTagSet"));
    // Re-creating an existing bucket keeps its tags.
    assert_eq!(
        s3(&d, "PUT", "/btag?tagging", &[], doc.as_bytes(), SECRET_KEY).status,
        204
    );
    assert_eq!(s3(&d, "PUT", "/btag", &[], b"", SECRET_KEY).status, 200);
    assert_eq!(
        s3(&d, "GET", "/btag?tagging", &[], b"", SECRET_KEY).status,
        200
    );
}

#[test]
fn s3_bucket_owner_full_control_is_accepted_where_private_is() {
    let d = Daemon::start();
    let owner = ("x-amz-acl", "bucket-owner-full-control");
    let anonymous = |path: &str| http(d.port, "GET", path, &[], b"").status;
    // CreateBucket ignores it, as S3 does: the bucket is private.
    assert_eq!(
        s3(&d, "PUT", "/bofc", &[owner], b"", SECRET_KEY).status,
        200
    );
    // PutObject, CopyObject and CreateMultipartUpload accept it.
    let r = s3(&d, "PUT", "/bofc/put", &[owner], b"put body", SECRET_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(anonymous("/v1/AUTH_test/bofc/put"), 401);
    let r = s3(
        &d,
        "PUT",
        "/bofc/copy",
        &[owner, ("x-amz-copy-source", "/bofc/put")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s3(&d, "GET", "/bofc/copy", &[], b"", SECRET_KEY).body,
        b"put body"
    );
    let r = s3(&d, "POST", "/bofc/mp?uploads", &[owner], b"", SECRET_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let upload = element(&r.text(), "UploadId").unwrap();
    let r = s3(
        &d,
        "PUT",
        &format!("/bofc/mp?partNumber=1&uploadId={upload}"),
        &[],
        b"part",
        SECRET_KEY,
    );
    let etag = r.header("etag").unwrap().to_owned();
    let doc = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let r = s3(
        &d,
        "POST",
        &format!("/bofc/mp?uploadId={upload}"),
        &[],
        doc.as_bytes(),
        SECRET_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s3(&d, "GET", "/bofc/mp", &[], b"", SECRET_KEY).body,
        b"part"
    );
    // The object's ACL is its owner's full control, which is the bucket owner's.
    let r = s3(&d, "GET", "/bofc/put?acl", &[], b"", SECRET_KEY);
    assert!(
        r.text().contains("<Permission>FULL_CONTROL</Permission>"),
        "{}",
        r.text()
    );
    assert_eq!(elements(&r.text(), "Grant").len(), 1, "{}", r.text());
    // PutObjectAcl takes it as it takes private.
    let r = s3(&d, "PUT", "/bofc/put?acl", &[owner], b"", SECRET_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    // As a bucket's ACL it leaves only the owner: a public bucket becomes private.
    let r = s3(
        &d,
        "PUT",
        "/bofc?acl",
        &[("x-amz-acl", "public-read")],
        b"",
        SECRET_KEY,
    );
    assert_eq!(r.status, 200);
    assert_eq!(anonymous("/v1/AUTH_test/bofc/put"), 200);
    // (an object cannot be private in a public bucket)
    let r = s3(&d, "PUT", "/bofc/put?acl", &[owner], b"", SECRET_KEY);
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));
    let r = s3(&d, "PUT", "/bofc?acl", &[owner], b"", SECRET_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(anonymous("/v1/AUTH_test/bofc/put"), 401);
    // Other canned ACLs are still refused and store nothing.
    let r = s3(
        &d,
        "PUT",
        "/bofc/refused",
        &[("x-amz-acl", "bucket-owner-read")],
        b"x",
        SECRET_KEY,
    );
    assert_eq!((r.status, s3_code(&r).as_str()), (501, "NotImplemented"));
    assert_eq!(
        s3(&d, "HEAD", "/bofc/refused", &[], b"", SECRET_KEY).status,
        404
    );
}

/// Sends a request head on a kept-alive connection and reads its answer to EOF.
fn send_head_only(d: &Daemon, head: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    read_response(&mut s, false)
}

#[test]
fn an_error_answered_before_the_body_closes_the_connection_and_says_so() {
    let d = Daemon::start();
    let t = d.token();
    // boto3 and the swift client send `Expect: 100-continue` and hold the body back. An
    // error answered before it is read ends the connection, and the answer must say so,
    // or the client reuses the connection and its next request gets no answer.
    let r = send_head_only(
        &d,
        &format!(
            "PUT /v1/AUTH_test/missing/obj HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\n\
             Expect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    // The same without Expect: the body is on its way but not read.
    let r = send_head_only(
        &d,
        "PUT /v1/AUTH_test/missing/obj HTTP/1.1\r\nHost: x\r\nX-Auth-Token: bad\r\n\
         Content-Length: 100000\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);

    // A request that succeeds, or an error to a request without a body, keeps the
    // connection: two answers on one connection.
    swift_put(&d, &t, "/v1/AUTH_test/kept", b"");
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "PUT /v1/AUTH_test/kept/o HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\nContent-Length: 3\r\n\r\nabc\
         GET /v1/AUTH_test/kept/nothing HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\n\r\n\
         GET /v1/AUTH_test/kept/o HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {t}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["201", "404", "200"], "{text}");
    assert!(text.ends_with("abc"), "{text}");
}
