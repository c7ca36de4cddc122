//! The streaming segmentation kernel: [`SegmentKernel`] holds the record batches of one image and
//! emits them with the mask columns when the image is finished.
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::image::{ImagePart, Segmenter};
use super::summary::{PixelClass, SegmentSummary};
use super::{OP, PARAFFIN, SEGMENT_INVALID, TISSUE};
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::outliers::AmideCheckKernel;
use crate::schema::SpectraLayout;

/// The segmentation kernel (`name() = "segment"`): buffers the batches of one image, and in
/// [`Kernel::finish`] fits the masks and emits the same batches with the Boolean columns
/// `tissue`, `paraffin` and `segment_invalid` appended. An image without spectra emits nothing.
/// A batch that breaks the spectra schema, lacks a band or changes the axis mid-image is an error
/// that rejects the image: the kernel drops what it held and is ready for the next image.
///
/// [`SegmentKernel::with_check`] also runs the amide I / non-finite check
/// ([`AmideCheckKernel`]) in the same pass: each spectrum is fetched from memory once for its
/// class and its check, and the output equals the two kernels run one after the other.
#[derive(Debug, Clone)]
pub struct SegmentKernel {
    segmenter: Segmenter,
    check: Option<AmideCheckKernel>,
    held: Vec<Held>,
    axis: Option<Vec<f64>>,
    last: Option<SegmentSummary>,
    /// The last input schema seen, its layout and its output schema (parsing the axis JSON of
    /// every batch again would cost more than the masks of a small batch).
    cache: Option<(SchemaRef, SpectraLayout, SchemaRef)>,
}

/// A held batch with what the kernel already knows about it.
#[derive(Debug, Clone)]
struct Held {
    batch: RecordBatch,
    x: usize,
    y: usize,
    out: SchemaRef,
}

impl SegmentKernel {
    /// A kernel for checked parameters.
    pub fn new(segmenter: Segmenter) -> Self {
        Self { segmenter, check: None, held: Vec::new(), axis: None, last: None, cache: None }
    }

    /// The kernel that also runs `check` on every spectrum (after the masks, with the tissue mask
    /// it needs), appending `amide_i` and `outlier` after the mask columns.
    pub fn with_check(mut self, check: AmideCheckKernel) -> Self {
        self.check = Some(check);
        self.cache = None;
        self
    }

    /// The summary of the last image finished (for logs).
    pub fn last_summary(&self) -> Option<&SegmentSummary> {
        self.last.as_ref()
    }

    /// The layout and output schema of `schema`, validated once per distinct schema.
    fn layout(&mut self, schema: &SchemaRef) -> Result<(SpectraLayout, SchemaRef), OpError> {
        if let Some((input, layout, out)) = &self.cache {
            if Arc::ptr_eq(input, schema) || **input == **schema {
                return Ok((layout.clone(), Arc::clone(out)));
            }
        }
        let layout = SpectraLayout::of(schema).map_err(|e| OpError::schema(OP, e))?;
        let out = self.output_schema(schema)?;
        self.cache = Some((Arc::clone(schema), layout.clone(), Arc::clone(&out)));
        Ok((layout, out))
    }

    fn hold(&mut self, batch: &RecordBatch) -> Result<(), OpError> {
        let (layout, out) = self.layout(&batch.schema())?;
        for (name, idx) in [(crate::schema::SAMPLE, layout.sample), (crate::schema::X, layout.x), (crate::schema::Y, layout.y)] {
            if batch.column(idx).null_count() > 0 {
                return Err(OpError::schema(OP, crate::schema::SchemaError::Nulls(name)));
            }
        }
        SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        match &self.axis {
            Some(axis) if *axis != layout.wavenumbers => {
                return Err(OpError::data(OP, "the wavenumber axis changed between batches of one image"));
            }
            Some(_) => {}
            None => self.axis = Some(layout.wavenumbers),
        }
        self.held.push(Held { batch: batch.clone(), x: layout.x, y: layout.y, out });
        Ok(())
    }

    fn finish_image(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let held = std::mem::take(&mut self.held);
        let Some(axis) = self.axis.take() else { return Ok(()) };
        let rows: usize = held.iter().map(|h| h.batch.num_rows()).sum();
        if rows == 0 {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(held.len());
        for h in &held {
            let u32s = |i: usize| {
                h.batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt32Array>()
                    .map(|a| a.values().as_ref())
                    .ok_or_else(|| OpError::internal(OP, "x/y not UInt32 after validation"))
            };
            let values = SpectraLayout::values(&h.batch).map_err(|e| OpError::schema(OP, e))?;
            parts.push(ImagePart { values, xs: u32s(h.x)?, ys: u32s(h.y)? });
        }
        let (mut peaks, mut flags) = (Vec::new(), Vec::new());
        let masks = match &self.check {
            None => self.segmenter.segment_parts(&axis, &parts)?,
            Some(kernel) => {
                let check = kernel.check_for(&axis)?;
                peaks.reserve(rows);
                flags.reserve(rows);
                self.segmenter.segment_parts_visiting(&axis, &parts, check.reads(), |s, class| {
                    let (peak, flag) = check.apply(s, class == PixelClass::Tissue);
                    peaks.push(peak);
                    flags.push(flag);
                })?
            }
        };
        let mut start = 0;
        for h in &held {
            let b = &h.batch;
            let end = start + b.num_rows();
            let classes = &masks.classes[start..end];
            start = end;
            let schema = Arc::clone(&h.out);
            let flag = |c: PixelClass| -> ArrayRef {
                Arc::new(BooleanArray::new(BooleanBuffer::collect_bool(classes.len(), |i| classes[i] == c), None))
            };
            let mut cols = b.columns().to_vec();
            cols.push(flag(PixelClass::Tissue));
            cols.push(flag(PixelClass::Paraffin));
            cols.push(flag(PixelClass::Invalid));
            if self.check.is_some() {
                cols.push(Arc::new(Float32Array::from(peaks[start - b.num_rows()..start].to_vec())));
                cols.push(Arc::new(BooleanArray::from(flags[start - b.num_rows()..start].to_vec())));
            }
            emit(out, OP, schema, cols)?;
        }
        self.last = Some(masks.summary);
        Ok(())
    }
}

impl Kernel for SegmentKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        self.segmenter.band_ranges(&layout.wavenumbers)?;
        for col in [TISSUE, PARAFFIN, SEGMENT_INVALID] {
            if input.index_of(col).is_ok() {
                return Err(OpError::data(OP, format!("input already has a `{col}` column (segmented twice?)")));
            }
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for col in [TISSUE, PARAFFIN, SEGMENT_INVALID] {
            fields.push(Field::new(col, DataType::Boolean, false));
        }
        let segmented = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        match &self.check {
            Some(check) => check.output_schema(&segmented),
            None => Ok(segmented),
        }
    }

    fn push_batch(&mut self, batch: &RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let result = self.hold(batch);
        if result.is_err() {
            // The image is rejected: drop it so the kernel is clean for the next one.
            self.held.clear();
            self.axis = None;
        }
        result
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        // Whatever happens, the kernel is ready for the next image afterwards.
        let result = self.finish_image(out);
        self.held.clear();
        self.axis = None;
        if result.is_err() {
            self.last = None;
        }
        result
    }
}
