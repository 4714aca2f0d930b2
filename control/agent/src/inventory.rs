//! The node's inventory, read from the machine: vCPUs, memory and the disk that holds the
//! volumes, in Placement's resource classes (`VCPU`, `MEMORY_MB`, `DISK_GB`).

use std::path::Path;

use serde::Serialize;

/// What the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Online CPUs.
    pub vcpus: u32,
    /// Physical memory in MiB.
    pub memory_mib: u64,
    /// Size of the volume filesystem in bytes.
    pub disk_bytes: u64,
    /// Free bytes on it.
    pub disk_free_bytes: u64,
}

/// Reads the inventory; `disk_path` is on the filesystem the volumes live on.
pub fn read(disk_path: &Path) -> Inventory {
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_kib(&m))
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    // The volume directory may not exist yet: measure its nearest existing ancestor.
    let mut p = disk_path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    let (disk_bytes, disk_free_bytes) = rustix::fs::statvfs(p)
        .map(|s| (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
        .unwrap_or((0, 0));
    Inventory {
        vcpus,
        memory_mib,
        disk_bytes,
        disk_free_bytes,
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_has_cpus_memory_and_disk() {
        let inv = read(Path::new("/tmp/does/not/exist/yet"));
        assert!(inv.vcpus >= 1);
        assert!(inv.memory_mib >= 256, "{inv:?}");
        assert!(inv.disk_bytes > 0 && inv.disk_free_bytes <= inv.disk_bytes);
        assert_eq!(
            mem_total_kib("MemFree: 1 kB\nMemTotal:  2048 kB\n"),
            Some(2048)
        );
    }
}
