//! The kernel contract every operator follows (ARCHITECTURE.md): a synchronous push/finish kernel
//! on Arrow record batches, in the manner of arrow-rs's `BatchCoalescer`, that the engine wraps in
//! one generic timely adapter.
//!
//! The engine feeds a kernel the batches of one image (one timestamp) with
//! [`Kernel::push_batch`], then calls [`Kernel::finish`] once the frontier has passed that image;
//! a kernel that needs the whole image (K-means masks, per-image thresholds) buffers until
//! `finish`, a per-spectrum kernel emits from `push_batch` directly. After `finish` the kernel is
//! ready for the next image. The output schema is declared before any data is seen.
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::error::OpError;

/// A preprocessing or inference step on spectra batches.
pub trait Kernel: Send {
    /// Short name used in logs and reject reasons (e.g. `"emsc"`).
    fn name(&self) -> &'static str;

    /// The schema of the batches this kernel emits for input batches of `input`.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError>;

    /// Consumes one batch of the current image, appending any finished output to `out`.
    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError>;

    /// Ends the current image, appending what was held back to `out`.
    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError>;
}

/// Runs `kernel` over the batches of one image (push all, then finish): the engine's adapter does
/// the same inside timely; tests and the single-threaded `preprocess` path use this directly.
pub fn run_image<K: Kernel + ?Sized>(kernel: &mut K, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, OpError> {
    let mut out = Vec::new();
    for b in batches {
        kernel.push_batch(b, &mut out)?;
    }
    kernel.finish(&mut out)?;
    Ok(out)
}

/// Runs a chain of kernels over the batches of one image, streaming: each batch goes through as
/// many kernels as it can before the next batch is read (a batch stays in cache across the
/// per-spectrum kernels), then each kernel is finished in order and what it held back flows on.
/// The output equals running the kernels one after another with [`run_image`].
pub fn run_chain(kernels: &mut [Box<dyn Kernel>], batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, OpError> {
    fn push_from(kernels: &mut [Box<dyn Kernel>], stage: usize, batch: &RecordBatch, sink: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        if stage == kernels.len() {
            sink.push(batch.clone());
            return Ok(());
        }
        let mut out = Vec::new();
        kernels[stage].push_batch(batch, &mut out)?;
        for b in &out {
            push_from(kernels, stage + 1, b, sink)?;
        }
        Ok(())
    }
    let mut sink = Vec::new();
    for b in &batches {
        push_from(kernels, 0, b, &mut sink)?;
    }
    for stage in 0..kernels.len() {
        let mut out = Vec::new();
        kernels[stage].finish(&mut out)?;
        for b in &out {
            push_from(kernels, stage + 1, b, &mut sink)?;
        }
    }
    Ok(sink)
}

/// Appends the batch of `columns` under `schema` to `out`, for the kernel `op`. The kernel derived
/// both, so arrow refusing them is a bug of that kernel ([`OpError::Internal`]).
pub(crate) fn emit(out: &mut Vec<RecordBatch>, op: &'static str, schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<(), OpError> {
    out.push(RecordBatch::try_new(schema, columns).map_err(|e| OpError::internal(op, e.to_string()))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{Method, NormalizeKernel, NormalizeParams};
    use crate::outliers::{AmideCheckKernel, OutlierParams};
    use crate::resample::TruncateKernel;
    use crate::schema::{spectra_schema, SpectraBatchBuilder};

    #[test]
    fn chain_equals_kernels_one_after_another() {
        let axis: Vec<f64> = (0..40).map(|i| 1590.0 + 5.0 * i as f64).collect();
        let mut b = SpectraBatchBuilder::new(spectra_schema(&axis).unwrap(), 30);
        for p in 0..30u32 {
            let s: Vec<f32> = (0..40).map(|i| ((p * 7 + i) % 13) as f32 * 0.1 + 0.05).collect();
            b.push("img", p % 6, p / 6, &s);
        }
        let all = b.finish().unwrap();
        let batches = vec![all.slice(0, 7), all.slice(7, 16), all.slice(23, 7)];
        let make = || -> Vec<Box<dyn Kernel>> {
            vec![
                Box::new(AmideCheckKernel::new(OutlierParams::default()).unwrap()),
                Box::new(TruncateKernel::new(crate::axis::Band::new(1600.0, 1700.0)).unwrap()),
                Box::new(NormalizeKernel::new(NormalizeParams { method: Method::Snv, ..Default::default() })),
            ]
        };
        let mut sequential = batches.clone();
        for mut k in make() {
            sequential = run_image(k.as_mut(), &sequential).unwrap();
        }
        let chained = run_chain(&mut make(), batches).unwrap();
        assert_eq!(chained, sequential);
        assert_eq!(chained.iter().map(|b| b.num_rows()).sum::<usize>(), 30);
    }
}
