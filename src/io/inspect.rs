//! What a reader sees in one file (`ftirflow inspect`): the format, dimensions, wavenumber axis
//! (range, direction, step, uniformity), value range and non-finite counts over every spectrum,
//! and a chemical image — the mean absorbance over a band per pixel — streamed batch by batch
//! with the same readers `convert` and `run` use.
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;

use super::{open, Format, ReadError, ReadOptions};
use crate::operators::schema::SpectraLayout;

/// A chemical image: one value per pixel, row-major, NaN where the file has no spectrum.
#[derive(Debug, Clone, PartialEq)]
pub struct ChemicalImage {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// The band, cm⁻¹ (low, high).
    pub band: (f64, f64),
    /// Band points averaged.
    pub points: usize,
    /// `width × height` values.
    pub values: Vec<f32>,
}

/// The facts `ftirflow inspect` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// Detected format.
    pub format: Format,
    /// Width and height from the header, when the file is an image.
    pub dims: Option<(u32, u32)>,
    /// Spectra read.
    pub spectra: u64,
    /// Points per spectrum.
    pub points: usize,
    /// First and last wavenumber, in file order.
    pub axis_ends: (f64, f64),
    /// Smallest and largest spacing between neighbouring wavenumbers (absolute).
    pub step_range: (f64, f64),
    /// Smallest and largest finite value.
    pub value_range: Option<(f32, f32)>,
    /// NaN values.
    pub nan: u64,
    /// ±infinite values.
    pub inf: u64,
    /// Spectra with at least one non-finite value.
    pub spectra_with_nonfinite: u64,
    /// Bytes of spectral data the reader reads.
    pub data_bytes: u64,
    /// Column names of the reader's batches.
    pub columns: Vec<String>,
    /// The chemical image, when requested.
    pub image: Option<ChemicalImage>,
}

/// Largest image side `inspect` draws.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Reads `path` completely, one batch at a time; with `band`, also builds the chemical image of
/// the mean value over the axis points inside `band` (cm⁻¹, either order).
pub fn inspect(path: &Path, band: Option<(f64, f64)>) -> Result<Inspection, ReadError> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut reader = open(path, &ReadOptions::new(stem))?;
    let info = reader.info().clone();
    let schema = reader.schema();
    let wn = info.wavenumbers.clone();
    let steps: Vec<f64> = wn.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    let step_range = steps.iter().fold((f64::INFINITY, 0f64), |(a, b), &s| (a.min(s), b.max(s)));
    let band_idx: Option<Vec<usize>> = band.map(|(a, b)| {
        let (lo, hi) = (a.min(b), a.max(b));
        wn.iter().enumerate().filter(|(_, w)| **w >= lo && **w <= hi).map(|(i, _)| i).collect()
    });
    if let (Some(idx), Some((a, b))) = (&band_idx, band) {
        if idx.is_empty() {
            return Err(ReadError::format(path, format!("no axis point lies in the band {a}–{b} cm⁻¹")));
        }
    }
    let mut out = Inspection {
        format: info.format,
        dims: info.width.zip(info.height),
        spectra: 0,
        points: wn.len(),
        axis_ends: (wn.first().copied().unwrap_or(f64::NAN), wn.last().copied().unwrap_or(f64::NAN)),
        step_range: if steps.is_empty() { (0.0, 0.0) } else { step_range },
        value_range: None,
        nan: 0,
        inf: 0,
        spectra_with_nonfinite: 0,
        data_bytes: info.data_bytes,
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        image: None,
    };
    let mut pixels: Vec<(u32, u32, f32)> = Vec::new();
    for batch in reader.by_ref() {
        let batch: RecordBatch = batch?;
        let n = wn.len();
        let values = SpectraLayout::values(&batch).map_err(|e| ReadError::schema(path, e))?;
        let xs = batch.column_by_name("x").and_then(|c| c.as_primitive_opt::<UInt32Type>().cloned());
        let ys = batch.column_by_name("y").and_then(|c| c.as_primitive_opt::<UInt32Type>().cloned());
        for r in 0..batch.num_rows() {
            let s = &values[r * n..(r + 1) * n];
            let mut bad = false;
            for &v in s {
                if v.is_nan() {
                    out.nan += 1;
                    bad = true;
                } else if v.is_infinite() {
                    out.inf += 1;
                    bad = true;
                } else {
                    out.value_range = Some(match out.value_range {
                        None => (v, v),
                        Some((a, b)) => (a.min(v), b.max(v)),
                    });
                }
            }
            out.spectra_with_nonfinite += bad as u64;
            if let (Some(idx), Some(xs), Some(ys)) = (&band_idx, &xs, &ys) {
                let mean = idx.iter().map(|&i| s[i] as f64).sum::<f64>() / idx.len() as f64;
                pixels.push((xs.value(r), ys.value(r), mean as f32));
            }
        }
        out.spectra += batch.num_rows() as u64;
    }
    if let (Some(idx), Some((a, b))) = (band_idx, band) {
        let width = pixels.iter().map(|p| p.0 + 1).max().unwrap_or(0);
        let height = pixels.iter().map(|p| p.1 + 1).max().unwrap_or(0);
        if width == 0 || height == 0 {
            return Err(ReadError::format(path, "no pixel coordinates (x, y) to draw an image from"));
        }
        if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
            return Err(ReadError::format(path, format!("pixel coordinates reach {width}×{height}: too large to draw")));
        }
        let mut values = vec![f32::NAN; width as usize * height as usize];
        for (x, y, v) in pixels {
            values[y as usize * width as usize + x as usize] = v;
        }
        out.image = Some(ChemicalImage { width, height, band: (a.min(b), a.max(b)), points: idx.len(), values });
    }
    Ok(out)
}
