//! Page-locked host memory that a classifier's input batches pass through on their way to a GPU,
//! so that the copy to the device does not block the thread that launches the batch's work.
use std::sync::Mutex;

use tch::{Device, Kind, TchError, Tensor};

/// A classifier's staging buffer on the host, page-locked, grown to the largest batch seen.
///
/// The buffer is reused batch after batch. That is safe because each batch ends with a blocking
/// copy of its results to the host on the same stream ([`Staging::settled`]), which completes only
/// after the batch's copy from the buffer; a batch that ended early (an error between the two
/// copies) leaves the buffer marked pending, and the next batch waits for the device first.
#[derive(Debug, Default)]
pub(super) struct Staging(Mutex<Slot>);

#[derive(Debug, Default)]
struct Slot {
    host: Option<Tensor>,
    pending: bool,
}

fn index(device: Device) -> i64 {
    match device {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

impl Staging {
    /// `values` as a `shape` tensor on `device` (a GPU): copied into the page-locked buffer, then
    /// to the device without waiting for the copy.
    pub(super) fn to_device(&self, values: &[f32], shape: [i64; 2], device: Device) -> Result<Tensor, TchError> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.pending {
            tch::Cuda::synchronize(index(device));
            slot.pending = false;
        }
        let host = match &slot.host {
            Some(host) if host.numel() >= values.len() => host.shallow_clone(),
            _ => {
                // A device-to-host copy that does not block allocates its destination in
                // libtorch's caching host allocator, which page-locks it (`Tensor::pin_memory`
                // would do the same but warns on every call in libtorch 2.11 about its device
                // argument).
                let on_device = Tensor::f_empty([values.len() as i64], (Kind::Float, device))?;
                let host = on_device.f_to_device_(Device::Cpu, Kind::Float, true, false)?;
                tch::Cuda::synchronize(index(device));
                slot.host = Some(host.shallow_clone());
                host
            }
        };
        // SAFETY: `host` is a contiguous f32 tensor of at least `values.len()` elements on the
        // CPU, which no transfer reads now (`pending` is false: the last one is complete).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), host.data_ptr().cast::<f32>(), values.len()) };
        let x = host.f_narrow(0, 0, values.len() as i64)?.f_view(shape)?.f_to_device_(device, Kind::Float, true, false)?;
        slot.pending = true;
        Ok(x)
    }

    /// The batch's results have come back with a blocking copy on the stream of its input's copy:
    /// the buffer is free again.
    pub(super) fn settled(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pending = false;
    }
}
