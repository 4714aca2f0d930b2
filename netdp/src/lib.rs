//! netdp: Ferrostack's eBPF virtual switch.
//!
//! The Neutron of a node: C eBPF programs in `bpf/` (built by `build.rs` with clang),
//! loaded and managed with aya 0.14, connect VM ports into tenant networks with map lookups
//! only.
//!
//! The parts:
//! - `bpf/datapath.h` + `bpf/maps.h`: the forwarding logic, built twice, for tc
//!   (`switch_tc.c`, VM ports: keeps checksum offload) and XDP (`switch_xdp.c`). Per frame:
//!   port lookup, port security (MAC/IP/ARP anti-spoofing, allowed address pairs), ARP
//!   answered from the neighbour table (ports, router interfaces, floating IPs), broadcasts
//!   flooded to the network (tc) or passed to the slow path (XDP), unicast through the
//!   per-network FDB (unknown MACs dropped), routing through router interfaces (LPM routes,
//!   MAC rewrite, TTL-1, IP checksum; ICMP time-exceeded and unreachable sent back like
//!   Linux), floating IPs (1:1 DNAT in, SNAT out through the router gateway, IP and L4
//!   checksums fixed up; ICMP errors about translated traffic translated both ways),
//!   stateful security groups (per-port conntrack in an LRU hash, replies allowed, INVALID
//!   dropped, entries idle past a per-protocol timeout ignored), per-port counters with drop
//!   reasons kept in the per-CPU `ports` map itself (the port lookup finds them: counting
//!   costs no lookup), per-rule counters of admitted connections.
//! - [`datapath`]: loads an object (maps optionally pinned on bpffs and reused), attaches
//!   it (tcx links pinned and re-taken after a restart, XDP), fills its maps from typed specs
//!   (ports, router interfaces and gateways, routes, floating IPs, security-group rules;
//!   removing a rule cuts the connections it admitted), reads counters, removes expired
//!   connections and SNAT translations ([`datapath::Datapath::expire`]), runs test-runs.
//! - [`api`]: the control plane: Neutron resources (networks, subnets, ports, routers with
//!   interfaces and gateways, security groups and rules, floating IPs), persisted
//!   atomically, synchronised into the maps; served over HTTP on a Unix socket with
//!   `/metrics` by the `netdp` binary (`src/main.rs`).
//! - [`dhcp`]: the DHCP slow path: the switch punts ports' DHCP requests into a pinned BPF
//!   ring buffer (a full ring drops and counts them, `dhcp_ring_full`); a thread answers
//!   each from the port's lease (fixed IP, mask, gateway, DNS, MTU, lease time), built with
//!   smoltcp's wire types, straight back out of the port's interface.
//! - [`config`]: the daemon's TOML configuration (`etc/netdp.toml` is the commented example).
//! - [`pktgen`]: an XDP packet generator (live-frame test runs) and sink, for benchmarks.
//! - [`guard`]: the ingress guard program (drops runt frames and group source MACs).
//!
//! Threads: the daemon runs one tokio thread serving the API, a 0.5 s re-sync (taps
//! created after their port get programmed) and the conntrack GC (every 10 s), and the DHCP
//! thread; the datapath itself runs in the kernel.

pub mod api;
pub mod config;
pub mod datapath;
pub mod dhcp;
pub mod guard;
pub mod pktgen;
