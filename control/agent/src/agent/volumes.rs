//! Volumes outside a server's build, for control's Cinder: blockdp volumes and snapshots
//! made, grown and deleted on this node, and volumes attached to a stopped server as extra
//! drives.
//!
//! The VMM has no drive hot-plug (virtio-mmio devices are fixed when the guest boots, as in
//! Firecracker), so a volume is attached or detached only while its server is SHUTOFF; at
//! each start the agent exports every attached volume and gives it to the VMM after the
//! root disk ([`Agent::extra_drives`]), in attachment order.

use serde::Deserialize;

use super::{Agent, AgentError, AttachedVolume, Status, StepError, error_chain, lock};
use crate::clients::blockdp::{self, Snapshot, Volume};
use crate::clients::vmm;
use crate::http::HttpError;
use crate::model::{ImageRef, Server, valid_id};

/// Most volumes attached to one server besides its root disk.
pub const MAX_ATTACHED: usize = 8;

/// Body of `POST /v1/volumes`: an empty volume of `size_bytes`, or one made from an image
/// or from a snapshot on this node (then at least their size).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// blockdp's display name (control names them `volume-<its id>`).
    pub name: String,
    /// Size in bytes, a multiple of 512.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// A raw image to fill it from.
    #[serde(default)]
    pub image: Option<ImageRef>,
    /// A blockdp snapshot to clone.
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

fn refused(what: &'static str) -> impl Fn(HttpError) -> AgentError {
    move |e| match e.status() {
        Some(s @ (400 | 404 | 409)) => {
            AgentError::Refused(s, format!("blockdp: {what}: {}", error_chain(&e)))
        }
        _ => AgentError::Step(StepError::Blockdp { what, source: e }),
    }
}

fn check_id(id: &str) -> Result<(), AgentError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(AgentError::Refused(
            400,
            format!("{id:?} is not a valid id"),
        ))
    }
}

impl Agent {
    /// The servers on this node holding blockdp volume `id` (as root disk or attached).
    pub fn volume_holders(&self, id: &str) -> Vec<String> {
        lock(&self.state)
            .servers
            .values()
            .filter(|s| {
                s.resources.volume.as_ref().is_some_and(|v| v.id == id)
                    || s.placement.root_disk.volume_id.as_deref() == Some(id)
                    || s.resources.attached_volumes.iter().any(|a| a.id == id)
            })
            .map(|s| s.placement.id.clone())
            .collect()
    }

    /// Creates a volume on blockdp.
    pub async fn create_volume(&self, req: &VolumeCreate) -> Result<Volume, AgentError> {
        if req.name.is_empty() || req.name.len() > 255 {
            return Err(AgentError::Refused(
                400,
                "name must be 1 to 255 characters".into(),
            ));
        }
        if req
            .size_bytes
            .is_some_and(|s| s == 0 || !s.is_multiple_of(512))
        {
            return Err(AgentError::Refused(
                400,
                "size_bytes must be a positive multiple of 512".into(),
            ));
        }
        let source = match (&req.image, &req.snapshot_id) {
            (Some(_), Some(_)) => {
                return Err(AgentError::Refused(
                    400,
                    "at most one of image and snapshot_id".into(),
                ));
            }
            (Some(ImageRef::Path(p)), None) if !p.is_absolute() => {
                return Err(AgentError::Refused(
                    400,
                    "image.path must be absolute".into(),
                ));
            }
            (Some(ImageRef::Path(p)), None) => Some(blockdp::Source::Path(p.clone())),
            (Some(ImageRef::Url(u)), None) => {
                crate::http::parse_http_url(u)
                    .map_err(|e| AgentError::Refused(400, format!("image.url: {e}")))?;
                Some(blockdp::Source::Url(u.clone()))
            }
            (None, Some(s)) => {
                check_id(s)?;
                Some(blockdp::Source::SnapshotId(s.clone()))
            }
            (None, None) if req.size_bytes.is_none() => {
                return Err(AgentError::Refused(
                    400,
                    "an empty volume needs size_bytes".into(),
                ));
            }
            (None, None) => None,
        };
        self.blockdp
            .create(&blockdp::CreateVolume {
                name: req.name.clone(),
                size: req.size_bytes,
                source,
            })
            .await
            .map_err(refused("create the volume"))
    }

    /// One blockdp volume.
    pub async fn get_volume(&self, id: &str) -> Result<Volume, AgentError> {
        check_id(id)?;
        self.blockdp
            .get(id)
            .await
            .map_err(refused("look up the volume"))
    }

    /// Every blockdp volume.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, AgentError> {
        self.blockdp.list().await.map_err(refused("list volumes"))
    }

    /// Deletes a volume no server holds (its export, if any, first).
    pub async fn delete_volume(&self, id: &str) -> Result<(), AgentError> {
        check_id(id)?;
        let holders = self.volume_holders(id);
        if !holders.is_empty() {
            return Err(AgentError::Conflict(format!(
                "volume {id} is held by server(s) {}",
                holders.join(", ")
            )));
        }
        let v = self.get_volume(id).await?;
        if v.export.is_some() {
            self.blockdp
                .unexport(id)
                .await
                .map_err(refused("unexport the volume"))?;
        }
        self.blockdp
            .delete(id)
            .await
            .map_err(refused("delete the volume"))
    }

    /// Grows a volume no running server uses (blockdp refuses while it is exported; an
    /// export of a stopped server's volume is ended first and made again at its start).
    pub async fn extend_volume(&self, id: &str, size: u64) -> Result<Volume, AgentError> {
        check_id(id)?;
        if size == 0 || !size.is_multiple_of(512) {
            return Err(AgentError::Refused(
                400,
                "size_bytes must be a positive multiple of 512".into(),
            ));
        }
        let running: Vec<String> = self
            .volume_holders(id)
            .into_iter()
            .filter(|h| self.get(h).is_ok_and(|s| s.process.is_some()))
            .collect();
        if !running.is_empty() {
            return Err(AgentError::Conflict(format!(
                "volume {id} is in use by running server(s) {}",
                running.join(", ")
            )));
        }
        let v = self.get_volume(id).await?;
        if v.export.is_some() {
            self.blockdp
                .unexport(id)
                .await
                .map_err(refused("unexport the volume"))?;
            self.forget_socket(id);
        }
        self.blockdp
            .extend(id, size)
            .await
            .map_err(refused("extend the volume"))
    }

    /// Takes a snapshot of a volume.
    pub async fn snapshot_volume(&self, id: &str, name: &str) -> Result<Snapshot, AgentError> {
        check_id(id)?;
        self.blockdp
            .snapshot(id, name)
            .await
            .map_err(refused("snapshot the volume"))
    }

    /// One snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot, AgentError> {
        check_id(id)?;
        self.blockdp
            .get_snapshot(id)
            .await
            .map_err(refused("look up the snapshot"))
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), AgentError> {
        check_id(id)?;
        self.blockdp
            .delete_snapshot(id)
            .await
            .map_err(refused("delete the snapshot"))
    }

    /// Drops the recorded export socket of a volume wherever it is recorded.
    fn forget_socket(&self, id: &str) {
        let mut st = lock(&self.state);
        for s in st.servers.values_mut() {
            for a in s.resources.attached_volumes.iter_mut() {
                if a.id == id {
                    a.socket = None;
                }
            }
            if let Some(v) = s.resources.volume.as_mut()
                && v.id == id
            {
                v.socket = None;
            }
        }
        let _ = self.save(&mut st);
    }

    fn check_stopped(s: &Server, what: &str) -> Result<(), AgentError> {
        let id = &s.placement.id;
        if let Some(t) = &s.task_state {
            return Err(AgentError::Conflict(format!("server {id} is busy ({t})")));
        }
        if s.status != Status::Shutoff {
            return Err(AgentError::Conflict(format!(
                "cannot {what} a volume while server {id} is {}: this node's VMM has no drive \
                 hot-plug, so volumes are attached and detached only while the server is \
                 SHUTOFF (stop it first)",
                s.status.as_str()
            )));
        }
        Ok(())
    }

    /// Attaches blockdp volume `volume_id` to a stopped server as device `device`; the
    /// guest sees it from the server's next start.
    pub async fn attach_volume(
        &self,
        server: &str,
        volume_id: &str,
        device: &str,
    ) -> Result<Server, AgentError> {
        check_id(volume_id)?;
        if device.is_empty()
            || device.len() > 16
            || !device
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(AgentError::Refused(
                400,
                format!("device {device:?} is not a device name like vdb"),
            ));
        }
        let op = self.op_lock(server);
        let _guard = op.lock().await;
        let s = self.get(server)?;
        Self::check_stopped(&s, "attach")?;
        if s.resources.attached_volumes.len() >= MAX_ATTACHED {
            return Err(AgentError::Conflict(format!(
                "server {server} already has {MAX_ATTACHED} attached volumes"
            )));
        }
        let holders = self.volume_holders(volume_id);
        if !holders.is_empty() {
            return Err(AgentError::Conflict(format!(
                "volume {volume_id} is already held by server(s) {}",
                holders.join(", ")
            )));
        }
        if s.resources
            .attached_volumes
            .iter()
            .any(|a| a.device == device)
        {
            return Err(AgentError::Conflict(format!(
                "server {server} already has a volume at {device}"
            )));
        }
        self.get_volume(volume_id).await?;
        let attached = AttachedVolume {
            id: volume_id.to_string(),
            device: device.to_string(),
            socket: None,
        };
        Ok(self.update(server, |s| s.resources.attached_volumes.push(attached))?)
    }

    /// Detaches a volume from a stopped server (its export is ended).
    pub async fn detach_volume(&self, server: &str, volume_id: &str) -> Result<Server, AgentError> {
        let op = self.op_lock(server);
        let _guard = op.lock().await;
        let s = self.get(server)?;
        if !s
            .resources
            .attached_volumes
            .iter()
            .any(|a| a.id == volume_id)
        {
            return Err(AgentError::Refused(
                404,
                format!("volume {volume_id} is not attached to server {server}"),
            ));
        }
        Self::check_stopped(&s, "detach")?;
        self.unexport_quietly(volume_id)
            .await
            .map_err(AgentError::Step)?;
        Ok(self.update(server, |s| {
            s.resources.attached_volumes.retain(|a| a.id != volume_id)
        })?)
    }

    async fn unexport_quietly(&self, id: &str) -> Result<(), StepError> {
        match self.blockdp.unexport(id).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(404 | 409)) => Ok(()),
            Err(source) => Err(StepError::Blockdp {
                what: "unexport an attached volume",
                source,
            }),
        }
    }

    /// On delete: ends the exports of the attached volumes and forgets them (the volumes
    /// stay: control decides about them).
    pub(super) async fn release_attached(&self, id: &str) -> Result<(), StepError> {
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        for a in &s.resources.attached_volumes {
            self.unexport_quietly(&a.id).await?;
            self.update(id, |s| {
                s.resources.attached_volumes.retain(|x| x.id != a.id)
            })?;
        }
        Ok(())
    }

    /// The drives a server gets besides its root disk, each attached volume exported (again)
    /// if needed. The one place extra drives are listed: a config drive or other extra
    /// devices belong here too.
    pub(super) async fn extra_drives(&self, id: &str) -> Result<Vec<vmm::Drive>, StepError> {
        let s = self.get(id).map_err(|_| StepError::Gone(id.into()))?;
        let mut drives = Vec::new();
        for a in &s.resources.attached_volumes {
            let bd = |what| move |source| StepError::Blockdp { what, source };
            let v = self
                .blockdp
                .get(&a.id)
                .await
                .map_err(bd("find an attached volume"))?;
            let v = match v.export {
                Some(_) => v,
                None => self
                    .blockdp
                    .export(&a.id, None)
                    .await
                    .map_err(bd("export an attached volume"))?,
            };
            let socket = v.export.map(|e| e.socket);
            let sock = socket.clone();
            self.update(id, |s| {
                if let Some(x) = s
                    .resources
                    .attached_volumes
                    .iter_mut()
                    .find(|x| x.id == a.id)
                {
                    x.socket = sock;
                }
            })?;
            if let Some(socket) = socket {
                drives.push(vmm::Drive {
                    drive_id: a.device.clone(),
                    is_root_device: false,
                    socket: socket.display().to_string(),
                });
            }
        }
        Ok(drives)
    }
}
