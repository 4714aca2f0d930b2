//! A vhost-user-blk frontend: the block device's data path runs in another process (blockdp,
//! or any vhost-user-blk backend such as qemu-storage-daemon). The VMM only negotiates
//! features, reads the device's configuration space, shares guest memory (the memfd regions)
//! and hands over the queues: the ioeventfd on `QueueNotify` is the backend's kick, and the
//! device's irqfd is its call.

use std::path::Path;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{TYPE_BLOCK, VirtioDevice};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, not a virtio feature.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Bytes of `struct virtio_blk_config` read from the backend.
const CONFIG_LEN: u32 = 60;
/// Queue size offered to the guest.
const QUEUE_SIZE: u16 = 256;

/// Errors talking to the backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserBlockError {
    /// A vhost-user request failed.
    #[error("vhost-user {what} on {socket}")]
    Request {
        /// The request.
        what: &'static str,
        /// The backend's socket.
        socket: String,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
}

/// A virtio-blk device served by a vhost-user backend.
pub struct VhostUserBlock {
    frontend: Frontend,
    socket: String,
    features: u64,
    protocol: bool,
    config: Vec<u8>,
    queue_sizes: [u16; 1],
    kick: Option<EventFd>,
    call: Option<EventFd>,
    /// Queues handed to the backend since the driver last set DRIVER_OK (empty when the
    /// device is not active).
    started: Vec<usize>,
}

impl VhostUserBlock {
    /// Connects to the backend at `socket`, takes ownership, and reads its features and
    /// configuration space.
    pub fn connect(socket: &Path) -> Result<VhostUserBlock, VhostUserBlockError> {
        let name = socket.display().to_string();
        let err = |what| {
            let socket = name.clone();
            move |source| VhostUserBlockError::Request {
                what,
                socket,
                source,
            }
        };
        let mut frontend = Frontend::connect(socket, 1).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        let protocol = features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut config = vec![0u8; CONFIG_LEN as usize];
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::MQ);
            frontend
                .set_protocol_features(wanted)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::CONFIG) {
                let (_, payload) = frontend
                    .get_config(0, CONFIG_LEN, VhostUserConfigFlags::WRITABLE, &config)
                    .map_err(err("GET_CONFIG"))?;
                config.copy_from_slice(&payload);
            }
        }
        Ok(VhostUserBlock {
            frontend,
            socket: name,
            features: features & !VHOST_USER_F_PROTOCOL_FEATURES,
            protocol,
            config,
            queue_sizes: [QUEUE_SIZE],
            kick: None,
            call: None,
            started: Vec::new(),
        })
    }

    /// Hands over the queue's kick (the ioeventfd on `QueueNotify`) and call (the irqfd).
    pub fn set_eventfds(&mut self, kick: EventFd, call: EventFd) {
        self.kick = Some(kick);
        self.call = Some(call);
    }

    /// Takes the queues back from the backend after the driver reset the device (status 0,
    /// as a guest does when it reboots or re-initialises its driver): `GET_VRING_BASE` stops
    /// each ring, so the backend no longer reads rings at addresses the guest has given up.
    /// The next DRIVER_OK sets the backend up again from scratch (features, memory table,
    /// rings at their new addresses, indices from 0).
    fn stop(&mut self) -> Result<(), VhostUserBlockError> {
        let socket = self.socket.clone();
        let err = |what| {
            let socket = socket.clone();
            move |source| VhostUserBlockError::Request {
                what,
                socket,
                source,
            }
        };
        for index in std::mem::take(&mut self.started) {
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(err("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    fn start(
        &mut self,
        features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), VhostUserBlockError> {
        let socket = self.socket.clone();
        let err = |what| {
            let socket = socket.clone();
            move |source| VhostUserBlockError::Request {
                what,
                socket,
                source,
            }
        };
        let mut acked = features & self.features;
        if self.protocol {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(acked)
            .map_err(err("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err("describe guest memory"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(err("SET_MEM_TABLE"))?;
        let host = |gpa: u64| -> u64 {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .unwrap_or(0)
        };
        for (index, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            self.frontend
                .set_vring_num(index, q.size())
                .map_err(err("SET_VRING_NUM"))?;
            let addrs = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table()),
                used_ring_addr: host(q.used_ring()),
                avail_ring_addr: host(q.avail_ring()),
                log_addr: None,
            };
            self.frontend
                .set_vring_addr(index, &addrs)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(err("SET_VRING_BASE"))?;
            if let Some(call) = &self.call {
                self.frontend
                    .set_vring_call(index, call)
                    .map_err(err("SET_VRING_CALL"))?;
            }
            if let Some(kick) = &self.kick {
                self.frontend
                    .set_vring_kick(index, kick)
                    .map_err(err("SET_VRING_KICK"))?;
            }
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
            self.started.push(index);
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserBlock {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, _mem: &GuestMemoryMmap, _index: usize, _queue: &mut Queue) -> bool {
        // A notification that reached the VMM instead of the backend: pass it on.
        if let Some(kick) = &self.kick {
            let _ = kick.write(1);
        }
        false
    }

    fn activate_queues(&mut self, features: u64, mem: &GuestMemoryMmap, queues: &[Queue]) {
        // A DRIVER_OK without a reset in between (the transport only reports the first).
        if !self.started.is_empty() {
            return;
        }
        if let Err(e) = self.start(features, mem, queues) {
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            tracing::error!(error = %e, cause = cause.unwrap_or_default(), "vhost-user-blk start");
        }
    }

    fn reset(&mut self) {
        if self.started.is_empty() {
            return;
        }
        tracing::info!(socket = %self.socket, "driver reset: taking the queues back from the backend");
        if let Err(e) = self.stop() {
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            tracing::error!(error = %e, cause = cause.unwrap_or_default(), "vhost-user-blk reset");
        }
    }

    fn uses_backend_eventfds(&self) -> bool {
        true
    }

    fn backend_eventfds(&mut self, kick: EventFd, call: EventFd) {
        self.set_eventfds(kick, call);
    }
}
