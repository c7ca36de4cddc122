//! Reading a run's outputs back for the report: `run.json`, `cores.parquet`, `gradcam.parquet`,
//! `bands.parquet`, `rejects.parquet` and one `predictions/<part>.parquet` at a time (a core's
//! pixels: masks, predicted class and subtype, amide I peak absorbance). Columns are looked up by
//! name and cast, so files written by other tools with wider types read as well.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ReportError;

/// Reads every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, ReportError> {
    let file = std::fs::File::open(path).map_err(|e| ReportError::bad(path, format!("cannot open: {e}")))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| ReportError::bad(path, format!("not a readable Parquet file: {e}")))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| ReportError::bad(path, format!("corrupt Parquet data: {e}")))
}

/// A column of `batch` cast to `to`; `None` when absent.
fn column(batch: &RecordBatch, name: &str, to: &DataType, path: &Path) -> Result<Option<arrow::array::ArrayRef>, ReportError> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => cast(c, to).map(Some).map_err(|e| ReportError::bad(path, format!("column `{name}`: {e}"))),
    }
}

fn need<T>(v: Option<T>, name: &str, path: &Path) -> Result<T, ReportError> {
    v.ok_or_else(|| ReportError::bad(path, format!("column `{name}` is missing")))
}

/// Strings of a column (nulls as `None`).
fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<Option<String>>>, ReportError> {
    Ok(column(batch, name, &DataType::Utf8, path)?.map(|a| a.as_string::<i32>().iter().map(|s| s.map(String::from)).collect()))
}

/// Floats of a column (nulls as NaN).
fn floats(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<f64>>, ReportError> {
    Ok(column(batch, name, &DataType::Float64, path)?
        .map(|a| a.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect()))
}

/// Unsigned integers of a column (nulls as 0).
fn uints(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<u64>>, ReportError> {
    Ok(column(batch, name, &DataType::UInt64, path)?.map(|a| a.as_primitive::<UInt64Type>().iter().map(|v| v.unwrap_or(0)).collect()))
}

/// Booleans of a column (nulls as false).
fn bools(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<bool>>, ReportError> {
    Ok(column(batch, name, &DataType::Boolean, path)?.map(|a| a.as_boolean().iter().map(|v| v.unwrap_or(false)).collect()))
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<serde_json::Value, ReportError> {
    let text = std::fs::read(path).map_err(|e| ReportError::bad(path, format!("cannot read: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| ReportError::bad(path, format!("not valid JSON: {e}")))
}

/// One row of `cores.parquet`.
#[derive(Debug, Clone, Default)]
pub struct CoreRecord {
    /// Sample id.
    pub sample: String,
    /// Entry file, relative to the archive.
    pub path: String,
    /// Spectra, tissue, paraffin, outliers, classified.
    pub counts: [u64; 5],
    /// Majority type class.
    pub majority: Option<String>,
    /// Majority subtype.
    pub subtype_majority: Option<String>,
    /// Truth type label.
    pub truth_type: Option<String>,
    /// Truth subtype label.
    pub truth_subtype: Option<String>,
}

/// Reads `cores.parquet`.
pub fn cores(path: &Path) -> Result<Vec<CoreRecord>, ReportError> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        let sample = need(strings(&b, "sample", path)?, "sample", path)?;
        let p = strings(&b, "path", path)?;
        let mut counts = Vec::new();
        for name in ["spectra", "tissue", "paraffin", "outliers", "classified"] {
            counts.push(need(uints(&b, name, path)?, name, path)?);
        }
        let opt = |name: &str| strings(&b, name, path).map(|v| v.unwrap_or_else(|| vec![None; b.num_rows()]));
        let (maj, sub, tt, ts) = (opt("majority")?, opt("subtype_majority")?, opt("truth_type")?, opt("truth_subtype")?);
        for i in 0..b.num_rows() {
            out.push(CoreRecord {
                sample: sample[i].clone().unwrap_or_default(),
                path: p.as_ref().and_then(|p| p[i].clone()).unwrap_or_default(),
                counts: [counts[0][i], counts[1][i], counts[2][i], counts[3][i], counts[4][i]],
                majority: maj[i].clone(),
                subtype_majority: sub[i].clone(),
                truth_type: tt[i].clone(),
                truth_subtype: ts[i].clone(),
            });
        }
    }
    Ok(out)
}

/// Mean and standard deviation of a (scope, class) over the model grid, from `gradcam.parquet`.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Wavenumbers, cm⁻¹, in file order.
    pub wavenumber: Vec<f64>,
    /// Mean per wavenumber.
    pub mean: Vec<f64>,
    /// Sample standard deviation per wavenumber.
    pub std: Vec<f64>,
    /// Maps (or spectra) averaged.
    pub count: u64,
}

/// Reads the per-class rows of `gradcam.parquet` (scopes `predicted`, `true` and `spectrum`; the
/// per-core rows are skipped), keyed by (scope, class).
pub fn profiles(path: &Path) -> Result<BTreeMap<(String, String), Profile>, ReportError> {
    let mut out: BTreeMap<(String, String), Profile> = BTreeMap::new();
    for b in read_parquet(path)? {
        let scope = need(strings(&b, "scope", path)?, "scope", path)?;
        let class = need(strings(&b, "class", path)?, "class", path)?;
        let wn = need(floats(&b, "wavenumber", path)?, "wavenumber", path)?;
        let mean = need(floats(&b, "mean", path)?, "mean", path)?;
        let std = need(floats(&b, "std", path)?, "std", path)?;
        let count = need(uints(&b, "count", path)?, "count", path)?;
        for i in 0..b.num_rows() {
            let (Some(s), Some(c)) = (&scope[i], &class[i]) else { continue };
            if s == "core" {
                continue;
            }
            let p = out.entry((s.clone(), c.clone())).or_default();
            p.wavenumber.push(wn[i]);
            p.mean.push(mean[i]);
            p.std.push(std[i]);
            p.count = count[i];
        }
    }
    Ok(out)
}

/// A top band from `bands.parquet` (or a bundle's `metrics.json`).
#[derive(Debug, Clone, Default)]
pub struct BandRecord {
    /// `predicted` or `true`.
    pub scope: String,
    /// Class.
    pub class: String,
    /// Low end, cm⁻¹.
    pub lo: f64,
    /// High end, cm⁻¹.
    pub hi: f64,
    /// Wavenumber of the band's maximum.
    pub peak: f64,
    /// Mean map value over the band.
    pub mean_map: f64,
    /// Biochemical assignment.
    pub assignment: String,
    /// The reviews the assignment comes from (empty in runs written before the literature table).
    pub source: String,
    /// `higher` or `lower`: the class's mean spectrum over the band against the other classes'
    /// (empty when unknown, and in runs written before this column).
    pub direction: String,
    /// That difference relative to the other classes' level (NaN when unknown).
    pub relative: f64,
    /// Of `groups` patients (or cores, see `grouped_by`) that hold the class and another, in how
    /// many the band points the same way (0 of 0 when unknown).
    pub consistent: u64,
    /// Patients or cores compared.
    pub groups: u64,
    /// `patient` or `core` (empty when unknown).
    pub grouped_by: String,
}

/// Reads `bands.parquet`.
pub fn bands(path: &Path) -> Result<Vec<BandRecord>, ReportError> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        let scope = need(strings(&b, "scope", path)?, "scope", path)?;
        let class = need(strings(&b, "class", path)?, "class", path)?;
        let f = |n: &str| floats(&b, n, path).and_then(|v| need(v, n, path));
        let (lo, hi, peak, mm) = (f("lo")?, f("hi")?, f("peak")?, f("mean_map")?);
        let assign = need(strings(&b, "assignment", path)?, "assignment", path)?;
        // Runs written before the literature table have no `source` column.
        let source = strings(&b, "source", path)?.unwrap_or_else(|| vec![None; b.num_rows()]);
        let direction = strings(&b, "direction", path)?.unwrap_or_else(|| vec![None; b.num_rows()]);
        let relative = floats(&b, "relative", path)?.unwrap_or_else(|| vec![f64::NAN; b.num_rows()]);
        // Runs written before the consistency columns have none.
        let consistent = uints(&b, "consistent", path)?.unwrap_or_else(|| vec![0; b.num_rows()]);
        let groups = uints(&b, "groups", path)?.unwrap_or_else(|| vec![0; b.num_rows()]);
        let grouped_by = strings(&b, "grouped_by", path)?.unwrap_or_else(|| vec![None; b.num_rows()]);
        for i in 0..b.num_rows() {
            out.push(BandRecord {
                scope: scope[i].clone().unwrap_or_default(),
                class: class[i].clone().unwrap_or_default(),
                lo: lo[i],
                hi: hi[i],
                peak: peak[i],
                mean_map: mm[i],
                assignment: assign[i].clone().unwrap_or_default(),
                source: source[i].clone().unwrap_or_default(),
                direction: direction[i].clone().unwrap_or_default(),
                relative: relative[i],
                consistent: consistent[i],
                groups: groups[i],
                grouped_by: grouped_by[i].clone().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Reads `rejects.parquet`: (path, stage, reason).
pub fn rejects(path: &Path) -> Result<Vec<(String, String, String)>, ReportError> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        let p = need(strings(&b, "path", path)?, "path", path)?;
        let s = need(strings(&b, "stage", path)?, "stage", path)?;
        let r = need(strings(&b, "reason", path)?, "reason", path)?;
        for i in 0..b.num_rows() {
            out.push((p[i].clone().unwrap_or_default(), s[i].clone().unwrap_or_default(), r[i].clone().unwrap_or_default()));
        }
    }
    Ok(out)
}

/// What a pixel of a core shows on a class map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelClass {
    /// Neither tissue nor paraffin (bare slide).
    Background,
    /// Paraffin.
    Paraffin,
    /// Tissue that was not classified (outlier or invalid spectrum).
    Excluded,
    /// Classified: index into the class list.
    Class(u16),
}

/// One core's pixels from its `predictions/<part>.parquet`.
#[derive(Debug, Clone, Default)]
pub struct CorePixels {
    /// Sample id.
    pub sample: String,
    /// Columns (from the smallest `x` to the largest: a core of a slide is drawn alone).
    pub width: u32,
    /// Rows (from the smallest `y` to the largest).
    pub height: u32,
    /// Row-major type map (`None`: no spectrum at that position).
    pub types: Vec<Option<PixelClass>>,
    /// Row-major subtype map, when the core has subtype predictions.
    pub subtypes: Option<Vec<Option<PixelClass>>>,
    /// Row-major amide I peak absorbance (NaN where unknown).
    pub amide_i: Vec<f32>,
    /// Whether the part has an `amide_i` column.
    pub has_amide_i: bool,
}

/// Largest image side the report draws (a bigger part is refused as not a core image).
pub const MAX_SIDE: u32 = 8192;

/// Reads one prediction part; `types` and `subtypes` name the classes in map order.
pub fn core_pixels(path: &Path, types: &[String], subtypes: &[String]) -> Result<CorePixels, ReportError> {
    let batches = read_parquet(path)?;
    let mut rows = Vec::new();
    let mut sample = None;
    let mut has_amide_i = false;
    let mut any_subtype = false;
    for b in &batches {
        let n = b.num_rows();
        let s = need(strings(b, "sample", path)?, "sample", path)?;
        let x = need(uints(b, "x", path)?, "x", path)?;
        let y = need(uints(b, "y", path)?, "y", path)?;
        let tissue = bools(b, "tissue", path)?.unwrap_or_else(|| vec![true; n]);
        let paraffin = bools(b, "paraffin", path)?.unwrap_or_else(|| vec![false; n]);
        let pred = need(strings(b, "pred_class", path)?, "pred_class", path)?;
        let sub = strings(b, "subtype", path)?;
        let amide = floats(b, "amide_i", path)?;
        has_amide_i |= amide.is_some();
        for i in 0..n {
            if sample.is_none() {
                sample = s[i].clone();
            }
            let class_of = |v: &Option<String>, classes: &[String]| v.as_ref().and_then(|c| classes.iter().position(|k| k == c));
            let t = match class_of(&pred[i], types) {
                Some(k) => PixelClass::Class(k as u16),
                None if tissue[i] => PixelClass::Excluded,
                None if paraffin[i] => PixelClass::Paraffin,
                None => PixelClass::Background,
            };
            let st = sub.as_ref().and_then(|s| class_of(&s[i], subtypes));
            any_subtype |= st.is_some();
            let a = amide.as_ref().map(|a| a[i] as f32).unwrap_or(f32::NAN);
            rows.push((x[i], y[i], t, st, a));
        }
    }
    // A core of a slide keeps the slide's coordinates: its map starts at its own first pixel.
    let x0 = rows.iter().map(|r| r.0).min().unwrap_or(0);
    let y0 = rows.iter().map(|r| r.1).min().unwrap_or(0);
    let width = rows.iter().map(|r| r.0 - x0 + 1).max().unwrap_or(0);
    let height = rows.iter().map(|r| r.1 - y0 + 1).max().unwrap_or(0);
    if width > MAX_SIDE as u64 || height > MAX_SIDE as u64 {
        return Err(ReportError::bad(path, format!("pixels spread over {width}×{height}: larger than {MAX_SIDE} px, not drawn")));
    }
    let (w, h) = (width as usize, height as usize);
    let mut types_map = vec![None; w * h];
    let mut sub_map = vec![None; w * h];
    let mut amide_i = vec![f32::NAN; w * h];
    for (x, y, t, st, a) in rows {
        let i = (y - y0) as usize * w + (x - x0) as usize;
        types_map[i] = Some(t);
        sub_map[i] = Some(match (st, t) {
            (Some(k), _) => PixelClass::Class(k as u16),
            (None, PixelClass::Class(_)) => PixelClass::Excluded,
            (None, other) => other,
        });
        amide_i[i] = a;
    }
    Ok(CorePixels {
        sample: sample.unwrap_or_default(),
        width: w as u32,
        height: h as u32,
        types: types_map,
        subtypes: any_subtype.then_some(sub_map),
        amide_i,
        has_amide_i,
    })
}

/// The prediction parts of a run, sorted by name.
pub fn prediction_parts(out_dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let dir = out_dir.join("predictions");
    let rd = std::fs::read_dir(&dir).map_err(|e| ReportError::bad(&dir, format!("cannot list predictions: {e}")))?;
    let mut parts: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    parts.sort();
    Ok(parts)
}

/// The type classes and the subtype classes of a run, from the `fraction_<class>` columns of
/// `cores.parquet` (type classes come before `majority`, subtypes after it).
pub fn class_lists(path: &Path) -> Result<(Vec<String>, Vec<String>), ReportError> {
    let file = std::fs::File::open(path).map_err(|e| ReportError::bad(path, format!("cannot open: {e}")))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ReportError::bad(path, format!("not a readable Parquet file: {e}")))?;
    let (mut types, mut subtypes, mut after) = (Vec::new(), Vec::new(), false);
    for f in builder.schema().fields() {
        if f.name() == "majority" {
            after = true;
        } else if let Some(c) = f.name().strip_prefix("fraction_") {
            if after {
                subtypes.push(c.to_string())
            } else {
                types.push(c.to_string())
            }
        }
    }
    if types.is_empty() {
        return Err(ReportError::bad(path, "no fraction_<class> columns: not a cores table"));
    }
    Ok((types, subtypes))
}
