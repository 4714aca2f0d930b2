//! The structs in netdp's maps, field for field as `bpf/maps.h` declares them.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields so that no byte is
//! uninitialised when aya copies it into the kernel.

/// Number of rules one (port, direction, protocol) slot holds (`SG_MAX_RULES`).
pub const SG_MAX_RULES: usize = 32;
/// Number of ports a network floods to (`NET_MAX_PORTS`).
pub const NET_MAX_PORTS: usize = 32;
/// An ICMP type or code that matches anything (`SG_ANY`).
pub const SG_ANY: u16 = 0xffff;
/// `DIR_INGRESS`: traffic towards the VM.
pub const DIR_INGRESS: u8 = 1;
/// `DIR_EGRESS`: traffic from the VM.
pub const DIR_EGRESS: u8 = 2;

/// A VM port, keyed by the ifindex of its host-side interface (`struct port`): its
/// configuration, the same in every CPU's copy, and that CPU's counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Port {
    /// The network the port is on.
    pub net_id: u32,
    /// The port's MAC.
    pub mac: [u8; 6],
    /// 1 if anti-spoofing and security groups apply.
    pub port_security: u8,
    /// `PORT_F_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad: u32,
    /// The counters (one CPU's share).
    pub stats: PortStats,
}

impl Port {
    /// Whether two ports are configured alike (counters aside).
    pub fn same_config(&self, other: &Port) -> bool {
        (self.net_id, self.mac, self.port_security, self.flags)
            == (other.net_id, other.mac, other.port_security, other.flags)
    }
}

/// `PORT_F_DHCP`: the slow path answers the port's DHCP; its requests are not switched.
pub const PORT_F_DHCP: u8 = 1;
/// `PORT_F_PEER`: the port is a veth; frames for it go straight to its peer's ingress.
pub const PORT_F_PEER: u8 = 2;

/// Bytes of a DHCP request the datapath carries to the slow path (`DHCP_PUNT_MAX`).
pub const DHCP_PUNT_MAX: usize = 1500;
/// Bytes before the frame in a `struct dhcp_punt` record: the ifindex and the frame's
/// length, both `u32` in host order.
pub const DHCP_PUNT_HEADER: usize = 8;

/// Most ports a datapath holds (`MAX_PORTS`).
pub const MAX_PORTS: u32 = 4096;

/// One (MAC, IPv4) a port may send from (`struct addr_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// The port's ifindex.
    pub ifindex: u32,
    /// The IPv4 address in network byte order; 0 allows the MAC alone.
    pub ip: u32,
    /// The source MAC.
    pub mac: [u8; 6],
    /// Padding.
    pub pad: u16,
}

/// An FDB key: a MAC inside a network (`struct l2_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct L2Key {
    /// The network.
    pub net_id: u32,
    /// The MAC.
    pub mac: [u8; 6],
    /// Padding.
    pub pad: u16,
}

/// Where a MAC lives (`struct fdb_entry`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbEntry {
    /// The port's ifindex (unused for router interfaces).
    pub ifindex: u32,
    /// Non-zero: the MAC is this router's interface, frames to it are routed.
    pub router_id: u32,
    /// The router interface's address, network byte order (source of ICMP errors).
    pub ip: u32,
}

/// A neighbour key: an IPv4 address inside a network (`struct neigh_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NeighKey {
    /// The network.
    pub net_id: u32,
    /// The address in network byte order.
    pub ip: u32,
}

/// The MAC that owns an address (`struct neigh`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Neigh {
    /// The MAC.
    pub mac: [u8; 6],
    /// Padding.
    pub pad: u16,
}

/// The data part of a route key; the LPM prefix covers the 32 router bits plus the
/// address prefix (`struct route_key` without `prefixlen`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteKey {
    /// The router.
    pub router_id: u32,
    /// The destination in network byte order.
    pub addr: u32,
}

/// Where a route leads (`struct route`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// The network the packet leaves on.
    pub net_id: u32,
    /// The next hop in network byte order; 0 for directly connected subnets.
    pub nexthop: u32,
    /// The router's MAC on that network (the new source MAC).
    pub mac: [u8; 6],
    /// [`ROUTE_EXTERNAL`] for routes out of the router's gateway (floating-IP SNAT).
    pub flags: u16,
}

/// `ROUTE_EXTERNAL`: the route leaves through the router's external gateway.
pub const ROUTE_EXTERNAL: u16 = 1;

/// A floating-IP translation key (`struct nat_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// The router.
    pub router_id: u32,
    /// The address, network byte order.
    pub ip: u32,
}

/// One side of a gateway SNAT translation (`struct snat_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SnatKey {
    /// The router.
    pub router_id: u32,
    /// The fixed IP (outbound map) or the gateway address (inbound map), network order.
    pub local_ip: u32,
    /// The remote end's address, network order.
    pub remote_ip: u32,
    /// The local port (ICMP: the echo id), network order.
    pub local_port: u16,
    /// The remote port (ICMP: 0), network order.
    pub remote_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// The other side of a gateway SNAT translation (`struct snat_val`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnatVal {
    /// Address, network order.
    pub ip: u32,
    /// Port (ICMP: echo id), network order.
    pub port: u16,
    /// 1 once a reply came back through the translation (`snat_in` only).
    pub replied: u8,
    /// [`CT_TCP_FIN`] / [`CT_TCP_RST`] once seen (`snat_in` only).
    pub tcp: u8,
    /// `bpf_ktime_get_coarse_ns` of the last packet (`snat_in` only).
    pub last_seen: u64,
}

/// A network's ports, for flooding broadcasts (`struct network`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Network {
    /// How many entries of `ports` are used.
    pub nports: u32,
    /// The ports' ifindexes.
    pub ports: [u32; NET_MAX_PORTS],
}

/// Security-group slot key (`struct sg_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SgKey {
    /// The port.
    pub ifindex: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number; 0 for rules matching any protocol.
    pub proto: u8,
    /// Padding.
    pub pad: u16,
}

/// One compiled allow rule (`struct sg_rule`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SgRule {
    /// The rule's id (non-zero), for counters and conntrack.
    pub rule_id: u32,
    /// The remote prefix, network byte order, already masked.
    pub remote: u32,
    /// The remote prefix mask, network byte order.
    pub remote_mask: u32,
    /// Lowest L4 port (TCP/UDP) or the ICMP type ([`SG_ANY`]: any).
    pub port_min: u16,
    /// Highest L4 port (TCP/UDP) or the ICMP code ([`SG_ANY`]: any).
    pub port_max: u16,
}

/// The rules of a slot (`struct sg_rules`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SgRules {
    /// How many entries of `r` are used.
    pub n: u32,
    /// The rules.
    pub r: [SgRule; SG_MAX_RULES],
}

/// A connection seen from one port (`struct ct_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// The port whose firewall tracks the connection.
    pub ifindex: u32,
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port (ICMP echo id), network byte order.
    pub sport: u16,
    /// Destination port (ICMP echo id), network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// Conntrack state (`struct ct_val`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtVal {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen: u64,
    /// The rule that admitted the connection.
    pub rule_id: u32,
    /// The direction of the first packet.
    pub dir: u8,
    /// 1 once a reply was seen.
    pub replied: u8,
    /// [`CT_TCP_FIN`] / [`CT_TCP_RST`] once seen.
    pub tcp: u8,
    /// Padding.
    pub pad: u8,
}

/// `CT_TCP_FIN`: a FIN was seen on the connection (its idle timeout shortens).
pub const CT_TCP_FIN: u8 = 1;
/// `CT_TCP_RST`: a RST was seen on the connection.
pub const CT_TCP_RST: u8 = 2;

/// Number of drop reasons (`DROP_NREASONS`).
pub const DROP_NREASONS: usize = 16;

/// Per-port counters, per CPU in the map (`struct port_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    /// Bytes sent to the port.
    pub tx_bytes: u64,
    /// IPv4 frames from the port addressed to a router (routed, or answered with an ICMP
    /// error or dropped by the router).
    pub routed: u64,
    /// Broadcasts from the port that were flooded (or passed to the slow path).
    pub flooded: u64,
    /// ARP requests from the port answered by the datapath.
    pub arp_replies: u64,
    /// ICMP errors (TTL exceeded, unreachable) sent back to the port by a router.
    pub icmp_errors: u64,
    /// Frames from the port dropped, by [`crate::datapath::DropReason`].
    pub drops: [u64; DROP_NREASONS],
}

impl PortStats {
    /// Adds `other` (another CPU's share) to these counters.
    pub fn add(&mut self, other: &PortStats) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.routed += other.routed;
        self.flooded += other.flooded;
        self.arp_replies += other.arp_replies;
        self.icmp_errors += other.icmp_errors;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }
}

/// Per-rule counters (`struct rule_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Connections the rule admitted: counted once, when the first packet of a new
    /// connection passes a port's firewall in the rule's direction because of this rule.
    pub connections: u64,
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: the type is `#[repr(C)]`, made only of integers and integer arrays with
        // explicit padding fields, so every bit pattern is valid and no byte is
        // uninitialised.
        unsafe impl aya::Pod for $t {}
    )*};
}

pod!(
    Port, AddrKey, L2Key, FdbEntry, NeighKey, Neigh, RouteKey, Route, Network, SgKey, SgRule,
    SgRules, CtKey, CtVal, PortStats, RuleStats, NatKey, SnatKey, SnatVal
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn sizes_match_the_c_structs() {
        assert_eq!(size_of::<Port>(), 16 + size_of::<PortStats>());
        assert_eq!(size_of::<AddrKey>(), 16);
        assert_eq!(size_of::<L2Key>(), 12);
        assert_eq!(size_of::<RouteKey>(), 8);
        assert_eq!(size_of::<FdbEntry>(), 12);
        assert_eq!(size_of::<Route>(), 16);
        assert_eq!(size_of::<SgRule>(), 16);
        assert_eq!(size_of::<SgRules>(), 4 + 16 * SG_MAX_RULES);
        assert_eq!(size_of::<CtKey>(), 20);
        assert_eq!(size_of::<CtVal>(), 16);
        assert_eq!(size_of::<SnatKey>(), 20);
        assert_eq!(size_of::<SnatVal>(), 16);
        assert_eq!(size_of::<PortStats>(), 8 * (8 + DROP_NREASONS));
    }
}
