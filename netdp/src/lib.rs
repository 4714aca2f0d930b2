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
//!   answered from the neighbour table, broadcasts flooded to the network (tc), unicast
//!   through the per-network FDB (unknown MACs dropped), routing through router interfaces
//!   (LPM routes, MAC rewrite, TTL-1, IP checksum), stateful security groups (per-port
//!   conntrack in an LRU hash), per-port and per-rule counters with drop reasons.
//! - [`api`]: the control plane: Neutron resources (networks, subnets, ports, routers,
//!   security groups and rules), persisted, synchronised into the maps; served over HTTP on
//!   a Unix socket by the `netdp` binary (`src/main.rs`) with `/metrics`.
//! - [`datapath`]: loads an object (optionally with maps pinned on bpffs and reused),
//!   attaches it (tcx, XDP), and fills its maps from typed specs (ports, router interfaces,
//!   routes, security-group rules); reads counters.
//! - [`guard`]: the ingress guard program (drops runt frames and group source MACs).
//! - [`pktgen`]: an XDP packet generator (live-frame test runs) and sink, for benchmarks.

pub mod api;
pub mod datapath;
pub mod guard;
pub mod pktgen;
