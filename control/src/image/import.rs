//! Interoperable image import (`glance-direct`): data staged in a local file, inspected
//! with `qemu-img info`, converted to raw with `qemu-img convert` when configured, then
//! stored like an upload. Images with a backing file or a data file are refused (they
//! could make qemu-img read any file on this host).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Errors inspecting or converting staged data.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// qemu-img could not be run.
    #[error("run qemu-img")]
    Spawn(#[source] std::io::Error),
    /// qemu-img failed.
    #[error("qemu-img {0} failed: {1}")]
    Failed(&'static str, String),
    /// Its output did not parse.
    #[error("qemu-img info output did not parse")]
    Parse(#[source] serde_json::Error),
    /// The data is not what the image says it is.
    #[error("the staged data is {found}, but the image's disk_format is {declared}")]
    FormatMismatch {
        /// What qemu-img found.
        found: String,
        /// What the image says.
        declared: String,
    },
    /// The image refers to other files.
    #[error("images with a backing file or an external data file are refused")]
    External,
}

/// What `qemu-img info` says about a file.
#[derive(Debug, Deserialize)]
pub struct Info {
    /// Detected format.
    pub format: String,
    /// Size of the virtual disk.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// A backing file, if any.
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    /// Format-specific data (qcow2 external data files live here).
    #[serde(rename = "format-specific")]
    pub format_specific: Option<serde_json::Value>,
}

/// Inspects `path` (format probed by qemu-img, never trusting the image's claim).
pub fn info(path: &Path) -> Result<Info, ImportError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(ImportError::Spawn)?;
    if !out.status.success() {
        return Err(ImportError::Failed(
            "info",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let info: Info = serde_json::from_slice(&out.stdout).map_err(ImportError::Parse)?;
    let data_file = info
        .format_specific
        .as_ref()
        .and_then(|f| f.get("data"))
        .and_then(|d| d.get("data-file"))
        .is_some();
    if info.backing_filename.is_some() || data_file {
        return Err(ImportError::External);
    }
    Ok(info)
}

/// Checks the staged data against the declared disk format and converts it when asked.
/// Returns the file to store, its disk format and virtual size.
pub fn prepare(
    staged: &Path,
    declared: Option<&str>,
    convert_to: &str,
) -> Result<(PathBuf, String, u64), ImportError> {
    let i = info(staged)?;
    if let Some(d) = declared
        && d != i.format
        && !(d == "iso" && i.format == "raw")
    {
        return Err(ImportError::FormatMismatch {
            found: i.format,
            declared: d.to_string(),
        });
    }
    if convert_to == "raw" && i.format == "qcow2" {
        let out_path = staged.with_extension("raw");
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(staged)
            .arg(&out_path)
            .output()
            .map_err(ImportError::Spawn)?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&out_path);
            return Err(ImportError::Failed(
                "convert",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        return Ok((out_path, "raw".into(), i.virtual_size));
    }
    Ok((staged.to_path_buf(), i.format, i.virtual_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img() -> bool {
        Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn qcow2_becomes_raw_and_backing_files_are_refused() {
        if !qemu_img() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "qemu-img missing"
            );
            eprintln!("SKIP: qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        let mut data = vec![0u8; 1 << 20];
        data[4096..4100].copy_from_slice(b"boot");
        std::fs::write(&raw, &data).unwrap();
        let q = dir.path().join("img.qcow2");
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q)
            .status()
            .unwrap();
        assert!(st.success());
        let (out, fmt, vsize) = prepare(&q, Some("qcow2"), "raw").unwrap();
        assert_eq!(fmt, "raw");
        assert_eq!(vsize, 1 << 20);
        assert_eq!(std::fs::read(out).unwrap(), data);
        // Declared raw but it is qcow2: refused.
        assert!(matches!(
            prepare(&q, Some("raw"), "raw"),
            Err(ImportError::FormatMismatch { .. })
        ));
        // Without conversion it stays qcow2.
        let (same, fmt, _) = prepare(&q, Some("qcow2"), "").unwrap();
        assert_eq!((same, fmt.as_str()), (q.clone(), "qcow2"));
        // A backing file: refused.
        let overlay = dir.path().join("overlay.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&raw)
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        assert!(matches!(
            prepare(&overlay, Some("qcow2"), "raw"),
            Err(ImportError::External)
        ));
        // Garbage declared as qcow2: refused.
        assert!(prepare(&raw, Some("qcow2"), "raw").is_err());
    }
}
