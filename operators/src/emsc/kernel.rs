//! The EMSC engine kernel ([`EmscKernel`]) and its output columns.
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::corrector::EmscCorrector;
use super::OP;
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::schema::{spectrum_array, SpectraLayout};

/// Column appended with the residual RMS of each spectrum (Float32; NaN for non-finite input).
pub const RESIDUAL_RMS: &str = "emsc_residual_rms";
/// Column appended with the reference coefficient `b` when coefficients are output (Float32).
pub const B: &str = "emsc_b";
/// Column appended with all coefficients `(b, a₀ … a_order, d₁ … d_m)` when coefficients are
/// output (FixedSizeList<Float32, k>); the term names are in its field metadata under
/// [`TERMS_KEY`].
pub const COEFFICIENTS: &str = "emsc_coefficients";
/// Field-metadata key of [`COEFFICIENTS`]: a JSON array of the term names, in order.
pub const TERMS_KEY: &str = "ftirflow:emsc_terms";

/// The EMSC kernel: replaces `spectrum` by the corrected spectra (same axis) and appends
/// [`RESIDUAL_RMS`], plus [`B`] and [`COEFFICIENTS`] when the corrector outputs coefficients.
/// It emits from `push_batch`; `finish` emits nothing.
#[derive(Debug, Clone)]
pub struct EmscKernel {
    corrector: Arc<EmscCorrector>,
    cached: Option<(SchemaRef, SchemaRef)>,
}

impl EmscKernel {
    /// A kernel applying `corrector` (an [`EmscCorrector`] or an `Arc` of one, shared by workers).
    pub fn new(corrector: impl Into<Arc<EmscCorrector>>) -> Self {
        Self { corrector: corrector.into(), cached: None }
    }

    /// The corrector.
    pub fn corrector(&self) -> &EmscCorrector {
        &self.corrector
    }

    fn schema_for(&mut self, input: &SchemaRef) -> Result<(SchemaRef, SpectraLayout), OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        if let Some((i, o)) = &self.cached {
            if i == input {
                return Ok((Arc::clone(o), layout));
            }
        }
        let out = self.output_schema(input)?;
        self.cached = Some((Arc::clone(input), Arc::clone(&out)));
        Ok((out, layout))
    }
}

impl Kernel for EmscKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        let c = &self.corrector;
        if !c.same_axis(&layout.wavenumbers) {
            return Err(OpError::data(
                OP,
                format!(
                    "spectra have a {}-point axis ({}–{} cm⁻¹) but the EMSC model was built for a {}-point axis \
                     ({}–{} cm⁻¹)",
                    layout.n_points(),
                    layout.wavenumbers[0],
                    layout.wavenumbers[layout.n_points() - 1],
                    c.n_points(),
                    c.wavenumbers()[0],
                    c.wavenumbers()[c.n_points() - 1]
                ),
            ));
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut added = vec![Field::new(RESIDUAL_RMS, DataType::Float32, false)];
        if c.output_coefficients() {
            added.push(Field::new(B, DataType::Float32, false));
            let terms = serde_json::to_string(c.coefficient_names()).expect("names serialize");
            added.push(
                Field::new(
                    COEFFICIENTS,
                    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), c.n_coefficients() as i32),
                    false,
                )
                .with_metadata(std::collections::HashMap::from([(TERMS_KEY.to_string(), terms)])),
            );
        }
        for f in &added {
            if input.index_of(f.name()).is_ok() {
                return Err(OpError::data(OP, format!("input already has a `{}` column (EMSC applied twice?)", f.name())));
            }
        }
        fields.extend(added);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let (schema, layout) = self.schema_for(&batch.schema())?;
        let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        let c = &self.corrector;
        let (rows, n, k) = (batch.num_rows(), c.n_points(), c.n_coefficients());
        let mut corrected = vec![0.0f32; rows * n];
        let mut rms = vec![0.0f32; rows];
        let mut coefs = if c.output_coefficients() { vec![0.0f32; rows * k] } else { Vec::new() };
        c.correct_batch(values, rows, &mut corrected, c.output_coefficients().then_some(&mut coefs[..]), &mut rms);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[layout.spectrum] = Arc::new(spectrum_array(corrected, n).map_err(|e| OpError::schema(OP, e))?);
        columns.push(Arc::new(Float32Array::from(rms)));
        if c.output_coefficients() {
            columns.extend(coefficient_columns(coefs, k)?);
        }
        emit(out, OP, schema, columns)
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

/// The [`B`] and [`COEFFICIENTS`] columns from row-major coefficients (`rows × k`).
pub fn coefficient_columns(coefs: Vec<f32>, k: usize) -> Result<[ArrayRef; 2], OpError> {
    let b: Vec<f32> = coefs.chunks_exact(k).map(|r| r[0]).collect();
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        k as i32,
        Arc::new(Float32Array::from(coefs)),
        None,
    )
    .map_err(|e| OpError::internal(OP, e.to_string()))?;
    Ok([Arc::new(Float32Array::from(b)), Arc::new(list)])
}
