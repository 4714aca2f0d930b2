//! virtio-net on a tap: a guest with its own polling virtio-net driver sends a frame the host
//! captures on the tap, and receives a frame the host sends into the tap.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Vmm, guest, kvm_available};
use serde_json::json;

const ETHERTYPE: u16 = 0x88b5;

/// A tap created for one test, deleted on drop.
struct TapGuard(String);

impl TapGuard {
    fn create() -> TapGuard {
        TapGuard::create_with("fsvm", &[])
    }

    fn create_with(prefix: &str, extra: &[&str]) -> TapGuard {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        let mut add = vec!["tuntap", "add", "dev", &name, "mode", "tap"];
        add.extend_from_slice(extra);
        ip(&add);
        let guard = TapGuard(name.clone());
        // No IPv6 chatter (router solicitations, MLD) towards the guest.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", &name, "up"]);
        guard
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// An AF_PACKET socket on one interface, for one ethertype.
struct PacketSocket {
    fd: i32,
    ifindex: i32,
}

impl PacketSocket {
    fn open(ifname: &str) -> PacketSocket {
        let proto = ETHERTYPE.to_be() as i32;
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let addr = Self::addr(ifindex, [0; 6]);
        // SAFETY: a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        PacketSocket { fd, ifindex }
    }

    fn addr(ifindex: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data for which all-zero bytes are valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETHERTYPE.to_be();
        a.sll_ifindex = ifindex;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&mac);
        a
    }

    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
        None
    }

    fn send(&self, frame: &[u8]) {
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let addr = Self::addr(self.ifindex, dst);
        // SAFETY: `frame` and `addr` are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: closing our own fd once.
        unsafe { libc::close(self.fd) };
    }
}

/// The tap's offload features as `ethtool -k` shows them: (tx-checksumming, tx-tcp-segmentation).
/// The tap's "tx" is what it hands to the guest, so these follow the offloads the VMM set from
/// what the guest's driver acknowledged (GUEST_CSUM, GUEST_TSO4).
fn tap_offloads(tap: &str) -> (bool, bool) {
    let out = Command::new("ethtool").args(["-k", tap]).output().unwrap();
    assert!(out.status.success(), "ethtool -k {tap}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let on = |feature: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(feature))
            .unwrap_or_else(|| panic!("no {feature} in {text}"))
            .trim_start()
            .starts_with("on")
    };
    (on("tx-checksumming:"), on("tx-tcp-segmentation:"))
}

#[test]
fn guest_sends_and_receives_frames_through_a_tap() {
    if !kvm_available() {
        return;
    }
    let tap = TapGuard::create();
    let sock = PacketSocket::open(&tap.0);
    let guest_mac = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
    assert_eq!(tap_offloads(&tap.0), (false, false), "a fresh tap");
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("net")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": tap.0, "guest_mac": "06:00:ac:10:00:02"}],
    }));
    vmm.wait_serial("sent\n", Duration::from_secs(30));
    assert!(
        vmm.serial().contains("mac=06:00:ac:10:00:02\n"),
        "{}",
        vmm.serial()
    );
    // tests/guests/net.rs acknowledges GUEST_CSUM and GUEST_TSO4: the VMM turned the tap's
    // checksum and TCPv4 segmentation offloads on (the vnet header carries their metadata).
    assert_eq!(
        tap_offloads(&tap.0),
        (true, true),
        "offloads after negotiation"
    );

    let frame = sock
        .recv(Duration::from_secs(10))
        .expect("the guest's frame on the tap");
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(&frame[6..12], &guest_mac);
    assert_eq!(&frame[12..14], &ETHERTYPE.to_be_bytes());
    assert!(
        frame[14..].starts_with(b"ferrostack guest says hello"),
        "{frame:?}"
    );

    let mut reply = Vec::new();
    reply.extend_from_slice(&guest_mac);
    reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    reply.extend_from_slice(&ETHERTYPE.to_be_bytes());
    reply.extend_from_slice(b"hello from the host");
    reply.resize(60, 0);
    sock.send(&reply);

    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    assert!(serial.contains("rx_len=60\n"), "{serial}");
    assert!(
        serial.contains("rx_payload=hello from the host\n"),
        "{serial}"
    );
}

#[test]
fn a_multi_queue_interface_carries_frames_on_both_queue_pairs() {
    if !kvm_available() {
        return;
    }
    let tap = TapGuard::create_with("fsmq", &["multi_queue"]);
    let sock = PacketSocket::open(&tap.0);
    let guest_mac = [0x06, 0x00, 0xac, 0x10, 0x00, 0x03];
    let mut vmm = Vmm::from_config(&json!({
        "boot-source": {"kernel_image_path": guest("net_mq")},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 32},
        "network-interfaces": [{
            "iface_id": "eth0", "host_dev_name": tap.0,
            "guest_mac": "06:00:ac:10:00:03", "queue_pairs": 2,
        }],
    }));
    vmm.wait_serial("sent\n", Duration::from_secs(30));
    let serial = vmm.serial();
    assert!(serial.contains("max_pairs=2\n"), "{serial}");
    // This driver acknowledges no offload: the tap keeps them off.
    assert_eq!(
        tap_offloads(&tap.0),
        (false, false),
        "no offloads acknowledged"
    );
    assert!(serial.contains("ctrl_ack=0\n"), "{serial}");

    let mut payloads = Vec::new();
    for _ in 0..2 {
        let frame = sock
            .recv(Duration::from_secs(10))
            .expect("a guest frame on the tap");
        assert_eq!(&frame[6..12], &guest_mac);
        let end = frame[14..]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(frame.len() - 14);
        payloads.push(String::from_utf8_lossy(&frame[14..14 + end]).into_owned());
    }
    payloads.sort();
    assert_eq!(payloads, ["from queue pair 0", "from queue pair 1"]);

    let mut reply = Vec::new();
    reply.extend_from_slice(&guest_mac);
    reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    reply.extend_from_slice(&ETHERTYPE.to_be_bytes());
    reply.extend_from_slice(b"hello to some queue");
    reply.resize(60, 0);
    sock.send(&reply);
    let status = vmm.wait_exit(Duration::from_secs(30));
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    assert!(
        serial.contains("rx_payload=hello to some queue\n"),
        "{serial}"
    );
}

/// `PUT /network-interfaces` then, on the running VM, `PATCH /network-interfaces` with new rate
/// limiters: 204, `GET /vm/config` shows them, and the new receive limiter holds a frame back
/// (one frame per 2 s: the first passes on the full bucket, the second waits for a refill).
#[test]
fn a_running_interface_gets_new_rate_limiters_through_patch_and_they_throttle() {
    if !kvm_available() {
        return;
    }
    let tap = TapGuard::create_with("fspa", &[]);
    let sock = PacketSocket::open(&tap.0);
    let guest_mac = [0x06, 0x00, 0xac, 0x10, 0x00, 0x04];
    let mut vmm = Vmm::with_api();
    let call = |vmm: &Vmm, method: &str, path: &str, body: serde_json::Value| {
        let (status, resp) = vmm.api(method, path, Some(&body.to_string()));
        (status, resp)
    };
    let put = |vmm: &Vmm, path: &str, body: serde_json::Value| {
        let (status, resp) = call(vmm, "PUT", path, body);
        assert_eq!(status, 204, "PUT {path}: {resp}");
    };
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": guest("net")}),
    );
    put(
        &vmm,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": tap.0, "guest_mac": "06:00:ac:10:00:04"}),
    );
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    vmm.wait_serial("sent\n", Duration::from_secs(30));
    sock.recv(Duration::from_secs(10))
        .expect("the guest's frame on the tap");

    let limiters = json!({
        "iface_id": "eth0",
        "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 2000}},
        "tx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 1000}},
    });
    let (status, resp) = call(&vmm, "PATCH", "/network-interfaces/eth0", limiters);
    assert_eq!(status, 204, "PATCH: {resp}");
    let (status, cfg) = vmm.api("GET", "/vm/config", None);
    assert_eq!(status, 200, "{cfg}");
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let iface = &cfg["network-interfaces"][0];
    assert_eq!(iface["iface_id"], "eth0");
    assert_eq!(iface["rx_rate_limiter"]["ops"]["refill_time"], 2000);
    assert_eq!(
        iface["tx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
        "{cfg}"
    );
    // Firecracker's PATCH takes only the id and the limiters; the MAC is fixed once set.
    let (status, resp) = vmm.api(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "guest_mac": "06:00:00:00:00:01"}"#),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp.contains("fault_message") && resp.contains("unknown field"),
        "{resp}"
    );
    let (status, resp) = vmm.api(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth1"}"#),
    );
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("fault_message"), "{resp}");

    // A frame the guest ignores takes the one token; the reply after it waits for the refill.
    let frame = |ethertype: u16, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&guest_mac);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f.resize(60, 0);
        f
    };
    let sent = Instant::now();
    sock.send(&frame(ETHERTYPE + 1, b"ignored"));
    sock.send(&frame(ETHERTYPE, b"after the refill"));
    let status = vmm.wait_exit(Duration::from_secs(30));
    let waited = sent.elapsed();
    let serial = vmm.serial();
    assert_eq!(status.code(), Some(0), "{serial}\n{}", vmm.log());
    assert!(serial.contains("rx_payload=after the refill\n"), "{serial}");
    assert!(
        waited >= Duration::from_millis(1500),
        "the reply arrived {waited:?} after the first frame: the limiter did not hold it"
    );
}
