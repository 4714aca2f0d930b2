//! virtio-blk feature bits and the device configuration space.

use super::request::SECTOR_SIZE;

/// `VIRTIO_BLK_F_SIZE_MAX`.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// `VIRTIO_BLK_F_SEG_MAX`.
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_BLK_SIZE`.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u64 = 1 << 9;
/// `VIRTIO_BLK_F_TOPOLOGY`.
pub const F_TOPOLOGY: u64 = 1 << 10;
/// `VIRTIO_BLK_F_CONFIG_WCE`.
pub const F_CONFIG_WCE: u64 = 1 << 11;
/// `VIRTIO_BLK_F_MQ`.
pub const F_MQ: u64 = 1 << 12;
/// `VIRTIO_BLK_F_DISCARD`.
pub const F_DISCARD: u64 = 1 << 13;
/// `VIRTIO_BLK_F_WRITE_ZEROES`.
pub const F_WRITE_ZEROES: u64 = 1 << 14;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;

/// Offset of `writeback`, the one field a driver may write (`VIRTIO_BLK_F_CONFIG_WCE`).
pub const WRITEBACK_OFFSET: usize = 32;

/// A config-space write past the end of the config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("config space write out of range")]
pub struct ConfigWriteError;

/// What a driver's `SET_CONFIG` changes: the cache mode, if the write covers it.
///
/// Writes elsewhere in the config space are ignored, as the specification says fields
/// other than `writeback` are read-only; a write past the end is refused.
pub fn writeback_from_set_config(
    offset: u32,
    buf: &[u8],
) -> Result<Option<bool>, ConfigWriteError> {
    let start = offset as usize;
    let end = start.checked_add(buf.len()).ok_or(ConfigWriteError)?;
    if end > CONFIG_LEN {
        return Err(ConfigWriteError);
    }
    Ok((start..end)
        .contains(&WRITEBACK_OFFSET)
        .then(|| buf[WRITEBACK_OFFSET - start] != 0))
}

/// Size of the config space we expose (through `write_zeroes_may_unmap` and padding).
pub const CONFIG_LEN: usize = 60;

/// The values a volume's device advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Size in bytes (a multiple of 512).
    pub capacity: u64,
    /// Largest single segment in bytes.
    pub size_max: u32,
    /// Most data segments in one request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// log2(physical block / logical block).
    pub physical_block_exp: u8,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest discard range, in sectors.
    pub max_discard_sectors: u32,
    /// Most ranges in one discard request.
    pub max_discard_seg: u32,
    /// Discard alignment, in sectors.
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes range, in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most ranges in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// Writes are refused.
    pub read_only: bool,
}

impl DeviceConfig {
    /// Feature bits offered for this device.
    pub fn features(&self) -> u64 {
        let mut f = F_SIZE_MAX
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | F_TOPOLOGY
            | F_CONFIG_WCE
            | F_MQ
            | F_INDIRECT_DESC
            | F_EVENT_IDX
            | F_PROTOCOL_FEATURES
            | F_VERSION_1;
        if self.read_only {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }

    /// The config space as the driver reads it (little-endian `struct virtio_blk_config`).
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&(self.capacity / SECTOR_SIZE).to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // geometry (16..20) stays zero
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        // alignment_offset (25) = 0; min_io_size (26..28) in logical blocks
        b[26..28].copy_from_slice(&1u16.to_le_bytes());
        // opt_io_size (28..32) = 0: no preference
        b[WRITEBACK_OFFSET] = 1; // writeback: a volatile cache, made durable by flush
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = 1; // write_zeroes_may_unmap
        b
    }

    /// The slice of the config space a `GET_CONFIG` at `offset` of `size` bytes asks for,
    /// with the driver's current cache mode; empty when out of range.
    pub fn read(&self, offset: u32, size: u32, writeback: bool) -> Vec<u8> {
        let mut bytes = self.to_bytes();
        bytes[WRITEBACK_OFFSET] = u8::from(writeback);
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(read_only: bool) -> DeviceConfig {
        DeviceConfig {
            capacity: 1 << 30,
            size_max: 1 << 20,
            seg_max: 128,
            blk_size: 512,
            physical_block_exp: 3,
            num_queues: 4,
            max_discard_sectors: 1 << 22,
            max_discard_seg: 1,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 1 << 22,
            max_write_zeroes_seg: 1,
            read_only,
        }
    }

    #[test]
    fn layout_matches_virtio_blk_config() {
        let b = cfg(false).to_bytes();
        assert_eq!(
            u64::from_le_bytes(b[0..8].try_into().unwrap()),
            2 * 1024 * 1024
        );
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 128);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
        assert_eq!(b[24], 3);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 8);
    }

    #[test]
    fn read_only_devices_offer_ro_and_no_discard() {
        assert_ne!(cfg(true).features() & F_RO, 0);
        assert_eq!(cfg(true).features() & (F_DISCARD | F_WRITE_ZEROES), 0);
        assert_eq!(cfg(false).features() & F_RO, 0);
        assert_ne!(cfg(false).features() & F_VERSION_1, 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        assert_eq!(
            cfg(false).read(0, 8, true),
            cfg(false).to_bytes()[..8].to_vec()
        );
        assert!(cfg(false).read(56, 8, true).is_empty());
        assert!(cfg(false).read(u32::MAX, 2, true).is_empty());
    }

    #[test]
    fn only_the_cache_mode_is_writable() {
        assert_eq!(cfg(false).read(32, 1, false), vec![0]);
        assert_eq!(cfg(false).read(32, 1, true), vec![1]);
        assert_eq!(writeback_from_set_config(32, &[0]), Ok(Some(false)));
        assert_eq!(writeback_from_set_config(30, &[9, 9, 1, 0]), Ok(Some(true)));
        assert_eq!(writeback_from_set_config(0, &[0; 8]), Ok(None));
        assert_eq!(
            writeback_from_set_config(58, &[0; 8]),
            Err(ConfigWriteError)
        );
        assert_eq!(
            writeback_from_set_config(u32::MAX, &[0; 2]),
            Err(ConfigWriteError)
        );
    }
}
