//! Ferrostack's VMM: one KVM virtual machine per process.
//!
//! This crate will hold a Firecracker-class VMM built on the rust-vmm crates: guest
//! memory shared through memfd, one thread per vCPU, the in-kernel irqchip, the x86 Linux
//! boot path (ELF vmlinux, PVH, bzImage), serial console, virtio-mmio block and net
//! devices, and a Firecracker-compatible REST API on a Unix socket.
//!
//! What exists today:
//! - [`vstate`]: a VM (KVM fd plus guest memory) and its vCPUs, with the run loop turned
//!   into typed exits. It already runs real guest code, which the crate's KVM test proves.

pub mod vstate;
