//! Cinder v3 through the stock `openstack` CLI: control, a real blockdp and a real node
//! agent (no netdp or vmm: servers cannot boot here, volumes can). Volumes (empty, from an
//! image, from a snapshot), extend, snapshots, quotas and the error answers, checked on
//! blockdp itself: its volumes, their sizes and their bytes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::{AgentDirs, Procs, binaries, spawn_agent, wait_for};
use common::{Cloud, fails, ok, ok_json};
use serde_json::{Value, json};

const NODE_TOKEN: &str = "cinder-node-token";

/// `GET path` on blockdp's API socket: the JSON body.
fn blockdp_get(sock: &Path, path: &str) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: blockdp\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Chunked or not: the JSON object is between the first '{' and the last '}'.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// blockdp's volume named `volume-<id>`.
fn backend(sock: &Path, id: &str) -> Option<Value> {
    blockdp_get(sock, "/volumes")["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == format!("volume-{id}"))
        .cloned()
}

fn wait_volume(env: &[(String, String)], name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = ok_json(env, &["volume", "show", name]);
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline && v["status"] != "error",
            "{name} never became {status}: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn wait_snapshot(env: &[(String, String)], name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = ok_json(env, &["volume", "snapshot", "show", name]);
        if v["status"] == "available" {
            return v;
        }
        assert!(
            Instant::now() < deadline && v["status"] != "error",
            "{name} never became available: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn cinder_volumes_snapshots_and_quotas_through_the_cli() {
    if !common::have_cli() {
        return;
    }
    let bins = binaries(&["blockdp", "ferrostack-agent"]);
    let cloud = Cloud::start_with(
        &format!(
            "[compute]\nheartbeat-interval-secs = 1\nmissed-heartbeats = 3\n\
             node-token = \"{NODE_TOKEN}\"\nmax-build-attempts = 1\n"
        ),
        "",
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bsock = d.join("blockdp/api.sock");
    std::fs::create_dir_all(d.join("blockdp")).unwrap();
    let mut procs = Procs(vec![]);
    procs.0.push(
        Command::new(bins.join("blockdp"))
            .arg("--data-dir")
            .arg(d.join("blockdp"))
            .arg("--api-socket")
            .arg(&bsock)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("blockdp", Duration::from_secs(30), || {
        UnixStream::connect(&bsock).is_ok()
    });
    std::fs::create_dir_all(d.join("agent")).unwrap();
    let dirs = AgentDirs {
        state: &d.join("agent"),
        blockdp_socket: &bsock,
        disk: &d.join("blockdp"),
    };
    procs
        .0
        .push(spawn_agent(&bins, &dirs, &cloud.url(), NODE_TOKEN));
    let env = cloud.admin();
    wait_for("the node", Duration::from_secs(60), || {
        ok(&env, &["hypervisor", "list", "-f", "value"]).contains("up")
    });
    let (token, _) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let pid = ok_json(&env, &["project", "show", "admin"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let vpath = |rest: &str| format!("/volume/v3/{pid}{rest}");

    // The catalog and the version documents the clients discover.
    let r = cloud.req("GET", "/volume/", None, &[], b"");
    assert_eq!(r.status, 300, "{}", r.text());
    assert_eq!(r.json()["versions"][0]["id"], "v3.0");

    // An empty volume: creating, then available, on blockdp with its size.
    let v1 = ok_json(&env, &["volume", "create", "--size", "1", "v1"]);
    assert_eq!(v1["size"], 1, "{v1}");
    let v1_id = v1["id"].as_str().unwrap().to_string();
    let v1 = wait_volume(&env, "v1", "available");
    // Debian's client prints "false", newer ones a JSON false.
    assert!(v1["bootable"] == "false" || v1["bootable"] == false, "{v1}");
    let b1 = backend(&bsock, &v1_id).expect("blockdp has v1");
    assert_eq!(b1["size"], 1u64 << 30, "{b1}");
    let list = ok(&env, &["volume", "list"]);
    assert!(list.contains("v1") && list.contains("available"), "{list}");
    let long = ok_json(&env, &["volume", "list", "--long"]);
    let row = &long.as_array().unwrap()[0];
    assert_eq!(row["Name"], "v1", "{long}");
    assert_eq!(row["Size"], 1, "{long}");
    assert_eq!(row["Status"], "available", "{long}");

    // Bytes written on v1, a snapshot, a volume from the snapshot: the same bytes.
    let b1_id = backend(&bsock, &v1_id).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(format!("blockdp/volumes/{b1_id}.img")))
            .unwrap();
        f.write_all_at(&pattern, 4096).unwrap();
        f.sync_all().unwrap();
    }
    let s1 = ok_json(
        &env,
        &["volume", "snapshot", "create", "--volume", "v1", "s1"],
    );
    assert_eq!(s1["volume_id"], v1_id.as_str(), "{s1}");
    let s1 = wait_snapshot(&env, "s1");
    assert_eq!(s1["size"], 1, "{s1}");
    assert!(
        ok(&env, &["volume", "snapshot", "list"]).contains("s1"),
        "snapshot list"
    );
    let v2 = ok_json(&env, &["volume", "create", "--snapshot", "s1", "v2"]);
    let v2_id = v2["id"].as_str().unwrap().to_string();
    let v2 = wait_volume(&env, "v2", "available");
    assert_eq!(v2["size"], 1, "{v2}");
    assert_eq!(v2["snapshot_id"], s1["id"], "{v2}");
    let b2 = backend(&bsock, &v2_id).expect("blockdp has v2");
    let f2 = d.join(format!(
        "blockdp/volumes/{}.img",
        b2["id"].as_str().unwrap()
    ));
    assert_eq!(std::fs::metadata(&f2).unwrap().len(), 1 << 30);
    let mut bytes = vec![0xaau8; 4096 + pattern.len() + 4096];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&f2)
            .unwrap()
            .read_exact_at(&mut bytes, 0)
            .unwrap();
    }
    assert_eq!(&bytes[4096..4096 + pattern.len()], &pattern[..]);
    assert!(bytes[..4096].iter().all(|b| *b == 0));
    assert!(bytes[4096 + pattern.len()..].iter().all(|b| *b == 0));

    // Extend: the blockdp volume grows.
    ok(&env, &["volume", "set", "--size", "2", "v1"]);
    let v1 = wait_volume(&env, "v1", "available");
    assert_eq!(v1["size"], 2, "{v1}");
    assert_eq!(
        backend(&bsock, &v1_id).unwrap()["size"],
        2u64 << 30,
        "blockdp did not grow v1"
    );
    // Shrinking is refused (status and JSON body).
    let r = cloud.json(
        "POST",
        &vpath(&format!("/volumes/{v1_id}/action")),
        Some(&token),
        &json!({"os-extend": {"new_size": 1}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("greater than current size"),
        "{}",
        r.text()
    );

    // A volume with a snapshot cannot be deleted; an unknown one is 404.
    let err = fails(&env, &["volume", "delete", "v1"]);
    assert!(err.contains("dependent snapshots"), "{err}");
    let r = cloud.req(
        "DELETE",
        &vpath(&format!("/volumes/{v1_id}")),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["badRequest"]["message"].is_string(),
        "{}",
        r.text()
    );
    let r = cloud.req("GET", &vpath("/volumes/nope"), Some(&token), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["itemNotFound"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{}",
        r.text()
    );
    // Bad sizes and sources are refused before anything is made.
    for (body, needle) in [
        (json!({"volume": {"size": 0}}), "size"),
        (json!({"volume": {"size": "x"}}), "size"),
        (json!({"volume": {}}), "needs a size"),
        (
            json!({"volume": {"size": 1, "source_volid": v1_id}}),
            "source_volid",
        ),
        (json!({"nothing": 1}), "volume"),
    ] {
        let r = cloud.json("POST", &vpath("/volumes"), Some(&token), &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    let r = cloud.json(
        "POST",
        &vpath("/volumes"),
        Some(&token),
        &json!({"volume": {"size": 100000}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = cloud.json(
        "POST",
        &vpath("/volumes"),
        Some(&token),
        &json!({"volume": {"size": 16000}}),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("gigabytes quota"), "{}", r.text());
    // Without that quota: no node has the room.
    ok(&env, &["quota", "set", "--gigabytes", "-1", "admin"]);
    let r = cloud.json(
        "POST",
        &vpath("/volumes"),
        Some(&token),
        &json!({"volume": {"size": 16000}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("No valid backend"), "{}", r.text());

    // A bootable volume from an image: the image's bytes, then zeros.
    let image: Vec<u8> = (0..200 * 1024u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    std::fs::write(d.join("disk.img"), &image).unwrap();
    let kernel_id = "kernel_id=11111111-2222-3333-4444-555555555555";
    common::image(&env, &d.join("disk.img"), "img", &["--property", kernel_id]);
    let v3 = ok_json(
        &env,
        &["volume", "create", "--image", "img", "--size", "1", "v3"],
    );
    let v3_id = v3["id"].as_str().unwrap().to_string();
    let v3 = wait_volume(&env, "v3", "available");
    assert!(v3["bootable"] == "true" || v3["bootable"] == true, "{v3}");
    assert!(
        v3["volume_image_metadata"]
            .to_string()
            .contains("kernel_id"),
        "{v3}"
    );
    let b3 = backend(&bsock, &v3_id).expect("blockdp has v3");
    assert_eq!(b3["size"], 1u64 << 30);
    let mut head = vec![0u8; image.len() + 4096];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(d.join(format!(
            "blockdp/volumes/{}.img",
            b3["id"].as_str().unwrap()
        )))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    }
    assert_eq!(&head[..image.len()], &image[..]);
    assert!(head[image.len()..].iter().all(|b| *b == 0));

    // Quotas: volumes and gigabytes per project.
    ok(
        &env,
        &[
            "quota",
            "set",
            "--volumes",
            "4",
            "--gigabytes",
            "6",
            "admin",
        ],
    );
    let r = cloud.req(
        "GET",
        &vpath(&format!("/os-quota-sets/{pid}?usage=True")),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let q = &r.json()["quota_set"];
    assert_eq!(q["volumes"]["limit"], 4, "{q}");
    assert_eq!(q["volumes"]["in_use"], 3, "{q}");
    // 2 + 1 + 1 GiB of volumes and 1 of the snapshot: 5 of 6, so 2 more are refused.
    assert_eq!(q["gigabytes"]["in_use"], 5, "{q}");
    let err = fails(&env, &["volume", "create", "--size", "2", "v4"]);
    assert!(err.contains("gigabytes quota"), "{err}");
    let r = cloud.json(
        "POST",
        &vpath("/volumes"),
        Some(&token),
        &json!({"volume": {"size": 2}}),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["overLimit"]["message"].is_string(), "{}", r.text());
    ok(
        &env,
        &[
            "quota",
            "set",
            "--volumes",
            "3",
            "--gigabytes",
            "100",
            "admin",
        ],
    );
    let err = fails(&env, &["volume", "create", "--size", "1", "v4"]);
    assert!(err.contains("VolumeLimitExceeded"), "{err}");

    // Attaching needs a server on the volume's node, stopped: a server that could not
    // build here (no vmm) is on no node.
    ok(
        &env,
        &[
            "flavor", "create", "--vcpus", "1", "--ram", "32", "--disk", "1", "f1",
        ],
    );
    let k = ok_json(
        &env,
        &[
            "image",
            "create",
            "--file",
            d.join("disk.img").to_str().unwrap(),
            "--disk-format",
            "aki",
            "--container-format",
            "aki",
            "kernel",
        ],
    );
    ok(
        &env,
        &[
            "image",
            "set",
            "--property",
            &format!("kernel_id={}", k["id"].as_str().unwrap()),
            "img",
        ],
    );
    ok(&env, &["network", "create", "blue"]);
    common::subnet(&env, "blue", "10.9.0.0/24", "blue-v4", &[]);
    ok(
        &env,
        &common::server_create("img", "f1", &["--network", "blue"], "vm"),
    );
    wait_for("vm in ERROR", Duration::from_secs(90), || {
        ok_json(&env, &["server", "show", "vm"])["status"] == "ERROR"
    });
    let err = fails(&env, &["server", "add", "volume", "vm", "v2"]);
    assert!(err.contains("not on any node"), "{err}");
    assert_eq!(
        wait_volume(&env, "v2", "available")["attachments"],
        json!([])
    );

    // Cleanup: snapshot, then every volume; blockdp holds nothing afterwards.
    ok(&env, &["server", "delete", "vm"]);
    ok(&env, &["volume", "snapshot", "delete", "s1"]);
    wait_for("s1 gone", Duration::from_secs(30), || {
        !ok(&env, &["volume", "snapshot", "list"]).contains("s1")
    });
    ok(&env, &["volume", "delete", "v1", "v2", "v3"]);
    wait_for("volumes gone", Duration::from_secs(30), || {
        ok_json(&env, &["volume", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    // (The failed server's own root volume is the agent's business: without netdp here
    // its release cannot finish. Every Cinder volume is gone.)
    let left = blockdp_get(&bsock, "/volumes");
    assert!(
        left["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| !v["name"].as_str().unwrap().starts_with("volume-")),
        "{left}"
    );
    assert_eq!(blockdp_get(&bsock, "/snapshots")["snapshots"], json!([]));
    // The node's disk claims went with them.
    let r = cloud.req("GET", "/v1/nodes", Some(NODE_TOKEN), &[], b"");
    let node = &r.json()["nodes"][0];
    assert_eq!(node["used"]["disk_gb"], 0, "{node}");
    drop(procs);
}
