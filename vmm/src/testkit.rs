//! Builds the freestanding test guests in `tests/guests/` with the stable toolchain.
//!
//! Each guest is one `#![no_std] #![no_main]` Rust file sharing `tests/guests/kit.rs`. It is
//! compiled for the host target with a static relocation model and linked with
//! `-nostartfiles -nostdlib -static` and `tests/guests/link.ld`, which places `.text` at
//! 1 MiB. The result is an ELF whose entry is a 64-bit Linux-boot-protocol entry point
//! (long mode, zero page in RSI), loaded by the same path as a vmlinux.
//!
//! Builds are cached in the output directory and redone when any guest source is newer;
//! concurrent test processes build to private temporary names and rename into place.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Errors from building a guest.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// Reading sources or writing the output failed.
    #[error("guest build i/o on {path}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rustc failed.
    #[error("rustc failed building guest {name}:\n{stderr}")]
    Rustc {
        /// The guest.
        name: String,
        /// What rustc said.
        stderr: String,
    },
}

/// Where the guest sources live.
pub fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

fn newest_source(dir: &Path) -> Result<SystemTime, TestkitError> {
    let io = |source| TestkitError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let modified = entry
            .map_err(io)?
            .metadata()
            .map_err(io)?
            .modified()
            .map_err(io)?;
        newest = newest.max(modified);
    }
    Ok(newest)
}

/// Builds guest `name` (`tests/guests/<name>.rs`) into `out_dir`, returning the ELF's path.
pub fn build_guest(name: &str, out_dir: &Path) -> Result<PathBuf, TestkitError> {
    build_guest_at(name, out_dir, None)
}

/// Where a bzImage's protected-mode code is loaded (`code32_start`).
pub const BZIMAGE_LOAD: u64 = 0x10_0000;

/// Builds guest `name` as a bzImage: the guest linked with `_start` at 0x200 past
/// [`BZIMAGE_LOAD`] (the 64-bit entry of the boot protocol), flattened from its ELF load
/// segments, behind a one-sector setup header (`HdrS`, version 2.15, loaded high).
pub fn build_bzimage(name: &str, out_dir: &Path) -> Result<PathBuf, TestkitError> {
    let elf_path = build_guest_at(name, out_dir, Some(BZIMAGE_LOAD + 0x200))?;
    let out = elf_path.with_extension("bzimage");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TestkitError::Io { path, source }
    };
    let elf = std::fs::read(&elf_path).map_err(io(&elf_path))?;
    let payload = flatten(&elf, BZIMAGE_LOAD).ok_or_else(|| TestkitError::Io {
        path: elf_path.display().to_string(),
        source: std::io::Error::other("not a loadable ELF64 above the bzImage load address"),
    })?;
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects: one sector after the boot sector
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&(BZIMAGE_LOAD as u32).to_le_bytes());
    image.extend_from_slice(&payload);
    let tmp = out.with_extension(format!("bzimage.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &image).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(out)
}

/// The memory image of an ELF64's load segments from `base` up (file bytes, zero-filled).
fn flatten(elf: &[u8], base: u64) -> Option<Vec<u8>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut image = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != 1 {
            continue; // not PT_LOAD
        }
        let offset = usize::try_from(u64_at(ph + 8)?).ok()?;
        let paddr = u64_at(ph + 0x18)?;
        let filesz = usize::try_from(u64_at(ph + 0x20)?).ok()?;
        let at = usize::try_from(paddr.checked_sub(base)?).ok()?;
        if image.len() < at + filesz {
            image.resize(at + filesz, 0);
        }
        image[at..at + filesz].copy_from_slice(elf.get(offset..offset + filesz)?);
    }
    Some(image)
}

fn build_guest_at(name: &str, out_dir: &Path, base: Option<u64>) -> Result<PathBuf, TestkitError> {
    let dir = guests_dir();
    let src = dir.join(format!("{name}.rs"));
    let mut args: Vec<String> = [
        "--edition=2021",
        "--crate-type=bin",
        "-C",
        "opt-level=2",
        "-C",
        "panic=abort",
        "-C",
        "debuginfo=0",
        "-C",
        "relocation-model=static",
        // This KVM emulates guest instructions in software and has no SSE emulation: the
        // guests' own code must not use SSE (core's integer formatting does; the kit avoids it).
        "-C",
        "target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2",
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static",
        "-C",
        "link-arg=-Wl,--build-id=none",
    ]
    .map(String::from)
    .to_vec();
    args.push("-C".into());
    args.push(format!("link-arg=-T{}", dir.join("link.ld").display()));
    if let Some(base) = base {
        args.push("-C".into());
        args.push(format!("link-arg=-Wl,--defsym=KIT_BASE={base:#x}"));
    }
    // The output name carries a hash of the flags, so changing them rebuilds.
    let flags_hash = args
        .iter()
        .flat_map(|a| a.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let out = out_dir.join(format!("guest-{name}-{flags_hash:016x}"));
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TestkitError::Io { path, source }
    };
    if let Ok(meta) = std::fs::metadata(&out)
        && meta.modified().map_err(io(&out))? >= newest_source(&dir)?
    {
        return Ok(out);
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    // rustc writes intermediate objects next to its output: each build gets its own directory
    // so concurrent test processes never share them.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let build = BUILDS.fetch_add(1, Ordering::Relaxed);
    let work = out_dir.join(format!("build-{name}-{}-{build}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let tmp = work.join(format!("guest-{name}"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(&args)
        .arg("--crate-name")
        .arg(format!("guest_{name}"))
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(io(&src))?;
    let result = if output.status.success() {
        std::fs::rename(&tmp, &out).map_err(io(&out))
    } else {
        Err(TestkitError::Rustc {
            name: name.into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
        })
    };
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| out)
}
