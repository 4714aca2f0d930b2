//! Nova's simple tenant usage through control: servers built on simulated nodes
//! (`common::sim`: nodes registered through the real node API, stand-in agents that
//! answer ACTIVE), then `os-simple-tenant-usage` over HTTP and the stock CLI's
//! `openstack usage list` / `usage show`. Hours are each server's lifetime
//! `[launched_at, deleted or now]` cut to the period, times its flavor; deleted servers
//! still count for the time they ran. Members see their own project only, admins every
//! project; malformed or reversed periods answer 400.

mod common;

use std::time::{Duration, Instant};

use common::sim::{self, Agents, NODE_TOKEN, Node, Tenant, json_req};
use common::{Cloud, ok_json};
use serde_json::{Value, json};

const US: i64 = 1_000_000;

fn cloud_with_node() -> (Cloud, Agents) {
    let cloud = Cloud::start_with(
        &format!(
            "[compute]\nheartbeat-interval-secs = 600\nmissed-heartbeats = 3\n\
             node-token = \"{NODE_TOKEN}\"\n"
        ),
        "",
        "",
    );
    let agents = Agents::start();
    let node = Node {
        id: "usage-a".into(),
        az: "nova".into(),
        arch: "x86_64".into(),
        vcpus: 16,
        memory_mib: 16384,
        disk_gb: 200,
    };
    sim::register(cloud.port, &agents, &node);
    (cloud, agents)
}

/// `secs` since the epoch as Nova's naive `YYYY-MM-DDTHH:MM:SS`.
fn iso(secs: i64) -> String {
    control::time::glance(secs as u64)
        .trim_end_matches('Z')
        .to_string()
}

/// Nova's naive time (`...T22:09:28[.123456]`) or a server's `launched_at` (`...Z`) in
/// microseconds since the epoch.
fn micros(s: &str) -> i64 {
    let secs = control::time::parse(s).unwrap_or_else(|| panic!("not a time: {s}")) as i64;
    let frac = s
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map(|r| r.trim_end_matches('Z'))
        .map_or(0, |f| format!("{f:0<6}").parse::<i64>().unwrap());
    secs * US + frac
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn get(cloud: &Cloud, token: &str, path: &str) -> common::Answer {
    json_req(
        cloud.port,
        "GET",
        &format!("/compute/v2.1/{path}"),
        token,
        &Value::Null,
    )
}

fn get_ok(cloud: &Cloud, token: &str, path: &str) -> Value {
    let r = get(cloud, token, path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn server_view(cloud: &Cloud, token: &str, id: &str) -> Value {
    get_ok(cloud, token, &format!("servers/{id}"))["server"].clone()
}

fn wait_active(cloud: &Cloud, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = server_view(cloud, token, id);
        if s["status"] == "ACTIVE" {
            return s;
        }
        assert_ne!(s["status"], "ERROR", "{s}");
        assert!(Instant::now() < deadline, "never ACTIVE: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn delete(cloud: &Cloud, token: &str, id: &str) {
    let path = format!("/compute/v2.1/servers/{id}");
    let r = json_req(cloud.port, "DELETE", &path, token, &Value::Null);
    assert_eq!(r.status, 204, "{}", r.text());
}

/// A number as the CLI's table shows it: Python's `float("%.2f" % x)`.
fn two_places(x: f64) -> String {
    format!("{:?}", format!("{x:.2}").parse::<f64>().unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn assert_close(got: &Value, want: f64, what: &str) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {got}"));
    assert!(close(g, want), "{what}: got {g}, want {want}");
}

/// The server usage of `id` in a tenant usage.
fn server_usage<'a>(t: &'a Value, id: &str) -> &'a Value {
    t["server_usages"]
        .as_array()
        .unwrap_or_else(|| panic!("no server_usages: {t}"))
        .iter()
        .find(|s| s["instance_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {t}"))
}

/// Asserts a tenant usage's totals are its servers' hours times their flavors.
fn assert_totals(t: &Value) {
    let list = t["server_usages"].as_array().unwrap();
    let sum = |f: &dyn Fn(&Value) -> f64| list.iter().map(f).sum::<f64>();
    let h = |s: &Value| s["hours"].as_f64().unwrap();
    let n = |s: &Value, k: &str| s[k].as_f64().unwrap();
    assert_close(&t["total_hours"], sum(&h), "total_hours");
    assert_close(
        &t["total_vcpus_usage"],
        sum(&|s| n(s, "vcpus") * h(s)),
        "total_vcpus_usage",
    );
    assert_close(
        &t["total_memory_mb_usage"],
        sum(&|s| n(s, "memory_mb") * h(s)),
        "total_memory_mb_usage",
    );
    assert_close(
        &t["total_local_gb_usage"],
        sum(&|s| n(s, "local_gb") * h(s)),
        "total_local_gb_usage",
    );
}

/// Creates a server with the admin's flavors and boot image using `token`; its id.
fn create(cloud: &Cloud, t: &Tenant, token: &str, name: &str, flavor: &str) -> String {
    let body = json!({"server": {"name": name, "imageRef": t.images[""],
        "flavorRef": t.flavors[flavor], "networks": "none"}});
    let r = json_req(cloud.port, "POST", "/compute/v2.1/servers", token, &body);
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["server"]["id"].as_str().unwrap().to_string()
}

/// A server created, run for at least 4 s and deleted, and one still running: their
/// hours over HTTP for a long period, a period inside the deleted one's life, periods
/// before and after; then, both deleted, the stock CLI's numbers.
#[test]
fn usage_counts_each_server_for_its_life_within_the_period() {
    let (cloud, _agents) = cloud_with_node();
    let t = Tenant::setup(&cloud, &[""], &[("two", 2, 1024, 10), ("one", 1, 512, 1)]);
    let tok = t.token.as_str();
    let (_, body) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();

    let gone = create(&cloud, &t, tok, "gone", "two");
    let kept = create(&cloud, &t, tok, "kept", "one");
    let gone_launched = micros(
        wait_active(&cloud, tok, &gone)["OS-SRV-USG:launched_at"]
            .as_str()
            .unwrap(),
    );
    let kept_launched = micros(
        wait_active(&cloud, tok, &kept)["OS-SRV-USG:launched_at"]
            .as_str()
            .unwrap(),
    );
    // Let `gone` live at least 4 whole seconds.
    while now_secs() * US < gone_launched + 4 * US {
        std::thread::sleep(Duration::from_millis(200));
    }
    let before_delete = now_secs() * US;
    delete(&cloud, tok, &gone);
    let after_delete = now_secs() * US;
    assert_eq!(
        get(&cloud, tok, &format!("servers/{gone}")).status,
        404,
        "the server itself is gone"
    );

    // A day back to a day ahead (the end is capped at now).
    let day_ago = iso(now_secs() - 86_400);
    let q = |start: &str, end: &str| format!("start={start}&end={end}");
    let long = q(&day_ago, &iso(now_secs() + 86_400));
    let u = get_ok(&cloud, tok, &format!("os-simple-tenant-usage/{pid}?{long}"))["tenant_usage"]
        .clone();
    let answered = now_secs() * US;
    assert_eq!(u["tenant_id"], pid, "{u}");
    assert_eq!(u["start"], day_ago, "{u}");
    let stop = micros(u["stop"].as_str().unwrap());
    assert!(
        stop <= answered + US && stop >= after_delete,
        "the stop is capped at now: {u}"
    );
    assert_eq!(u["server_usages"].as_array().unwrap().len(), 2, "{u}");
    let g = server_usage(&u, &gone);
    assert_eq!(g["name"], "gone");
    assert_eq!(g["tenant_id"], pid);
    assert_eq!(g["state"], "terminated");
    assert_eq!(g["flavor"], "two");
    assert_eq!(
        (&g["vcpus"], &g["memory_mb"], &g["local_gb"]),
        (&json!(2), &json!(1024), &json!(10))
    );
    let g_start = micros(g["started_at"].as_str().unwrap());
    let g_end = micros(g["ended_at"].as_str().unwrap());
    assert_eq!(g_start, gone_launched, "{g}");
    assert!(
        g_end >= before_delete && g_end <= after_delete + US,
        "ended when deleted: {g}"
    );
    let g_hours = (g_end - g_start) as f64 / 3600e6;
    assert!(g_hours >= 4.0 / 3600.0, "{g}");
    assert_close(&g["hours"], g_hours, "hours of the deleted server");
    assert_eq!(g["uptime"], (g_end - g_start) / US);
    let k = server_usage(&u, &kept);
    assert_eq!(k["state"], "active");
    assert_eq!(k["ended_at"], Value::Null);
    assert_eq!(
        (&k["vcpus"], &k["memory_mb"], &k["local_gb"]),
        (&json!(1), &json!(512), &json!(1))
    );
    assert_close(
        &k["hours"],
        (stop - kept_launched) as f64 / 3600e6,
        "hours up to now",
    );
    assert_totals(&u);
    assert_close(
        &u["total_vcpus_usage"],
        2.0 * g_hours + (stop - kept_launched) as f64 / 3600e6,
        "vcpus x hours",
    );

    // A period of 2 s inside `gone`'s life: 2 s for it, the overlap for `kept`.
    let (w0, w1) = (g_start / US + 1, g_start / US + 3);
    assert!(w1 * US < g_end);
    let u = get_ok(
        &cloud,
        tok,
        &format!("os-simple-tenant-usage/{pid}?{}", q(&iso(w0), &iso(w1))),
    )["tenant_usage"]
        .clone();
    assert_eq!(
        (&u["start"], &u["stop"]),
        (&json!(iso(w0)), &json!(iso(w1))),
        "{u}"
    );
    assert_close(
        &server_usage(&u, &gone)["hours"],
        2.0 / 3600.0,
        "2 s of gone",
    );
    let k_hours = ((w1 * US) - (w0 * US).max(kept_launched)).max(0) as f64 / 3600e6;
    assert_close(
        &server_usage(&u, &kept)["hours"],
        k_hours,
        "kept in the window",
    );
    assert_close(
        &u["total_memory_mb_usage"],
        1024.0 * 2.0 / 3600.0 + 512.0 * k_hours,
        "MB-hours",
    );
    assert_totals(&u);

    // Before either launched: nothing, as Nova's `{}`. After `gone` ended: `kept` alone.
    let first = gone_launched.min(kept_launched) / US;
    let before = q(&iso(first - 7200), &iso(first - 3600));
    let u = get_ok(
        &cloud,
        tok,
        &format!("os-simple-tenant-usage/{pid}?{before}"),
    );
    assert_eq!(u, json!({"tenant_usage": {}}));
    std::thread::sleep(Duration::from_millis(1100));
    let after = q(&iso(g_end / US + 1), &iso(now_secs() + 60));
    let u = get_ok(
        &cloud,
        tok,
        &format!("os-simple-tenant-usage/{pid}?{after}"),
    )["tenant_usage"]
        .clone();
    let ids: Vec<&Value> = u["server_usages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["instance_id"])
        .collect();
    assert_eq!(ids, [&json!(kept)], "{u}");

    // Every project (admin): summaries, and servers with detailed=1.
    let l = get_ok(&cloud, tok, &format!("os-simple-tenant-usage?{long}"))["tenant_usages"].clone();
    let l = l.as_array().unwrap();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["tenant_id"], pid);
    assert!(l[0].get("server_usages").is_none(), "{l:?}");
    let l = get_ok(
        &cloud,
        tok,
        &format!("os-simple-tenant-usage?{long}&detailed=1"),
    )["tenant_usages"]
        .clone();
    assert_eq!(l[0]["server_usages"].as_array().unwrap().len(), 2, "{l}");
    assert_totals(&l[0]);
    // Newer SDKs send the flag as a boolean's text; `detailed=0` is not detailed.
    for (flag, detailed) in [
        ("True", true),
        ("true", true),
        ("0", false),
        ("False", false),
    ] {
        let l = get_ok(
            &cloud,
            tok,
            &format!("os-simple-tenant-usage?{long}&detailed={flag}"),
        )["tenant_usages"]
            .clone();
        assert_eq!(l[0].get("server_usages").is_some(), detailed, "{flag}: {l}");
    }

    // With both deleted the numbers stop moving: the CLI must show exactly them.
    delete(&cloud, tok, &kept);
    let u = get_ok(&cloud, tok, &format!("os-simple-tenant-usage/{pid}?{long}"))["tenant_usage"]
        .clone();
    let k = server_usage(&u, &kept);
    assert_eq!(k["state"], "terminated");
    let k_hours = (micros(k["ended_at"].as_str().unwrap()) - kept_launched) as f64 / 3600e6;
    assert_close(&k["hours"], k_hours, "hours of kept");
    let (cpu, ram, disk) = (
        2.0 * g_hours + k_hours,
        1024.0 * g_hours + 512.0 * k_hours,
        10.0 * g_hours + k_hours,
    );
    if !common::have_cli() {
        return;
    }
    let admin = cloud.admin();
    let rows = ok_json(&admin, &["usage", "list"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["Project"], pid, "{row}");
    assert_eq!(row["Servers"].as_array().map(Vec::len), Some(2), "{row}");
    assert_close(&row["CPU Hours"], cpu, "CLI CPU Hours");
    assert_close(&row["RAM MB-Hours"], ram, "CLI RAM MB-Hours");
    assert_close(&row["Disk GB-Hours"], disk, "CLI Disk GB-Hours");
    let today = &iso(now_secs())[..10];
    let tomorrow = &iso(now_secs() + 86_400)[..10];
    let yesterday = &iso(now_secs() - 86_400)[..10];
    let shown = ok_json(
        &admin,
        &[
            "usage",
            "show",
            "--project",
            "admin",
            "--start",
            yesterday,
            "--end",
            tomorrow,
        ],
    );
    assert_eq!(shown["Project"], pid, "{shown}");
    assert_close(&shown["CPU Hours"], cpu, "CLI show CPU Hours");
    assert_close(&shown["RAM MB-Hours"], ram, "CLI show RAM MB-Hours");
    let text = common::ok(
        &admin,
        &["usage", "show", "--start", yesterday, "--end", tomorrow],
    );
    assert!(
        text.contains(&format!(
            "Usage from {yesterday} to {tomorrow} on project {pid}"
        )) && text.contains(&format!("| RAM MB-Hours  | {:<32} |", two_places(ram))),
        "{text}"
    );
    let err = common::fails(
        &admin,
        &["usage", "list", "--start", tomorrow, "--end", today],
    );
    assert!(
        err.contains("start time cannot occur after the end time") && err.contains("400"),
        "{err}"
    );
}

/// Admins list every project and show any; members show their own project only (403
/// otherwise, Nova's policy message); malformed and reversed periods answer 400 in
/// Nova's error shape.
#[test]
fn members_see_their_own_usage_and_bad_periods_are_refused() {
    let (cloud, _agents) = cloud_with_node();
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let admin_tok = t.token.as_str();
    let (_, body) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let admin_pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    if !common::have_cli() {
        return;
    }
    // The boot image and its kernel, for the member's project too.
    let r = cloud.req("GET", "/image/v2/images", Some(admin_tok), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    for image in r.json()["images"].as_array().unwrap() {
        let r = cloud.req(
            "PATCH",
            &format!("/image/v2/images/{}", image["id"].as_str().unwrap()),
            Some(admin_tok),
            &[(
                "content-type",
                "application/openstack-images-v2.1-json-patch",
            )],
            br#"[{"op": "replace", "path": "/visibility", "value": "public"}]"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let member_env = cloud.member("usageproj", "usageuser", "usage-pass-1");
    let (mtok, body) = cloud.token("usageuser", "usage-pass-1", "usageproj");
    let mpid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let mine = create(&cloud, &t, &mtok, "mine", "one");
    wait_active(&cloud, &mtok, &mine);

    // Members: their own project, nothing else.
    let period = format!(
        "start={}&end={}",
        iso(now_secs() - 3600),
        iso(now_secs() + 3600)
    );
    let u = get_ok(
        &cloud,
        &mtok,
        &format!("os-simple-tenant-usage/{mpid}?{period}"),
    )["tenant_usage"]
        .clone();
    assert_eq!(u["tenant_id"], mpid);
    assert_eq!(server_usage(&u, &mine)["name"], "mine");
    assert_totals(&u);
    let forbidden = |path: &str, action: &str| {
        let r = get(&cloud, &mtok, path);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"forbidden": {"code": 403, "message": format!(
                "Policy doesn't allow os_compute_api:os-simple-tenant-usage:{action} to be performed.")}}),
        );
    };
    forbidden(
        &format!("os-simple-tenant-usage/{admin_pid}?{period}"),
        "show",
    );
    forbidden(&format!("os-simple-tenant-usage?{period}"), "list");
    // The policy comes before the period is read, as in Nova.
    forbidden("os-simple-tenant-usage?start=garbage", "list");

    // Admins: every project, any project.
    let l = get_ok(
        &cloud,
        admin_tok,
        &format!("os-simple-tenant-usage?{period}&detailed=1"),
    )["tenant_usages"]
        .clone();
    let l = l.as_array().unwrap();
    assert_eq!(l.len(), 1, "only the member's project ran servers: {l:?}");
    assert_eq!(l[0]["tenant_id"], mpid);
    assert_eq!(server_usage(&l[0], &mine)["vcpus"], 1);
    let u = get_ok(
        &cloud,
        admin_tok,
        &format!("os-simple-tenant-usage/{mpid}?{period}"),
    );
    assert_eq!(u["tenant_usage"]["tenant_id"], mpid, "{u}");
    let u = get_ok(
        &cloud,
        admin_tok,
        &format!("os-simple-tenant-usage/{admin_pid}?{period}"),
    );
    assert_eq!(
        u,
        json!({"tenant_usage": {}}),
        "the admin's project ran nothing"
    );

    // Bad periods: 400 with what was wrong.
    for (query, needle) in [
        ("start=garbage", "\"garbage\""),
        ("start=2026-12-05&end=2026-12-06", "\"2026-12-05\""),
        (
            "start=2026-12-05T00:00:00Z",
            "Datetime is in invalid format",
        ),
        ("start=2026-02-30T00:00:00", "Datetime is in invalid format"),
        (
            "start=2026-12-05T00:00:00&end=2026-12-05T25:00:00",
            "\"2026-12-05T25:00:00\"",
        ),
        ("start=%FF%FE", "Datetime is in invalid format"),
        (
            "start=2026-12-06T00:00:00&end=2026-12-05T00:00:00",
            "Invalid start time. The start time cannot occur after the end time.",
        ),
        (
            "start=2026-12-05T00:00:00&end=2026-12-05T00:00:00",
            "Invalid start time. The start time cannot occur after the end time.",
        ),
    ] {
        for (tok, path) in [
            (admin_tok, format!("os-simple-tenant-usage?{query}")),
            (
                mtok.as_str(),
                format!("os-simple-tenant-usage/{mpid}?{query}"),
            ),
        ] {
            let r = get(&cloud, tok, &path);
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["badRequest"]["code"], 400, "{v}");
            let msg = v["badRequest"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{path}: {msg}");
        }
    }

    // The stock CLI as the member.
    let shown = ok_json(&member_env, &["usage", "show"]);
    assert_eq!(shown["Project"], mpid, "{shown}");
    assert_eq!(
        shown["Servers"].as_array().map(Vec::len),
        Some(1),
        "{shown}"
    );
    let err = common::fails(&member_env, &["usage", "list"]);
    assert!(
        err.contains("403") && err.contains("os-simple-tenant-usage:list"),
        "{err}"
    );
    // Another project: the CLI resolves `--project` through Keystone first, which refuses
    // a member as real Keystone does, before Nova is asked (Nova's 403 is checked above).
    let err = common::fails(&member_env, &["usage", "show", "--project", &admin_pid]);
    assert!(err.contains("403"), "{err}");
}

/// `control purge-deleted --before` forgets deleted servers terminated before then, and
/// only those: the usage report stops counting them; live servers are untouched.
#[test]
fn purged_deleted_servers_stop_counting() {
    let (cloud, _agents) = cloud_with_node();
    let t = Tenant::setup(&cloud, &[""], &[("one", 1, 512, 1)]);
    let tok = t.token.as_str();
    let (_, body) = cloud.token("admin", common::ADMIN_PASSWORD, "admin");
    let pid = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let gone = create(&cloud, &t, tok, "gone", "one");
    let kept = create(&cloud, &t, tok, "kept", "one");
    wait_active(&cloud, tok, &gone);
    wait_active(&cloud, tok, &kept);
    delete(&cloud, tok, &gone);
    let period = format!(
        "start={}&end={}",
        iso(now_secs() - 86_400),
        iso(now_secs() + 86_400)
    );
    let counted = || -> Vec<String> {
        let u = get_ok(
            &cloud,
            tok,
            &format!("os-simple-tenant-usage/{pid}?{period}"),
        );
        u["tenant_usage"]["server_usages"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|s| s["instance_id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut both = vec![gone.clone(), kept.clone()];
    both.sort();
    let mut now = counted();
    now.sort();
    assert_eq!(now, both);

    let purge = |before: &str| cloud.control(&["purge-deleted", "--before", before]);
    // A bad time: an exit code and what was expected; nothing forgotten.
    let out = purge("yesterday");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected YYYY-MM-DD"),
        "{out:?}"
    );
    // Before the delete: nothing to forget.
    let out = purge("2000-01-01");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("purged 0 "),
        "{out:?}"
    );
    let mut now = counted();
    now.sort();
    assert_eq!(now, both);
    // After it: the deleted server is forgotten, the live one still counts.
    let tomorrow = &iso(now_secs() + 86_400)[..10];
    let out = purge(tomorrow);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("purged 1 "),
        "{out:?}"
    );
    assert_eq!(counted(), vec![kept.clone()]);
    assert_eq!(server_view(&cloud, tok, &kept)["status"], "ACTIVE");
}
