//! The spectra batch contract of ARCHITECTURE.md: column names, the wavenumber axis in the schema
//! metadata, a builder for batches and a validator with clear errors.
//!
//! A spectra batch has the columns `sample` (Utf8, dictionary allowed on input), `x`, `y`
//! (UInt32) and `spectrum` (FixedSizeList<Float32, n>); the wavenumber axis (cm⁻¹, one per value,
//! ascending or descending) travels as a JSON array under [`WAVENUMBERS_KEY`] in the schema
//! metadata. Further columns may follow.
//!
//! ```
//! use ftirflow_operators::schema::{spectra_schema, SpectraBatchBuilder, SpectraLayout};
//! let schema = spectra_schema(&[1000.0, 1002.0, 1004.0]).unwrap();
//! let mut b = SpectraBatchBuilder::new(schema.clone(), 2);
//! b.push("core1", 0, 0, &[0.1, 0.2, 0.3]);
//! b.push("core1", 1, 0, &[0.4, 0.5, 0.6]);
//! let batch = b.finish().unwrap();
//! let layout = SpectraLayout::of(&batch.schema()).unwrap();
//! assert_eq!(layout.n_points(), 3);
//! assert_eq!(SpectraLayout::values(&batch).unwrap()[3], 0.4);
//! ```
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Column with the image / core id, unique in the archive (e.g. `slide3/B07`).
pub const SAMPLE: &str = "sample";
/// Column with the pixel column in the image.
pub const X: &str = "x";
/// Column with the pixel row in the image.
pub const Y: &str = "y";
/// Column with the absorbance values, one per wavenumber.
pub const SPECTRUM: &str = "spectrum";
/// Schema metadata key of the wavenumber axis (JSON array of numbers, cm⁻¹).
pub const WAVENUMBERS_KEY: &str = "ftirflow:wavenumbers";

/// A spectra schema or batch that does not follow the contract.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    /// A required column is absent.
    #[error("missing column `{0}`")]
    MissingColumn(&'static str),
    /// A column has the wrong type.
    #[error("column `{column}` has type {found}, expected {expected}")]
    WrongType {
        /// Column name.
        column: &'static str,
        /// The type found.
        found: String,
        /// What the contract requires.
        expected: &'static str,
    },
    /// The wavenumber axis is missing from the schema metadata.
    #[error("schema metadata has no `{WAVENUMBERS_KEY}` wavenumber axis")]
    MissingAxis,
    /// The wavenumber axis is present but unusable.
    #[error("invalid `{WAVENUMBERS_KEY}` axis: {0}")]
    InvalidAxis(String),
    /// The axis length differs from the spectrum length.
    #[error("wavenumber axis has {axis} values but spectra have {points}")]
    AxisLength {
        /// Number of wavenumbers.
        axis: usize,
        /// Number of values per spectrum.
        points: usize,
    },
    /// A spectrum or coordinate is null.
    #[error("column `{0}` contains nulls")]
    Nulls(&'static str),
    /// Arrow refused to build a batch.
    #[error("cannot build batch: {0}")]
    Arrow(String),
}

/// Checks an axis: non-empty, finite, strictly monotonic (either direction).
pub fn check_axis(wavenumbers: &[f64]) -> Result<(), SchemaError> {
    if wavenumbers.is_empty() {
        return Err(SchemaError::InvalidAxis("empty axis".into()));
    }
    if let Some(i) = wavenumbers.iter().position(|w| !w.is_finite()) {
        return Err(SchemaError::InvalidAxis(format!("value {i} is not finite")));
    }
    if wavenumbers.len() > 1 {
        let ascending = wavenumbers[1] > wavenumbers[0];
        for (i, w) in wavenumbers.windows(2).enumerate() {
            let ok = if ascending { w[1] > w[0] } else { w[1] < w[0] };
            if !ok {
                return Err(SchemaError::InvalidAxis(format!("not strictly monotonic at index {} ({} then {})", i + 1, w[0], w[1])));
            }
        }
    }
    Ok(())
}

/// The metadata map that carries `wavenumbers`.
pub fn axis_metadata(wavenumbers: &[f64]) -> HashMap<String, String> {
    let json = serde_json::to_string(wavenumbers).expect("f64 slice serializes");
    HashMap::from([(WAVENUMBERS_KEY.to_string(), json)])
}

/// Parses the axis from schema metadata.
pub fn wavenumbers(schema: &Schema) -> Result<Vec<f64>, SchemaError> {
    let raw = schema.metadata().get(WAVENUMBERS_KEY).ok_or(SchemaError::MissingAxis)?;
    // Every kernel validates every batch's schema, and parsing 1,500 numbers from JSON costs
    // far more than comparing the text: each thread remembers the last axis it parsed.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, Vec<f64>)>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(axis) = LAST.with_borrow(|last| last.as_ref().filter(|(text, _)| text == raw).map(|(_, axis)| axis.clone())) {
        return Ok(axis);
    }
    let axis: Vec<f64> = serde_json::from_str(raw).map_err(|e| SchemaError::InvalidAxis(format!("not a JSON array of numbers: {e}")))?;
    check_axis(&axis)?;
    LAST.set(Some((raw.clone(), axis.clone())));
    Ok(axis)
}

/// The `spectrum` field for `n` points.
pub fn spectrum_field(n: usize) -> Field {
    Field::new(SPECTRUM, DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), n as i32), false)
}

/// The base spectra schema for an axis (columns `sample`, `x`, `y`, `spectrum`).
pub fn spectra_schema(wavenumbers: &[f64]) -> Result<SchemaRef, SchemaError> {
    spectra_schema_with(wavenumbers, Vec::new())
}

/// The base spectra schema followed by `extra` columns.
pub fn spectra_schema_with(wavenumbers: &[f64], extra: Vec<Field>) -> Result<SchemaRef, SchemaError> {
    check_axis(wavenumbers)?;
    let mut fields = vec![
        Field::new(SAMPLE, DataType::Utf8, false),
        Field::new(X, DataType::UInt32, false),
        Field::new(Y, DataType::UInt32, false),
        spectrum_field(wavenumbers.len()),
    ];
    fields.extend(extra);
    Ok(Arc::new(Schema::new_with_metadata(fields, axis_metadata(wavenumbers))))
}

/// What a valid spectra schema says: the axis and where the columns are.
#[derive(Debug, Clone, PartialEq)]
pub struct SpectraLayout {
    /// The wavenumber axis, cm⁻¹.
    pub wavenumbers: Vec<f64>,
    /// Index of `sample`.
    pub sample: usize,
    /// Index of `x`.
    pub x: usize,
    /// Index of `y`.
    pub y: usize,
    /// Index of `spectrum`.
    pub spectrum: usize,
}

impl SpectraLayout {
    /// Validates `schema` against the contract.
    pub fn of(schema: &Schema) -> Result<Self, SchemaError> {
        let find = |name: &'static str| schema.index_of(name).map_err(|_| SchemaError::MissingColumn(name));
        let sample = find(SAMPLE)?;
        let x = find(X)?;
        let y = find(Y)?;
        let spectrum = find(SPECTRUM)?;
        match schema.field(sample).data_type() {
            DataType::Utf8 => {}
            DataType::Dictionary(_, v) if **v == DataType::Utf8 => {}
            other => return Err(SchemaError::WrongType { column: SAMPLE, found: other.to_string(), expected: "Utf8" }),
        }
        for (col, idx) in [(X, x), (Y, y)] {
            let dt = schema.field(idx).data_type();
            if *dt != DataType::UInt32 {
                return Err(SchemaError::WrongType { column: col, found: dt.to_string(), expected: "UInt32" });
            }
        }
        let points = match schema.field(spectrum).data_type() {
            DataType::FixedSizeList(item, n) if *item.data_type() == DataType::Float32 => *n as usize,
            other => {
                return Err(SchemaError::WrongType { column: SPECTRUM, found: other.to_string(), expected: "FixedSizeList<Float32, n>" })
            }
        };
        let wavenumbers = wavenumbers(schema)?;
        if wavenumbers.len() != points {
            return Err(SchemaError::AxisLength { axis: wavenumbers.len(), points });
        }
        Ok(Self { wavenumbers, sample, x, y, spectrum })
    }

    /// Number of points per spectrum.
    pub fn n_points(&self) -> usize {
        self.wavenumbers.len()
    }

    /// The spectrum values of a valid batch as one row-major slice (`rows × n_points`).
    pub fn values(batch: &RecordBatch) -> Result<&[f32], SchemaError> {
        let col = batch.column_by_name(SPECTRUM).ok_or(SchemaError::MissingColumn(SPECTRUM))?;
        let list = col.as_fixed_size_list_opt().ok_or_else(|| SchemaError::WrongType {
            column: SPECTRUM,
            found: col.data_type().to_string(),
            expected: "FixedSizeList<Float32, n>",
        })?;
        if list.null_count() > 0 {
            return Err(SchemaError::Nulls(SPECTRUM));
        }
        let n = list.value_length() as usize;
        let values = list.values().as_primitive_opt::<arrow::datatypes::Float32Type>().ok_or_else(|| SchemaError::WrongType {
            column: SPECTRUM,
            found: col.data_type().to_string(),
            expected: "FixedSizeList<Float32, n>",
        })?;
        let start = list.offset() * n;
        Ok(&values.values()[start..start + list.len() * n])
    }

    /// Checks a whole batch: schema, nulls in the key columns.
    pub fn validate_batch(batch: &RecordBatch) -> Result<Self, SchemaError> {
        let layout = Self::of(&batch.schema())?;
        for (name, idx) in [(SAMPLE, layout.sample), (X, layout.x), (Y, layout.y)] {
            if batch.column(idx).null_count() > 0 {
                return Err(SchemaError::Nulls(name));
            }
        }
        Self::values(batch)?;
        Ok(layout)
    }
}

/// The `spectrum` column for `values` (`rows × n` row-major).
pub fn spectrum_array(values: Vec<f32>, n: usize) -> Result<FixedSizeListArray, SchemaError> {
    if n == 0 || !values.len().is_multiple_of(n) {
        return Err(SchemaError::Arrow(format!("{} values do not split into spectra of {n}", values.len())));
    }
    FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        n as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| SchemaError::Arrow(e.to_string()))
}

/// Builds spectra batches row by row (or from whole columns with [`SpectraBatchBuilder::from_columns`]).
#[derive(Debug)]
pub struct SpectraBatchBuilder {
    schema: SchemaRef,
    n: usize,
    samples: Vec<String>,
    xs: Vec<u32>,
    ys: Vec<u32>,
    values: Vec<f32>,
}

impl SpectraBatchBuilder {
    /// A builder for `schema` (the base spectra schema) with room for `capacity` spectra.
    ///
    /// # Panics
    /// When `schema` has no `ftirflow:wavenumbers` axis (a programming error: build it with
    /// [`spectra_schema`]).
    pub fn new(schema: SchemaRef, capacity: usize) -> Self {
        let n = wavenumbers(&schema).expect("builder schema carries an axis").len();
        Self {
            schema,
            n,
            samples: Vec::with_capacity(capacity),
            xs: Vec::with_capacity(capacity),
            ys: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity * n),
        }
    }

    /// Appends one spectrum (`values.len()` must equal the axis length).
    pub fn push(&mut self, sample: &str, x: u32, y: u32, values: &[f32]) {
        assert_eq!(values.len(), self.n, "spectrum length must match the axis");
        self.samples.push(sample.to_string());
        self.xs.push(x);
        self.ys.push(y);
        self.values.extend_from_slice(values);
    }

    /// Number of spectra pushed so far.
    pub fn len(&self) -> usize {
        self.xs.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.xs.is_empty()
    }

    /// The batch of everything pushed so far; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, SchemaError> {
        let samples = std::mem::take(&mut self.samples);
        let sample = StringArray::from(samples);
        Self::from_columns(
            Arc::clone(&self.schema),
            Arc::new(sample),
            std::mem::take(&mut self.xs),
            std::mem::take(&mut self.ys),
            std::mem::take(&mut self.values),
        )
    }

    /// A batch of the base schema from whole columns; one sample id for all rows is the common
    /// case of a reader (`StringArray::from(vec![id; rows])`).
    pub fn from_columns(
        schema: SchemaRef,
        sample: ArrayRef,
        xs: Vec<u32>,
        ys: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<RecordBatch, SchemaError> {
        // The point count from the column type (parsing the axis metadata per batch cost
        // readers ~12 % of their time); RecordBatch::try_new checks it against the schema.
        let n = match schema.field_with_name(SPECTRUM).map(|f| f.data_type()) {
            Ok(DataType::FixedSizeList(_, n)) => *n as usize,
            _ => wavenumbers(&schema)?.len(),
        };
        let spectra = spectrum_array(values, n)?;
        RecordBatch::try_new(schema, vec![sample, Arc::new(UInt32Array::from(xs)), Arc::new(UInt32Array::from(ys)), Arc::new(spectra)])
            .map_err(|e| SchemaError::Arrow(e.to_string()))
    }
}

/// A batch of `rows` spectra of one sample (the reader's usual shape).
pub fn image_batch(schema: SchemaRef, sample: &str, xs: Vec<u32>, ys: Vec<u32>, values: Vec<f32>) -> Result<RecordBatch, SchemaError> {
    let rows = xs.len();
    let sample: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(sample, rows)));
    SpectraBatchBuilder::from_columns(schema, sample, xs, ys, values)
}

/// The `sample` column as plain strings (casting a dictionary column).
pub fn sample_column(batch: &RecordBatch) -> Result<StringArray, SchemaError> {
    let col = batch.column_by_name(SAMPLE).ok_or(SchemaError::MissingColumn(SAMPLE))?;
    let cast = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| SchemaError::Arrow(e.to_string()))?;
    Ok(cast.as_string::<i32>().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_builder_and_layout() {
        let schema = spectra_schema(&[3.0, 2.0, 1.0]).unwrap();
        let mut b = SpectraBatchBuilder::new(schema, 1);
        b.push("a", 3, 4, &[1.0, 2.0, 3.0]);
        let batch = b.finish().unwrap();
        let layout = SpectraLayout::validate_batch(&batch).unwrap();
        assert_eq!(layout.wavenumbers, vec![3.0, 2.0, 1.0]);
        assert_eq!(SpectraLayout::values(&batch).unwrap(), &[1.0, 2.0, 3.0]);
        let sliced = batch.slice(0, 1);
        assert_eq!(SpectraLayout::values(&sliced).unwrap().len(), 3);
    }

    #[test]
    fn missing_and_invalid_axis() {
        let schema = spectra_schema(&[1.0, 2.0]).unwrap();
        let bare = Schema::new(schema.fields().clone());
        assert_eq!(SpectraLayout::of(&bare).unwrap_err(), SchemaError::MissingAxis);
        let mut md = HashMap::new();
        md.insert(WAVENUMBERS_KEY.to_string(), "[1, \"a\"]".to_string());
        let bad = Schema::new_with_metadata(schema.fields().clone(), md.clone());
        assert!(matches!(SpectraLayout::of(&bad), Err(SchemaError::InvalidAxis(_))));
        md.insert(WAVENUMBERS_KEY.to_string(), "[1, 2, 3]".to_string());
        let short = Schema::new_with_metadata(schema.fields().clone(), md.clone());
        assert_eq!(SpectraLayout::of(&short).unwrap_err(), SchemaError::AxisLength { axis: 3, points: 2 });
        md.insert(WAVENUMBERS_KEY.to_string(), "[1, 1]".to_string());
        let flat = Schema::new_with_metadata(schema.fields().clone(), md);
        assert!(matches!(SpectraLayout::of(&flat), Err(SchemaError::InvalidAxis(m)) if m.contains("monotonic")));
    }

    #[test]
    fn wrong_types_are_named() {
        let schema = Schema::new_with_metadata(
            vec![
                Field::new(SAMPLE, DataType::Utf8, false),
                Field::new(X, DataType::Int64, false),
                Field::new(Y, DataType::UInt32, false),
                spectrum_field(2),
            ],
            axis_metadata(&[1.0, 2.0]),
        );
        let err = SpectraLayout::of(&schema).unwrap_err();
        assert!(err.to_string().contains("column `x` has type Int64"), "{err}");
        let no_spec = Schema::new(vec![
            Field::new(SAMPLE, DataType::Utf8, false),
            Field::new(X, DataType::UInt32, false),
            Field::new(Y, DataType::UInt32, false),
        ]);
        assert_eq!(SpectraLayout::of(&no_spec).unwrap_err(), SchemaError::MissingColumn(SPECTRUM));
    }
}
