//! Telemetry over raw HTTP: sample ingestion (all or nothing), queries and aggregates
//! limited to the caller's project, events, control's own /metrics (parsed with
//! Prometheus' parser), and a threshold alarm whose webhook (a real HTTP listener here)
//! receives the transition to alarm and back to ok.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A project with a member user; returns (project id, token).
fn project_user(cloud: &Cloud, admin: &str, name: &str, user: &str) -> (String, String) {
    let r = cloud.json(
        "POST",
        "/v3/projects",
        Some(admin),
        &json!({"project": {"name": name}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let project = r.json()["project"]["id"].as_str().unwrap().to_string();
    let r = cloud.json(
        "POST",
        "/v3/users",
        Some(admin),
        &json!({"user": {"name": user, "password": "pw"}}),
    );
    let uid = r.json()["user"]["id"].as_str().unwrap().to_string();
    let member = cloud
        .req("GET", "/v3/roles?name=member", Some(admin), &[], b"")
        .json()["roles"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cloud.req(
        "PUT",
        &format!("/v3/projects/{project}/users/{uid}/roles/{member}"),
        Some(admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 204);
    let (t, _) = cloud.token(user, "pw", name);
    (project, t)
}

fn sample(meter: &str, res: &str, project: &str, volume: f64, ts: f64) -> Value {
    json!({"meter": meter, "type": "gauge", "unit": "%", "volume": volume,
        "resource_id": res, "project_id": project, "timestamp": ts})
}

fn post(cloud: &Cloud, token: &str, body: &Value) -> Answer {
    cloud.json("POST", "/telemetry/v1/samples", Some(token), body)
}

fn scrape(cloud: &Cloud) -> caps::prom::Scrape {
    let r = cloud.req("GET", "/metrics", None, &[], b"");
    assert_eq!(r.status, 200);
    caps::prom::must_scrape("control", &r.text())
}

#[test]
fn meters_are_stored_aggregated_and_scoped_by_project() {
    let cloud = Cloud::start_with("[compute]\nnode-token = \"node-secret\"", "", "");
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let (blue, bob) = project_user(&cloud, &admin, "blue", "bob");
    let (_red, rita) = project_user(&cloud, &admin, "red", "rita");
    let before = scrape(&cloud);

    // Ingestion needs admin/service; a bad sample refuses the whole batch.
    let t0 = 1_800_000_000.0;
    let good: Vec<Value> = (0..6)
        .map(|i| {
            sample(
                "cpu_util",
                "srv-a",
                &blue,
                10.0 * i as f64,
                t0 + 10.0 * i as f64,
            )
        })
        .collect();
    let body = json!({"node_id": "n1", "samples": good});
    assert_eq!(post(&cloud, &bob, &body).status, 403);
    assert_eq!(
        cloud
            .req("POST", "/telemetry/v1/samples", None, &[], b"{}")
            .status,
        401
    );
    let mut bad = good.clone();
    bad.push(
        json!({"meter": "cpu_util", "type": "counter", "unit": "%", "volume": 1,
        "resource_id": "srv-a", "project_id": blue, "timestamp": t0}),
    );
    let r = post(&cloud, &admin, &json!({"node_id": "n1", "samples": bad}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("samples[6]: type \"counter\""),
        "{}",
        r.text()
    );
    let r = post(&cloud, &admin, &json!({"node_id": "n1", "samples": "x"}));
    assert_eq!(r.status, 400);
    let r = post(
        &cloud,
        &admin,
        &json!({"node_id": "n1", "samples": good, "extra": 1}),
    );
    assert_eq!(r.status, 400);

    let r = post(
        &cloud,
        &admin,
        &json!({"node_id": "n1", "samples": good,
            "events": [{"event_type": "compute.instance.create", "resource_id": "srv-a",
                "project_id": blue, "generated": t0, "traits": {"state": "active"}},
              {"event_type": "compute.instance.create", "resource_id": "srv-b",
                "project_id": "someone-else", "generated": t0}]}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"samples": 6, "events": 2}));
    // Agents post with the node token.
    let other = sample("cpu_util", "srv-b", "someone-else", 99.0, t0);
    let body = json!({"node_id": "n1", "samples": [other]});
    assert_eq!(post(&cloud, "wrong-secret", &body).status, 401);
    assert_eq!(post(&cloud, "node-secret", &body).status, 202);

    // Raw samples: bob sees srv-a's six, in time order.
    let r = cloud.req(
        "GET",
        "/telemetry/v1/samples?meter=cpu_util&resource_id=srv-a",
        Some(&bob),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let vols: Vec<f64> = r.json()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["volume"].as_f64().unwrap())
        .collect();
    assert_eq!(vols, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
    // Without a resource filter bob sees only his project's.
    let r = cloud.req("GET", "/telemetry/v1/samples", Some(&bob), &[], b"");
    assert_eq!(r.json()["samples"].as_array().unwrap().len(), 6);
    // The admin sees both projects'.
    let r = cloud.req("GET", "/telemetry/v1/samples", Some(&admin), &[], b"");
    assert_eq!(r.json()["samples"].as_array().unwrap().len(), 7);

    // Aggregates: 30 s buckets starting at t0 (t0 is a multiple of 30).
    let agg = |token: &str, q: &str| {
        cloud.req(
            "GET",
            &format!(
                "/telemetry/v1/aggregates?{q}&meter=cpu_util&resource_id=srv-a&granularity=30"
            ),
            Some(token),
            &[],
            b"",
        )
    };
    let values = |r: &Answer| -> Vec<f64> {
        r.json()["measures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[2].as_f64().unwrap())
            .collect()
    };
    let r = agg(&bob, "aggregation=mean");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(values(&r), [10.0, 40.0]);
    assert_eq!(r.json()["measures"][0][1], 30);
    assert_eq!(values(&agg(&bob, "aggregation=sum")), [30.0, 120.0]);
    assert_eq!(values(&agg(&bob, "aggregation=max")), [20.0, 50.0]);
    assert_eq!(values(&agg(&bob, "aggregation=min")), [0.0, 30.0]);
    // Rate: (50 - 20) / 30 s.
    assert_eq!(values(&agg(&bob, "aggregation=rate")), [1.0]);
    // A time range: from t0+30 s.
    let r = agg(&bob, &format!("aggregation=mean&start={}", t0 + 30.0));
    assert_eq!(values(&r), [40.0]);
    // Another project: 404 for the resource, empty lists.
    assert_eq!(agg(&rita, "aggregation=mean").status, 404);
    let r = cloud.req(
        "GET",
        "/telemetry/v1/samples?resource_id=srv-a",
        Some(&rita),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
    let r = cloud.req("GET", "/telemetry/v1/samples", Some(&rita), &[], b"");
    assert_eq!(r.json()["samples"], json!([]));
    let r = cloud.req(
        "GET",
        &format!("/telemetry/v1/samples?project_id={blue}"),
        Some(&rita),
        &[],
        b"",
    );
    assert_eq!(r.status, 403);
    // Bad queries.
    for q in [
        "aggregation=median",
        "granularity=0",
        "start=yesterday",
        "limit=0",
    ] {
        let r = agg(&bob, q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string());
    }
    let r = cloud.req("GET", "/telemetry/v1/aggregates", Some(&bob), &[], b"");
    assert_eq!(r.status, 400);

    // Events, scoped the same way.
    let r = cloud.req("GET", "/telemetry/v1/events", Some(&bob), &[], b"");
    let ev = r.json()["events"].clone();
    assert_eq!(ev.as_array().unwrap().len(), 1, "{ev}");
    assert_eq!(ev[0]["event_type"], "compute.instance.create");
    assert_eq!(ev[0]["traits"]["state"], "active");
    assert_eq!(ev[0]["node_id"], "n1");
    let r = cloud.req("GET", "/telemetry/v1/events", Some(&rita), &[], b"");
    assert_eq!(r.json()["events"], json!([]));
    let r = cloud.req("GET", "/telemetry/v1/events", Some(&admin), &[], b"");
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);

    // control's /metrics counted exactly what was stored and refused.
    let after = scrape(&cloud);
    let d = |name: &str| after.sum(name, &[]) - before.sum(name, &[]);
    assert_eq!(d("ferrostack_control_meter_samples_ingested_total"), 7.0);
    assert_eq!(d("ferrostack_control_meter_samples_rejected_total"), 7.0);
    assert_eq!(d("ferrostack_control_events_ingested_total"), 2.0);
    assert!(
        after.get(
            "ferrostack_control_requests_total",
            &[("api", "telemetry"), ("method", "POST"), ("status", "2xx")]
        ) >= 2.0
    );
    assert!(
        after.sum(
            "ferrostack_control_request_latency_seconds_count",
            &[("api", "telemetry")]
        ) > 0.0
    );
}

/// A webhook receiver: each POST body goes to the channel, answered 200.
fn webhook() -> (String, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut first = true;
            let mut is_post = false;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if first {
                    is_post = line.starts_with("POST /hook ");
                    first = false;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if is_post && let Ok(v) = serde_json::from_slice::<Value>(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (url, rx)
}

#[test]
fn an_alarm_fires_its_webhook_and_recovers() {
    let cloud = Cloud::start_with("[telemetry]\nevaluation-interval = \"1s\"", "", "");
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let (blue, bob) = project_user(&cloud, &admin, "blue", "bob");
    let (_red, rita) = project_user(&cloud, &admin, "red", "rita");
    let (url, hooks) = webhook();

    // Bad alarms.
    let rule = json!({"meter_name": "cpu_util", "resource_id": "srv-a",
        "comparison_operator": "gt", "threshold": 50.0, "aggregation_method": "mean",
        "period": 3, "evaluation_periods": 1});
    for (field, value) in [
        ("comparison_operator", json!("bigger")),
        ("period", json!(0)),
        ("threshold", json!("x")),
    ] {
        let mut r = rule.clone();
        r[field] = value;
        let a = cloud.json(
            "POST",
            "/telemetry/v1/alarms",
            Some(&bob),
            &json!({"alarm": {"name": "hot", "threshold_rule": r}}),
        );
        assert_eq!(a.status, 400, "{field}: {}", a.text());
    }
    let a = cloud.json(
        "POST",
        "/telemetry/v1/alarms",
        Some(&bob),
        &json!({"alarm": {"name": "hot", "threshold_rule": rule, "alarm_actions": ["ftp://x"]}}),
    );
    assert_eq!(a.status, 400);

    let a = cloud.json(
        "POST",
        "/telemetry/v1/alarms",
        Some(&bob),
        &json!({"alarm": {"name": "hot", "threshold_rule": rule,
            "alarm_actions": [url], "ok_actions": [url]}}),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    let alarm = a.json()["alarm"].clone();
    let id = alarm["alarm_id"].as_str().unwrap().to_string();
    assert_eq!(alarm["state"], "insufficient data");
    assert_eq!(alarm["project_id"], blue);
    // Another project cannot see or delete it.
    let path = format!("/telemetry/v1/alarms/{id}");
    assert_eq!(cloud.req("GET", &path, Some(&rita), &[], b"").status, 404);
    assert_eq!(
        cloud.req("DELETE", &path, Some(&rita), &[], b"").status,
        404
    );
    let r = cloud.req("GET", "/telemetry/v1/alarms", Some(&rita), &[], b"");
    assert_eq!(r.json()["alarms"], json!([]));
    let r = cloud.req("GET", "/telemetry/v1/alarms", Some(&bob), &[], b"");
    assert_eq!(r.json()["alarms"].as_array().unwrap().len(), 1);

    // Feed samples until the webhook hears about the transition.
    let feed_until = |value: f64, want: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no transition to {want}");
            let r = post(
                &cloud,
                &admin,
                &json!({"node_id": "n1", "samples": [sample("cpu_util", "srv-a", &blue, value, now())]}),
            );
            assert_eq!(r.status, 202);
            if let Ok(v) = hooks.recv_timeout(Duration::from_millis(500)) {
                assert_eq!(v["current"], want, "{v}");
                return v;
            }
        }
    };
    let fired = feed_until(90.0, "alarm");
    assert_eq!(fired["alarm_id"], id.as_str());
    assert_eq!(fired["previous"], "insufficient data");
    assert_eq!(fired["alarm_name"], "hot");
    assert!(
        fired["reason"].as_str().unwrap().contains("alarm"),
        "{fired}"
    );
    let shown = cloud.req("GET", &path, Some(&bob), &[], b"").json();
    assert_eq!(shown["alarm"]["state"], "alarm");

    let ok = feed_until(10.0, "ok");
    assert_eq!(ok["previous"], "alarm");
    assert_eq!(ok["alarm_id"], id.as_str());
    assert_eq!(
        cloud.req("GET", &path, Some(&bob), &[], b"").json()["alarm"]["state"],
        "ok"
    );
    let m = scrape(&cloud);
    assert_eq!(
        m.get(
            "ferrostack_control_alarm_transitions_total",
            &[("state", "alarm")]
        ),
        1.0
    );
    // control counts a call once the receiver's answer is read, which can be just after
    // the receiver above has the body: wait for the count rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut calls = m.get("ferrostack_control_alarm_webhook_calls_total", &[]);
    while calls < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        calls = scrape(&cloud).get("ferrostack_control_alarm_webhook_calls_total", &[]);
    }
    assert!(calls >= 2.0, "{calls} webhook calls counted");

    assert_eq!(cloud.req("DELETE", &path, Some(&bob), &[], b"").status, 204);
    assert_eq!(cloud.req("GET", &path, Some(&bob), &[], b"").status, 404);
}

/// The retention pass of a running control (every second here): raw samples older than
/// `raw-retention` become per-minute rows, those older than `minute-retention` per-hour
/// rows, and per-hour rows past `hour-retention` go; the raw listing then shows only the
/// recent sample, while aggregates over the rolled rows give the figures of the raw ones.
#[test]
fn retention_rolls_samples_up_and_aggregates_keep_their_answer() {
    let cloud = Cloud::start_with(
        "[telemetry]\nraw-retention = \"1h\"\nminute-retention = \"3h\"\n\
         hour-retention = \"48h\"\nretention-interval = \"1s\"",
        "",
        "",
    );
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let p = "proj-ret";
    let t = now().floor();
    let hour_base = ((t - 10.0 * 3600.0) / 3600.0).floor() * 3600.0;
    let minute_base = ((t - 2.0 * 3600.0) / 60.0).floor() * 60.0;
    let mut samples: Vec<Value> = (0..60)
        .map(|i| sample("m", "r1", p, i as f64, hour_base + 60.0 * i as f64))
        .collect();
    samples.extend(
        (0..6).map(|i| sample("m", "r1", p, 10.0 * i as f64, minute_base + 10.0 * i as f64)),
    );
    samples.push(sample("m", "r1", p, 7.0, t - 100.0 * 3600.0));
    samples.push(sample("m", "r1", p, 5.0, t - 60.0));
    let r = post(
        &cloud,
        &admin,
        &json!({"node_id": "n1", "samples": samples}),
    );
    assert_eq!(r.status, 202, "{}", r.text());

    let raw = || {
        let r = cloud.req(
            "GET",
            "/telemetry/v1/samples?meter=m&resource_id=r1",
            Some(&admin),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["samples"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw().len() != 1 {
        assert!(Instant::now() < deadline, "never rolled up: {:?}", raw());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(raw()[0]["volume"], 5.0);
    let measures = |agg: &str, gran: u32, start: f64, end: f64| -> Value {
        let r = cloud.req(
            "GET",
            &format!(
                "/telemetry/v1/aggregates?meter=m&resource_id=r1&aggregation={agg}&granularity={gran}&start={start}&end={end}"
            ),
            Some(&admin),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["measures"].clone()
    };
    // The hour 10 h ago: one per-hour row standing for 60 raw samples 0..59.
    let h = |agg| measures(agg, 3600, hour_base, hour_base + 3600.0)[0][2].clone();
    assert_eq!(
        (h("mean"), h("max"), h("min"), h("sum"), h("count")),
        (
            json!(29.5),
            json!(59.0),
            json!(0.0),
            json!(1770.0),
            json!(60.0)
        )
    );
    // The minute 2 h ago: a per-minute row for 0, 10, ... 50.
    let m = |agg| measures(agg, 60, minute_base, minute_base + 60.0)[0][2].clone();
    assert_eq!(
        (m("mean"), m("max"), m("count")),
        (json!(25.0), json!(50.0), json!(6.0))
    );
    // 100 h ago: past hour retention, gone.
    assert_eq!(
        measures("count", 3600, t - 101.0 * 3600.0, t - 99.0 * 3600.0),
        json!([])
    );
    let m = scrape(&cloud);
    assert!(
        m.get("ferrostack_control_meter_rows_compacted_total", &[]) >= 67.0,
        "{}",
        m.get("ferrostack_control_meter_rows_compacted_total", &[])
    );
}

/// An event resent with the same `message_id` by the same node is stored once (an agent
/// resends what it had no answer for); another node's use of the id is refused.
#[test]
fn a_resent_event_is_stored_once() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let ev = json!({"message_id": "0f3a-ev-1", "event_type": "compute.instance.update",
        "resource_id": "srv-e", "project_id": "proj-e", "generated": now(),
        "traits": {"old_state": "ACTIVE", "state": "SHUTOFF"}});
    let body = |node: &str, evs: Value| json!({"node_id": node, "samples": [], "events": evs});
    let r = post(&cloud, &admin, &body("n1", json!([ev, ev])));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["events"], 1);
    let r = post(&cloud, &admin, &body("n1", json!([ev])));
    assert_eq!((r.status, r.json()["events"].clone()), (202, json!(0)));
    let r = post(&cloud, &admin, &body("n2", json!([ev])));
    assert_eq!(r.status, 409, "{}", r.text());
    let mut bad = ev.clone();
    bad["message_id"] = json!("a b");
    let r = post(&cloud, &admin, &body("n1", json!([bad])));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("message_id"), "{}", r.text());
    let r = cloud.req(
        "GET",
        "/telemetry/v1/events?resource_id=srv-e",
        Some(&admin),
        &[],
        b"",
    );
    let evs = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["message_id"], "0f3a-ev-1");
    assert_eq!(evs[0]["node_id"], "n1");
}
