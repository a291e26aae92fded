//! Where a job's tensors live and its matrix products run: the CPU, or a CUDA GPU when the
//! binary was built with the `cuda` feature. One type that both faces parse and show, so the
//! CLI's `--device` and the app's device picker accept and print the same spellings.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A compute device as the user names it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    pub fn is_cpu(self) -> bool {
        self == Self::Cpu
    }

    /// Whether this build can run on CUDA GPUs at all.
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

    /// The devices worth offering in a picker: the CPU, and GPU 0 when the build has CUDA.
    pub fn offered() -> Vec<Self> {
        if Self::CUDA_BUILT {
            vec![Self::Cpu, Self::Cuda(0)]
        } else {
            vec![Self::Cpu]
        }
    }

    /// What the device computes with, in the run key: the device kind alone, since a GPU's
    /// index does not change any result. `None` for the CPU, so CPU runs keep the keys they
    /// had before devices existed.
    pub fn key_kind(self) -> Option<&'static str> {
        match self {
            Self::Cpu => None,
            Self::Cuda(_) => Some("cuda"),
        }
    }

    /// Opens the device. A CUDA choice fails with a clear message when the binary was built
    /// without the `cuda` feature or when the GPU cannot be opened (no driver, bad index).
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(index) => open_cuda(index),
        }
    }
}

/// One candle device per GPU for the whole process: candle gives every `new_cuda` its own
/// identity (and stream), and tensors of two identities cannot meet in one operation, so jobs
/// and the models they share must all use the same one.
#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> anyhow::Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPENED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut opened = OPENED
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| anyhow::anyhow!("the CUDA device table was poisoned by a panic"))?;
    if let Some(device) = opened.get(&index) {
        return Ok(device.clone());
    }
    // cudarc panics when a CUDA library cannot be loaded at all (no driver): an error here.
    let device = std::panic::catch_unwind(|| Device::new_cuda(index))
        .map_err(|_| {
            anyhow::anyhow!(
                "opening CUDA device {index}: the CUDA driver or libraries could not be loaded \
                 (is this a machine with an NVIDIA GPU, and are libcublas/libcurand/libnvrtc 13 \
                 on LD_LIBRARY_PATH?)"
            )
        })?
        .map_err(|e| anyhow::anyhow!("opening CUDA device {index}: {e}"))?;
    opened.insert(index, device.clone());
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(index: usize) -> anyhow::Result<Device> {
    anyhow::bail!(
        "device cuda:{index}: this reparam was built without CUDA support; build it with \
         `cargo build --release --features cuda` (see docs/gpu.md)"
    )
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => return Ok(Self::Cpu),
            "cuda" | "gpu" => return Ok(Self::Cuda(0)),
            _ => {}
        }
        if let Some(index) = s.strip_prefix("cuda:") {
            return index
                .parse()
                .map(Self::Cuda)
                .map_err(|_| format!("`{s}`: the GPU index after `cuda:` must be a number"));
        }
        Err(format!(
            "`{s}`: expected `cpu`, `cuda` or `cuda:N` (N the GPU's index)"
        ))
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for (text, want) in [
            ("cpu", DeviceChoice::Cpu),
            ("CUDA", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            let got: DeviceChoice = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<DeviceChoice>().unwrap(), want);
        }
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("cuda"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_a_gpu_enters_the_run_key() {
        assert_eq!(DeviceChoice::Cpu.key_kind(), None);
        assert_eq!(
            DeviceChoice::Cuda(0).key_kind(),
            DeviceChoice::Cuda(7).key_kind()
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_with_the_way_out() {
        let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }
}
