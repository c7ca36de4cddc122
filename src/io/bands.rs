//! The part of the spectral axis a reader reads ([`ReadOptions::bands`](super::ReadOptions::bands)):
//! a run needs 900–1800 cm⁻¹ of the ≈ 900–3800 cm⁻¹ an instrument records, so the image readers
//! skip the rest of each spectrum, band plane or tile (about two thirds of the bytes), and the
//! table readers cut their spectra to the same points.
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::{ImageInfo, ReadError, SpectraReader};
use crate::operators::axis::Band;
use crate::operators::resample::{cut_points, with_axis};

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

/// A table reader whose spectra are cut to the points `range` of its axis
/// ([`crate::operators::resample::cut_points`], what the truncation step does).
pub(crate) struct CutReader {
    inner: Box<dyn SpectraReader>,
    schema: SchemaRef,
    info: ImageInfo,
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
        let schema = with_axis(&inner.schema(), &axis[range.clone()]).map_err(|e| ReadError::format(path, e.to_string()))?;
        let mut info = inner.info().clone();
        info.wavenumbers = axis[range.clone()].to_vec();
        info.data_bytes = info.data_bytes / axis.len() as u64 * range.len() as u64;
        Ok(Box::new(Self { inner, schema, info, range, path: path.to_path_buf() }))
    }
}

impl Iterator for CutReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(batch.and_then(|b| cut_points(&b, self.range.clone()).map_err(|e| ReadError::format(&self.path, e.to_string()))))
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
