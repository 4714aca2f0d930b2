//! virtio-blk requests: splitting a descriptor chain into header, data and status, and
//! checking the request against the device's limits before any I/O is issued.
//!
//! Everything here is pure: descriptor chains come from the guest (or any vhost-user
//! frontend) and are untrusted, so every function returns an error instead of panicking and
//! is property-tested against arbitrary chains.

/// Size of the request header (`type`, `reserved`, `sector`).
pub const HEADER_LEN: usize = 16;
/// Bytes in a sector, the unit of `sector` fields.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the device id returned by `GET_ID`.
pub const ID_BYTES: usize = 20;
/// Size of one discard / write-zeroes range descriptor.
pub const RANGE_LEN: usize = 16;

/// `VIRTIO_BLK_T_IN`.
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`.
pub const T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`.
pub const T_WRITE_ZEROES: u32 = 13;

/// Request status byte written back to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupp = 2,
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (`VRING_DESC_F_WRITE`).
    pub device_writable: bool,
}

/// A chain cut into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Guest address of the 16-byte header.
    pub header: u64,
    /// The data buffers between header and status, in order.
    pub data: Vec<Segment>,
    /// Guest address of the status byte.
    pub status: u64,
}

/// Why a chain is not a well-formed virtio-blk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptors.
    #[error("empty descriptor chain")]
    Empty,
    /// The first descriptor is shorter than the header or device-writable.
    #[error("first descriptor does not hold a readable 16-byte header")]
    BadHeader,
    /// The last descriptor is not device-writable (no place for the status byte).
    #[error("last descriptor is not writable: no room for the status byte")]
    NoStatus,
    /// An address plus length overflows.
    #[error("descriptor address range overflows")]
    Overflow,
}

/// Cuts a chain into header, data and status, accepting any layout: the header may share
/// its descriptor with data, and the status byte may be the tail of the last data buffer.
pub fn split(chain: &[Segment]) -> Result<Split, ChainError> {
    let (first, last) = match chain {
        [] => return Err(ChainError::Empty),
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
    };
    if first.device_writable || (first.len as usize) < HEADER_LEN {
        return Err(ChainError::BadHeader);
    }
    if !last.device_writable || last.len == 0 {
        return Err(ChainError::NoStatus);
    }
    for s in chain {
        s.addr
            .checked_add(u64::from(s.len))
            .ok_or(ChainError::Overflow)?;
    }
    if chain.len() == 1 {
        // A single descriptor cannot be both readable (header) and writable (status).
        return Err(ChainError::NoStatus);
    }
    let status = last.addr + u64::from(last.len) - 1;
    let mut data = Vec::with_capacity(chain.len().saturating_sub(2) + 2);
    if first.len as usize > HEADER_LEN {
        data.push(Segment {
            addr: first.addr + HEADER_LEN as u64,
            len: first.len - HEADER_LEN as u32,
            device_writable: false,
        });
    }
    data.extend_from_slice(&chain[1..chain.len() - 1]);
    if last.len > 1 {
        data.push(Segment {
            addr: last.addr,
            len: last.len - 1,
            device_writable: true,
        });
    }
    Ok(Split {
        header: first.addr,
        data,
        status,
    })
}

/// Where the header and the status byte of a chain are (see [`split_in_place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Guest address of the 16-byte header.
    pub header: u64,
    /// Guest address of the status byte.
    pub status: u64,
}

/// [`split`] without allocating: checks `chain` the same way and cuts it down, in place, to
/// the data segments, so a worker can reuse one buffer for every request.
pub fn split_in_place(chain: &mut Vec<Segment>) -> Result<Ends, ChainError> {
    let (first, last) = match chain.as_slice() {
        [] => return Err(ChainError::Empty),
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
    };
    if first.device_writable || (first.len as usize) < HEADER_LEN {
        return Err(ChainError::BadHeader);
    }
    if !last.device_writable || last.len == 0 {
        return Err(ChainError::NoStatus);
    }
    for s in chain.iter() {
        s.addr
            .checked_add(u64::from(s.len))
            .ok_or(ChainError::Overflow)?;
    }
    if chain.len() == 1 {
        return Err(ChainError::NoStatus);
    }
    let ends = Ends {
        header: first.addr,
        status: last.addr + u64::from(last.len) - 1,
    };
    // The tail first: the chain has at least two entries, so head and tail are distinct.
    if last.len > 1 {
        let n = chain.len();
        chain[n - 1].len = last.len - 1;
    } else {
        chain.pop();
    }
    if first.len as usize > HEADER_LEN {
        chain[0] = Segment {
            addr: first.addr + HEADER_LEN as u64,
            len: first.len - HEADER_LEN as u32,
            device_writable: false,
        };
    } else {
        chain.remove(0);
    }
    Ok(ends)
}

/// The decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request type (`T_*`).
    pub kind: u32,
    /// First sector.
    pub sector: u64,
}

impl Header {
    /// Decodes the little-endian header bytes.
    pub fn from_bytes(b: [u8; HEADER_LEN]) -> Header {
        let kind = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let sector = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        Header { kind, sector }
    }
}

/// What the device accepts; checked before any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Device size in bytes.
    pub capacity: u64,
    /// Maximum data segments (`seg_max`).
    pub seg_max: u32,
    /// Maximum bytes in one segment (`size_max`).
    pub size_max: u32,
    /// Maximum ranges in one discard / write-zeroes request.
    pub max_ranges: u32,
    /// Maximum sectors one discard / write-zeroes range may cover.
    pub max_range_sectors: u32,
    /// Whether writes are refused.
    pub read_only: bool,
}

/// A request that passed validation: what to do, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at byte `offset` into the (device-writable) data segments.
    Read {
        /// Byte offset in the volume.
        offset: u64,
        /// Total bytes.
        len: u64,
    },
    /// Write the data segments at byte `offset`.
    Write {
        /// Byte offset in the volume.
        offset: u64,
        /// Total bytes.
        len: u64,
    },
    /// Make every completed write durable.
    Flush,
    /// Copy the device id into the data segments.
    GetId,
    /// Deallocate the ranges listed in the data segments.
    Discard,
    /// Zero the ranges listed in the data segments.
    WriteZeroes,
}

/// Checks a split request against the limits; `Err` is the status to answer with.
pub fn validate(header: Header, data: &[Segment], limits: &Limits) -> Result<Op, Status> {
    let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    let all = |writable: bool| data.iter().all(|s| s.device_writable == writable);
    match header.kind {
        T_IN | T_OUT => {
            let is_read = header.kind == T_IN;
            if !is_read && limits.read_only {
                return Err(Status::IoErr);
            }
            if !all(is_read) || data.is_empty() {
                return Err(Status::IoErr);
            }
            if data.len() > limits.seg_max as usize || data.iter().any(|s| s.len > limits.size_max)
            {
                return Err(Status::IoErr);
            }
            if !total.is_multiple_of(SECTOR_SIZE) {
                return Err(Status::IoErr);
            }
            let offset = header
                .sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(Status::IoErr)?;
            let end = offset.checked_add(total).ok_or(Status::IoErr)?;
            if end > limits.capacity {
                return Err(Status::IoErr);
            }
            Ok(if is_read {
                Op::Read { offset, len: total }
            } else {
                Op::Write { offset, len: total }
            })
        }
        T_FLUSH => Ok(Op::Flush),
        T_GET_ID => {
            if data.is_empty() || !all(true) {
                return Err(Status::IoErr);
            }
            Ok(Op::GetId)
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if limits.read_only {
                return Err(Status::IoErr);
            }
            if data.is_empty()
                || !all(false)
                || !total.is_multiple_of(RANGE_LEN as u64)
                || total / RANGE_LEN as u64 > u64::from(limits.max_ranges)
            {
                return Err(Status::IoErr);
            }
            Ok(if header.kind == T_DISCARD {
                Op::Discard
            } else {
                Op::WriteZeroes
            })
        }
        _ => Err(Status::Unsupp),
    }
}

/// One discard / write-zeroes range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the zeroed range may be deallocated.
    pub unmap: bool,
}

/// Decodes and checks one 16-byte range descriptor.
pub fn parse_range(b: [u8; RANGE_LEN], limits: &Limits) -> Result<Range, Status> {
    let sector = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let sectors = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    if sectors > limits.max_range_sectors || flags & !1 != 0 {
        return Err(Status::IoErr);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Status::IoErr)?;
    let len = u64::from(sectors) * SECTOR_SIZE;
    if offset
        .checked_add(len)
        .is_none_or(|end| end > limits.capacity)
    {
        return Err(Status::IoErr);
    }
    Ok(Range {
        offset,
        len,
        unmap: flags & 1 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(addr: u64, len: u32, w: bool) -> Segment {
        Segment {
            addr,
            len,
            device_writable: w,
        }
    }

    const LIMITS: Limits = Limits {
        capacity: 1 << 20,
        seg_max: 4,
        size_max: 65536,
        max_ranges: 2,
        max_range_sectors: 1024,
        read_only: false,
    };

    fn hdr(kind: u32, sector: u64) -> Header {
        Header { kind, sector }
    }

    #[test]
    fn split_separate_descriptors() {
        let s = split(&[
            seg(0x1000, 16, false),
            seg(0x2000, 4096, true),
            seg(0x3000, 1, true),
        ])
        .unwrap();
        assert_eq!(s.header, 0x1000);
        assert_eq!(s.data, vec![seg(0x2000, 4096, true)]);
        assert_eq!(s.status, 0x3000);
    }

    #[test]
    fn split_any_layout() {
        // Header and data in one readable buffer; data and status in one writable buffer.
        let s = split(&[seg(0x1000, 16 + 512, false), seg(0x5000, 513, true)]).unwrap();
        assert_eq!(
            s.data,
            vec![seg(0x1010, 512, false), seg(0x5000, 512, true)]
        );
        assert_eq!(s.status, 0x5000 + 512);
    }

    #[test]
    fn split_rejects_malformed_chains() {
        assert_eq!(split(&[]), Err(ChainError::Empty));
        assert_eq!(
            split(&[seg(0, 8, false), seg(8, 1, true)]),
            Err(ChainError::BadHeader)
        );
        assert_eq!(
            split(&[seg(0, 16, true), seg(8, 1, true)]),
            Err(ChainError::BadHeader)
        );
        assert_eq!(
            split(&[seg(0, 16, false), seg(8, 1, false)]),
            Err(ChainError::NoStatus)
        );
        assert_eq!(split(&[seg(0, 17, false)]), Err(ChainError::NoStatus));
        assert_eq!(
            split(&[seg(0, 16, false), seg(u64::MAX, 2, true)]),
            Err(ChainError::Overflow)
        );
    }

    #[test]
    fn header_decoding() {
        let mut b = [0u8; 16];
        b[0] = 1;
        b[8..16].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(Header::from_bytes(b), hdr(T_OUT, 77));
    }

    #[test]
    fn reads_and_writes_within_limits() {
        let r = [seg(0, 4096, true)];
        assert_eq!(
            validate(hdr(T_IN, 8,), &r, &LIMITS),
            Ok(Op::Read {
                offset: 4096,
                len: 4096
            })
        );
        let w = [seg(0, 512, false), seg(9000, 512, false)];
        assert_eq!(
            validate(hdr(T_OUT, 0), &w, &LIMITS),
            Ok(Op::Write {
                offset: 0,
                len: 1024
            })
        );
    }

    #[test]
    fn bad_requests_get_ioerr_or_unsupp() {
        let r = [seg(0, 4096, true)];
        // Out of range: the last sector plus one.
        assert_eq!(validate(hdr(T_IN, 2047), &r, &LIMITS), Err(Status::IoErr));
        assert_eq!(
            validate(hdr(T_IN, u64::MAX), &r, &LIMITS),
            Err(Status::IoErr)
        );
        // Wrong direction.
        assert_eq!(validate(hdr(T_OUT, 0), &r, &LIMITS), Err(Status::IoErr));
        // Write to a read-only device.
        let ro = Limits {
            read_only: true,
            ..LIMITS
        };
        assert_eq!(
            validate(hdr(T_OUT, 0), &[seg(0, 512, false)], &ro),
            Err(Status::IoErr)
        );
        // Too many segments, too large a segment, not sector-sized.
        let many = [seg(0, 512, true); 5];
        assert_eq!(validate(hdr(T_IN, 0), &many, &LIMITS), Err(Status::IoErr));
        assert_eq!(
            validate(hdr(T_IN, 0), &[seg(0, 131072, true)], &LIMITS),
            Err(Status::IoErr)
        );
        assert_eq!(
            validate(hdr(T_IN, 0), &[seg(0, 100, true)], &LIMITS),
            Err(Status::IoErr)
        );
        // Unknown type.
        assert_eq!(validate(hdr(99, 0), &r, &LIMITS), Err(Status::Unsupp));
        // Discard with too many ranges.
        assert_eq!(
            validate(hdr(T_DISCARD, 0), &[seg(0, 48, false)], &LIMITS),
            Err(Status::IoErr)
        );
        assert_eq!(
            validate(hdr(T_DISCARD, 0), &[seg(0, 32, false)], &LIMITS),
            Ok(Op::Discard)
        );
    }

    #[test]
    fn ranges() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&2u64.to_le_bytes());
        b[8..12].copy_from_slice(&4u32.to_le_bytes());
        b[12] = 1;
        assert_eq!(
            parse_range(b, &LIMITS),
            Ok(Range {
                offset: 1024,
                len: 2048,
                unmap: true
            })
        );
        b[12] = 2; // unknown flag
        assert_eq!(parse_range(b, &LIMITS), Err(Status::IoErr));
        b[12] = 0;
        b[0..8].copy_from_slice(&2047u64.to_le_bytes()); // runs past the end
        assert_eq!(parse_range(b, &LIMITS), Err(Status::IoErr));
    }

    fn any_segment() -> impl Strategy<Value = Segment> {
        (any::<u64>(), 0u32..70_000, any::<bool>()).prop_map(|(addr, len, w)| Segment {
            addr,
            len,
            device_writable: w,
        })
    }

    proptest! {
        #[test]
        fn split_of_arbitrary_chains_is_consistent(chain in prop::collection::vec(any_segment(), 0..8)) {
            if let Ok(s) = split(&chain) {
                let total: u64 = chain.iter().map(|s| u64::from(s.len)).sum();
                let data: u64 = s.data.iter().map(|s| u64::from(s.len)).sum();
                // Every byte is header, data or status, exactly once.
                prop_assert_eq!(total, HEADER_LEN as u64 + data + 1);
                let last = chain[chain.len() - 1];
                prop_assert!(s.status >= last.addr && s.status < last.addr + u64::from(last.len));
                prop_assert!(s.data.iter().all(|d| d.len > 0));
            }
        }

        #[test]
        fn split_in_place_agrees_with_split(chain in prop::collection::vec(any_segment(), 0..8)) {
            let mut buf = chain.clone();
            match (split(&chain), split_in_place(&mut buf)) {
                (Ok(s), Ok(ends)) => {
                    prop_assert_eq!(ends, Ends { header: s.header, status: s.status });
                    prop_assert_eq!(buf, s.data);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "split {:?} but split_in_place {:?}", a, b),
            }
        }

        #[test]
        fn accepted_io_stays_within_the_device(
            kind in prop::sample::select(vec![T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 7]),
            sector in any::<u64>(),
            data in prop::collection::vec(any_segment(), 0..6),
            ro in any::<bool>(),
        ) {
            let limits = Limits { read_only: ro, ..LIMITS };
            match validate(Header { kind, sector }, &data, &limits) {
                Ok(Op::Read { offset, len }) | Ok(Op::Write { offset, len }) => {
                    prop_assert!(offset + len <= limits.capacity);
                    prop_assert!(data.len() <= limits.seg_max as usize);
                    prop_assert!(data.iter().all(|s| s.len <= limits.size_max));
                    prop_assert!(kind == T_IN || !ro);
                }
                Ok(Op::Discard) | Ok(Op::WriteZeroes) => prop_assert!(!ro),
                _ => {}
            }
        }

        #[test]
        fn accepted_ranges_stay_within_the_device(b in any::<[u8; 16]>()) {
            if let Ok(r) = parse_range(b, &LIMITS) {
                prop_assert!(r.offset + r.len <= LIMITS.capacity);
            }
        }
    }
}
