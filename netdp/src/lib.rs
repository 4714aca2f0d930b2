//! netdp: Ferrostack's eBPF virtual switch.
//!
//! This crate will hold the Neutron of a node: C eBPF programs in `bpf/` (built by
//! `build.rs` with clang) attached on tc for VM ports and on XDP for the uplink, loaded and
//! managed with aya 0.14, doing L2 forwarding, L3 routing, stateful security groups and
//! floating-IP NAT with map lookups only, plus a userspace slow path (ARP, DHCP) and an
//! HTTP API with Neutron's resource names.
//!
//! What exists today:
//! - [`guard`]: the ingress guard program (drops runt frames and group source MACs) with
//!   its per-reason counters, loaded from the clang-built object.

pub mod guard;
