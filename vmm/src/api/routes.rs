//! Routing: method and path to a typed [`ApiRequest`], the JSON body checked on the way.
//! Errors carry Firecracker's messages and become 400s.

use serde::de::DeserializeOwned;

use super::http::Request;
use super::{ActionBody, ApiRequest, ApiResponse, VmStateBody};

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    if body.is_empty() {
        return Err(ApiResponse::bad_request(
            "The body of the request is empty.",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiResponse::bad_request(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn id_segment(rest: &str) -> Result<String, ApiResponse> {
    let id = rest.trim_end_matches('/');
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id.to_string())
    } else {
        Err(ApiResponse::bad_request(format!(
            "Invalid ID: {id:?}: it must be 1 to 64 characters of [A-Za-z0-9_-]."
        )))
    }
}

/// Firecracker resources not implemented here: answered with a clear 400.
const UNSUPPORTED: [&str; 9] = [
    "/mmds",
    "/vsock",
    "/balloon",
    "/entropy",
    "/cpu-config",
    "/snapshot",
    "/hotplug",
    "/serial",
    "/pmem",
];

/// Parses a request into what the VMM thread should do.
pub fn route(req: &Request) -> Result<ApiRequest, ApiResponse> {
    let path = req.path.as_str();
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let body = &req.body;
    Ok(match (req.method.as_str(), trimmed) {
        ("GET", "/") => ApiRequest::GetInstanceInfo,
        ("GET", "/vm/config") => ApiRequest::GetVmConfig,
        ("GET", "/machine-config") => ApiRequest::GetMachineConfig,
        ("GET", "/metrics") => ApiRequest::GetMetrics,
        ("GET", "/version") => ApiRequest::GetVersion,
        ("PUT", "/boot-source") => ApiRequest::PutBootSource(json(body)?),
        ("PUT", "/machine-config") => ApiRequest::PutMachineConfig(json(body)?),
        ("PATCH", "/machine-config") => ApiRequest::PatchMachineConfig(json(body)?),
        ("PUT", "/actions") => ApiRequest::Action(json::<ActionBody>(body)?.action_type),
        ("PATCH", "/vm") => ApiRequest::PatchVm(json::<VmStateBody>(body)?.state),
        ("PUT", "/logger") => ApiRequest::PutLogger(json(body)?),
        ("PUT", "/metrics") => ApiRequest::PutMetrics(json(body)?),
        ("PUT", p) if p.starts_with("/drives/") => {
            ApiRequest::PutDrive(id_segment(&p["/drives/".len()..])?, json(body)?)
        }
        ("PATCH", p) if p.starts_with("/drives/") => {
            ApiRequest::PatchDrive(id_segment(&p["/drives/".len()..])?, json(body)?)
        }
        ("PATCH", p) if p.starts_with("/network-interfaces/") => ApiRequest::PatchNetworkInterface(
            id_segment(&p["/network-interfaces/".len()..])?,
            json(body)?,
        ),
        ("PUT", p) if p.starts_with("/network-interfaces/") => ApiRequest::PutNetworkInterface(
            id_segment(&p["/network-interfaces/".len()..])?,
            json(body)?,
        ),
        (_, p)
            if UNSUPPORTED
                .iter()
                .any(|r| p == *r || p.starts_with(&format!("{r}/"))) =>
        {
            return Err(ApiResponse::bad_request(format!(
                "{p} is a Firecracker resource this VMM does not implement."
            )));
        }
        (method, _) => {
            return Err(ApiResponse::bad_request(format!(
                "Invalid request method and/or path: {method} {path}."
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ActionType, VmState};
    use proptest::prelude::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn fault(r: Result<ApiRequest, ApiResponse>) -> String {
        match r {
            Err(ApiResponse::Error(400, m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn routes_firecracker_requests() {
        assert_eq!(
            route(&req(
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            )),
            Ok(ApiRequest::Action(ActionType::InstanceStart))
        );
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state": "Paused"}"#)),
            Ok(ApiRequest::PatchVm(VmState::Paused))
        );
        let drive = r#"{"drive_id": "rootfs", "path_on_host": "/x", "is_root_device": true}"#;
        assert!(matches!(
            route(&req("PUT", "/drives/rootfs", drive)),
            Ok(ApiRequest::PutDrive(id, _)) if id == "rootfs"
        ));
        assert_eq!(route(&req("GET", "/", "")), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(
            route(&req("GET", "/vm/config/", "")),
            Ok(ApiRequest::GetVmConfig)
        );
    }

    #[test]
    fn bad_input_is_a_400_with_a_fault_message() {
        let m = fault(route(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": "two", "mem_size_mib": 1}"#,
        )));
        assert!(m.contains("deserializing"), "{m}");
        let m = fault(route(&req(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "x": 1}"#,
        )));
        assert!(m.contains("unknown field"), "{m}");
        let m = fault(route(&req(
            "PUT",
            "/actions",
            r#"{"action_type": "Explode"}"#,
        )));
        assert!(m.contains("unknown variant"), "{m}");
        let m = fault(route(&req("DELETE", "/drives/a", "")));
        assert!(m.contains("Invalid request method and/or path"), "{m}");
        fault(route(&req("PUT", "/drives/", "{}")));
        fault(route(&req("PUT", "/drives/a%20b", "{}")));
        fault(route(&req("PUT", "/actions", "")));
        let m = fault(route(&req("PUT", "/vsock", "{}")));
        assert!(m.contains("does not implement"), "{m}");
        let m = fault(route(&req("PUT", "/snapshot/create", "{}")));
        assert!(m.contains("does not implement"), "{m}");
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_route_or_fail_cleanly(
            method in "(GET|PUT|PATCH|POST)",
            path in "(/|/actions|/vm|/drives/[a-z]{0,3}|/machine-config|/boot-source|/x)",
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let r = Request { method, path, body, close: false };
            if let Err(e) = route(&r) {
                prop_assert!(matches!(e, ApiResponse::Error(400, _)));
            }
        }
    }
}
