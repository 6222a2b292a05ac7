//! Where the network runs: `cpu`, `cuda` or `cuda:N` parsed into a [`DeviceSpec`] and opened into
//! a candle [`Device`], with an error that says why when it cannot be had.
//!
//! A build without the `cuda` feature says it has no CUDA support. A build with it links the CUDA
//! driver library dynamically (candle's CUDA backend requires `dynamic-linking`), so the binary
//! only starts where `libcuda.so.1` exists; there, opening `cuda:N` initialises the driver and
//! counts the GPUs before creating anything, so a machine whose driver sees no GPU, or fewer than
//! `N + 1`, gets a message instead of a failure deep inside candle.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{ModelError, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (the kernels of `fovea-kernels` with run-time SIMD dispatch).
    #[default]
    Cpu,
    /// The GPU of this CUDA ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("unknown device {text:?}: expected cpu, cuda or cuda:N");
        match text {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let ordinal = text.strip_prefix("cuda:").ok_or_else(invalid)?;
                ordinal.parse().map(DeviceSpec::Cuda).map_err(|_| invalid())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device, or [`ModelError::DeviceUnavailable`] saying why it cannot be used.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(ModelError::DeviceUnavailable(format!(
        "cannot use cuda:{ordinal}: this build has no CUDA support (build fovea with `--features cuda` on a \
         machine with the CUDA toolkit and driver; see README, GPU)"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    use cudarc::driver::{CudaContext, result};

    let unavailable = |problem: String| {
        ModelError::DeviceUnavailable(format!("cannot use cuda:{ordinal}: {problem}"))
    };
    result::init().map_err(|e| {
        unavailable(format!(
            "the CUDA driver did not initialise ({e}); is there a GPU?"
        ))
    })?;
    let count =
        CudaContext::device_count().map_err(|e| unavailable(format!("cannot count GPUs ({e})")))?;
    if ordinal >= count.max(0) as usize {
        return Err(unavailable(format!("the CUDA driver sees {count} GPU(s)")));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| unavailable(format!("cannot create a CUDA context ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
    }

    #[test]
    fn unknown_device_names_are_refused_with_the_accepted_forms() {
        for text in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "metal"] {
            let error = text.parse::<DeviceSpec>().unwrap_err();
            assert!(
                error.contains("expected cpu, cuda or cuda:N"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn cpu_opens_as_the_cpu_device() {
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_the_build_has_no_cuda_support() {
        let error = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(
            error.contains("cuda:1") && error.contains("this build has no CUDA support"),
            "{error}"
        );
    }
}
