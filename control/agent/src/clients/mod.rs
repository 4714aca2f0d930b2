//! Typed clients of the node's daemons, over their HTTP/JSON APIs on Unix sockets:
//! [`blockdp`] (volumes and their vhost-user-blk exports), [`netdp`] (Neutron's networks,
//! subnets and ports) and [`vmm`] (Firecracker's API of one VM).

pub mod blockdp;
pub mod netdp;
pub mod vmm;
