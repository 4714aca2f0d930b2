//! Ferrostack's VMM: one KVM virtual machine per process, Firecracker-compatible.
//!
//! The parts:
//! - [`vstate`]: the VM (KVM fd, memfd-backed guest memory, in-kernel irqchip and PIT) and
//!   its vCPUs (CPUID, MSRs, FPU, long-mode registers).
//! - [`arch`]: the x86-64 layout and boot path: ELF vmlinux or bzImage, initrd, command line,
//!   zero page with e820, MP table, identity page tables.
//! - [`devices`]: the port-I/O and MMIO buses, the 8250 UART, the i8042 (reset and
//!   Ctrl+Alt+Del), the boot-time device, virtio-mmio devices.
//! - [`machine`]: a running VM: one thread per vCPU routing exits to the buses, pause,
//!   resume and stop.
//! - [`config`]: Firecracker's configuration objects (`boot-source`, `machine-config`,
//!   `drives`, ...), shared by `--config-file` and the API.
//! - [`api`]: the HTTP/1.1 API on a Unix socket; it parses requests into
//!   [`api::ApiRequest`]s and hands them to the VMM thread ([`controller`]) over a channel.
//! - [`metrics`]: process-wide counters, flushed as JSON.
//! - [`testkit`]: builds the freestanding test guests in `tests/guests/` with the stable
//!   toolchain.
//!
//! Threads: the main (VMM) thread runs [`controller::Controller`]; one thread serves the
//! API socket; one thread per vCPU.
//!
//! Exit codes of the `vmm` binary are in [`controller::ExitCode`].

pub mod api;
pub mod arch;
pub mod config;
pub mod controller;
pub mod devices;
pub mod machine;
pub mod metrics;
pub mod testkit;
pub mod vstate;
