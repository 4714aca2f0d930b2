//! A tap device opened for a virtio-net backend: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, with a
//! 12-byte vnet header (virtio 1.x `virtio_net_hdr_v1`), non-blocking.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The tap may hand us frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// ... TCP segments up to 64 KiB over IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// ... and over IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETVNETHDRSZ`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// Size of the vnet header on the tap and in guest buffers.
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty or too long.
    #[error("invalid tap name {0:?}")]
    Name(String),
    /// Opening `/dev/net/tun` failed.
    #[error("open /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// A tun ioctl failed.
    #[error("{what} on tap {name}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The tap.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Opens (or creates, if it does not exist) tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_with(name, false)
    }

    /// Opens `queues` queues of multi-queue tap `name` (one plain open when `queues` is 1).
    pub fn open_queues(name: &str, queues: u16) -> Result<Vec<Tap>, TapError> {
        if queues <= 1 {
            return Ok(vec![Tap::open(name)?]);
        }
        (0..queues).map(|_| Tap::open_with(name, true)).collect()
    }

    fn open_with(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= 16 || name.contains('\0') {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP
                | IFF_NO_PI
                | IFF_VNET_HDR
                | if multi_queue { IFF_MULTI_QUEUE } else { 0 },
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl_err = |what| TapError::Ioctl {
            what,
            name: name.into(),
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: `req` is a valid `struct ifreq` prefix of the size the kernel reads.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF"));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        Ok(Tap { file })
    }

    /// A stand-in tap over any file (a datagram socket in tests).
    #[cfg(test)]
    pub fn from_file(file: File) -> Tap {
        Tap { file }
    }

    /// Reads one frame (with its vnet header); `WouldBlock` when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }

    /// Tells the kernel which offloads the guest accepts on frames it receives.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The file descriptor, for polling.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
