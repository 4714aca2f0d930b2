//! virtio-blk: the device's wire format (request layout, config space, feature bits).

pub mod config;
pub mod request;
