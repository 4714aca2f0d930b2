//! Keypairs and server metadata with the stock `openstack` CLI, up to what control sends the
//! node: a recording agent (it plays the agent's API: accepts a placement, then reports the
//! build failed) registers as the only node; `keypair create --public-key`, then `server
//! create --key-name --property --user-data`; the placement it receives carries the key, the
//! properties, the user data (base64, decoded back to the file's bytes), the zone and the
//! launch index. Bad keypairs, unknown key names and oversized user data are refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::node::wait_for;
use common::{Cloud, fails, ok, ok_json, server_create};
use serde_json::{Value, json};

const NODE_TOKEN: &str = "metadata-node-token";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataTestKeyNotSecretAtAll00 meta@test";

/// Placements received (`POST /v1/servers` bodies).
type Received = Arc<Mutex<Vec<Value>>>;

/// A node agent that records placements and fails each build.
fn recording_agent() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let r = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let (status, reply) = if request_line.starts_with("POST /v1/servers ") {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v["server"]["id"].clone();
                r.lock().unwrap().push(v);
                (
                    "202 Accepted",
                    json!({"server": {"id": id, "status": "BUILD"}}),
                )
            } else if request_line.starts_with("GET /v1/servers/") {
                (
                    "200 OK",
                    json!({"server": {"status": "ERROR",
                                      "fault": {"message": "recording agent: no real node"}}}),
                )
            } else {
                ("204 No Content", Value::Null)
            };
            let text = if reply.is_null() {
                String::new()
            } else {
                reply.to_string()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, received)
}

#[test]
fn keypairs_properties_and_user_data_reach_the_placement() {
    if !common::have_cli() {
        return;
    }
    let cloud = Cloud::start_with(
        &format!(
            "[compute]\nheartbeat-interval-secs = 30\nnode-token = \"{NODE_TOKEN}\"\n\
             max-build-attempts = 1\n"
        ),
        "",
        "",
    );
    let (agent_url, received) = recording_agent();
    let r = cloud.json(
        "PUT",
        "/v1/nodes/meta-node-1",
        Some(NODE_TOKEN),
        &json!({"node": {"hostname": "meta-node-1", "agent_url": agent_url,
                         "inventory": {"vcpus": 8, "memory_mib": 8192, "disk_bytes": 100u64 << 30}}}),
    );
    assert!(r.status < 300, "{}", r.text());
    let env = cloud.admin();

    // Keypairs: import, list, show; a key that is not OpenSSH is refused.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("key.pub"), format!("{KEY}\n")).unwrap();
    let kp = ok_json(
        &env,
        &[
            "keypair",
            "create",
            "--public-key",
            d.join("key.pub").to_str().unwrap(),
            "k1",
        ],
    );
    assert_eq!(kp["name"], "k1", "{kp}");
    assert!(ok(&env, &["keypair", "list"]).contains("k1"));
    let shown = ok_json(&env, &["keypair", "show", "k1"]);
    assert_eq!(shown["name"], "k1", "{shown}");
    std::fs::write(d.join("bad.pub"), "not a key\n").unwrap();
    let bad = fails(
        &env,
        &[
            "keypair",
            "create",
            "--public-key",
            d.join("bad.pub").to_str().unwrap(),
            "k2",
        ],
    );
    assert!(bad.contains("OpenSSH"), "{bad}");

    // A kernel and a disk image naming it, a flavor.
    common::boot_images(&env, d);
    ok(
        &env,
        &[
            "flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "1", "tiny",
        ],
    );

    // Unknown key names and oversized user data are refused before anything is scheduled.
    let nokey = fails(
        &env,
        &server_create("disk", "tiny", &["--key-name", "nope"], "x"),
    );
    assert!(nokey.contains("Invalid key_name"), "{nokey}");
    std::fs::write(d.join("big"), vec![b'x'; 50_000]).unwrap();
    let big_file = d.join("big");
    let big = fails(
        &env,
        &server_create(
            "disk",
            "tiny",
            &["--user-data", big_file.to_str().unwrap()],
            "x",
        ),
    );
    assert!(big.contains("user_data"), "{big}");
    assert!(received.lock().unwrap().is_empty());

    // The server: its key, properties and user data go to the node in the placement.
    // (The CLI reads the file as UTF-8 text: binary user data is the agent tests' business.)
    let user_data = "#!/bin/sh\n# ferrostack-user-data metadata-test \u{e9}\u{1f511}\n"
        .as_bytes()
        .to_vec();
    std::fs::write(d.join("user-data"), &user_data).unwrap();
    let user_data_file = d.join("user-data");
    let created = ok_json(
        &env,
        &server_create(
            "disk",
            "tiny",
            &[
                "--key-name",
                "k1",
                "--property",
                "role=web",
                "--property",
                "tier=front",
                "--user-data",
                user_data_file.to_str().unwrap(),
            ],
            "Web Server_1",
        ),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let mut placement = Value::Null;
    wait_for("a placement", Duration::from_secs(60), || {
        if let Some(p) = received.lock().unwrap().first() {
            placement = p["server"].clone();
        }
        !placement.is_null()
    });
    assert_eq!(placement["id"], id.as_str(), "{placement}");
    assert_eq!(placement["name"], "Web Server_1", "{placement}");
    let m = &placement["metadata"];
    assert_eq!(m["key_name"], "k1", "{placement}");
    assert_eq!(m["public_key"], KEY, "{placement}");
    assert_eq!(
        m["properties"],
        json!({"role": "web", "tier": "front"}),
        "{placement}"
    );
    assert_eq!(m["availability_zone"], "nova", "{placement}");
    assert_eq!(m["launch_index"], 0, "{placement}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(m["user_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, user_data);

    // Nova's view of it: the key name, the properties, a config drive.
    let mut shown = Value::Null;
    wait_for(
        "the failed build to show ERROR",
        Duration::from_secs(60),
        || {
            shown = ok_json(&env, &["server", "show", &id]);
            shown["status"] == "ERROR"
        },
    );
    assert_eq!(shown["key_name"], "k1", "{shown}");
    assert_eq!(shown["config_drive"], "True", "{shown}");
    let props = shown["properties"].to_string();
    assert!(
        props.contains("role") && props.contains("web") && props.contains("tier"),
        "{shown}"
    );
    ok(&env, &["server", "delete", &id]);
    ok(&env, &["keypair", "delete", "k1"]);
    assert!(!ok(&env, &["keypair", "list"]).contains("k1"));
}
