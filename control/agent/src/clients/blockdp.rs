//! blockdp's API: `POST /volumes`, `GET|DELETE /volumes/{id}`, `PUT|DELETE
//! /volumes/{id}/export`, `POST /volumes/{id}/extend`, `POST /volumes/{id}/snapshots`,
//! `GET|DELETE /snapshots/{id}`.

use std::path::PathBuf;

use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::http::{Client, HttpError, NO_BODY};

/// A volume as blockdp reports it (the fields the agent uses).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Volume {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes refused.
    #[serde(default)]
    pub read_only: bool,
    /// The vhost-user export, when served.
    #[serde(default)]
    pub export: Option<Export>,
}

/// A volume's export.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Export {
    /// The vhost-user-blk socket.
    pub socket: PathBuf,
    /// Queues offered.
    pub num_queues: u16,
}

/// Where a new volume's bytes come from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A raw image on this host.
    Path(PathBuf),
    /// A raw image at an `http://` URL.
    Url(String),
    /// A snapshot on this blockdp (a clone).
    SnapshotId(String),
}

/// A snapshot as blockdp reports it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The volume it was taken of.
    #[serde(default)]
    pub source_id: Option<String>,
}

#[derive(Deserialize)]
struct OneSnapshot {
    snapshot: Snapshot,
}

/// Body of `POST /volumes`.
#[derive(Debug, Clone, Serialize)]
pub struct CreateVolume {
    /// Display name.
    pub name: String,
    /// Size in bytes (the image's, rounded up to a sector, when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Deserialize)]
struct One {
    volume: Volume,
}

#[derive(Deserialize)]
struct Many {
    volumes: Vec<Volume>,
}

/// A blockdp client.
#[derive(Debug, Clone)]
pub struct Blockdp(pub Client);

impl Blockdp {
    /// Creates a volume (copying an image may take a while: the client's timeout applies).
    pub async fn create(&self, req: &CreateVolume) -> Result<Volume, HttpError> {
        let one: One = self
            .0
            .json(Method::POST, "/volumes", Some(&serde_json::json!(req)))
            .await?;
        Ok(one.volume)
    }

    /// One volume.
    pub async fn get(&self, id: &str) -> Result<Volume, HttpError> {
        let one: One = self
            .0
            .json(Method::GET, &format!("/volumes/{id}"), NO_BODY)
            .await?;
        Ok(one.volume)
    }

    /// Every volume.
    pub async fn list(&self) -> Result<Vec<Volume>, HttpError> {
        let many: Many = self.0.json(Method::GET, "/volumes", NO_BODY).await?;
        Ok(many.volumes)
    }

    /// Serves a volume over vhost-user-blk; returns it with its export.
    pub async fn export(&self, id: &str, num_queues: Option<u16>) -> Result<Volume, HttpError> {
        let body = serde_json::json!({ "num_queues": num_queues });
        let body = if num_queues.is_some() {
            body
        } else {
            serde_json::json!({})
        };
        let one: One = self
            .0
            .json(Method::PUT, &format!("/volumes/{id}/export"), Some(&body))
            .await?;
        Ok(one.volume)
    }

    /// Sets a volume's I/O limits.
    pub async fn set_qos(
        &self,
        id: &str,
        iops: Option<u64>,
        bytes_per_sec: Option<u64>,
    ) -> Result<Volume, HttpError> {
        let body = serde_json::json!({"iops": iops, "bytes_per_sec": bytes_per_sec});
        let one: One = self
            .0
            .json(Method::PUT, &format!("/volumes/{id}/qos"), Some(&body))
            .await?;
        Ok(one.volume)
    }

    /// Stops serving a volume.
    pub async fn unexport(&self, id: &str) -> Result<Volume, HttpError> {
        let one: One = self
            .0
            .json(Method::DELETE, &format!("/volumes/{id}/export"), NO_BODY)
            .await?;
        Ok(one.volume)
    }

    /// Grows a volume to `size` bytes (it must not be exported).
    pub async fn extend(&self, id: &str, size: u64) -> Result<Volume, HttpError> {
        let body = serde_json::json!({ "size": size });
        let one: One = self
            .0
            .json(Method::POST, &format!("/volumes/{id}/extend"), Some(&body))
            .await?;
        Ok(one.volume)
    }

    /// Takes a snapshot of a volume.
    pub async fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot, HttpError> {
        let body = serde_json::json!({ "name": name });
        let one: OneSnapshot = self
            .0
            .json(
                Method::POST,
                &format!("/volumes/{id}/snapshots"),
                Some(&body),
            )
            .await?;
        Ok(one.snapshot)
    }

    /// One snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot, HttpError> {
        let one: OneSnapshot = self
            .0
            .json(Method::GET, &format!("/snapshots/{id}"), NO_BODY)
            .await?;
        Ok(one.snapshot)
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), HttpError> {
        self.0
            .call(Method::DELETE, &format!("/snapshots/{id}"), NO_BODY)
            .await
            .map(drop)
    }

    /// Deletes a volume (it must not be exported).
    pub async fn delete(&self, id: &str) -> Result<(), HttpError> {
        self.0
            .call(Method::DELETE, &format!("/volumes/{id}"), NO_BODY)
            .await
            .map(drop)
    }
}
