//! The `convert` job: any readable image (or directory of images) to one spectra Parquet table
//! (docs/formats.md). A bad input is rejected with a one-line reason naming the file; the other
//! inputs are still converted.
use std::collections::HashMap;
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

/// Reads one image completely (one image is the unit that is either converted whole or rejected).
/// Returns the image's schema, batches and bytes of spectral data, or the reject naming the stage.
pub fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<(SchemaRef, Vec<RecordBatch>, u64), Reject> {
    let opts = ReadOptions { batch_rows, sample: entry.sample.clone(), window: None };
    let reader = io::open_as(&entry.path, entry.format, &opts).map_err(|e| Reject::from_read_error(&entry.path, "open", &e))?;
    let schema = reader.schema();
    let bytes = reader.info().data_bytes;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| Reject::from_read_error(&entry.path, "read", &e))?;
    Ok((schema, batches, bytes))
}

/// Converts `inputs` into the spectra table `out`, reporting each image to `progress`. Every input
/// must share the first good input's wavenumber axis and columns; the others are rejected.
/// Returns an error only when the output cannot be written.
pub fn convert(inputs: &[PathBuf], out: &Path, batch_rows: usize, progress: &dyn Fn(ImageProgress)) -> Result<ConvertSummary, Error> {
    if batch_rows == 0 {
        return Err(Error::invalid("--batch-rows must be at least 1"));
    }
    let start = Instant::now();
    let (entries, mut rejects) = expand_inputs(inputs);
    let mut summary = ConvertSummary::default();
    let kv = vec![("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    let mut table = SpectraTableWriter::new(out, kv);
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let total = entries.len();
    for (i, entry) in entries.iter().enumerate() {
        progress(ImageProgress { pass: "images", done: i, total, current: &entry.sample });
        if let Some(first) = seen.get(&entry.sample) {
            rejects.push(duplicate_sample(entry, first));
            continue;
        }
        let (schema, batches, bytes) = match read_image(entry, batch_rows) {
            Ok(v) => v,
            Err(r) => {
                rejects.push(r);
                continue;
            }
        };
        match write_image(&mut table, entry, &schema, &batches)? {
            Ok(rows) => summary.spectra += rows,
            Err(reject) => {
                rejects.push(reject);
                continue;
            }
        }
        summary.images += 1;
        summary.bytes += bytes;
        seen.insert(entry.sample.clone(), entry.path.clone());
    }
    progress(ImageProgress { pass: "images", done: total, total, current: "" });
    summary.points = table.points();
    table.finish().context_with(|| "cannot finish the output file".to_string())?;
    summary.rejects = rejects;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
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
