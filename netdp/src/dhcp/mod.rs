//! DHCPv4 for VM ports, answered by the slow path in userspace.
//!
//! Neutron gives every port a fixed IP; a guest learns it, with its mask, gateway, DNS
//! servers, MTU and lease time, by DHCP. netdp answers from what the control plane knows,
//! with no address pool and no lease database: a port's lease is its fixed IP.
//!
//! How frames get here: the switch (tc or XDP) punts the DHCP requests of ports flagged
//! `PORT_F_DHCP` into a BPF ring buffer (`dhcp_punt`: the ingress ifindex, then the frame)
//! and consumes them instead of flooding them to the network; [`Server`] reads the ring
//! and writes the answer back out of the port's host-side interface, straight to the
//! guest, with a send-only packet socket ([`sys::PacketSocket`], which receives nothing).
//! Ordinary frames never reach userspace nor pass any socket filter: the only cost on the
//! hot path is the test the switch makes anyway. Why a ring buffer rather than a packet
//! tap (the first design: a filtered `ETH_P_ALL` socket, whose filter ran for every frame
//! of every interface and cost the switch 15-31% of its 64-byte packet rate) or a
//! redirect into a dedicated interface tagged with the port: no interface to create or
//! keep, works from both hooks (XDP cannot redirect into a dummy device), the port comes
//! with the record, ports created later need nothing, and the ring is pinned with the
//! other maps, so the pinned program keeps consuming requests while the daemon restarts
//! and the restarted daemon reads the same ring (a full ring drops, counted per port as
//! `ferrostack_netdp_port_drops_total{reason="dhcp_ring_full"}`; guests retry).
//!
//! The parts: [`Lease`] (what a port gets), [`answer`] (a request frame in, a reply frame
//! out: pure, so unit- and property-tested), [`Leases`] (the table the control plane fills
//! and the server thread reads), [`Server`] (the thread).

pub mod sys;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use crate::datapath::abi::{DHCP_PUNT_HEADER, DHCP_PUNT_MAX};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// Lease time when none is configured (Neutron's `dhcp_lease_duration` default).
pub const DEFAULT_LEASE_SECS: u32 = 86400;
/// BOOTP messages are at least this long (RFC 1542); some clients insist.
const MIN_BOOTP_LEN: usize = 300;

const OPT_DNS: u8 = 6;
const OPT_BROADCAST: u8 = 28;
const OPT_MTU: u8 = 26;
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;

/// Errors of the DHCP slow path.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The frame is not an IPv4 UDP datagram to the DHCP server port.
    #[error("not a DHCP request")]
    NotDhcp,
    /// The frame or the DHCP message in it is malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The frame's source or the message's client hardware address is not the port's MAC.
    #[error("client {0} is not the port's MAC")]
    WrongClient(EthernetAddress),
    /// The packet socket could not be opened or configured, or the thread not started.
    #[error("open the DHCP packet socket")]
    Open(#[source] std::io::Error),
    /// The datapath's ring of punted requests could not be opened.
    #[error("open the datapath's DHCP ring")]
    Ring(#[source] crate::datapath::DatapathError),
    /// A reply could not be sent.
    #[error("send a DHCP reply on interface {0}")]
    Send(u32, #[source] std::io::Error),
}

/// What a port gets by DHCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The port's MAC: only requests from it are answered.
    pub mac: [u8; 6],
    /// The port's fixed IP.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The subnet's gateway (the router option), if any.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (none: the option is left out).
    pub dns: Vec<Ipv4Addr>,
    /// The network's MTU (option 26).
    pub mtu: u16,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// The address the server answers from (its identifier).
    pub server_ip: Ipv4Addr,
    /// The MAC the server answers from.
    pub server_mac: [u8; 6],
}

impl Lease {
    fn mask(&self) -> Ipv4Addr {
        let len = u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(if len == 0 { 0 } else { u32::MAX << (32 - len) })
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) | !u32::from(self.mask()))
    }
}

/// A DHCP request as the server needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// DISCOVER, REQUEST, INFORM, RELEASE or DECLINE.
    pub message_type: DhcpMessageType,
    /// The client's transaction id.
    pub xid: u32,
    /// `chaddr`.
    pub client_mac: [u8; 6],
    /// `ciaddr`.
    pub client_ip: Ipv4Addr,
    /// `giaddr`.
    pub relay_ip: Ipv4Addr,
    /// The broadcast flag.
    pub broadcast: bool,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
}

/// Parses a frame as a DHCP client message: Ethernet, IPv4 (header checksum verified),
/// UDP to port 67, then the BOOTP/DHCP message. Returns the Ethernet source too.
pub fn parse_request(frame: &[u8]) -> Result<([u8; 6], Request), DhcpError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DhcpError::Malformed("ethernet"))?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(DhcpError::NotDhcp);
    }
    let src_mac = eth.src_addr().0;
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DhcpError::Malformed("ipv4"))?;
    let ip_repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default())
        .map_err(|_| DhcpError::Malformed("ipv4"))?;
    if ip_repr.next_header != IpProtocol::Udp {
        return Err(DhcpError::NotDhcp);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DhcpError::Malformed("fragmented ipv4"));
    }
    // The UDP checksum is not verified: a frame from a veth or tap may still carry a
    // partial (offloaded) checksum.
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| DhcpError::Malformed("udp"))?;
    if udp.dst_port() != SERVER_PORT {
        return Err(DhcpError::NotDhcp);
    }
    let dhcp = DhcpPacket::new_checked(udp.payload()).map_err(|_| DhcpError::Malformed("dhcp"))?;
    let repr = DhcpRepr::parse(&dhcp).map_err(|_| DhcpError::Malformed("dhcp"))?;
    Ok((
        src_mac,
        Request {
            message_type: repr.message_type,
            xid: repr.transaction_id,
            client_mac: repr.client_hardware_address.0,
            client_ip: repr.client_ip,
            relay_ip: repr.relay_agent_ip,
            broadcast: repr.broadcast,
            requested_ip: repr.requested_ip,
            server_id: repr.server_identifier,
        },
    ))
}

/// The reply a request gets, if any: OFFER to DISCOVER; ACK or NAK to REQUEST (ACK when the
/// address asked for is the port's, silence when the client chose another server); ACK
/// without an address to INFORM; nothing to RELEASE and DECLINE.
pub fn reply_type(req: &Request, lease: &Lease) -> Option<DhcpMessageType> {
    match req.message_type {
        DhcpMessageType::Discover => Some(DhcpMessageType::Offer),
        DhcpMessageType::Request => {
            if req.server_id.is_some_and(|s| s != lease.server_ip) {
                return None;
            }
            // SELECTING/INIT-REBOOT name the address in option 50; RENEWING/REBINDING in
            // ciaddr.
            let wanted = req.requested_ip.unwrap_or(req.client_ip);
            if wanted == lease.ip {
                Some(DhcpMessageType::Ack)
            } else {
                Some(DhcpMessageType::Nak)
            }
        }
        DhcpMessageType::Inform => Some(DhcpMessageType::Ack),
        _ => None,
    }
}

/// Builds the reply frame of type `kind` to `req` for `lease`: from the server's MAC and
/// address to the client's MAC; to `ciaddr` when the client has one, else to the broadcast
/// address if the client asked for it (or on NAK), else to the offered address.
pub fn build_reply(req: &Request, kind: DhcpMessageType, lease: &Lease) -> Vec<u8> {
    let nak = kind == DhcpMessageType::Nak;
    let inform = req.message_type == DhcpMessageType::Inform;
    let lease_secs = lease.lease_secs.max(1);
    let mut extra: Vec<(u8, Vec<u8>)> = vec![];
    if !nak {
        if !lease.dns.is_empty() {
            let dns: Vec<u8> = lease.dns.iter().take(63).flat_map(|d| d.octets()).collect();
            extra.push((OPT_DNS, dns));
        }
        extra.push((OPT_BROADCAST, lease.broadcast().octets().to_vec()));
        extra.push((OPT_MTU, lease.mtu.to_be_bytes().to_vec()));
        if !inform {
            extra.push((OPT_RENEWAL, (lease_secs / 2).to_be_bytes().to_vec()));
            extra.push((OPT_REBINDING, (lease_secs / 8 * 7).to_be_bytes().to_vec()));
        }
    }
    let options: Vec<DhcpOption<'_>> = extra
        .iter()
        .map(|(kind, data)| DhcpOption { kind: *kind, data })
        .collect();
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: req.xid,
        secs: 0,
        client_hardware_address: EthernetAddress(req.client_mac),
        client_ip: if nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            req.client_ip
        },
        your_ip: if nak || inform {
            Ipv4Addr::UNSPECIFIED
        } else {
            lease.ip
        },
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: lease.gateway.filter(|_| !nak),
        subnet_mask: (!nak).then(|| lease.mask()),
        relay_agent_ip: req.relay_ip,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(lease.server_ip),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: (!nak && !inform).then_some(lease_secs),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &options,
    };
    let dhcp_len = repr.buffer_len().max(MIN_BOOTP_LEN);
    let dst_ip = if nak || (req.broadcast && req.client_ip.is_unspecified()) {
        Ipv4Addr::BROADCAST
    } else if !req.client_ip.is_unspecified() {
        req.client_ip
    } else {
        lease.ip
    };
    let udp = UdpRepr {
        src_port: SERVER_PORT,
        dst_port: CLIENT_PORT,
    };
    let ip = Ipv4Repr {
        src_addr: lease.server_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + dhcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(lease.server_mac),
        dst_addr: EthernetAddress(req.client_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut ipp = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut ipp, &caps);
    let mut udpp = UdpPacket::new_unchecked(ipp.payload_mut());
    udp.emit(
        &mut udpp,
        &IpAddress::Ipv4(lease.server_ip),
        &IpAddress::Ipv4(dst_ip),
        dhcp_len,
        |payload| {
            let mut p = DhcpPacket::new_unchecked(payload);
            repr.emit(&mut p)
                .expect("the buffer is as long as buffer_len says");
        },
        &caps,
    );
    buf
}

/// Answers one frame from the port whose lease is `lease`: `Ok(None)` when the message
/// needs no reply.
pub fn answer(frame: &[u8], lease: &Lease) -> Result<Option<Vec<u8>>, DhcpError> {
    let (src, req) = parse_request(frame)?;
    if src != lease.mac {
        return Err(DhcpError::WrongClient(EthernetAddress(src)));
    }
    if req.client_mac != lease.mac {
        return Err(DhcpError::WrongClient(EthernetAddress(req.client_mac)));
    }
    Ok(reply_type(&req, lease).map(|kind| build_reply(&req, kind, lease)))
}

/// The leases of all DHCP ports by the ifindex of their host-side interface: filled by the
/// control plane on every sync, read by the server thread (which holds the lock only for a
/// lookup).
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<RwLock<HashMap<u32, Lease>>>);

impl Leases {
    /// Replaces the whole table.
    pub fn replace(&self, table: HashMap<u32, Lease>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The lease of the port on `ifindex`.
    pub fn get(&self, ifindex: u32) -> Option<Lease> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ifindex)
            .cloned()
    }

    /// Number of ports with a lease.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no port has a lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the server did, since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// DHCP requests the datapath punted (from ports flagged for DHCP), read off the ring.
    pub requests: AtomicU64,
    /// Replies sent.
    pub replies: AtomicU64,
    /// Requests not answered: malformed, from a MAC that is not the port's, for a port
    /// without a lease, needing no reply, or whose reply could not be sent.
    pub ignored: AtomicU64,
}

/// The DHCP server thread: reads the requests the datapath punts, answers from
/// [`Leases`]. Stops (and joins) on drop.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts serving the requests the datapath punts into `ring` (from
    /// [`crate::datapath::Datapath::dhcp_ring`]), answering from `leases`; replies leave
    /// through a send-only packet socket of the caller's network namespace.
    pub fn start(leases: Leases, ring: RingBuf<MapData>) -> Result<Self, DhcpError> {
        let sock = sys::PacketSocket::open().map_err(DhcpError::Open)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("netdp-dhcp".into())
            .spawn(move || serve(ring, &sock, &leases, &s, &st))
            .map_err(DhcpError::Open)?;
        Ok(Server {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The server's counters (shared: they outlive the server).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Splits a `struct dhcp_punt` record into the port's ifindex and the frame.
pub fn punted(record: &[u8]) -> Option<(u32, &[u8])> {
    let head = record.get(..DHCP_PUNT_HEADER)?;
    let ifindex = u32::from_ne_bytes(head[..4].try_into().ok()?);
    let len = u32::from_ne_bytes(head[4..8].try_into().ok()?) as usize;
    let frame = record.get(DHCP_PUNT_HEADER..DHCP_PUNT_HEADER.checked_add(len)?)?;
    Some((ifindex, frame))
}

/// Waits up to `timeout` for the ring to have records (its descriptor polls readable).
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let _ = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

fn serve(
    mut ring: RingBuf<MapData>,
    sock: &sys::PacketSocket,
    leases: &Leases,
    stop: &AtomicBool,
    stats: &Stats,
) {
    let mut frame = Vec::with_capacity(DHCP_PUNT_MAX);
    while !stop.load(Ordering::Relaxed) {
        let ifindex = {
            let Some(item) = ring.next() else {
                wait_readable(&ring, Duration::from_millis(200));
                continue;
            };
            let Some((ifindex, bytes)) = punted(&item) else {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            frame.clear();
            frame.extend_from_slice(bytes);
            ifindex
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let Some(lease) = leases.get(ifindex) else {
            // Flagged in the datapath but without a lease here (yet): nothing to offer.
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match answer(&frame, &lease) {
            Ok(Some(reply)) => match sock.send(ifindex, &reply) {
                Ok(()) => {
                    stats.replies.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %DhcpError::Send(ifindex, e), "DHCP reply lost");
                    stats.ignored.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(None) | Err(_) => {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];

    fn lease() -> Lease {
        Lease {
            mac: CLIENT,
            ip: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(9, 9, 9, 9)],
            mtu: 1400,
            lease_secs: 3600,
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            server_mac: [0x02, 0, 0, 0, 0, 0x99],
        }
    }

    /// A client message as a client puts it on the wire.
    fn client_frame(
        kind: DhcpMessageType,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
        server_id: Option<Ipv4Addr>,
        ciaddr: Ipv4Addr,
    ) -> Vec<u8> {
        let prl = [1u8, 3, 6, 26];
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234_5678,
            secs: 3,
            client_hardware_address: EthernetAddress(mac),
            client_ip: ciaddr,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: Some(EthernetAddress(mac)),
            server_identifier: server_id,
            parameter_request_list: Some(&prl),
            dns_servers: None,
            max_size: Some(576),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let dhcp_len = repr.buffer_len();
        let src = if ciaddr.is_unspecified() {
            Ipv4Addr::UNSPECIFIED
        } else {
            ciaddr
        };
        let dst = Ipv4Addr::BROADCAST;
        let udp = UdpRepr {
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: 8 + dhcp_len,
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(mac),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; 14 + 20 + 8 + dhcp_len];
        let caps = ChecksumCapabilities::default();
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let mut u = UdpPacket::new_unchecked(p.payload_mut());
        udp.emit(
            &mut u,
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            dhcp_len,
            |pl| repr.emit(&mut DhcpPacket::new_unchecked(pl)).unwrap(),
            &caps,
        );
        buf
    }

    /// Parses a reply with smoltcp, checking every checksum; returns the IP destination,
    /// the DHCP message and the raw options (kind, data).
    fn parse_reply(frame: &[u8]) -> (Ipv4Addr, DhcpMessageType, Ipv4Addr, Vec<(u8, Vec<u8>)>) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr().0, CLIENT);
        assert_eq!(eth.src_addr().0, lease().server_mac);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum(), "IPv4 header checksum");
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(
            udp.verify_checksum(
                &IpAddress::Ipv4(ip.src_addr()),
                &IpAddress::Ipv4(ip.dst_addr())
            ),
            "UDP checksum"
        );
        assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
        assert!(udp.payload().len() >= MIN_BOOTP_LEN);
        let d = DhcpPacket::new_checked(udp.payload()).unwrap();
        let repr = DhcpRepr::parse(&d).unwrap();
        assert_eq!(repr.transaction_id, 0x1234_5678);
        let opts = d.options().map(|o| (o.kind, o.data.to_vec())).collect();
        (ip.dst_addr(), repr.message_type, repr.your_ip, opts)
    }

    fn opt(opts: &[(u8, Vec<u8>)], kind: u8) -> Option<Vec<u8>> {
        opts.iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d.clone())
    }

    #[test]
    fn discover_gets_an_offer_with_every_option() {
        let l = lease();
        let f = client_frame(
            DhcpMessageType::Discover,
            CLIENT,
            None,
            None,
            Ipv4Addr::UNSPECIFIED,
        );
        let reply = answer(&f, &l).unwrap().expect("an offer");
        let (dst, kind, yiaddr, opts) = parse_reply(&reply);
        assert_eq!(kind, DhcpMessageType::Offer);
        assert_eq!(yiaddr, l.ip);
        assert_eq!(dst, l.ip, "unicast to the offered address");
        assert_eq!(opt(&opts, 1).unwrap(), vec![255, 255, 255, 0]);
        assert_eq!(opt(&opts, 3).unwrap(), vec![10, 0, 0, 1]);
        assert_eq!(opt(&opts, 6).unwrap(), vec![10, 0, 0, 53, 9, 9, 9, 9]);
        assert_eq!(opt(&opts, 26).unwrap(), 1400u16.to_be_bytes().to_vec());
        assert_eq!(opt(&opts, 28).unwrap(), vec![10, 0, 0, 255]);
        assert_eq!(opt(&opts, 51).unwrap(), 3600u32.to_be_bytes().to_vec());
        assert_eq!(opt(&opts, 54).unwrap(), vec![10, 0, 0, 1]);
        assert_eq!(opt(&opts, 58).unwrap(), 1800u32.to_be_bytes().to_vec());
        assert_eq!(opt(&opts, 59).unwrap(), 3150u32.to_be_bytes().to_vec());
    }

    #[test]
    fn requests_are_acked_only_for_the_ports_address() {
        let l = lease();
        let ack = answer(
            &client_frame(
                DhcpMessageType::Request,
                CLIENT,
                Some(l.ip),
                Some(l.server_ip),
                Ipv4Addr::UNSPECIFIED,
            ),
            &l,
        )
        .unwrap()
        .unwrap();
        let (_, kind, yiaddr, opts) = parse_reply(&ack);
        assert_eq!((kind, yiaddr), (DhcpMessageType::Ack, l.ip));
        assert!(opt(&opts, 51).is_some());
        // Another address: NAK, broadcast, no configuration.
        let nak = answer(
            &client_frame(
                DhcpMessageType::Request,
                CLIENT,
                Some(Ipv4Addr::new(10, 0, 0, 77)),
                None,
                Ipv4Addr::UNSPECIFIED,
            ),
            &l,
        )
        .unwrap()
        .unwrap();
        let (dst, kind, yiaddr, opts) = parse_reply(&nak);
        assert_eq!(kind, DhcpMessageType::Nak);
        assert_eq!(dst, Ipv4Addr::BROADCAST);
        assert_eq!(yiaddr, Ipv4Addr::UNSPECIFIED);
        assert!(opt(&opts, 3).is_none() && opt(&opts, 51).is_none());
        // The client chose another server: silence.
        let other = client_frame(
            DhcpMessageType::Request,
            CLIENT,
            Some(l.ip),
            Some(Ipv4Addr::new(10, 0, 0, 2)),
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(answer(&other, &l).unwrap(), None);
        // A renewal (ciaddr set, no option 50) is acked by unicast to ciaddr.
        let renew = client_frame(DhcpMessageType::Request, CLIENT, None, None, l.ip);
        let (dst, kind, _, _) = parse_reply(&answer(&renew, &l).unwrap().unwrap());
        assert_eq!((dst, kind), (l.ip, DhcpMessageType::Ack));
        // INFORM: configuration without an address or lease time.
        let inform = client_frame(DhcpMessageType::Inform, CLIENT, None, None, l.ip);
        let (_, kind, yiaddr, opts) = parse_reply(&answer(&inform, &l).unwrap().unwrap());
        assert_eq!(
            (kind, yiaddr),
            (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED)
        );
        assert!(opt(&opts, 51).is_none() && opt(&opts, 3).is_some());
        // RELEASE needs no answer.
        let release = client_frame(DhcpMessageType::Release, CLIENT, None, None, l.ip);
        assert_eq!(answer(&release, &l).unwrap(), None);
    }

    #[test]
    fn other_clients_and_junk_are_refused() {
        let l = lease();
        let stranger = [0x02, 0, 0, 0, 0, 0x42];
        let f = client_frame(
            DhcpMessageType::Discover,
            stranger,
            None,
            None,
            Ipv4Addr::UNSPECIFIED,
        );
        assert!(matches!(answer(&f, &l), Err(DhcpError::WrongClient(_))));
        // The port's MAC on the wire but another chaddr.
        let mut f = client_frame(
            DhcpMessageType::Discover,
            stranger,
            None,
            None,
            Ipv4Addr::UNSPECIFIED,
        );
        f[6..12].copy_from_slice(&CLIENT);
        assert!(matches!(answer(&f, &l), Err(DhcpError::WrongClient(_))));
        // Truncated at every length: an error, never a panic or a reply.
        let good = client_frame(
            DhcpMessageType::Discover,
            CLIENT,
            None,
            None,
            Ipv4Addr::UNSPECIFIED,
        );
        for n in 0..good.len() - 1 {
            assert!(answer(&good[..n], &l).is_err(), "truncated to {n}");
        }
        // A bad IP header checksum.
        let mut bad = good.clone();
        bad[14 + 10] ^= 0xff;
        assert!(matches!(
            answer(&bad, &l),
            Err(DhcpError::Malformed("ipv4"))
        ));
        // Not to port 67.
        let mut other = good.clone();
        other[14 + 20 + 3] = 69;
        assert!(matches!(answer(&other, &l), Err(DhcpError::NotDhcp)));
        // No magic cookie.
        let mut nomagic = good;
        nomagic[14 + 20 + 8 + 236] = 0;
        assert!(matches!(
            answer(&nomagic, &l),
            Err(DhcpError::Malformed("dhcp"))
        ));
    }

    proptest! {
        #[test]
        fn the_parser_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = answer(&bytes, &lease());
        }

        #[test]
        fn the_parser_never_panics_on_mutated_requests(
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..16),
            cut in 0usize..400,
        ) {
            let l = lease();
            let mut f = client_frame(DhcpMessageType::Request, CLIENT, Some(l.ip), None, Ipv4Addr::UNSPECIFIED);
            for (i, b) in flips {
                let n = f.len();
                f[i % n] = b;
            }
            let n = f.len();
            f.truncate(n - cut.min(n));
            if let Ok(Some(reply)) = answer(&f, &l) {
                // Whatever got through, the reply is well formed and for the port.
                let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
                prop_assert_eq!(eth.dst_addr().0, CLIENT);
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                prop_assert!(ip.verify_checksum());
            }
        }
    }
}
