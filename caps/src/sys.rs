//! The probes: each makes the smallest real use of one capability.
//!
//! Every probe returns `Err(reason)` naming the call that failed and the OS error, so the
//! skip line tells the reader what to fix.

use std::ffi::CStr;
use std::io;
use std::process::Command;

/// Formats the last OS error for the named call.
fn os_err(call: &str) -> String {
    format!("{call}: {}", io::Error::last_os_error())
}

/// Effective uid 0.
pub fn probe_root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(format!("effective uid is {euid}, not 0"))
    }
}

/// `KVM_GET_API_VERSION` ioctl number.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// `KVM_CREATE_VM` ioctl number.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// The only KVM API version Linux has ever shipped.
const KVM_API_VERSION: libc::c_int = 12;

/// Opens `/dev/kvm`, checks the API version and creates (then drops) a VM.
pub fn probe_kvm() -> Result<(), String> {
    let path: &CStr = c"/dev/kvm";
    // SAFETY: `path` is a valid NUL-terminated string; the returned fd is owned below.
    let kvm = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if kvm < 0 {
        return Err(os_err("open /dev/kvm"));
    }
    let _kvm_guard = Fd(kvm);
    // SAFETY: KVM_GET_API_VERSION takes no argument and only reads kernel state.
    let version = unsafe { libc::ioctl(kvm, KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}"
        ));
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1; no memory is passed.
    let vm = unsafe { libc::ioctl(kvm, KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(os_err("KVM_CREATE_VM"));
    }
    drop(Fd(vm));
    Ok(())
}

/// One eBPF instruction, as the kernel lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The leading fields of `union bpf_attr` that `BPF_PROG_LOAD` reads; the rest stays zero.
#[repr(C)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u8; 80],
}

/// `BPF_PROG_LOAD` command.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_SOCKET_FILTER`: the simplest program type.
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// Loads `r0 = 0; exit` as a socket filter and closes it.
pub fn probe_bpf() -> Result<(), String> {
    let insns = [
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0
        BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 0,
        },
        // BPF_JMP | BPF_EXIT
        BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license: &CStr = c"GPL";
    let attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        rest: [0; 80],
    };
    // SAFETY: `attr` is a fully initialised bpf_attr prefix whose pointers (insns, license)
    // outlive the call; the size passed is the size of that struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoadAttr,
            std::mem::size_of::<BpfProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(os_err("bpf(BPF_PROG_LOAD)"));
    }
    drop(Fd(fd as libc::c_int));
    Ok(())
}

/// Enters a fresh network namespace on a throwaway thread, and checks `ip` runs.
pub fn probe_netns() -> Result<(), String> {
    let unshared = std::thread::spawn(|| {
        // SAFETY: unshare only changes this short-lived thread's namespace membership; the
        // namespace is released when the thread exits.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(os_err("unshare(CLONE_NEWNET)"))
        }
    })
    .join()
    .map_err(|_| "netns probe thread panicked".to_string())?;
    unshared?;
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`ip -V` exited with {}", out.status)),
        Err(e) => Err(format!("cannot run `ip` (install iproute2): {e}")),
    }
}

/// Sets up a small io_uring and submits one no-op.
pub fn probe_io_uring() -> Result<(), String> {
    let mut ring = io_uring::IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP entry references no buffers, so nothing must outlive the submission.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "io_uring SQ full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    match ring.completion().next() {
        Some(cqe) if cqe.user_data() == 7 && cqe.result() >= 0 => Ok(()),
        Some(cqe) => Err(format!("io_uring NOP completed with {}", cqe.result())),
        None => Err("io_uring NOP produced no completion".into()),
    }
}

/// Closes the fd on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd was returned to us by the kernel and is closed exactly once here.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_attr_prefix_fits_the_kernel_union() {
        // The kernel accepts any size up to its own union and requires the tail be zero.
        assert_eq!(std::mem::size_of::<BpfProgLoadAttr>(), 128);
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
    }

    #[test]
    fn root_probe_agrees_with_geteuid() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(probe_root().is_ok(), euid == 0);
    }
}
