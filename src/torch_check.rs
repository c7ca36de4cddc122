//! Proves the libtorch set-up: builds a tensor, runs a matrix product and reports the device that
//! `Device::cuda_if_available()` picks.

/// What libtorch says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchInfo {
    /// `Device::cuda_if_available()` as text (`Cpu` or `Cuda(0)`).
    pub device: String,
    /// Number of CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// Sum of a 2×2 identity times [[1,2],[3,4]] (must be 10).
    pub check_sum: f64,
}

/// Runs the smoke check.
pub fn check() -> TorchInfo {
    let device = tch::Device::cuda_if_available();
    let a = tch::Tensor::eye(2, (tch::Kind::Float, device));
    let b = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).to_device(device);
    let check_sum = a.matmul(&b).sum(tch::Kind::Double).double_value(&[]);
    TorchInfo { device: format!("{device:?}"), cuda_devices: tch::Cuda::device_count(), check_sum }
}

/// What `ftirflow --version` prints: ftirflow's version, the libtorch it was built for (and
/// that a tensor operation runs, which proves the shared libraries load), and whether CUDA is
/// compiled in (`--features cuda`) and sees a GPU.
pub fn version_text() -> String {
    let info = check();
    let cuda = match (cfg!(feature = "cuda"), info.cuda_devices) {
        (false, _) => "CUDA not compiled in (a --features cuda build uses a GPU)".to_string(),
        (true, 0) => "CUDA compiled in; no GPU visible (runs on the CPU)".to_string(),
        (true, n) => format!("CUDA compiled in; {n} GPU(s) visible ({})", info.device),
    };
    let works = if info.check_sum == 10.0 { "works" } else { "FAILS its check" };
    format!("ftirflow {}\nlibtorch {} ({works})\n{cuda}", env!("CARGO_PKG_VERSION"), crate::bundle::LIBTORCH_VERSION)
}

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_builds_a_tensor() {
        let info = super::check();
        assert_eq!(info.check_sum, 10.0);
    }

    #[test]
    fn the_version_text_names_ftirflow_libtorch_and_cuda() {
        let text = super::version_text();
        assert!(text.starts_with(&format!("ftirflow {}\nlibtorch 2.11.0 (works)\nCUDA ", env!("CARGO_PKG_VERSION"))), "{text}");
    }
}
