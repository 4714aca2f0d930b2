//! Images (Glance v2 semantics): the image document, visibility and ownership rules,
//! JSON-patch updates, and list filtering, sorting and paging.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::ApiError;
use crate::identity::Ctx;

pub mod import;

/// Disk formats Glance accepts.
pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
/// Container formats Glance accepts.
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];
/// Attributes the server owns.
pub const READ_ONLY: &[&str] = &[
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "file",
    "self",
    "schema",
    "direct_url",
    "locations",
    "stores",
];
/// Attributes that are part of the image itself, not custom properties.
pub const CORE: &[&str] = &[
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "tags",
    "owner",
];

/// An image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDoc {
    /// Display name (not unique).
    pub name: Option<String>,
    /// queued, saving, active, killed, deleted, deactivated, importing.
    pub status: String,
    /// public, private, shared, community.
    pub visibility: String,
    /// Protected images cannot be deleted.
    pub protected: bool,
    /// Hidden from default listings.
    pub os_hidden: bool,
    /// MD5 of the data, hex.
    pub checksum: Option<String>,
    /// `sha512` once data is stored.
    pub os_hash_algo: Option<String>,
    /// SHA-512 of the data, hex.
    pub os_hash_value: Option<String>,
    /// Bytes of data.
    pub size: Option<u64>,
    /// Size of the virtual disk, if known.
    pub virtual_size: Option<u64>,
    /// GiB of disk needed.
    pub min_disk: u64,
    /// MiB of RAM needed.
    pub min_ram: u64,
    /// Disk format.
    pub disk_format: Option<String>,
    /// Container format.
    pub container_format: Option<String>,
    /// Owning project.
    pub owner: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub updated_at: u64,
    /// Custom string properties (kernel_id, ramdisk_id, os_distro, ...).
    pub properties: BTreeMap<String, String>,
}

/// An image member: a project the image is shared with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberDoc {
    /// Image id.
    pub image_id: String,
    /// Member project id.
    pub member_id: String,
    /// pending, accepted, rejected.
    pub status: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub updated_at: u64,
}

impl ImageDoc {
    /// The API view.
    pub fn view(&self, id: &str) -> Value {
        let mut v = json!({
            "id": id, "name": self.name, "status": self.status, "visibility": self.visibility,
            "protected": self.protected, "os_hidden": self.os_hidden, "checksum": self.checksum,
            "os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value,
            "size": self.size, "virtual_size": self.virtual_size, "min_disk": self.min_disk,
            "min_ram": self.min_ram, "disk_format": self.disk_format,
            "container_format": self.container_format, "owner": self.owner, "tags": self.tags,
            "created_at": crate::time::glance(self.created_at),
            "updated_at": crate::time::glance(self.updated_at),
            "self": format!("/v2/images/{id}"), "file": format!("/v2/images/{id}/file"),
            "schema": "/v2/schemas/image",
        });
        if let Value::Object(o) = &mut v {
            for (k, val) in &self.properties {
                o.insert(k.clone(), json!(val));
            }
        }
        v
    }

    /// Sets one attribute from JSON (create and patch share this), checking its type.
    pub fn set(&mut self, key: &str, value: &Value, ctx: &Ctx) -> Result<(), ApiError> {
        let bad = |what: &str| ApiError::bad_request(format!("Invalid value for '{key}': {what}"));
        let string = || {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("expected a string"))
        };
        let opt_string = || -> Result<Option<String>, ApiError> {
            if value.is_null() {
                Ok(None)
            } else {
                string().map(Some)
            }
        };
        let boolean = || value.as_bool().ok_or_else(|| bad("expected a boolean"));
        let int = || {
            value
                .as_u64()
                .ok_or_else(|| bad("expected a non-negative integer"))
        };
        if READ_ONLY.contains(&key) {
            return Err(ApiError::forbidden(format!(
                "Attribute '{key}' is read-only."
            )));
        }
        match key {
            "id" => return Err(ApiError::forbidden("Attribute 'id' is read-only.")),
            "name" => {
                let n = opt_string()?;
                if n.as_ref().is_some_and(|n| n.len() > 255) {
                    return Err(bad("longer than 255 characters"));
                }
                self.name = n;
            }
            "visibility" => {
                let v = string()?;
                if !["public", "private", "shared", "community"].contains(&v.as_str()) {
                    return Err(bad("must be public, private, shared or community"));
                }
                if v == "public" && !ctx.is_admin() {
                    return Err(ApiError::forbidden(
                        "You are not authorized to publicize images.",
                    ));
                }
                self.visibility = v;
            }
            "protected" => self.protected = boolean()?,
            "os_hidden" => self.os_hidden = boolean()?,
            "min_disk" => self.min_disk = int()?,
            "min_ram" => self.min_ram = int()?,
            "disk_format" => {
                let f = opt_string()?;
                if f.as_deref().is_some_and(|f| !DISK_FORMATS.contains(&f)) {
                    return Err(bad(&format!("must be one of {}", DISK_FORMATS.join(", "))));
                }
                if self.status != "queued" {
                    return Err(ApiError::forbidden(
                        "disk_format can only change while the image is queued",
                    ));
                }
                self.disk_format = f;
            }
            "container_format" => {
                let f = opt_string()?;
                if f.as_deref()
                    .is_some_and(|f| !CONTAINER_FORMATS.contains(&f))
                {
                    return Err(bad(&format!(
                        "must be one of {}",
                        CONTAINER_FORMATS.join(", ")
                    )));
                }
                if self.status != "queued" {
                    return Err(ApiError::forbidden(
                        "container_format can only change while the image is queued",
                    ));
                }
                self.container_format = f;
            }
            "tags" => {
                let arr = value
                    .as_array()
                    .ok_or_else(|| bad("expected a list of strings"))?;
                let mut tags = Vec::new();
                for t in arr {
                    let t = t
                        .as_str()
                        .ok_or_else(|| bad("expected a list of strings"))?;
                    if t.is_empty() || t.len() > 255 {
                        return Err(bad("tags are 1 to 255 characters"));
                    }
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_string());
                    }
                }
                self.tags = tags;
            }
            "owner" => {
                let o = string()?;
                if o != self.owner && !ctx.is_admin() {
                    return Err(ApiError::forbidden(
                        "Only an admin can change an image's owner.",
                    ));
                }
                self.owner = o;
            }
            _ => {
                if key.is_empty() || key.len() > 255 {
                    return Err(ApiError::bad_request(
                        "property names are 1 to 255 characters",
                    ));
                }
                let v = value.as_str().ok_or_else(|| {
                    ApiError::bad_request(format!("Property '{key}' must be a string"))
                })?;
                self.properties.insert(key.to_string(), v.to_string());
            }
        }
        Ok(())
    }

    /// Removes an attribute (JSON patch `remove`).
    pub fn remove(&mut self, key: &str) -> Result<(), ApiError> {
        if READ_ONLY.contains(&key) || CORE.contains(&key) {
            return Err(ApiError::forbidden(format!(
                "Attribute '{key}' cannot be removed."
            )));
        }
        if self.properties.remove(key).is_none() {
            return Err(ApiError::conflict(format!(
                "Property {key} does not exist."
            )));
        }
        Ok(())
    }
}

/// What the caller may do with an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Not visible: answer 404.
    None,
    /// Visible, read-only (public, shared with the caller, or a reader of the owner).
    Read,
    /// Owner (with member) or admin.
    Write,
}

/// The caller's access to an image, given whether the caller's project is a member.
pub fn access(ctx: &Ctx, img: &ImageDoc, member_status: Option<&str>) -> Access {
    let project = ctx.project_id.as_deref();
    let owner = project == Some(img.owner.as_str());
    if ctx.is_admin() {
        return Access::Write;
    }
    if owner {
        return if ctx.has_role("member") {
            Access::Write
        } else {
            Access::Read
        };
    }
    let visible = match img.visibility.as_str() {
        "public" | "community" => true,
        "shared" => member_status.is_some(),
        _ => false,
    };
    if visible { Access::Read } else { Access::None }
}

/// Parses a JSON patch body into (op, key, value) steps.
pub fn parse_patch(body: &[u8]) -> Result<Vec<(String, String, Option<Value>)>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let ops = v
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is a list of operations"))?;
    let mut out = Vec::new();
    for op in ops {
        let o: &Map<String, Value> = op
            .as_object()
            .ok_or_else(|| ApiError::bad_request("each patch operation is an object"))?;
        let name = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("operation lacks 'op'"))?;
        if !["add", "replace", "remove"].contains(&name) {
            return Err(ApiError::bad_request(format!(
                "unsupported patch operation {name:?}"
            )));
        }
        let path = o
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("operation lacks 'path'"))?;
        if let Some(k) = o
            .keys()
            .find(|k| !["op", "path", "value"].contains(&k.as_str()))
        {
            return Err(ApiError::bad_request(format!(
                "unexpected key {k:?} in a patch operation"
            )));
        }
        let key = path
            .strip_prefix('/')
            .filter(|k| !k.is_empty() && !k.contains('/'))
            .ok_or_else(|| ApiError::bad_request(format!("unsupported patch path {path:?}")))?
            .replace("~1", "/")
            .replace("~0", "~");
        let value = o.get("value").cloned();
        if name != "remove" && value.is_none() {
            return Err(ApiError::bad_request(format!("'{name}' needs a value")));
        }
        out.push((name.to_string(), key, value));
    }
    Ok(out)
}

/// Compares two images on a sort key.
pub fn compare(a: &(String, ImageDoc), b: &(String, ImageDoc), key: &str) -> std::cmp::Ordering {
    let (ia, da) = a;
    let (ib, db) = b;
    match key {
        "id" => ia.cmp(ib),
        "name" => da.name.cmp(&db.name),
        "status" => da.status.cmp(&db.status),
        "size" => da.size.cmp(&db.size),
        "visibility" => da.visibility.cmp(&db.visibility),
        "disk_format" => da.disk_format.cmp(&db.disk_format),
        "container_format" => da.container_format.cmp(&db.container_format),
        "min_disk" => da.min_disk.cmp(&db.min_disk),
        "min_ram" => da.min_ram.cmp(&db.min_ram),
        "owner" => da.owner.cmp(&db.owner),
        "updated_at" => da.updated_at.cmp(&db.updated_at),
        _ => da.created_at.cmp(&db.created_at),
    }
}

/// Sort keys allowed.
pub const SORT_KEYS: &[&str] = &[
    "id",
    "name",
    "status",
    "size",
    "visibility",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "owner",
    "updated_at",
    "created_at",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_parsing() {
        let ops = parse_patch(
            br#"[{"op":"add","path":"/a~1b","value":"x"},{"op":"remove","path":"/k"}]"#,
        )
        .unwrap();
        assert_eq!(ops[0], ("add".into(), "a/b".into(), Some(json!("x"))));
        assert_eq!(ops[1].0, "remove");
        for bad in [
            &br#"{}"#[..],
            br#"[{"op":"move","path":"/a"}]"#,
            br#"[{"op":"add","path":"/a"}]"#,
            br#"[{"op":"add","path":"a","value":1}]"#,
            br#"[{"op":"add","path":"/a","value":1,"from":"/b"}]"#,
            b"[",
            br#"[{"op":"add","path":"/a/b","value":"x"}]"#,
        ] {
            assert!(
                parse_patch(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
