//! The `convert` job: any readable image (or directory of images) to one spectra Parquet table
//! (docs/formats.md). A bad input is rejected with a one-line reason naming the file; the other
//! inputs are still converted.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::{Error, ResultExt};
use crate::io::table::{SpectraTableWriter, TableError};
use crate::io::{self, archive, Format, ImageEntry, ReadOptions};
use crate::reject::Reject;

/// Progress of a job that walks images (`convert`, `preprocess`): `done` of `total` images of a
/// pass are finished, `current` is the image being read; a pass ends with `done == total`.
#[derive(Debug, Clone, Copy)]
pub struct ImageProgress<'a> {
    /// The pass (`images`, or `fitting EMSC reference` in `preprocess`).
    pub pass: &'static str,
    /// Images finished in this pass.
    pub done: usize,
    /// Images in this pass.
    pub total: usize,
    /// What is being worked on.
    pub current: &'a str,
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertSummary {
    /// Images converted.
    pub images: usize,
    /// Spectra written.
    pub spectra: u64,
    /// Bytes of spectral values read.
    pub bytes: u64,
    /// Points per spectrum (0 when nothing was converted).
    pub points: usize,
    /// Inputs rejected.
    pub rejects: Vec<Reject>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The images named by `inputs` (files or directories), and the inputs that name none.
pub fn expand_inputs(inputs: &[PathBuf]) -> (Vec<ImageEntry>, Vec<Reject>) {
    let mut entries = Vec::new();
    let mut rejects = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match archive::discover(input) {
                Ok(found) if found.is_empty() => rejects.push(Reject::new(input, "discover", "directory holds no readable image")),
                Ok(found) => entries.extend(found),
                Err(e) => rejects.push(Reject::from_read_error(input, "discover", &e)),
            }
        } else if !input.exists() {
            rejects.push(Reject::new(input, "discover", "no such file or directory"));
        } else {
            match Format::detect(input) {
                Some(format) => entries.push(ImageEntry {
                    path: input.clone(),
                    format,
                    sample: input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                }),
                None => rejects.push(Reject::new(
                    input,
                    "discover",
                    "unrecognised file type (expected .hdr, .dat+.bsp, .dmt, .parquet or .csv)",
                )),
            }
        }
    }
    (entries, rejects)
}

/// Reads one image completely (`preprocess` needs a whole image for its K-means).
/// Returns the image's schema, batches and bytes of spectral data, or the reject naming the stage.
pub fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<(SchemaRef, Vec<RecordBatch>, u64), Reject> {
    let opts = ReadOptions { batch_rows, sample: entry.sample.clone(), window: None, bands: None };
    let reader = io::open_as(&entry.path, entry.format, &opts).map_err(|e| Reject::from_read_error(&entry.path, "open", &e))?;
    let schema = reader.schema();
    let bytes = reader.info().data_bytes;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| Reject::from_read_error(&entry.path, "read", &e))?;
    Ok((schema, batches, bytes))
}

/// Converts `inputs` into the spectra table `out`, reporting each image to `progress`. Every input
/// must share the first good input's wavenumber axis and columns; the others are rejected.
/// Returns an error only when the output cannot be written.
///
/// Images stream into the table batch by batch (memory holds a batch and a row group, never an
/// image). An image that fails after some of its rows were written cannot be taken out of the
/// table again: the table is then dropped unfinished and the conversion starts over without that
/// image, so the table never holds part of an image (a rare path: truncated files are found
/// before their first row).
pub fn convert(inputs: &[PathBuf], out: &Path, batch_rows: usize, progress: &dyn Fn(ImageProgress)) -> Result<ConvertSummary, Error> {
    if batch_rows == 0 {
        return Err(Error::invalid("--batch-rows must be at least 1"));
    }
    let start = Instant::now();
    let (entries, rejects) = expand_inputs(inputs);
    let mut failed: BTreeMap<usize, Reject> = BTreeMap::new();
    loop {
        match convert_pass(&entries, &failed, out, batch_rows, progress)? {
            Ok(mut summary) => {
                summary.rejects = rejects.into_iter().chain(failed.into_values()).chain(summary.rejects).collect();
                summary.seconds = start.elapsed().as_secs_f64();
                return Ok(summary);
            }
            Err((i, reject)) => {
                tracing::warn!("{reject}; the table is written again without it");
                failed.insert(i, reject);
            }
        }
    }
}

/// One pass of [`convert`] over `entries` without those in `failed`: the summary, or the image
/// that failed after some of its rows were written (the unfinished table is dropped).
fn convert_pass(
    entries: &[ImageEntry],
    failed: &BTreeMap<usize, Reject>,
    out: &Path,
    batch_rows: usize,
    progress: &dyn Fn(ImageProgress),
) -> Result<Result<ConvertSummary, (usize, Reject)>, Error> {
    let mut summary = ConvertSummary::default();
    let kv = vec![("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    let mut table = SpectraTableWriter::new(out, kv);
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let total = entries.len();
    'images: for (i, entry) in entries.iter().enumerate() {
        progress(ImageProgress { pass: "images", done: i, total, current: &entry.sample });
        if failed.contains_key(&i) {
            continue;
        }
        if let Some(first) = seen.get(&entry.sample) {
            summary.rejects.push(duplicate_sample(entry, first));
            continue;
        }
        let opts = ReadOptions { batch_rows, sample: entry.sample.clone(), window: None, bands: None };
        let reader = match io::open_as(&entry.path, entry.format, &opts) {
            Ok(r) => r,
            Err(e) => {
                summary.rejects.push(Reject::from_read_error(&entry.path, "open", &e));
                continue;
            }
        };
        let schema = reader.schema();
        let bytes = reader.info().data_bytes;
        let mut rows = 0u64;
        for batch in reader {
            let written = match batch {
                Ok(b) => write_image(&mut table, entry, &schema, std::slice::from_ref(&b))?,
                Err(e) => Err(Reject::from_read_error(&entry.path, "read", &e)),
            };
            match written {
                Ok(n) => rows += n,
                Err(reject) if rows == 0 => {
                    summary.rejects.push(reject);
                    continue 'images;
                }
                Err(reject) => return Ok(Err((i, reject))),
            }
        }
        summary.spectra += rows;
        summary.images += 1;
        summary.bytes += bytes;
        seen.insert(entry.sample.clone(), entry.path.clone());
    }
    progress(ImageProgress { pass: "images", done: total, total, current: "" });
    summary.points = table.points();
    table.finish().context_with(|| "cannot finish the output file".to_string())?;
    Ok(Ok(summary))
}

/// The reject of an image whose sample id an earlier input already used.
pub fn duplicate_sample(entry: &ImageEntry, first: &Path) -> Reject {
    Reject::new(&entry.path, "combine", format!("sample id `{}` is already used by {}", entry.sample, first.display()))
}

/// Appends one image to `table`: its rows, or its reject when it does not fit the table; an error
/// when the table cannot be written.
pub fn write_image(
    table: &mut SpectraTableWriter,
    entry: &ImageEntry,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Result<u64, Reject>, Error> {
    match table.write_image(schema, batches) {
        Ok(rows) => Ok(Ok(rows)),
        Err(TableError::Incompatible(reason)) => Ok(Err(Reject::new(&entry.path, "combine", reason))),
        Err(e) => Err(Error::from(e).context("cannot write the output file")),
    }
}
