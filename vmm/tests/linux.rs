//! Booting a real Linux kernel. These machines' KVM is nested and software-assisted (no VMX or
//! SVM flag in /proc/cpuinfo) and cannot run an unmodified Linux (FINDINGS.md), so on them the
//! test says why and skips, whatever `CI` says; on hardware KVM with a kernel at
//! `$FERROSTACK_LINUX_KERNEL` (or `/boot/vmlinuz-*`) it boots it and waits for the banner.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Vmm, kvm_available};
use serde_json::json;

fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("FERROSTACK_LINUX_KERNEL") {
        return Some(k.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn linux_boots_to_its_banner_when_hardware_kvm_and_a_kernel_are_present() {
    if !hardware_kvm() {
        eprintln!(
            "SKIP: host KVM is nested and software-assisted (no vmx/svm): it cannot run Linux"
        );
        return;
    }
    let Some(kernel) = kernel() else {
        eprintln!("SKIP: no Linux kernel (set FERROSTACK_LINUX_KERNEL or install one in /boot)");
        return;
    };
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off nomodule",
        },
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
    }));
    vmm.wait_serial("Linux version", Duration::from_secs(60));
}
