//! The forwarding datapath: the clang-built tc and XDP objects, their maps, and typed
//! operations that the control plane uses to fill them.
//!
//! One [`Datapath`] is one loaded object (tc or XDP build of `bpf/datapath.h`). With a pin
//! directory its maps live on bpffs: a second load with the same directory (a restarted
//! daemon, or the other hook) reuses them, so state and traffic survive restarts.

pub mod abi;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{
    LinkOrder, Program, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use abi::{
    AddrKey, CtKey, CtVal, DIR_EGRESS, DIR_INGRESS, FdbEntry, L2Key, NET_MAX_PORTS, Neigh,
    NeighKey, Network, PortStats, Route, RouteKey, RuleStats, SG_ANY, SG_MAX_RULES, SgKey, SgRule,
    SgRules,
};

static TC_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch_tc.o"));
static XDP_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch_xdp.o"));
static TC_UNCOUNTED: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch_tc_uncounted.o"));
static XDP_UNCOUNTED: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switch_xdp_uncounted.o"));

/// Every map in the object, for pinning.
pub const MAPS: &[&str] = &[
    "ports",
    "port_addrs",
    "fdb",
    "neighbors",
    "routes",
    "networks",
    "fip_dnat",
    "fip_snat",
    "router_snat",
    "snat_out",
    "snat_in",
    "sg_rules",
    "conntrack",
    "rule_stats",
    "dhcp_punt",
];

/// Pinned maps whose entries are live state the control plane cannot write again
/// (tracked connections, gateway SNAT translations): when an upgrade changes their layout,
/// their entries are copied into the new maps instead of being lost.
pub const MIGRATED: &[&str] = &["conntrack", "snat_out", "snat_in"];

/// Raw map element calls, for maps whose key and value sizes are known only at run time
/// (an older build's).
mod sys {
    use std::os::fd::RawFd;

    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_int, fd: RawFd, key: *const u8, value: *const u8) -> bool {
        let attr = ElemAttr {
            map_fd: fd as u32,
            pad: 0,
            key: key as u64,
            value: value as u64,
            flags: 0, // BPF_ANY
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for the element commands; the key and
        // value buffers it points to are sized by the caller to the map's key and value
        // sizes and live across the call.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>() as u32,
            ) == 0
        }
    }

    /// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first with `None`) into `next`.
    pub fn next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> bool {
        call(
            4,
            fd,
            key.map_or(std::ptr::null(), <[u8]>::as_ptr),
            next.as_mut_ptr(),
        )
    }

    /// BPF_MAP_LOOKUP_ELEM into `value`.
    pub fn lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> bool {
        call(1, fd, key.as_ptr(), value.as_mut_ptr())
    }

    /// BPF_MAP_UPDATE_ELEM (create or replace).
    pub fn update(fd: RawFd, key: &[u8], value: &[u8]) -> bool {
        call(2, fd, key.as_ptr(), value.as_ptr())
    }
}

/// Where the daemon pins its maps and links by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferrostack/netdp";

/// Errors from loading, attaching or updating the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object failed to load (the verifier log is in the cause).
    #[error("load datapath object")]
    Load(#[source] aya::EbpfError),
    /// A program could not be found, loaded, attached or test-run.
    #[error("program {0}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    /// A map could not be opened or updated.
    #[error("map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    /// The pin directory could not be created.
    #[error("create pin directory {0}")]
    PinDir(PathBuf, #[source] std::io::Error),
    /// A link could not be pinned or reopened.
    #[error("pin link {0}")]
    PinLink(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A network already floods to as many ports as it can hold.
    #[error("network {0} has more than {NET_MAX_PORTS} ports")]
    NetworkFull(u32),
    /// A port has more rules in one direction and protocol than a slot holds.
    #[error("port {0} has more than {SG_MAX_RULES} rules for one direction and protocol")]
    TooManyRules(u32),
}

/// Which hook an object is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc (tcx) ingress of VM-port host interfaces: `netdp_tc`.
    Tc,
    /// XDP: `netdp_xdp`.
    Xdp,
}

impl Hook {
    fn program_name(self) -> &'static str {
        match self {
            Hook::Tc => "netdp_tc",
            Hook::Xdp => "netdp_xdp",
        }
    }
}

/// Why the datapath dropped a frame (`enum drop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DropReason {
    /// Truncated or malformed headers.
    Malformed = 0,
    /// Source MAC not the port's (or a group address).
    SpoofMac = 1,
    /// Source IPv4 not one of the port's addresses.
    SpoofIp = 2,
    /// ARP sender not one of the port's addresses.
    SpoofArp = 3,
    /// An ethertype the port may not send (IPv6 and others under port security).
    Ethertype = 4,
    /// Unicast to a MAC the network does not know.
    UnknownDestination = 5,
    /// The port's network has no flood list.
    NoNetwork = 6,
    /// No security-group rule of the source port allows the flow out.
    SecurityGroupEgress = 7,
    /// No security-group rule of the destination port allows the flow in.
    SecurityGroupIngress = 8,
    /// Not part of a tracked connection and cannot start one (a stray TCP ACK).
    ConntrackInvalid = 9,
    /// The router has no route to the destination (a net-unreachable error goes back).
    NoRoute = 10,
    /// The next hop's MAC or port is unknown (a host-unreachable error goes back).
    NoNeighbor = 11,
    /// TTL would reach zero (a time-exceeded error goes back).
    Ttl = 12,
    /// A non-first IPv4 fragment.
    Fragment = 13,
    /// Gateway SNAT found no free port towards the remote end.
    NatExhausted = 14,
    /// A DHCP request found the slow path's ring buffer full (the client retries).
    DhcpRingFull = 15,
}

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; abi::DROP_NREASONS] = [
        DropReason::Malformed,
        DropReason::SpoofMac,
        DropReason::SpoofIp,
        DropReason::SpoofArp,
        DropReason::Ethertype,
        DropReason::UnknownDestination,
        DropReason::NoNetwork,
        DropReason::SecurityGroupEgress,
        DropReason::SecurityGroupIngress,
        DropReason::ConntrackInvalid,
        DropReason::NoRoute,
        DropReason::NoNeighbor,
        DropReason::Ttl,
        DropReason::Fragment,
        DropReason::NatExhausted,
        DropReason::DhcpRingFull,
    ];

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::SpoofMac => "spoof_mac",
            DropReason::SpoofIp => "spoof_ip",
            DropReason::SpoofArp => "spoof_arp",
            DropReason::Ethertype => "ethertype",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::NoNetwork => "no_network",
            DropReason::SecurityGroupEgress => "security_group_egress",
            DropReason::SecurityGroupIngress => "security_group_ingress",
            DropReason::ConntrackInvalid => "conntrack_invalid",
            DropReason::NoRoute => "no_route",
            DropReason::NoNeighbor => "no_neighbor",
            DropReason::Ttl => "ttl",
            DropReason::Fragment => "fragment",
            DropReason::NatExhausted => "nat_exhausted",
            DropReason::DhcpRingFull => "dhcp_ring_full",
        }
    }
}

/// Summed per-port counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters(pub PortStats);

impl PortCounters {
    /// Frames dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.0.drops[reason as usize]
    }

    /// Frames dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.0.drops.iter().sum()
    }
}

/// A VM port as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// ifindex of the host-side interface.
    pub ifindex: u32,
    /// The network.
    pub net_id: u32,
    /// The port's MAC.
    pub mac: [u8; 6],
    /// The port's fixed IPs.
    pub ips: Vec<Ipv4Addr>,
    /// Anti-spoofing and security groups on.
    pub port_security: bool,
    /// Neutron's allowed address pairs: extra (MAC, IP) the port may send from.
    pub allowed_address_pairs: Vec<([u8; 6], Ipv4Addr)>,
    /// The slow path answers this port's DHCP ([`crate::dhcp`]): its DHCP requests are
    /// handed to it instead of being switched.
    pub dhcp: bool,
    /// The interface is a veth (see [`has_peer`]): on tc, frames for the port are
    /// delivered straight into its peer's ingress (`bpf_redirect_peer`). Must be false for
    /// taps, which have no peer.
    pub peer: bool,
}

/// Whether interface `ifname` (in the caller's namespace) is a veth, whose peer
/// `bpf_redirect_peer` can deliver to. Taps and everything else: false.
pub fn has_peer(ifname: &str) -> bool {
    // ETHTOOL_GDRVINFO through SIOCETHTOOL names the driver.
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return false;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a plain datagram socket, closed below; checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `ifr` points at `info`, both alive and large enough for ETHTOOL_GDRVINFO.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    rc == 0 && info.driver.starts_with(b"veth\0")
}

/// Traffic direction of a security-group rule, as Neutron names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Towards the VM.
    Ingress,
    /// From the VM.
    Egress,
}

/// One allow rule of a port's security groups, already resolved (remote groups expanded to
/// prefixes by the control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    /// Non-zero id, for counters and cutting connections when the rule goes.
    pub id: u32,
    /// Direction.
    pub direction: Direction,
    /// IP protocol; `None` for any.
    pub protocol: Option<u8>,
    /// TCP/UDP port range, or ICMP (type, code); `None` for any.
    pub port_range: Option<(u16, u16)>,
    /// Remote prefix; `None` for any.
    pub remote: Option<(Ipv4Addr, u8)>,
}

/// Idle timeouts of tracked connections and gateway SNAT translations, by protocol and
/// state; the defaults are Linux conntrack's. The program checks them on every lookup (an
/// entry idle past its timeout admits nothing: the next packet must open a new
/// connection), and [`Datapath::expire`] removes such entries from the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP once the other side answered, before any FIN or RST (5 days).
    pub tcp_established: Duration,
    /// TCP not answered yet, or closing after a FIN (120 s).
    pub tcp_transient: Duration,
    /// TCP after a RST (10 s).
    pub tcp_close: Duration,
    /// UDP not answered (30 s).
    pub udp: Duration,
    /// UDP answered (120 s).
    pub udp_stream: Duration,
    /// ICMP echo (30 s).
    pub icmp: Duration,
    /// Any other protocol (600 s).
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(432_000),
            tcp_transient: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// How long a connection of `proto` may stay idle, once `replied` and with the
    /// `CT_TCP_*` flags `tcp` seen (the program's `ct_timeout`).
    pub fn of(&self, proto: u8, replied: bool, tcp: u8) -> Duration {
        match proto {
            6 if tcp & abi::CT_TCP_RST != 0 => self.tcp_close,
            6 if tcp & abi::CT_TCP_FIN != 0 => self.tcp_transient,
            6 if replied => self.tcp_established,
            6 => self.tcp_transient,
            17 if replied => self.udp_stream,
            17 => self.udp,
            1 => self.icmp,
            _ => self.other,
        }
    }

    /// The program's globals and their values in ns.
    fn globals(&self) -> [(&'static str, u64); 7] {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        [
            ("ct_tcp_established", ns(self.tcp_established)),
            ("ct_tcp_transient", ns(self.tcp_transient)),
            ("ct_tcp_close", ns(self.tcp_close)),
            ("ct_udp", ns(self.udp)),
            ("ct_udp_stream", ns(self.udp_stream)),
            ("ct_icmp", ns(self.icmp)),
            ("ct_other", ns(self.other)),
        ]
    }
}

/// Entries [`Datapath::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Tracked connections (one per port that tracked them).
    pub connections: usize,
    /// Gateway SNAT translations.
    pub translations: usize,
}

/// The conntrack GC's own handle on the conntrack and SNAT maps ([`Datapath::gc`]).
pub struct Gc {
    conntrack: aya::maps::Map,
    snat_in: aya::maps::Map,
    snat_out: aya::maps::Map,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Gc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gc")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Gc {
    /// Removes tracked connections and gateway SNAT translations idle past their timeouts
    /// (the program already ignores them, this gives their room back); SNAT outbound
    /// halves go with their inbound halves. Walks a snapshot of the keys, then looks at
    /// each stale one again before removing it: the program may have renewed it.
    pub fn expire(&mut self) -> Result<Expired, DatapathError> {
        let now = monotonic_coarse_ns();
        let t = self.timeouts;
        let stale = move |last: u64, proto: u8, replied: u8, tcp: u8| {
            now > last && u128::from(now - last) > t.of(proto, replied != 0, tcp).as_nanos()
        };
        let expired = Expired {
            connections: sweep::<CtKey, CtVal>(&mut self.conntrack, "conntrack", |k, v| {
                stale(v.last_seen, k.proto, v.replied, v.tcp)
            })?,
            translations: sweep::<abi::SnatKey, abi::SnatVal>(
                &mut self.snat_in,
                "snat_in",
                |k, v| stale(v.last_seen, k.proto, v.replied, v.tcp),
            )?,
        };
        let live: HashSet<abi::SnatKey> = {
            let inbound: BpfHashMap<&MapData, abi::SnatKey, abi::SnatVal> =
                BpfHashMap::try_from(&self.snat_in)
                    .map_err(|e| DatapathError::Map("snat_in", e))?;
            inbound
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| abi::SnatKey {
                    local_ip: v.ip,
                    local_port: v.port,
                    ..k
                })
                .collect()
        };
        let mut outbound: BpfHashMap<&mut MapData, abi::SnatKey, abi::SnatVal> =
            BpfHashMap::try_from(&mut self.snat_out)
                .map_err(|e| DatapathError::Map("snat_out", e))?;
        let orphans: Vec<abi::SnatKey> = outbound
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| v.last_seen < now && !live.contains(k))
            .map(|(k, _)| k)
            .collect();
        for k in orphans {
            let _ = outbound.remove(&k);
        }
        Ok(expired)
    }
}

/// Removes the entries of a hash map that `stale` picks, checking each one again just before
/// removing it (the program may have renewed it since the walk); answers how many went.
fn sweep<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::Map,
    name: &'static str,
    stale: impl Fn(&K, &V) -> bool,
) -> Result<usize, DatapathError> {
    let mut map: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
    let old: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| stale(k, v))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in old {
        if map.get(&k, 0).is_ok_and(|v| stale(&k, &v)) && map.remove(&k).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// `bpf_ktime_get_coarse_ns`'s clock, seen from userspace.
fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC_COARSE always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's view of one of our maps (the kinds the object declares).
fn map_info(map: &aya::maps::Map) -> Option<aya::maps::MapInfo> {
    use aya::maps::Map;
    match map {
        Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m) => m.info().ok(),
        _ => None,
    }
}

fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn mask_be(len: u8) -> u32 {
    let host = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from_ne_bytes(host.to_be_bytes())
}

/// A loaded datapath object with its maps.
pub struct Datapath {
    ebpf: Ebpf,
    hook: Hook,
    pin_dir: Option<PathBuf>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("hook", &self.hook)
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

impl Datapath {
    /// Loads a fresh instance with private maps.
    pub fn load(hook: Hook) -> Result<Self, DatapathError> {
        Self::load_configured(hook, None, Timeouts::default())
    }

    /// Loads an instance with its maps pinned in `dir` (if given, as
    /// [`Self::load_pinned`]) and the given connection timeouts.
    pub fn load_configured(
        hook: Hook,
        dir: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Self, DatapathError> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| DatapathError::PinDir(dir.into(), e))?;
            let old = Self::drop_incompatible_pins(hook, dir)?;
            let object = match hook {
                Hook::Tc => TC_OBJECT,
                Hook::Xdp => XDP_OBJECT,
            };
            let dp = Self::load_object(hook, object, Some(dir), timeouts)?;
            for (name, data, info) in old {
                dp.migrate(name, &data, &info);
            }
            return Ok(dp);
        }
        let object = match hook {
            Hook::Tc => TC_OBJECT,
            Hook::Xdp => XDP_OBJECT,
        };
        Self::load_object(hook, object, dir, timeouts)
    }

    /// Loads a fresh instance of the same program built with its counters compiled out
    /// (`NETDP_NO_COUNTERS`). For `benches/` only, to measure what counting costs.
    pub fn load_uncounted(hook: Hook) -> Result<Self, DatapathError> {
        let object = match hook {
            Hook::Tc => TC_UNCOUNTED,
            Hook::Xdp => XDP_UNCOUNTED,
        };
        Self::load_object(hook, object, None, Timeouts::default())
    }

    /// Loads an instance whose maps are pinned in `dir`, reusing maps already pinned there.
    pub fn load_pinned(hook: Hook, dir: &Path) -> Result<Self, DatapathError> {
        Self::load_configured(hook, Some(dir), Timeouts::default())
    }

    /// Unpins pinned maps whose type, key or value size or capacity differ from this
    /// build's (left by an older build): the program could not load against them, so it
    /// gets new ones. Most maps are configuration the control plane writes again from its
    /// state at start-up (ports, FDB, routes, rules...); their counters (ports', rules')
    /// start over. The live state it cannot rebuild, tracked connections and gateway SNAT
    /// translations ([`MIGRATED`]), is returned still open, for [`Self::migrate`] to copy
    /// into the new maps.
    #[allow(clippy::type_complexity)]
    fn drop_incompatible_pins(
        hook: Hook,
        dir: &Path,
    ) -> Result<Vec<(&'static str, MapData, aya::maps::MapInfo)>, DatapathError> {
        let object = match hook {
            Hook::Tc => TC_OBJECT,
            Hook::Xdp => XDP_OBJECT,
        };
        let mut migrate = Vec::new();
        if !MAPS.iter().any(|n| dir.join(n).exists()) {
            return Ok(migrate); // nothing pinned yet
        }
        // Maps only: the program is not loaded (nor verified) here.
        let fresh = EbpfLoader::new()
            .load(object)
            .map_err(DatapathError::Load)?;
        for name in MAPS {
            let path = dir.join(name);
            let Ok(old) = aya::maps::MapInfo::from_pin(&path) else {
                continue;
            };
            let Some(new) = fresh.map(name).and_then(map_info) else {
                continue;
            };
            let same = old.key_size() == new.key_size()
                && old.value_size() == new.value_size()
                && old.max_entries() == new.max_entries()
                && old.map_type().ok() == new.map_type().ok();
            if !same {
                if MIGRATED.contains(name) {
                    match MapData::from_pin(&path) {
                        Ok(data) => {
                            tracing::warn!(
                                map = name,
                                "pinned map has another layout (an older build): replaced, its entries migrated"
                            );
                            migrate.push((*name, data, old));
                        }
                        Err(e) => tracing::warn!(
                            map = name,
                            error = %e,
                            "pinned map has another layout and cannot be opened: replaced, its entries are lost"
                        ),
                    }
                } else {
                    tracing::warn!(
                        map = name,
                        "pinned map has another layout (an older build): replaced; the control plane writes it again"
                    );
                }
                std::fs::remove_file(&path).map_err(|e| DatapathError::PinDir(path, e))?;
            }
        }
        Ok(migrate)
    }

    /// Copies the entries of `old` (an older build's `name` map, [`MIGRATED`]) into this
    /// instance's: keys as they are (a map whose key size changed is not migrated), values
    /// cut or zero-extended to the new size. Gateway SNAT values from before idle timeouts
    /// (8 bytes: no state, no clock) become answered translations idle since now, so a
    /// live translation keeps its timeout. Entries the old program creates between this
    /// copy and the switch of the links to the new program are not carried over. Returns
    /// the entries copied.
    fn migrate(&self, name: &'static str, old: &MapData, info: &aya::maps::MapInfo) -> usize {
        use std::os::fd::{AsFd, AsRawFd};
        let Some(new) = self.ebpf.map(name).and_then(map_info) else {
            return 0;
        };
        let Some(new_data) = self.ebpf.map(name).and_then(|m| match m {
            aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => Some(d),
            _ => None,
        }) else {
            return 0;
        };
        let per_cpu = matches!(
            info.map_type(),
            Ok(aya::maps::MapType::PerCpuHash
                | aya::maps::MapType::LruPerCpuHash
                | aya::maps::MapType::PerCpuArray)
        );
        if info.key_size() != new.key_size() || per_cpu {
            tracing::warn!(map = name, "older map's keys differ: its entries are lost");
            return 0;
        }
        let (old_fd, new_fd) = (
            old.fd().as_fd().as_raw_fd(),
            new_data.fd().as_fd().as_raw_fd(),
        );
        let (ks, old_vs, new_vs) = (
            info.key_size() as usize,
            info.value_size() as usize,
            new.value_size() as usize,
        );
        let now = monotonic_coarse_ns();
        let mut key = vec![0u8; ks];
        let mut next = vec![0u8; ks];
        let mut value = vec![0u8; old_vs.max(new_vs)];
        let mut first = true;
        let mut copied = 0;
        while sys::next_key(old_fd, (!first).then_some(&key[..]), &mut next) {
            first = false;
            std::mem::swap(&mut key, &mut next);
            value.fill(0);
            if !sys::lookup(old_fd, &key, &mut value[..old_vs]) {
                continue; // gone meanwhile
            }
            if name.starts_with("snat_") && old_vs < 16 && new_vs >= 16 {
                value[6] = 1; // replied
                value[7] = 0; // no TCP teardown seen
                value[8..16].copy_from_slice(&now.to_ne_bytes());
            }
            if sys::update(new_fd, &key, &value[..new_vs]) {
                copied += 1;
            }
        }
        tracing::info!(
            map = name,
            entries = copied,
            "migrated from an older layout"
        );
        copied
    }

    fn load_object(
        hook: Hook,
        object: &[u8],
        dir: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = dir {
            for name in MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let globals = timeouts.globals();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader.load(object).map_err(DatapathError::Load)?;
        let name = hook.program_name();
        let prog = ebpf.program_mut(name).ok_or(DatapathError::Program(
            name,
            aya::programs::ProgramError::UnexpectedProgramType,
        ))?;
        match (hook, prog) {
            (Hook::Tc, Program::SchedClassifier(p)) => p.load(),
            (Hook::Xdp, Program::Xdp(p)) => p.load(),
            _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
        }
        .map_err(|e| DatapathError::Program(name, e))?;
        tracing::debug!(?hook, pinned = dir.is_some(), "datapath loaded");
        Ok(Datapath {
            ebpf,
            hook,
            pin_dir: dir.map(Path::to_path_buf),
            timeouts,
        })
    }

    /// The ring buffer the datapath punts DHCP requests of DHCP ports into (records of
    /// [`abi::DHCP_PUNT_HEADER`] bytes: ifindex and length, then the frame), opened on a
    /// duplicate of the map's descriptor: it stays usable after this instance is dropped,
    /// and with pinned maps a restarted daemon reads the same ring.
    pub fn dhcp_ring(&self) -> Result<aya::maps::RingBuf<MapData>, DatapathError> {
        const NAME: &str = "dhcp_punt";
        let map = self.ebpf.map(NAME).ok_or(DatapathError::Map(
            NAME,
            aya::maps::MapError::InvalidName { name: NAME.into() },
        ))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(DatapathError::Map(
                NAME,
                aya::maps::MapError::InvalidName { name: NAME.into() },
            ));
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|e| {
                DatapathError::Map(
                    NAME,
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error: e,
                    }),
                )
            })?;
        let data = MapData::from_fd(fd).map_err(|e| DatapathError::Map(NAME, e))?;
        aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data))
            .map_err(|e| DatapathError::Map(NAME, e))
    }

    /// The hook this instance was built for.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Runs the program once on `frame` entering from `in_port` with `BPF_PROG_TEST_RUN`;
    /// returns the verdict and the frame as the program left it. XDP test runs need
    /// `in_port` to be a real interface of the caller's namespace (1, loopback, always is).
    pub fn test_run(&self, frame: &[u8], in_port: u32) -> Result<(u32, Vec<u8>), DatapathError> {
        let name = self.hook.program_name();
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx = [0u8; 48];
        // __sk_buff.ingress_ifindex is at offset 36; xdp_md.ingress_ifindex at 12.
        let off = match self.hook {
            Hook::Tc => 36,
            Hook::Xdp => 12,
        };
        ctx[off..off + 4].copy_from_slice(&in_port.to_ne_bytes());
        if self.hook == Hook::Xdp {
            // xdp_md.data_end must be the frame's length.
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        }
        let ctx_len = match self.hook {
            Hook::Tc => 48,
            Hook::Xdp => 24,
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx[..ctx_len]),
            ..Default::default()
        };
        let prog = self.ebpf.program(name).expect("checked at load");
        let res = match prog {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => unreachable!("checked at load"),
        }
        .map_err(|e| DatapathError::Program(name, e))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Times `runs` runs of the program on `frame` under test-run; returns the mean cost as
    /// the kernel measured it. Each run starts from the original frame (the kernel's own
    /// `repeat` would feed a rewritten frame, say a routed one, back into the program).
    pub fn bench_run(
        &self,
        frame: &[u8],
        in_port: u32,
        runs: u32,
    ) -> Result<std::time::Duration, DatapathError> {
        let name = self.hook.program_name();
        let mut ctx = [0u8; 48];
        let (off, ctx_len) = match self.hook {
            Hook::Tc => (36, 48),
            Hook::Xdp => (12, 24),
        };
        ctx[off..off + 4].copy_from_slice(&in_port.to_ne_bytes());
        if self.hook == Hook::Xdp {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        }
        let prog = self.ebpf.program(name).expect("checked at load");
        let mut total = std::time::Duration::ZERO;
        for _ in 0..runs.max(1) {
            let opts = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx[..ctx_len]),
                ..Default::default()
            };
            let res = match prog {
                Program::SchedClassifier(p) => p.test_run(opts),
                Program::Xdp(p) => p.test_run(opts),
                _ => unreachable!("checked at load"),
            }
            .map_err(|e| DatapathError::Program(name, e))?;
            total += res.duration;
        }
        Ok(total / runs.max(1))
    }

    /// Runs the program `repeat` times on `frame` in one test-run (the kernel's own loop:
    /// no system call between runs, so caches stay warm and the clock is read once); returns
    /// the mean cost per run. Only for frames the program does not rewrite (an L2 forward):
    /// each run sees the frame the previous one left.
    pub fn bench_repeat(
        &self,
        frame: &[u8],
        in_port: u32,
        repeat: u32,
    ) -> Result<std::time::Duration, DatapathError> {
        let name = self.hook.program_name();
        let mut ctx = [0u8; 48];
        let (off, ctx_len) = match self.hook {
            Hook::Tc => (36, 48),
            Hook::Xdp => (12, 24),
        };
        ctx[off..off + 4].copy_from_slice(&in_port.to_ne_bytes());
        if self.hook == Hook::Xdp {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx[..ctx_len]),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let prog = self.ebpf.program(name).expect("checked at load");
        let res = match prog {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => unreachable!("checked at load"),
        }
        .map_err(|e| DatapathError::Program(name, e))?;
        Ok(res.duration)
    }

    /// Attaches the tc build to the ingress of `ifname` (tcx); with a pin directory the
    /// link is pinned as `link-tc-<ifname>` and an existing pinned link is reused, so the
    /// attachment outlives this process.
    pub fn attach_tc(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let name = "netdp_tc";
        let pin_dir = self.pin_dir.clone();
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .expect("checked at load")
            .try_into()
            .map_err(|e| DatapathError::Program(name, e))?;
        let Some(dir) = pin_dir else {
            let id = prog
                .attach(ifname, TcAttachType::Ingress)
                .map_err(|e| DatapathError::Program(name, e))?;
            // Keep the link alive for as long as this Datapath lives (dropping the id would
            // not detach; the program owns its links).
            let _ = id;
            return Ok(());
        };
        let path = dir.join(format!("link-tc-{ifname}"));
        let id = match PinnedLink::from_pin(&path) {
            Ok(old) => {
                let link = FdLink::from(old)
                    .try_into()
                    .map_err(|e| DatapathError::PinLink(path.clone(), Box::new(e)))?;
                prog.attach_to_link(link)
                    .map_err(|e| DatapathError::Program(name, e))?
            }
            Err(_) => prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| DatapathError::Program(name, e))?,
        };
        let link = prog
            .take_link(id)
            .map_err(|e| DatapathError::Program(name, e))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| {
                DatapathError::PinLink(path.clone(), Box::new(e))
            })?;
        let _ = std::fs::remove_file(&path);
        fd.pin(&path)
            .map_err(|e| DatapathError::PinLink(path.clone(), Box::new(e)))?;
        Ok(())
    }

    /// Attaches the XDP build to `ifname` in driver mode.
    pub fn attach_xdp(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let name = "netdp_xdp";
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .expect("checked at load")
            .try_into()
            .map_err(|e| DatapathError::Program(name, e))?;
        prog.attach(ifname, XdpMode::Driver)
            .map_err(|e| DatapathError::Program(name, e))?;
        Ok(())
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, DatapathError> {
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(name, e))
    }

    fn hash_ro<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<&MapData, K, V>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(name, e))
    }

    /// Installs or replaces a port: its record, its addresses, its FDB and ARP entries, and
    /// its place in the network's flood list.
    pub fn set_port(&mut self, spec: &PortSpec) -> Result<(), DatapathError> {
        self.remove_port_addrs(spec.ifindex)?;
        let port = abi::Port {
            net_id: spec.net_id,
            mac: spec.mac,
            port_security: u8::from(spec.port_security),
            flags: if spec.dhcp { abi::PORT_F_DHCP } else { 0 }
                | if spec.peer { abi::PORT_F_PEER } else { 0 },
            ..Default::default()
        };
        let mut addrs: Vec<([u8; 6], u32)> = vec![(spec.mac, 0)];
        addrs.extend(spec.ips.iter().map(|ip| (spec.mac, ip_be(*ip))));
        for (mac, ip) in &spec.allowed_address_pairs {
            addrs.push((*mac, 0));
            addrs.push((*mac, ip_be(*ip)));
        }
        {
            let mut m = self.hash::<AddrKey, u32>("port_addrs")?;
            for (mac, ip) in &addrs {
                let k = AddrKey {
                    ifindex: spec.ifindex,
                    ip: *ip,
                    mac: *mac,
                    pad: 0,
                };
                m.insert(k, 1, 0)
                    .map_err(|e| DatapathError::Map("port_addrs", e))?;
            }
        }
        {
            let mut m = self.hash::<L2Key, FdbEntry>("fdb")?;
            let k = L2Key {
                net_id: spec.net_id,
                mac: spec.mac,
                pad: 0,
            };
            let v = FdbEntry {
                ifindex: spec.ifindex,
                router_id: 0,
                ip: 0,
            };
            m.insert(k, v, 0)
                .map_err(|e| DatapathError::Map("fdb", e))?;
        }
        for ip in &spec.ips {
            self.set_neighbor(spec.net_id, *ip, spec.mac)?;
        }
        {
            let mut m = self.hash::<u32, Network>("networks")?;
            let mut net = m.get(&spec.net_id, 0).unwrap_or_default();
            let used = &net.ports[..net.nports as usize];
            if !used.contains(&spec.ifindex) {
                if net.nports as usize >= NET_MAX_PORTS {
                    return Err(DatapathError::NetworkFull(spec.net_id));
                }
                net.ports[net.nports as usize] = spec.ifindex;
                net.nports += 1;
            }
            m.insert(spec.net_id, net, 0)
                .map_err(|e| DatapathError::Map("networks", e))?;
        }
        self.put_port(spec.ifindex, port)
    }

    /// Port `ifindex`'s record: its configuration and its counters summed over CPUs.
    fn get_port(&self, ifindex: u32) -> Result<Option<abi::Port>, DatapathError> {
        const NAME: &str = "ports";
        let err = |e| DatapathError::Map(NAME, e);
        let map = self.ebpf.map(NAME).ok_or(DatapathError::Map(
            NAME,
            aya::maps::MapError::InvalidName { name: NAME.into() },
        ))?;
        let found = if let aya::maps::Map::PerCpuHashMap(_) = map {
            let m: PerCpuHashMap<&MapData, u32, abi::Port> =
                PerCpuHashMap::try_from(map).map_err(err)?;
            m.get(&ifindex, 0).ok().map(|per_cpu| {
                let mut port = per_cpu[0];
                port.stats = PortStats::default();
                for p in per_cpu.iter() {
                    port.stats.add(&p.stats);
                }
                port
            })
        } else {
            let m: BpfHashMap<&MapData, u32, abi::Port> = BpfHashMap::try_from(map).map_err(err)?;
            m.get(&ifindex, 0).ok()
        };
        Ok(found)
    }

    /// Writes port `ifindex`'s configuration into every CPU's copy, keeping the counters.
    /// Nothing is written when the configuration is unchanged (the daemon re-syncs every
    /// port twice a second), so counting loses nothing then; a real change loses the
    /// increments other CPUs make between the read and the write.
    fn put_port(&mut self, ifindex: u32, config: abi::Port) -> Result<(), DatapathError> {
        const NAME: &str = "ports";
        let err = |e| DatapathError::Map(NAME, e);
        let map = self.ebpf.map_mut(NAME).ok_or(DatapathError::Map(
            NAME,
            aya::maps::MapError::InvalidName { name: NAME.into() },
        ))?;
        let with_config = |old: abi::Port| abi::Port {
            stats: old.stats,
            ..config
        };
        if let aya::maps::Map::PerCpuHashMap(_) = map {
            let mut m: PerCpuHashMap<&mut MapData, u32, abi::Port> =
                PerCpuHashMap::try_from(map).map_err(err)?;
            let values: Vec<abi::Port> = match m.get(&ifindex, 0) {
                Ok(old) if old[0].same_config(&config) => return Ok(()),
                Ok(old) => old.iter().map(|p| with_config(*p)).collect(),
                Err(_) => {
                    let cpus = aya::util::nr_cpus()
                        .map_err(|(_, e)| err(aya::maps::MapError::IoError(e)))?;
                    vec![config; cpus]
                }
            };
            let values = aya::maps::PerCpuValues::try_from(values)
                .map_err(|e| err(aya::maps::MapError::IoError(e)))?;
            m.insert(ifindex, values, 0).map_err(err)
        } else {
            let mut m: BpfHashMap<&mut MapData, u32, abi::Port> =
                BpfHashMap::try_from(map).map_err(err)?;
            let value = match m.get(&ifindex, 0) {
                Ok(old) if old.same_config(&config) => return Ok(()),
                Ok(old) => with_config(old),
                Err(_) => config,
            };
            m.insert(ifindex, value, 0).map_err(err)
        }
    }

    fn remove_port_addrs(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut m = self.hash::<AddrKey, u32>("port_addrs")?;
        let keys: Vec<AddrKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.ifindex == ifindex)
            .collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }

    /// Removes a port and everything the datapath keeps for it.
    pub fn remove_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let port = self.get_port(ifindex)?;
        self.remove_port_addrs(ifindex)?;
        self.set_port_rules(ifindex, &[])?;
        if let Some(port) = port {
            let mut fdb = self.hash::<L2Key, FdbEntry>("fdb")?;
            let _ = fdb.remove(&L2Key {
                net_id: port.net_id,
                mac: port.mac,
                pad: 0,
            });
            let mut neigh = self.hash::<NeighKey, Neigh>("neighbors")?;
            let stale: Vec<NeighKey> = neigh
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| k.net_id == port.net_id && v.mac == port.mac)
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                let _ = neigh.remove(&k);
            }
            let mut nets = self.hash::<u32, Network>("networks")?;
            if let Ok(mut net) = nets.get(&port.net_id, 0) {
                let kept: Vec<u32> = net.ports[..net.nports as usize]
                    .iter()
                    .copied()
                    .filter(|p| *p != ifindex)
                    .collect();
                net.ports = [0; NET_MAX_PORTS];
                net.ports[..kept.len()].copy_from_slice(&kept);
                net.nports = kept.len() as u32;
                nets.insert(port.net_id, net, 0)
                    .map_err(|e| DatapathError::Map("networks", e))?;
            }
        }
        const NAME: &str = "ports";
        let map = self.ebpf.map_mut(NAME).ok_or(DatapathError::Map(
            NAME,
            aya::maps::MapError::InvalidName { name: NAME.into() },
        ))?;
        if let aya::maps::Map::PerCpuHashMap(_) = map {
            let mut m: PerCpuHashMap<&mut MapData, u32, abi::Port> =
                PerCpuHashMap::try_from(map).map_err(|e| DatapathError::Map(NAME, e))?;
            let _ = m.remove(&ifindex);
        } else {
            let mut m: BpfHashMap<&mut MapData, u32, abi::Port> =
                BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(NAME, e))?;
            let _ = m.remove(&ifindex);
        }
        Ok(())
    }

    /// The ifindexes of every port in the maps (pinned maps may hold ports from before a
    /// restart).
    pub fn port_ifindexes(&self) -> Result<Vec<u32>, DatapathError> {
        const NAME: &str = "ports";
        let map = self.ebpf.map(NAME).ok_or(DatapathError::Map(
            NAME,
            aya::maps::MapError::InvalidName { name: NAME.into() },
        ))?;
        let keys = if let aya::maps::Map::PerCpuHashMap(_) = map {
            let m: PerCpuHashMap<&MapData, u32, abi::Port> =
                PerCpuHashMap::try_from(map).map_err(|e| DatapathError::Map(NAME, e))?;
            m.keys().filter_map(Result::ok).collect()
        } else {
            let m: BpfHashMap<&MapData, u32, abi::Port> =
                BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(NAME, e))?;
            m.keys().filter_map(Result::ok).collect()
        };
        Ok(keys)
    }

    /// Records that `ip` in `net_id` is at `mac` (ARP answers and routed next hops).
    pub fn set_neighbor(
        &mut self,
        net_id: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        let mut m = self.hash::<NeighKey, Neigh>("neighbors")?;
        m.insert(
            NeighKey {
                net_id,
                ip: ip_be(ip),
            },
            Neigh { mac, pad: 0 },
            0,
        )
        .map_err(|e| DatapathError::Map("neighbors", e))
    }

    /// Gives router `router_id` an interface on `net_id` with `mac` and `ip` in `subnet`:
    /// frames to the MAC are routed, ARP for the IP is answered, and the subnet becomes a
    /// connected route of the router.
    pub fn add_router_interface(
        &mut self,
        router_id: u32,
        net_id: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
    ) -> Result<(), DatapathError> {
        {
            let mut m = self.hash::<L2Key, FdbEntry>("fdb")?;
            m.insert(
                L2Key {
                    net_id,
                    mac,
                    pad: 0,
                },
                FdbEntry {
                    ifindex: 0,
                    router_id,
                    ip: ip_be(ip),
                },
                0,
            )
            .map_err(|e| DatapathError::Map("fdb", e))?;
        }
        self.set_neighbor(net_id, ip, mac)?;
        self.add_route(
            router_id,
            subnet,
            Route {
                net_id,
                nexthop: 0,
                mac,
                flags: 0,
            },
        )
    }

    /// Gives router `router_id` its external gateway on `net_id` (address `ip` in `subnet`,
    /// MAC `mac`), with a default route via `upstream` if given. Routes out of the gateway
    /// apply floating-IP SNAT.
    pub fn set_router_gateway(
        &mut self,
        router_id: u32,
        net_id: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
        upstream: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        self.add_router_interface(router_id, net_id, mac, ip, subnet)?;
        let external = |nexthop| Route {
            net_id,
            nexthop,
            mac,
            flags: abi::ROUTE_EXTERNAL,
        };
        self.add_route(router_id, subnet, external(0))?;
        if let Some(gw) = upstream {
            self.add_route(router_id, (Ipv4Addr::UNSPECIFIED, 0), external(ip_be(gw)))?;
        }
        Ok(())
    }

    /// Maps floating IP `fip` on router `router_id` to `fixed` (1:1 DNAT in, SNAT out) and
    /// answers ARP for it on the external network with the router's gateway MAC.
    pub fn set_floating_ip(
        &mut self,
        router_id: u32,
        fip: Ipv4Addr,
        fixed: Ipv4Addr,
        external_net: u32,
        gateway_mac: [u8; 6],
    ) -> Result<(), DatapathError> {
        {
            let mut m = self.hash::<abi::NatKey, u32>("fip_dnat")?;
            m.insert(
                abi::NatKey {
                    router_id,
                    ip: ip_be(fip),
                },
                ip_be(fixed),
                0,
            )
            .map_err(|e| DatapathError::Map("fip_dnat", e))?;
        }
        {
            let mut m = self.hash::<abi::NatKey, u32>("fip_snat")?;
            m.insert(
                abi::NatKey {
                    router_id,
                    ip: ip_be(fixed),
                },
                ip_be(fip),
                0,
            )
            .map_err(|e| DatapathError::Map("fip_snat", e))?;
        }
        self.set_neighbor(external_net, fip, gateway_mac)
    }

    /// Removes a floating IP's translations and ARP entry.
    pub fn remove_floating_ip(
        &mut self,
        router_id: u32,
        fip: Ipv4Addr,
        fixed: Ipv4Addr,
        external_net: u32,
    ) -> Result<(), DatapathError> {
        let mut m = self.hash::<abi::NatKey, u32>("fip_dnat")?;
        let _ = m.remove(&abi::NatKey {
            router_id,
            ip: ip_be(fip),
        });
        let mut m = self.hash::<abi::NatKey, u32>("fip_snat")?;
        let _ = m.remove(&abi::NatKey {
            router_id,
            ip: ip_be(fixed),
        });
        let mut m = self.hash::<NeighKey, Neigh>("neighbors")?;
        let _ = m.remove(&NeighKey {
            net_id: external_net,
            ip: ip_be(fip),
        });
        Ok(())
    }

    /// Turns gateway SNAT of `router_id` on (`Some(gateway address)`: ports without a
    /// floating IP leave from it) or off (`None`: its translations are flushed too).
    pub fn set_gateway_snat(
        &mut self,
        router_id: u32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        {
            let mut m = self.hash::<u32, u32>("router_snat")?;
            match gateway {
                Some(ip) => m
                    .insert(router_id, ip_be(ip), 0)
                    .map_err(|e| DatapathError::Map("router_snat", e))?,
                None => {
                    let _ = m.remove(&router_id);
                }
            }
        }
        if gateway.is_none() {
            for name in ["snat_out", "snat_in"] {
                let mut m = self.hash::<abi::SnatKey, abi::SnatVal>(name)?;
                let keys: Vec<abi::SnatKey> = m
                    .keys()
                    .filter_map(Result::ok)
                    .filter(|k| k.router_id == router_id)
                    .collect();
                for k in keys {
                    let _ = m.remove(&k);
                }
            }
        }
        Ok(())
    }

    /// Number of gateway SNAT translations in force (inbound halves).
    pub fn snat_len(&self) -> Result<usize, DatapathError> {
        let m = self.hash_ro::<abi::SnatKey, abi::SnatVal>("snat_in")?;
        Ok(m.keys().filter_map(Result::ok).count())
    }

    /// Removes router `router_id`'s interface on `net_id` (MAC `mac`, address `ip` in
    /// `subnet`): frames to the MAC are no longer routed, ARP for the address is no longer
    /// answered, and the connected route is gone.
    pub fn remove_router_interface(
        &mut self,
        router_id: u32,
        net_id: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
    ) -> Result<(), DatapathError> {
        {
            let mut m = self.hash::<L2Key, FdbEntry>("fdb")?;
            let k = L2Key {
                net_id,
                mac,
                pad: 0,
            };
            if m.get(&k, 0).is_ok_and(|e| e.router_id == router_id) {
                let _ = m.remove(&k);
            }
        }
        {
            let mut m = self.hash::<NeighKey, Neigh>("neighbors")?;
            let k = NeighKey {
                net_id,
                ip: ip_be(ip),
            };
            if m.get(&k, 0).is_ok_and(|n| n.mac == mac) {
                let _ = m.remove(&k);
            }
        }
        self.remove_route(router_id, subnet)
    }

    /// Removes router `router_id`'s external gateway (see [`Self::set_router_gateway`]):
    /// the interface, its routes (the default one included) and gateway SNAT.
    pub fn clear_router_gateway(
        &mut self,
        router_id: u32,
        net_id: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
    ) -> Result<(), DatapathError> {
        self.remove_router_interface(router_id, net_id, mac, ip, subnet)?;
        self.remove_route(router_id, (Ipv4Addr::UNSPECIFIED, 0))?;
        self.set_gateway_snat(router_id, None)
    }

    /// Reconciliation after a restart: removes router state the caller no longer has
    /// (interfaces removed or gateways cleared while the daemon was down). `ifaces` are
    /// the router interfaces to keep as (router, network, MAC), `routes` the routes as
    /// (router, destination, prefix length), `snat` the routers doing gateway SNAT.
    /// Neighbours whose MAC no longer lives in their network go too.
    pub fn prune_routers(
        &mut self,
        ifaces: &HashSet<(u32, u32, [u8; 6])>,
        routes: &HashSet<(u32, Ipv4Addr, u8)>,
        snat: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        let fdb_keys: HashSet<(u32, [u8; 6])> = {
            let mut m = self.hash::<L2Key, FdbEntry>("fdb")?;
            let entries: Vec<(L2Key, FdbEntry)> = m.iter().filter_map(Result::ok).collect();
            let mut kept = HashSet::new();
            for (k, v) in entries {
                if v.router_id != 0 && !ifaces.contains(&(v.router_id, k.net_id, k.mac)) {
                    let _ = m.remove(&k);
                } else {
                    kept.insert((k.net_id, k.mac));
                }
            }
            kept
        };
        {
            let mut m = self.hash::<NeighKey, Neigh>("neighbors")?;
            let stale: Vec<NeighKey> = m
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| !fdb_keys.contains(&(k.net_id, v.mac)))
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                let _ = m.remove(&k);
            }
        }
        let stale_routes: Vec<(u32, Ipv4Addr, u8)> = {
            let name = "routes";
            let map = self.ebpf.map(name).ok_or(DatapathError::Map(
                name,
                aya::maps::MapError::InvalidName { name: name.into() },
            ))?;
            let trie: LpmTrie<&MapData, RouteKey, Route> =
                LpmTrie::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
            trie.keys()
                .filter_map(Result::ok)
                .map(|k| {
                    let d = k.data();
                    let len = k.prefix_len().saturating_sub(32).min(32) as u8;
                    (d.router_id, Ipv4Addr::from(d.addr.to_ne_bytes()), len)
                })
                .filter(|r| !routes.contains(r))
                .collect()
        };
        for (router, dest, len) in stale_routes {
            self.remove_route(router, (dest, len))?;
        }
        let routers: Vec<u32> = self
            .hash_ro::<u32, u32>("router_snat")?
            .keys()
            .filter_map(Result::ok)
            .filter(|r| !snat.contains(r))
            .collect();
        for r in routers {
            self.set_gateway_snat(r, None)?;
        }
        Ok(())
    }

    /// Removes the route of `router_id` to `dest`, if there is one.
    pub fn remove_route(
        &mut self,
        router_id: u32,
        dest: (Ipv4Addr, u8),
    ) -> Result<(), DatapathError> {
        let name = "routes";
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        let mut trie: LpmTrie<&mut MapData, RouteKey, Route> =
            LpmTrie::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
        let key = Key::new(
            32 + u32::from(dest.1.min(32)),
            RouteKey {
                router_id,
                addr: ip_be(dest.0) & mask_be(dest.1),
            },
        );
        match trie.remove(&key) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            r => r.map_err(|e| DatapathError::Map(name, e)),
        }
    }

    /// Adds (or replaces) an extra route of `router_id`: `dest` via `nexthop` on `net_id`,
    /// where the router's MAC is `mac`. Frames leave for the next hop's MAC (its neighbour
    /// entry on `net_id`); `external` marks a next hop on the gateway's network, whose
    /// traffic gets the gateway's floating-IP and SNAT treatment like the default route's.
    pub fn add_extra_route(
        &mut self,
        router_id: u32,
        dest: (Ipv4Addr, u8),
        net_id: u32,
        nexthop: Ipv4Addr,
        mac: [u8; 6],
        external: bool,
    ) -> Result<(), DatapathError> {
        let flags = if external { abi::ROUTE_EXTERNAL } else { 0 };
        self.add_route(
            router_id,
            dest,
            Route {
                net_id,
                nexthop: ip_be(nexthop),
                mac,
                flags,
            },
        )
    }

    /// Adds (or replaces) a route of `router_id` to `dest`.
    pub fn add_route(
        &mut self,
        router_id: u32,
        dest: (Ipv4Addr, u8),
        route: Route,
    ) -> Result<(), DatapathError> {
        let name = "routes";
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        let mut trie: LpmTrie<&mut MapData, RouteKey, Route> =
            LpmTrie::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
        let masked = ip_be(dest.0) & mask_be(dest.1);
        let key = Key::new(
            32 + u32::from(dest.1.min(32)),
            RouteKey {
                router_id,
                addr: masked,
            },
        );
        trie.insert(&key, route, 0)
            .map_err(|e| DatapathError::Map(name, e))
    }

    /// Replaces the security-group rules of a port (the union of its groups' rules). Tracked
    /// connections admitted by a rule that is gone are cut.
    pub fn set_port_rules(
        &mut self,
        ifindex: u32,
        rules: &[RuleSpec],
    ) -> Result<(), DatapathError> {
        let mut slots: HashMap<SgKey, SgRules> = HashMap::new();
        for r in rules {
            let key = SgKey {
                ifindex,
                direction: match r.direction {
                    Direction::Ingress => DIR_INGRESS,
                    Direction::Egress => DIR_EGRESS,
                },
                proto: r.protocol.unwrap_or(0),
                pad: 0,
            };
            let (remote, mask) = match r.remote {
                Some((ip, len)) => (ip_be(ip) & mask_be(len), mask_be(len)),
                None => (0, 0),
            };
            let icmp = r.protocol == Some(1);
            let (port_min, port_max) = match (r.port_range, icmp) {
                (Some(range), _) => range,
                (None, true) => (SG_ANY, SG_ANY),
                (None, false) => (0, u16::MAX),
            };
            let slot = slots.entry(key).or_default();
            if slot.n as usize >= SG_MAX_RULES {
                return Err(DatapathError::TooManyRules(ifindex));
            }
            slot.r[slot.n as usize] = SgRule {
                rule_id: r.id,
                remote,
                remote_mask: mask,
                port_min,
                port_max,
            };
            slot.n += 1;
        }
        {
            let mut m = self.hash::<SgKey, SgRules>("sg_rules")?;
            let old: Vec<SgKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ifindex == ifindex && !slots.contains_key(k))
                .collect();
            for (k, v) in &slots {
                m.insert(*k, *v, 0)
                    .map_err(|e| DatapathError::Map("sg_rules", e))?;
            }
            for k in old {
                let _ = m.remove(&k);
            }
        }
        let kept: HashSet<u32> = rules.iter().map(|r| r.id).collect();
        let name = "conntrack";
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        let mut ct: BpfHashMap<&mut MapData, CtKey, CtVal> =
            BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
        let cut: Vec<CtKey> = ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.ifindex == ifindex && !kept.contains(&v.rule_id))
            .map(|(k, _)| k)
            .collect();
        for k in &cut {
            let _ = ct.remove(k);
        }
        tracing::debug!(
            ifindex,
            rules = rules.len(),
            cut = cut.len(),
            "port rules set"
        );
        Ok(())
    }

    /// The connection timeouts the program was loaded with.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Removes tracked connections and gateway SNAT translations idle past their timeouts
    /// (the program already ignores them, this gives their room back); SNAT outbound
    /// halves go with their inbound halves. The same as [`Gc::expire`] on [`Self::gc`].
    pub fn expire(&mut self) -> Result<Expired, DatapathError> {
        self.gc()?.expire()
    }

    /// A handle on the conntrack and SNAT maps for the GC, on duplicates of their
    /// descriptors: it needs neither this instance nor its owner's lock, so the daemon's
    /// GC walks large tables while the API keeps answering.
    pub fn gc(&self) -> Result<Gc, DatapathError> {
        Ok(Gc {
            conntrack: self.dup_map("conntrack")?,
            snat_in: self.dup_map("snat_in")?,
            snat_out: self.dup_map("snat_out")?,
            timeouts: self.timeouts,
        })
    }

    /// One of the (hash) maps, opened again on a duplicate of its descriptor (it outlives
    /// this instance).
    fn dup_map(&self, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
        use aya::maps::Map;
        let invalid =
            || DatapathError::Map(name, aya::maps::MapError::InvalidName { name: name.into() });
        let dup = |data: &MapData| {
            let fd = std::os::fd::AsFd::as_fd(data.fd())
                .try_clone_to_owned()
                .map_err(|e| {
                    DatapathError::Map(
                        name,
                        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                            call: "dup",
                            io_error: e,
                        }),
                    )
                })?;
            MapData::from_fd(fd).map_err(|e| DatapathError::Map(name, e))
        };
        match self.ebpf.map(name).ok_or_else(invalid)? {
            Map::HashMap(m) => Ok(Map::HashMap(dup(m)?)),
            Map::LruHashMap(m) => Ok(Map::LruHashMap(dup(m)?)),
            _ => Err(invalid()),
        }
    }

    /// Number of tracked connections.
    pub fn conntrack_len(&self) -> Result<usize, DatapathError> {
        let name = "conntrack";
        let map = self.ebpf.map(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        let ct: BpfHashMap<&MapData, CtKey, CtVal> =
            BpfHashMap::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
        Ok(ct.keys().filter_map(Result::ok).count())
    }

    /// A port's counters summed over CPUs (zero for interfaces that are not ports).
    pub fn port_counters(&self, ifindex: u32) -> Result<PortCounters, DatapathError> {
        Ok(PortCounters(
            self.get_port(ifindex)?.map(|p| p.stats).unwrap_or_default(),
        ))
    }

    /// A rule's counters summed over CPUs (zero for ids past the counter array).
    pub fn rule_counters(&self, rule_id: u32) -> Result<RuleStats, DatapathError> {
        let name = "rule_stats";
        let map = self.ebpf.map(name).ok_or(DatapathError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))?;
        let m: PerCpuArray<&MapData, RuleStats> =
            PerCpuArray::try_from(map).map_err(|e| DatapathError::Map(name, e))?;
        let mut sum = RuleStats::default();
        if let Ok(per_cpu) = m.get(&rule_id, 0) {
            for s in per_cpu.iter() {
                sum.connections += s.connections;
            }
        }
        Ok(sum)
    }
}
