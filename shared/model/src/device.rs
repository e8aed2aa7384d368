//! Device choice: `cpu`, `cuda` or `cuda:N`.
//!
//! Asking for a device that is not there is an error, never a silent fallback to the
//! CPU (see DESIGN.md, "Models").

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// What the operator asked for (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// CUDA GPU with this index (`cuda` means `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// True for `cuda` / `cuda:N`.
    pub fn is_cuda(&self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let invalid = || ModelError::InvalidDeviceSpec {
            found: s.to_string(),
        };
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let idx = t.strip_prefix("cuda:").ok_or_else(invalid)?;
                if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                idx.parse::<usize>()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| invalid())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// True when this binary was built with the `cuda` feature.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Opens the device named by `spec`.
///
/// Errors (clearly) when CUDA is asked for but this build has no CUDA support, when no
/// CUDA driver/GPU is usable, or when the GPU index does not exist.
pub fn select(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(index) => open_cuda(index),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(index: usize) -> Result<Device> {
    Err(ModelError::DeviceUnavailable(format!(
        "device cuda:{index} requested, but this binary was built without CUDA support; \
         rebuild with --features cuda"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(ModelError::DeviceUnavailable(format!(
            "device cuda:{index} requested, but CUDA is not usable on this machine \
             (no driver or no GPU found)"
        )));
    }
    Device::new_cuda(index).map_err(|e| {
        ModelError::DeviceUnavailable(format!(
            "device cuda:{index} requested, but it cannot be opened (does GPU {index} exist? \
             indices start at 0): {e}"
        ))
    })
}

/// The compute dtype for `device`: f16 on CUDA devices that run f16 kernels, f32
/// everywhere else (CPU).
///
/// Support is probed once by running a tiny f16 matmul + softmax on the device.
pub fn dtype_for(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        _ if probe_f16(device).is_ok() => DType::F16,
        _ => DType::F32,
    }
}

fn probe_f16(device: &Device) -> Result<()> {
    let a = Tensor::ones((2, 4), DType::F16, device)?;
    let b = Tensor::ones((4, 2), DType::F16, device)?;
    let c = a.matmul(&b)?;
    let s = candle_nn::ops::softmax_last_dim(&c)?;
    let v: Vec<f32> = s.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if v.iter().all(|x| (x - 0.5).abs() < 1e-3) {
        Ok(())
    } else {
        Err(ModelError::DeviceUnavailable(
            "f16 probe gave wrong results".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_specs() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            " cuda:3 ".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(3)
        );
        for s in ["cpu", "cuda:0", "cuda:7"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_invalid_specs() {
        for s in [
            "", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:+1", "cuda0", "cpu:0", "metal",
            "cuda:1:2",
        ] {
            let err = s.parse::<DeviceSpec>().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("expected `cpu`, `cuda` or `cuda:N`"),
                "{s:?}: {msg}"
            );
            assert!(msg.contains(&format!("`{s}`")), "{s:?}: {msg}");
        }
    }

    #[test]
    fn cpu_selects_cpu_in_f32() {
        let d = select(DeviceSpec::Cpu).unwrap();
        assert!(d.is_cpu());
        assert_eq!(dtype_for(&d), DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = select("cuda:0".parse().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains(
                "this binary was built without CUDA support; rebuild with --features cuda"
            ),
            "{err}"
        );
        assert!(err.contains("cuda:0"), "{err}");
        assert!(!cuda_compiled());
    }
}
