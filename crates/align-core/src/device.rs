//! Run-time backend selection: one function maps a name to a burn [`Device`].
//!
//! burn 0.22 has no backend type parameter; the backend is a property of the [`Device`] value.
//! Which backends exist in a binary is decided by Cargo features (`flex`, `ndarray`, `wgpu`,
//! `cuda`), which only leaf crates (the CLI, xtask, benches, tests) switch on. At run time the
//! choice comes from a command-line flag or, failing that, the `BURN_DEVICE` environment
//! variable, and defaults to `flex`, the pure-Rust CPU backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{CoreError, Result};

/// Name of the environment variable read by [`select_device`].
pub const DEVICE_ENV: &str = "BURN_DEVICE";

/// The backends `align` knows how to build a [`Device`] for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `flex`: burn's pure-Rust CPU backend (SIMD + rayon). The default.
    Flex,
    /// `ndarray`: burn's older CPU backend (deprecated upstream), kept for cross-checks.
    Ndarray,
    /// `wgpu`: the best adapter wgpu finds (GPU if any).
    Wgpu,
    /// `wgpu-cpu`: wgpu on a CPU adapter, e.g. Mesa lavapipe; tests the GPU code path on CI.
    WgpuCpu,
    /// `cuda` or `cuda:N`: NVIDIA GPU number N (0 by default).
    Cuda(usize),
}

impl Backend {
    /// The Cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu | Backend::WgpuCpu => "wgpu",
            Backend::Cuda(_) => "cuda",
        }
    }

    /// Whether repeating a computation on this backend reproduces it bit for bit.
    ///
    /// True for the CPU backends. CubeCL backends (wgpu, cuda) autotune their kernels at run
    /// time: the first calls of a shape may run different kernels (different summation
    /// orders), so re-scoring a stored transition agrees with its rollout log-prob only to
    /// about `ε_f32 · |μ| / σ` there (a few 1e-6 on late steps), and the PPO ratio at
    /// `θ = θ_old` is `1 ± 1e-5` rather than exactly 1. Host-keyed noise is unaffected.
    pub fn is_bitwise_reproducible(&self) -> bool {
        matches!(self, Backend::Flex | Backend::Ndarray)
    }

    /// Whether this binary was compiled with the backend.
    pub fn is_compiled(&self) -> bool {
        compiled_backends().contains(&self.feature())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Flex => write!(f, "flex"),
            Backend::Ndarray => write!(f, "ndarray"),
            Backend::Wgpu => write!(f, "wgpu"),
            Backend::WgpuCpu => write!(f, "wgpu-cpu"),
            Backend::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Backend {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        let bad = |reason: String| CoreError::Device {
            requested: s.to_string(),
            reason,
        };
        match name.as_str() {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::Ndarray),
            "wgpu" => Ok(Backend::Wgpu),
            "wgpu-cpu" | "lavapipe" => Ok(Backend::WgpuCpu),
            "cuda" => Ok(Backend::Cuda(0)),
            other => {
                if let Some(index) = other.strip_prefix("cuda:") {
                    index
                        .parse::<usize>()
                        .map(Backend::Cuda)
                        .map_err(|_| bad(format!("`{index}` is not a GPU index")))
                } else {
                    Err(bad(format!(
                        "unknown backend; expected one of flex, ndarray, wgpu, wgpu-cpu, cuda[:N] \
                         (compiled in: {})",
                        compiled_backends().join(", ")
                    )))
                }
            }
        }
    }
}

/// The backend features compiled into this binary, in preference order.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "flex") {
        out.push("flex");
    }
    if cfg!(feature = "ndarray") {
        out.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        out.push("cuda");
    }
    out
}

/// Whether `device` is a CPU backend without autodiff (flex or ndarray), whose tensors are
/// plain host arrays: moving one out (`into_data`), computing on it with host code and moving
/// it back in (`from_data`) costs no device transfer. Used by `align_models::activation`.
///
/// # Example
/// ```
/// use align_core::{is_host_array_device, select_device};
/// let flex = select_device(Some("flex")).unwrap();
/// assert!(is_host_array_device(&flex));
/// assert!(!is_host_array_device(&flex.autodiff()));
/// ```
pub fn is_host_array_device(device: &Device) -> bool {
    if device.is_autodiff() {
        return false;
    }
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    if *device == Device::ndarray() {
        return true;
    }
    false
}

/// Builds the [`Device`] for a backend, or explains why it cannot.
pub fn device_for(backend: Backend) -> Result<Device> {
    let missing = || CoreError::Device {
        requested: backend.to_string(),
        reason: format!(
            "this binary was built without the `{}` feature (compiled in: {})",
            backend.feature(),
            if compiled_backends().is_empty() {
                "none".to_string()
            } else {
                compiled_backends().join(", ")
            }
        ),
    };
    match backend {
        Backend::Flex => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[allow(unreachable_code)]
            Err(missing())
        }
        Backend::Ndarray => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(Device::ndarray());
            #[allow(unreachable_code)]
            Err(missing())
        }
        Backend::Wgpu => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            #[allow(unreachable_code)]
            Err(missing())
        }
        Backend::WgpuCpu => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu));
            #[allow(unreachable_code)]
            Err(missing())
        }
        Backend::Cuda(_index) => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(_index));
            #[allow(unreachable_code)]
            Err(missing())
        }
    }
}

/// Resolves the backend to use: the explicit `choice` (a CLI flag) wins, then the
/// `BURN_DEVICE` environment variable, then `flex`.
pub fn resolve_backend(choice: Option<&str>) -> Result<Backend> {
    match choice {
        Some(name) => name.parse(),
        None => match std::env::var(DEVICE_ENV) {
            Ok(name) if !name.trim().is_empty() => name.parse().map_err(|e| match e {
                CoreError::Device { requested, reason } => CoreError::Device {
                    requested: format!("{DEVICE_ENV}={requested}"),
                    reason,
                },
                other => other,
            }),
            _ => Ok(Backend::Flex),
        },
    }
}

/// The one place where `align` turns a user's choice into a [`Device`].
///
/// `choice` is the value of a `--device` flag if one was given; otherwise `BURN_DEVICE` is read;
/// otherwise `flex` is used. The returned device has no autodiff; call `.autodiff()` on it for
/// training.
///
/// # Errors
/// [`CoreError::Device`] if the name is unknown or the backend is not compiled in.
///
/// # Example
/// ```
/// let device = align_core::select_device(Some("flex")).expect("flex is compiled in");
/// assert!(!device.is_autodiff());
/// assert!(align_core::select_device(Some("tpu")).is_err());
/// ```
pub fn select_device(choice: Option<&str>) -> Result<Device> {
    device_for(resolve_backend(choice)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_name() {
        assert_eq!("flex".parse::<Backend>().unwrap(), Backend::Flex);
        assert_eq!(" NDARRAY ".parse::<Backend>().unwrap(), Backend::Ndarray);
        assert_eq!("wgpu".parse::<Backend>().unwrap(), Backend::Wgpu);
        assert_eq!("wgpu-cpu".parse::<Backend>().unwrap(), Backend::WgpuCpu);
        assert_eq!("cuda".parse::<Backend>().unwrap(), Backend::Cuda(0));
        assert_eq!("cuda:3".parse::<Backend>().unwrap(), Backend::Cuda(3));
    }

    #[test]
    fn rejects_unknown_names_with_the_name_in_the_message() {
        let err = "tpu".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
        let err = "cuda:x".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("not a GPU index"), "{err}");
    }

    #[test]
    fn flag_overrides_and_flex_is_compiled_in_tests() {
        assert_eq!(resolve_backend(Some("flex")).unwrap(), Backend::Flex);
        assert!(Backend::Flex.is_compiled());
        assert!(select_device(Some("flex")).is_ok());
    }

    #[test]
    fn missing_backend_is_a_clear_error() {
        if !Backend::Cuda(0).is_compiled() {
            let err = select_device(Some("cuda")).unwrap_err();
            assert!(err.to_string().contains("`cuda` feature"), "{err}");
        }
    }
}
