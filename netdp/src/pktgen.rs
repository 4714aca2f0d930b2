//! A packet generator and a packet sink for benchmarks, in XDP.
//!
//! [`Generator`] transmits a frame out of an interface many times with
//! `BPF_PROG_TEST_RUN` + `BPF_F_TEST_XDP_LIVE_FRAMES` (an `XDP_TX` program run in live
//! mode); [`Sink`] counts what arrives on an interface and drops it.

use std::time::{Duration, Instant};

use aya::maps::PerCpuArray;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, include_bytes_aligned};

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pktgen.o"));

/// Errors from the generator and the sink.
#[derive(Debug, thiserror::Error)]
pub enum PktgenError {
    /// The object failed to load.
    #[error("load pktgen object")]
    Load(#[source] aya::EbpfError),
    /// A program could not be found, loaded, attached or run.
    #[error("program {0}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    /// The counters could not be read.
    #[error("read sink counters")]
    Map(#[source] aya::maps::MapError),
}

fn load(name: &'static str) -> Result<Ebpf, PktgenError> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(PktgenError::Load)?;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(PktgenError::Program(
            name,
            aya::programs::ProgramError::UnexpectedProgramType,
        ))?
        .try_into()
        .map_err(|e| PktgenError::Program(name, e))?;
    prog.load().map_err(|e| PktgenError::Program(name, e))?;
    Ok(ebpf)
}

/// Transmits frames out of an interface from XDP.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    /// Loads the `XDP_TX` program.
    pub fn load() -> Result<Self, PktgenError> {
        Ok(Generator {
            ebpf: load("xdp_tx")?,
        })
    }

    /// Sends `frame` `count` times out of `ifindex` (an interface of the calling thread's
    /// namespace); returns how long the kernel took.
    pub fn send(&self, ifindex: u32, frame: &[u8], count: u32) -> Result<Duration, PktgenError> {
        let prog: &Xdp = self
            .ebpf
            .program("xdp_tx")
            .expect("checked at load")
            .try_into()
            .map_err(|e| PktgenError::Program("xdp_tx", e))?;
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        };
        let start = Instant::now();
        prog.test_run(opts)
            .map_err(|e| PktgenError::Program("xdp_tx", e))?;
        Ok(start.elapsed())
    }
}

/// Counts and drops frames arriving on an interface.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Loads the counter and attaches it to `ifname` in the calling thread's namespace, as
    /// generic (skb-mode) XDP: it sees every way a frame can arrive, frames a tc program
    /// hands straight to the interface's ingress (`bpf_redirect_peer`) included, which
    /// native XDP on a veth does not.
    pub fn attach(ifname: &str) -> Result<Self, PktgenError> {
        let mut ebpf = load("xdp_count")?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_count")
            .expect("checked at load")
            .try_into()
            .map_err(|e| PktgenError::Program("xdp_count", e))?;
        prog.attach(ifname, XdpMode::Skb)
            .map_err(|e| PktgenError::Program("xdp_count", e))?;
        Ok(Sink { ebpf })
    }

    /// Frames counted so far, summed over CPUs.
    pub fn packets(&self) -> Result<u64, PktgenError> {
        let map = self.ebpf.map("sink_stats").ok_or(PktgenError::Map(
            aya::maps::MapError::InvalidName {
                name: "sink_stats".into(),
            },
        ))?;
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(PktgenError::Map)?;
        Ok(a.get(&0, 0).map_err(PktgenError::Map)?.iter().sum())
    }
}
