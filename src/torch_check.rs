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

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_builds_a_tensor() {
        let info = super::check();
        assert_eq!(info.check_sum, 10.0);
    }
}
