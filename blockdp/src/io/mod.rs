//! I/O engines: how a block request becomes reads and writes on the volume file.

pub mod uring;
