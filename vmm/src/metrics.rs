//! Process-wide counters, flushed as one JSON line to the metrics file (Firecracker's
//! `FlushMetrics` model) and readable through `GET /vm/config`'s sibling, the metrics file.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// The VMM's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Metrics {
            const fn new() -> Self {
                Metrics { $($name: AtomicU64::new(0),)* }
            }

            /// A JSON object of every counter.
            pub fn to_json(&self) -> serde_json::Value {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), self.$name.load(Ordering::Relaxed).into());)*
                serde_json::Value::Object(m)
            }
        }
    };
}

metrics! {
    /// Port-I/O reads handled.
    pio_reads,
    /// Port-I/O writes handled.
    pio_writes,
    /// MMIO reads handled.
    mmio_reads,
    /// MMIO writes handled.
    mmio_writes,
    /// Accesses that no device claimed.
    unhandled_accesses,
    /// Bytes the guest wrote to the serial console.
    serial_bytes_out,
    /// Serial writes that failed.
    serial_errors,
    /// Guest resets through the i8042.
    i8042_resets,
    /// Microseconds from VM start to the guest's boot-time write (0 until then).
    boot_time_us,
    /// API requests received.
    api_requests,
    /// API requests answered with an error.
    api_errors,
    /// Virtio-blk requests completed.
    block_requests,
    /// Virtio-blk requests that failed.
    block_errors,
    /// Times a drive's rate limiter held requests back.
    block_throttled,
    /// Frames the guest sent through virtio-net.
    net_tx_frames,
    /// Frames delivered to the guest through virtio-net.
    net_rx_frames,
    /// Frames dropped: malformed chains, oversize frames, tap errors, short buffers.
    net_errors,
    /// Times the metrics were flushed.
    flushes,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();
