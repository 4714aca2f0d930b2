//! Ferrostack's VMM: one KVM virtual machine per process, Firecracker-compatible.
//!
//! The parts:
//! - [`vstate`]: the VM (KVM fd, memfd-backed guest memory, in-kernel irqchip and PIT) and
//!   its vCPUs (CPUID filtered from `KVM_GET_SUPPORTED_CPUID` through a template, MSRs, FPU,
//!   LAPIC LINTs, long-mode or PVH entry registers).
//! - [`arch`]: the x86-64 layout and boot path: ELF vmlinux or bzImage through the 64-bit
//!   Linux boot protocol (zero page with e820), or PVH (`hvm_start_info`) with `--pvh`;
//!   initrd, command line, MP table, identity page tables.
//! - [`devices`]: the port-I/O and MMIO buses; the 8250 UART (output to stdout or a file,
//!   input from stdin), the i8042 (guest reset, Ctrl+Alt+Del), the boot-time device; token
//!   bucket rate limiters; virtio-mmio with virtio-blk on a file (positioned I/O or io_uring),
//!   vhost-user-blk (another process serves the queues), and virtio-net on a tap
//!   (multi-queue; checksum and TSO offloads negotiated onto the tap). Queue notifications
//!   arrive through ioeventfds and interrupts leave through irqfds.
//! - [`machine`]: a running VM: one thread per vCPU (1 to 32) routing exits to the buses
//!   without locks on the hot path, pause, resume, stop, runtime device updates.
//! - [`config`]: Firecracker's configuration objects (`boot-source`, `machine-config`,
//!   `drives`, `network-interfaces`, `logger`, `metrics`), shared by `--config-file` and the
//!   API; `etc/vm-config.json` is a complete example.
//! - [`api`]: the HTTP/1.1 API on a Unix socket; it parses requests into
//!   [`api::ApiRequest`]s and hands them to the VMM thread ([`controller`]) over a channel.
//! - [`metrics`]: per-vCPU (exits by kind, CPU time), per-drive and per-interface counters
//!   plus process-wide ones, served as Prometheus text (`GET /metrics`, our extension) and
//!   flushed as Firecracker-style JSON totals (`FlushMetrics`).
//! - [`testkit`]: builds the freestanding test guests in `tests/guests/` with the stable
//!   toolchain (ELF with a PVH note, or bzImage).
//!
//! Threads: the main (VMM) thread runs [`controller::Controller`]; one thread accepts on the
//! API socket (plus one per connection); one thread per vCPU; per virtio device served here
//! one worker serving its ioeventfd and one re-serving queues after rate-limit waits (plus
//! one polling the tap for virtio-net; none for vhost-user-blk, whose backend serves the
//! queues); one reading stdin for the serial console. vCPU threads and device workers
//! ([`devices::workers`]) belong to the [`machine::Machine`]: dropping it stops and joins them
//! all, so an embedded VMM leaves no thread behind.
//!
//! Exit codes of the `vmm` binary are in [`controller::ExitCode`]: 0 when the guest resets
//! (i8042), 1 when the VMM fails, 2 when the guest crashes (triple fault, failed entry,
//! unemulated instruction), 152 for a bad `--config-file`, 153 for bad arguments.

pub mod api;
pub mod arch;
pub mod config;
pub mod controller;
pub mod devices;
pub mod machine;
pub mod metrics;
pub mod testkit;
pub mod vstate;
