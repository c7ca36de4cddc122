//! `ftirflow convert INPUT... --out FILE.parquet`: any readable image (or directory of images) to
//! one spectra Parquet table. A bad input is rejected with a one-line reason naming the file; the
//! other inputs are still converted, and the exit code is then 1.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use clap::Args;

use super::progress::Progress;
use super::Outcome;
use crate::io::table::{SpectraTableWriter, TableError};
use crate::io::{self, archive, Format, ImageEntry, ReadError, ReadOptions};

#[derive(Debug, Args)]
pub(super) struct ConvertArgs {
    /// Image files or directories (searched recursively; see README "Input formats").
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The spectra Parquet file to write (appears only when complete).
    #[arg(long)]
    out: PathBuf,
    /// Spectra per record batch / Parquet row-group slice.
    #[arg(long, default_value_t = io::DEFAULT_BATCH_ROWS)]
    batch_rows: usize,
}

/// An input that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The file.
    pub path: PathBuf,
    /// Where it failed (`discover`, `open`, `read`, `combine`).
    pub stage: &'static str,
    /// One-line reason.
    pub reason: String,
}

impl Reject {
    /// A reject for `path` from a reader error (the reason without the path it already names
    /// when that is `path` itself).
    pub fn from_error(path: &Path, stage: &'static str, e: &ReadError) -> Self {
        let text = e.to_string();
        let prefix = format!("{}: ", path.display());
        let reason = text.strip_prefix(&prefix).map(str::to_string).unwrap_or(text);
        Self { path: path.to_path_buf(), stage, reason }
    }
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

pub(super) fn run(args: ConvertArgs) -> anyhow::Result<Outcome> {
    let summary = convert(&args.inputs, &args.out, args.batch_rows)?;
    for r in &summary.rejects {
        eprintln!("rejected: {}: [{}] {}", r.path.display(), r.stage, r.reason);
    }
    println!(
        "converted {} image(s), {} spectra × {} points into {} in {:.1} s ({:.0} spectra/s); {} rejected",
        summary.images,
        summary.spectra,
        summary.points,
        args.out.display(),
        summary.seconds,
        summary.spectra as f64 / summary.seconds.max(1e-9),
        summary.rejects.len()
    );
    Ok(if summary.rejects.is_empty() { Outcome::Complete } else { Outcome::SomeRejected })
}

/// The images named by `inputs` (files or directories), and the inputs that name none.
pub fn expand_inputs(inputs: &[PathBuf]) -> (Vec<ImageEntry>, Vec<Reject>) {
    let mut entries = Vec::new();
    let mut rejects = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match archive::discover(input) {
                Ok(found) if found.is_empty() => rejects.push(Reject {
                    path: input.clone(),
                    stage: "discover",
                    reason: "directory holds no readable image".into(),
                }),
                Ok(found) => entries.extend(found),
                Err(e) => rejects.push(Reject::from_error(input, "discover", &e)),
            }
        } else if !input.exists() {
            rejects.push(Reject { path: input.clone(), stage: "discover", reason: "no such file or directory".into() });
        } else {
            match Format::detect(input) {
                Some(format) => entries.push(ImageEntry {
                    path: input.clone(),
                    format,
                    sample: input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                }),
                None => rejects.push(Reject {
                    path: input.clone(),
                    stage: "discover",
                    reason: "unrecognised file type (expected .hdr, .dat+.bsp, .dmt, .parquet or .csv)".into(),
                }),
            }
        }
    }
    (entries, rejects)
}

/// Reads one image completely (one image is the unit that is either converted whole or rejected).
/// Returns the image's schema, batches and bytes of spectral data, or the reject naming the stage.
pub(super) fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<(SchemaRef, Vec<RecordBatch>, u64), Reject> {
    let opts = ReadOptions { batch_rows, sample: entry.sample.clone() };
    let reader = io::open_as(&entry.path, entry.format, &opts).map_err(|e| Reject::from_error(&entry.path, "open", &e))?;
    let schema = reader.schema();
    let bytes = reader.info().data_bytes;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| Reject::from_error(&entry.path, "read", &e))?;
    Ok((schema, batches, bytes))
}

/// Converts `inputs` into the spectra table `out`. Every input must share the first good input's
/// wavenumber axis and columns; the others are rejected. Returns an error only when the output
/// cannot be written.
pub fn convert(inputs: &[PathBuf], out: &Path, batch_rows: usize) -> anyhow::Result<ConvertSummary> {
    anyhow::ensure!(batch_rows > 0, "--batch-rows must be at least 1");
    let start = Instant::now();
    let (entries, mut rejects) = expand_inputs(inputs);
    let mut summary = ConvertSummary::default();
    let kv = vec![("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    let mut table = SpectraTableWriter::new(out, kv);
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let progress = Progress::new("images", entries.len() as u64);
    for (i, entry) in entries.iter().enumerate() {
        progress.set(i as u64, &entry.sample);
        if let Some(first) = seen.get(&entry.sample) {
            rejects.push(Reject {
                path: entry.path.clone(),
                stage: "combine",
                reason: format!("sample id `{}` is already used by {}", entry.sample, first.display()),
            });
            continue;
        }
        let (schema, batches, bytes) = match read_image(entry, batch_rows) {
            Ok(v) => v,
            Err(r) => {
                rejects.push(r);
                continue;
            }
        };
        match table.write_image(&schema, &batches) {
            Ok(rows) => summary.spectra += rows,
            Err(TableError::Incompatible(reason)) => {
                rejects.push(Reject { path: entry.path.clone(), stage: "combine", reason });
                continue;
            }
            Err(e) => return Err(e).context("cannot write the output file"),
        }
        summary.images += 1;
        summary.bytes += bytes;
        seen.insert(entry.sample.clone(), entry.path.clone());
    }
    progress.finish();
    summary.points = table.points();
    table.finish().context("cannot finish the output file")?;
    summary.rejects = rejects;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
