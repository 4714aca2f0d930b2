//! The vhost-user-blk side: the backend that serves a volume's virtqueues, and the export
//! loop that listens on its socket.

pub mod backend;
pub mod export;
