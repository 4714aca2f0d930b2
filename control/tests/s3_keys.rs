//! EC2 credentials made with the stock `openstack ec2 credentials` commands sign S3
//! requests that objectd checks through control's `/v3/s3tokens`, with boto3 as the S3
//! client: the objects land in the project's account (the one its Swift tokens use), a
//! wrong secret is refused with 403 SignatureDoesNotMatch, another project's bucket is out
//! of reach, and a deleted credential stops working.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// The boto3 side: runs the steps named in `STEPS` and prints one JSON line per step,
/// `{"step": ..., "ok": ..., "code": ..., "status": ..., "value": ...}`.
const CLIENT: &str = r#"
import json, os, sys
import boto3, botocore.config, botocore.exceptions

def client(access, secret):
    return boto3.client("s3", endpoint_url=os.environ["S3_URL"], region_name="RegionOne",
        aws_access_key_id=access, aws_secret_access_key=secret,
        config=botocore.config.Config(signature_version="s3v4", retries={"max_attempts": 0},
                                      s3={"addressing_style": "path"}))

mine = client(os.environ["ACCESS"], os.environ["SECRET"])
wrong = client(os.environ["ACCESS"], "not-the-secret")
other = client(os.environ["OTHER_ACCESS"], os.environ["OTHER_SECRET"])
body = os.environ["BODY"].encode()
steps = {
    "create": lambda: mine.create_bucket(Bucket="keys-bucket") and None,
    "put": lambda: mine.put_object(Bucket="keys-bucket", Key="dir/obj.txt", Body=body)["ETag"],
    "get": lambda: mine.get_object(Bucket="keys-bucket", Key="dir/obj.txt")["Body"].read().decode(),
    "list": lambda: [o["Key"] for o in mine.list_objects_v2(Bucket="keys-bucket").get("Contents", [])],
    "buckets": lambda: [b["Name"] for b in mine.list_buckets()["Buckets"]],
    "wrong_secret": lambda: wrong.list_buckets() and None,
    "other_get": lambda: other.get_object(Bucket="keys-bucket", Key="dir/obj.txt")["Body"].read().decode(),
    "other_put": lambda: other.put_object(Bucket="keys-bucket", Key="x", Body=b"x") and None,
    "other_buckets": lambda: [b["Name"] for b in other.list_buckets()["Buckets"]],
}
for name in os.environ["STEPS"].split(","):
    try:
        print(json.dumps({"step": name, "ok": True, "value": steps[name]()}))
    except botocore.exceptions.ClientError as e:
        print(json.dumps({"step": name, "ok": False, "code": e.response["Error"]["Code"],
                          "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}))
    sys.stdout.flush()
"#;

/// Runs the boto3 client for `steps`; one JSON answer per step.
fn boto(
    cloud: &Cloud,
    mine: (&str, &str),
    other: (&str, &str),
    steps: &str,
) -> Vec<serde_json::Value> {
    let script = cloud.dir.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .env("S3_URL", format!("http://127.0.0.1:{}", cloud.objectd_port))
        .env("ACCESS", mine.0)
        .env("SECRET", mine.1)
        .env("OTHER_ACCESS", other.0)
        .env("OTHER_SECRET", other.1)
        .env("BODY", "bytes signed with a keystone ec2 credential")
        .env("STEPS", steps)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn have_boto3() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Debian's python3-boto3 is missing"
        );
        eprintln!("SKIP: /usr/bin/python3 has no boto3");
    }
    ok
}

/// A project with a member user; (project id, user id).
fn project_with_member(cloud: &Cloud, admin: &str, name: &str) -> (String, String) {
    let pid = cloud.new_project(admin, name);
    let uid = cloud.new_user(
        admin,
        json!({"name": format!("{name}-user"), "password": "pw-of-user",
               "default_project_id": pid}),
    );
    let roles = cloud.req("GET", "/v3/roles?name=member", Some(admin), &[], b"");
    let rid = roles.json()["roles"][0]["id"].as_str().unwrap().to_string();
    let g = cloud.req(
        "PUT",
        &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
        Some(admin),
        &[],
        b"",
    );
    assert_eq!(g.status, 204, "{}", g.text());
    (pid, uid)
}

fn step<'a>(answers: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    answers
        .iter()
        .find(|a| a["step"] == name)
        .unwrap_or_else(|| panic!("no answer for {name}: {answers:?}"))
}

#[test]
fn ec2_credentials_from_the_cli_sign_s3_requests_to_objectd() {
    if !have_cli() || !have_boto3() {
        return;
    }
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let (pid, uid) = project_with_member(&cloud, &admin, "keys");
    let (_, other_uid) = project_with_member(&cloud, &admin, "keys-other");
    let env = cloud.env("keys-user", "pw-of-user", "keys");
    let other_env = cloud.env("keys-other-user", "pw-of-user", "keys-other");

    let cred = ok_json(&env, &["ec2", "credentials", "create"]);
    let access = cred["access"].as_str().unwrap().to_string();
    let secret = cred["secret"].as_str().unwrap().to_string();
    assert_eq!(cred["project_id"], pid.as_str(), "{cred}");
    assert_eq!(cred["user_id"], uid.as_str(), "{cred}");
    let other = ok_json(&other_env, &["ec2", "credentials", "create"]);
    let other_access = other["access"].as_str().unwrap().to_string();
    let other_secret = other["secret"].as_str().unwrap().to_string();
    let listed = ok_json(&env, &["ec2", "credentials", "list"]);
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Access"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [access.as_str()], "only the user's own: {listed}");

    let answers = boto(
        &cloud,
        (&access, &secret),
        (&other_access, &other_secret),
        "create,put,get,list,buckets,wrong_secret,other_get,other_put,other_buckets",
    );
    for s in ["create", "put", "get", "list", "buckets"] {
        assert_eq!(step(&answers, s)["ok"], true, "{s}: {answers:?}");
    }
    assert_eq!(
        step(&answers, "get")["value"],
        "bytes signed with a keystone ec2 credential"
    );
    assert_eq!(step(&answers, "list")["value"], json!(["dir/obj.txt"]));
    assert_eq!(step(&answers, "buckets")["value"], json!(["keys-bucket"]));
    let wrong = step(&answers, "wrong_secret");
    assert_eq!(
        (
            wrong["ok"].clone(),
            wrong["status"].clone(),
            wrong["code"].clone()
        ),
        (json!(false), json!(403), json!("SignatureDoesNotMatch")),
        "{answers:?}"
    );
    // Another project's credentials reach only that project's account.
    for s in ["other_get", "other_put"] {
        assert_eq!(step(&answers, s)["ok"], false, "{s}: {answers:?}");
        assert_eq!(
            step(&answers, s)["code"],
            "NoSuchBucket",
            "{s}: {answers:?}"
        );
    }
    assert_eq!(step(&answers, "other_buckets")["value"], json!([]));

    // The object is in the project's account, the one its Swift tokens use.
    let (project_token, _) = cloud.token("keys-user", "pw-of-user", "keys");
    let swift = http(
        cloud.objectd_port,
        "GET",
        &format!("/v1/AUTH_{pid}/keys-bucket/dir/obj.txt"),
        &[("x-auth-token", &project_token)],
        b"",
    );
    assert_eq!(swift.status, 200, "{}", swift.text());
    assert_eq!(swift.text(), "bytes signed with a keystone ec2 credential");

    // A reader of the project: its EC2 credential and its token read the account but
    // change nothing (Keystone's reader; Swift's keystoneauth lets only operators write).
    let admin_env = cloud.admin();
    ok(
        &admin_env,
        &[
            "user",
            "create",
            "--password",
            "pw-of-reader",
            "keys-reader",
        ],
    );
    ok(
        &admin_env,
        &[
            "role",
            "add",
            "--project",
            "keys",
            "--user",
            "keys-reader",
            "reader",
        ],
    );
    let reader_env = cloud.env("keys-reader", "pw-of-reader", "keys");
    let rcred = ok_json(&reader_env, &["ec2", "credentials", "create"]);
    let (raccess, rsecret) = (
        rcred["access"].as_str().unwrap().to_string(),
        rcred["secret"].as_str().unwrap().to_string(),
    );
    let answers = boto(
        &cloud,
        (&raccess, &rsecret),
        (&other_access, &other_secret),
        "get,put",
    );
    assert_eq!(
        step(&answers, "get")["value"],
        "bytes signed with a keystone ec2 credential",
        "{answers:?}"
    );
    let put = step(&answers, "put");
    assert_eq!(
        (
            put["ok"].clone(),
            put["status"].clone(),
            put["code"].clone()
        ),
        (json!(false), json!(403), json!("AccessDenied")),
        "{answers:?}"
    );
    let (reader_token, _) = cloud.token("keys-reader", "pw-of-reader", "keys");
    let obj = format!("/v1/AUTH_{pid}/keys-bucket/dir/obj.txt");
    let r = http(
        cloud.objectd_port,
        "GET",
        &obj,
        &[("x-auth-token", &reader_token)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(
        cloud.objectd_port,
        "PUT",
        &obj,
        &[("x-auth-token", &reader_token)],
        b"no",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http(
        cloud.objectd_port,
        "GET",
        &obj,
        &[("x-auth-token", &project_token)],
        b"",
    );
    assert_eq!(r.text(), "bytes signed with a keystone ec2 credential");

    // Someone else's credential cannot be seen or deleted; a deleted one stops working.
    let r = cloud.req(
        "DELETE",
        &format!("/v3/users/{other_uid}/credentials/OS-EC2/{other_access}"),
        Some(&project_token),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    fails(&env, &["ec2", "credentials", "delete", &other_access]);
    ok(&env, &["ec2", "credentials", "delete", &access]);
    let answers = boto(
        &cloud,
        (&access, &secret),
        (&other_access, &other_secret),
        "buckets,other_buckets",
    );
    let gone = step(&answers, "buckets");
    assert_eq!(
        (gone["status"].clone(), gone["code"].clone()),
        (json!(403), json!("InvalidAccessKeyId")),
        "{answers:?}"
    );
    assert_eq!(step(&answers, "other_buckets")["ok"], true);
}

#[test]
fn credentials_api_and_s3tokens_refuse_what_they_should() {
    let cloud = Cloud::start();
    let (admin, _) = cloud.token("admin", ADMIN_PASSWORD, "admin");
    let (pid, uid) = project_with_member(&cloud, &admin, "creds");
    let (user, _) = cloud.token("creds-user", "pw-of-user", "creds");
    let blob =
        json!({"access": "AKIDEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"})
            .to_string();

    // /v3/credentials: checked input, ids from the access key, visible only to the owner.
    for (body, why) in [
        (
            json!({"credential": {"type": "ec2", "blob": blob}}),
            "no project",
        ),
        (
            json!({"credential": {"type": "ec2", "project_id": pid, "blob": "{}"}}),
            "bad blob",
        ),
        (
            json!({"credential": {"type": "ec2", "project_id": pid, "blob": blob, "x": 1}}),
            "unknown field",
        ),
        (
            json!({"credential": {"type": "ec2", "project_id": "nope", "blob": blob}}),
            "no such project",
        ),
    ] {
        let r = cloud.json("POST", "/v3/credentials", Some(&user), &body);
        assert_eq!(r.status, 400, "{why}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string(), "{why}");
    }
    let r = cloud.json(
        "POST",
        "/v3/credentials",
        Some(&user),
        &json!({"credential": {"type": "ec2", "project_id": pid, "blob": blob}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["credential"]["id"].as_str().unwrap().to_string();
    // Keystone's id for an ec2 credential: hex SHA-256 of the access key.
    use sha2::Digest;
    assert_eq!(id, hex::encode(sha2::Sha256::digest(b"AKIDEXAMPLE")));
    let again = cloud.json(
        "POST",
        "/v3/credentials",
        Some(&user),
        &json!({"credential": {"type": "ec2", "project_id": pid, "blob": blob}}),
    );
    assert_eq!(again.status, 409, "{}", again.text());
    let listed = cloud.req(
        "GET",
        &format!("/v3/users/{uid}/credentials/OS-EC2"),
        Some(&user),
        &[],
        b"",
    );
    assert_eq!(listed.json()["credentials"][0]["access"], "AKIDEXAMPLE");
    assert_eq!(listed.json()["credentials"][0]["tenant_id"], pid.as_str());
    let (_, _) = project_with_member(&cloud, &admin, "creds-other");
    let (stranger, _) = cloud.token("creds-other-user", "pw-of-user", "creds-other");
    let r = cloud.req(
        "GET",
        &format!("/v3/credentials/{id}"),
        Some(&stranger),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = cloud.req("GET", "/v3/credentials", Some(&stranger), &[], b"");
    assert_eq!(r.json()["credentials"], json!([]));
    let r = cloud.req("GET", "/v3/credentials?type=ec2", Some(&admin), &[], b"");
    assert_eq!(r.json()["credentials"][0]["id"], id.as_str());

    // /v3/s3tokens: the AWS documentation's example signature for this secret.
    let sts = "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
               7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972";
    let token = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sts);
    let s3 = |access: &str, token: &str, sig: &str| {
        cloud.json(
            "POST",
            "/v3/s3tokens",
            None,
            &json!({"credentials": {"access": access, "token": token, "signature": sig}}),
        )
    };
    // The secret above differs from the documentation's in one character, so its
    // signature is not the documented one: compute it with objectd's implementation.
    let key = objectd::api::s3::sigv4::signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "20130524",
        "us-east-1",
        "s3",
    );
    let good = objectd::api::s3::sigv4::sign(&key, sts);
    let r = s3("AKIDEXAMPLE", &token, &good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token"]["project"]["id"], pid.as_str());
    assert_eq!(r.json()["token"]["methods"], json!(["ec2credential"]));
    assert!(r.header("x-subject-token").is_some());
    let bad = s3("AKIDEXAMPLE", &token, &"0".repeat(64));
    assert_eq!(bad.status, 401, "{}", bad.text());
    let unknown = s3("AKIDNOSUCH", &token, &good);
    assert_eq!(unknown.status, 401);
    assert!(unknown.text().contains("access key not found"));
    let r = s3("AKIDEXAMPLE", "%%%not base64", &good);
    assert_eq!(r.status, 400, "{}", r.text());

    // Deleting the user takes the credential with it.
    let r = cloud.req(
        "DELETE",
        &format!("/v3/users/{uid}"),
        Some(&admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(s3("AKIDEXAMPLE", &token, &good).status, 401);
}
