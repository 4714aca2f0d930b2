//! Namespaces as VMs, joined by veth pairs to a "node" namespace where netdp runs.
//! Every namespace is a `tests::netns::Netns` (deleted with its veths on drop), so nothing
//! outlives a test, even a failing one.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use tests::netns::{Netns, ip};

/// Runs `f` on a thread that has entered the namespace `name`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// Moves the calling thread into the namespace `name` (for good: use a dedicated thread).
pub fn enter(name: &str) {
    let file = File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// The ifindex of `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> u32 {
    let c = CString::new(ifname).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {ifname}");
    i
}

/// A VM: a namespace whose `eth0` is the peer of `tap` in the node namespace.
pub struct Vm {
    /// The VM's namespace.
    pub ns: Netns,
    /// The host-side interface in the node namespace.
    pub tap: String,
    /// Its ifindex there.
    pub ifindex: u32,
}

/// Creates a VM with `mac` and `cidr` on eth0, default route via `gw`.
pub fn vm(node: &Netns, tag: &str, tap: &str, mac: &str, cidr: &str, gw: &str) -> Vm {
    let ns = Netns::new(tag).expect("create vm netns");
    let n = ns.name();
    let nd = node.name();
    ip(&[
        "-n", nd, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", n,
    ])
    .unwrap();
    ip(&["-n", n, "link", "set", "eth0", "address", mac]).unwrap();
    ip(&["-n", n, "addr", "add", cidr, "dev", "eth0"]).unwrap();
    ip(&["-n", n, "link", "set", "lo", "up"]).unwrap();
    ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", n, "route", "add", "default", "via", gw]).unwrap();
    ip(&["-n", nd, "link", "set", tap, "up"]).unwrap();
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    let tap_name = tap.to_string();
    let ifindex = in_netns(nd, move || ifindex(&tap_name));
    Vm {
        ns,
        tap: tap.into(),
        ifindex,
    }
}

/// Whether one ping from `vm` to `dst` gets an answer within a second.
pub fn ping(vm: &Vm, dst: &str) -> bool {
    vm.ns
        .exec(&["ping", "-c", "1", "-W", "1", dst])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Parses "02:00:00:00:00:0a".
pub fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}
