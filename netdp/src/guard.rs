//! The ingress guard: the first XDP check on every frame entering the switch.

use aya::maps::PerCpuArray;
use aya::programs::Xdp;
use aya::{Ebpf, include_bytes_aligned};

/// The clang-built object holding `xdp_guard` and `guard_stats`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard.o"));

/// Errors from loading or querying the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The object failed to load (the verifier log is in the cause).
    #[error("load guard object")]
    Load(#[source] aya::EbpfError),
    /// The program section is missing or of the wrong type.
    #[error("find program xdp_guard")]
    Program(#[source] aya::programs::ProgramError),
    /// The program failed verification or loading.
    #[error("load program xdp_guard")]
    LoadProgram(#[source] aya::programs::ProgramError),
    /// The program could not be attached to an interface.
    #[error("attach xdp_guard to {0}")]
    Attach(String, #[source] aya::programs::ProgramError),
    /// The counters map is missing or malformed.
    #[error("open map guard_stats")]
    Map(#[source] aya::maps::MapError),
}

/// Why the guard counted a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    /// The frame went on.
    Pass = 0,
    /// Shorter than an Ethernet header.
    DropShort = 1,
    /// Source MAC is a group address.
    DropGroupSource = 2,
}

/// A loaded (not attached) guard program with its own maps.
pub struct Guard {
    ebpf: Ebpf,
}

impl Guard {
    /// Loads a fresh instance of the guard into the kernel.
    pub fn load() -> Result<Self, GuardError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(GuardError::Load)?;
        let prog: &mut Xdp = program_mut(&mut ebpf)?;
        prog.load().map_err(GuardError::LoadProgram)?;
        Ok(Guard { ebpf })
    }

    /// The XDP program, for attaching or test runs.
    pub fn program(&self) -> &Xdp {
        let prog = self.ebpf.program("xdp_guard").expect("checked at load");
        prog.try_into().expect("checked at load")
    }

    /// Attaches the guard (native XDP) to `ifname` in the calling thread's namespace, for
    /// as long as this instance lives.
    pub fn attach(&mut self, ifname: &str) -> Result<(), GuardError> {
        let prog = program_mut(&mut self.ebpf)?;
        prog.attach(ifname, aya::programs::XdpMode::Driver)
            .map_err(|e| GuardError::Attach(ifname.into(), e))?;
        Ok(())
    }

    /// How many frames were counted for `verdict`, summed over CPUs.
    pub fn count(&self, verdict: Verdict) -> Result<u64, GuardError> {
        let map = self.ebpf.map("guard_stats").ok_or(GuardError::Map(
            aya::maps::MapError::InvalidName {
                name: "guard_stats".into(),
            },
        ))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(GuardError::Map)?;
        let per_cpu = stats.get(&(verdict as u32), 0).map_err(GuardError::Map)?;
        Ok(per_cpu.iter().sum())
    }
}

/// Finds `xdp_guard` in a freshly loaded object.
fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, GuardError> {
    let prog = ebpf.program_mut("xdp_guard").ok_or(GuardError::Program(
        aya::programs::ProgramError::UnexpectedProgramType,
    ))?;
    prog.try_into().map_err(GuardError::Program)
}
