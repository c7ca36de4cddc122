//! The part of the spectral axis a reader reads ([`ReadOptions::bands`](super::ReadOptions::bands)):
//! a run needs 900–1800 cm⁻¹ of the ≈ 900–3800 cm⁻¹ an instrument records, so the image readers
//! skip the rest of each spectrum, band plane or tile (about two thirds of the bytes), and the
//! table readers cut their spectra to the same bands.
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{Field, Float32Type, Schema, SchemaRef};

use super::{ImageInfo, ReadError, SpectraReader};
use crate::operators::axis::Band;
use crate::operators::schema::{axis_metadata, SpectraLayout, WAVENUMBERS_KEY};

/// The indices of `axis` (in file order) a reader reads for `band`: the points inside the band
/// plus the nearest point outside it on each side where there is one, so that every step that
/// looks at the band's ends (coverage checks, interpolation) sees what a whole read gives it.
/// `None` reads every point: so does a band that holds no point of the axis (the steps that need
/// the band then report what is missing, as they do for a whole read).
///
/// ```
/// use ftirflow::io::band_range;
/// use ftirflow::operators::axis::Band;
/// let axis: Vec<f64> = (0..10).map(|i| 1000.0 + 100.0 * f64::from(i)).collect(); // 1000..=1900
/// assert_eq!(band_range(&axis, Some(Band::new(1150.0, 1450.0))), 1..6); // 1100..=1500
/// assert_eq!(band_range(&axis, Some(Band::new(900.0, 1200.0))), 0..4);
/// assert_eq!(band_range(&axis, Some(Band::new(3000.0, 3100.0))), 0..10); // nothing inside
/// assert_eq!(band_range(&axis, None), 0..10);
/// ```
pub fn band_range(axis: &[f64], band: Option<Band>) -> Range<usize> {
    match band.and_then(|b| b.indices(axis)) {
        Some(r) => r.start.saturating_sub(1)..(r.end + 1).min(axis.len()),
        None => 0..axis.len(),
    }
}

/// `batch` (spectra schema) with its spectra cut to the points `range` of its axis, and `schema`
/// (the reader's output schema for the cut axis, from [`cut_schema`]); `batch` itself when the
/// range is the whole axis. For the table readers, which cannot skip bytes inside a spectrum.
pub(crate) fn cut_batch(batch: RecordBatch, schema: &SchemaRef, spectrum: usize, range: &Range<usize>) -> Result<RecordBatch, String> {
    let list = batch.column(spectrum).as_fixed_size_list_opt().ok_or("the spectrum column is not a fixed-size list")?;
    let n = usize::try_from(list.value_length()).map_err(|e| e.to_string())?;
    if range.start == 0 && range.end == n {
        return Ok(batch);
    }
    let values = list.values().as_primitive_opt::<Float32Type>().ok_or("the spectra are not float32")?;
    let flat = values.values();
    let len = range.len();
    let mut cut = Vec::with_capacity(list.len() * len);
    for row in 0..list.len() {
        let at = (list.offset() + row) * n;
        cut.extend_from_slice(flat.get(at + range.start..at + range.end).ok_or("a spectrum is shorter than its axis")?);
    }
    let Some(field) = schema.fields().get(spectrum) else { return Err("the schema has no spectrum column".into()) };
    let item = match field.data_type() {
        arrow::datatypes::DataType::FixedSizeList(item, _) => Arc::clone(item),
        other => return Err(format!("the spectrum column is {other}, not a fixed-size list")),
    };
    let cut = FixedSizeListArray::try_new(item, len as i32, Arc::new(Float32Array::from(cut)), list.nulls().cloned())
        .map_err(|e| e.to_string())?;
    let mut columns = batch.columns().to_vec();
    columns[spectrum] = Arc::new(cut);
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

/// `schema` (a spectra schema on `axis`) for the points `range` of the axis: the spectrum column's
/// length and the axis metadata follow the cut.
pub(crate) fn cut_schema(schema: &Schema, spectrum: usize, axis: &[f64], range: &Range<usize>) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match f.data_type() {
            arrow::datatypes::DataType::FixedSizeList(item, _) if i == spectrum => {
                f.as_ref().clone().with_data_type(arrow::datatypes::DataType::FixedSizeList(Arc::clone(item), range.len() as i32))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let mut metadata = schema.metadata().clone();
    metadata.remove(WAVENUMBERS_KEY);
    metadata.extend(axis_metadata(&axis[range.clone()]));
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// A table reader whose spectra are cut to the points `range` of its axis (see [`cut_batch`]).
pub(crate) struct CutReader {
    inner: Box<dyn SpectraReader>,
    schema: SchemaRef,
    info: ImageInfo,
    spectrum: usize,
    range: Range<usize>,
    path: PathBuf,
}

impl CutReader {
    /// `inner` cut to `band` (see [`band_range`]); `inner` itself when that is its whole axis.
    pub(crate) fn wrap(path: &Path, inner: Box<dyn SpectraReader>, band: Option<Band>) -> Result<Box<dyn SpectraReader>, ReadError> {
        let axis = &inner.info().wavenumbers;
        let range = band_range(axis, band);
        if range.len() == axis.len() {
            return Ok(inner);
        }
        let schema = inner.schema();
        let spectrum = SpectraLayout::of(&schema).map_err(|e| ReadError::schema(path, e))?.spectrum;
        let schema = cut_schema(&schema, spectrum, axis, &range);
        let mut info = inner.info().clone();
        info.wavenumbers = axis[range.clone()].to_vec();
        info.data_bytes = info.data_bytes / axis.len() as u64 * range.len() as u64;
        Ok(Box::new(Self { inner, schema, info, spectrum, range, path: path.to_path_buf() }))
    }
}

impl Iterator for CutReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(batch.and_then(|b| cut_batch(b, &self.schema, self.spectrum, &self.range).map_err(|e| ReadError::format(&self.path, e))))
    }
}

impl SpectraReader for CutReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}
