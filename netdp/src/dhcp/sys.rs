//! The DHCP slow path's packet socket: `AF_PACKET` for every interface of the namespace,
//! with a classic BPF filter that lets only IPv4 UDP datagrams to port 67 through.
//!
//! The socket is bound to `ETH_P_ALL` on purpose: such sockets are packet taps, which the
//! kernel serves before tc ingress (a socket for `ETH_P_IP` would be served after it, and
//! never see the requests the switch consumes). What a tap costs: on receive, a reference
//! and one run of the (JIT-compiled) filter per frame; transmitted frames are not tapped
//! at all (`PACKET_IGNORE_OUTGOING`), so the switch's redirects are never cloned.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `ETH_P_ALL` in network byte order, as `socket(2)` and `sockaddr_ll` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// `ETH_P_IP` in network byte order.
const ETH_P_IP_BE: u16 = (libc::ETH_P_IP as u16).to_be();

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// One classic BPF instruction.
const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const BPF_LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const BPF_LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const BPF_LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
const BPF_LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Accept Ethernet + IPv4 + UDP (first fragment or whole) to port 67; drop the rest.
/// Jump offsets count instructions after the jump: the accept is at 9, the drop at 10.
const FILTER: [libc::sock_filter; 11] = [
    insn(BPF_LD_H_ABS, 0, 0, 12),     // 0: ethertype
    insn(BPF_JEQ_K, 0, 8, 0x0800),    // 1: IPv4, else drop
    insn(BPF_LD_B_ABS, 0, 0, 23),     // 2: protocol
    insn(BPF_JEQ_K, 0, 6, 17),        // 3: UDP, else drop
    insn(BPF_LD_H_ABS, 0, 0, 20),     // 4: flags and fragment offset
    insn(BPF_JSET_K, 4, 0, 0x1fff),   // 5: a later fragment: drop
    insn(BPF_LDX_MSH, 0, 0, 14),      // 6: X = IPv4 header length
    insn(BPF_LD_H_IND, 0, 0, 14 + 2), // 7: UDP destination port
    insn(BPF_JEQ_K, 0, 1, 67),        // 8: 67, else drop
    insn(BPF_RET_K, 0, 0, 0xffff),    // 9: accept
    insn(BPF_RET_K, 0, 0, 0),         // 10: drop
];

/// Turns a libc return value into an `io::Result`, naming the call.
fn check(rc: libc::c_int, call: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{call}: {e}")))
    } else {
        Ok(rc)
    }
}

/// A raw packet socket for DHCP requests.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket, filtered, with `timeout` on receives (so the owner can stop).
    pub fn open(timeout: Duration) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL_BE),
            )
        };
        let raw = check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut prog = FILTER;
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        check(rc, "setsockopt(SO_ATTACH_FILTER)")?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
        };
        // SAFETY: `tv` is a valid timeval for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        check(rc, "setsockopt(SO_RCVTIMEO)")?;
        // A tap on every interface would otherwise get a clone of every frame the host
        // transmits (the switch's redirects included) before its filter could refuse it.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid int for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        check(rc, "setsockopt(PACKET_IGNORE_OUTGOING)")?;
        let sock = PacketSocket { fd };
        // Frames that arrived before the filter was attached are not filtered: drop them.
        let mut scratch = [0u8; 64];
        // SAFETY: the buffer is valid for its length; MSG_DONTWAIT never blocks.
        while unsafe {
            libc::recv(
                sock.fd.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        } >= 0
        {}
        Ok(sock)
    }

    /// Receives one frame that arrived on an interface (frames the host sends are
    /// skipped); returns its length and the ifindex, or `None` on timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u32)>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut alen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(io::Error::new(e.kind(), format!("recvfrom: {e}"))),
                };
            }
            let n = n as usize;
            if addr.sll_pkttype == libc::PACKET_OUTGOING || n > buf.len() {
                continue; // our own sends, or a frame too long to be a DHCP request
            }
            return Ok(Some((n, addr.sll_ifindex as u32)));
        }
    }

    /// Sends `frame` (a whole Ethernet frame) out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP_BE;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        if frame.len() >= 6 {
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("sendto: {e}")));
        }
        Ok(())
    }
}
