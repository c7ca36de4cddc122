//! `ftirflow preprocess [--config F] INPUT... --out FILE.parquet`: runs the preprocessing chain of
//! DESIGN.md §4 on any readable input and writes a spectra table with the mask and outlier columns
//! added. EMSC's reference (and paraffin interferents) is fitted on the inputs themselves in a
//! first pass, or taken from a saved state (`--emsc-state`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use arrow::array::{AsArray, RecordBatch};
use clap::Args;

use super::convert::{expand_inputs, Reject};
use super::progress::Progress;
use super::Outcome;
use crate::config::{Config, Keep, Step};
use crate::io::table::{SpectraTableWriter, TableError};
use crate::io::ImageEntry;
use crate::plan::{EmscFitter, EmscState, PreprocessPlan};

#[derive(Debug, Args)]
pub(super) struct PreprocessArgs {
    /// Image files or directories (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The spectra Parquet file to write (appears only when complete).
    #[arg(long)]
    out: PathBuf,
    /// Configuration file (TOML, see examples/ftirflow.toml); defaults apply without it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Steps to run, comma-separated, overriding the config (e.g. `--steps emsc`).
    #[arg(long, value_delimiter = ',', value_enum)]
    steps: Option<Vec<StepArg>>,
    /// Which spectra to write, overriding the config.
    #[arg(long, value_enum)]
    keep: Option<KeepArg>,
    /// Use this EMSC state (reference + interferents) instead of fitting one on the inputs.
    #[arg(long)]
    emsc_state: Option<PathBuf>,
    /// Save the EMSC state that was fitted (or loaded) to this JSON file.
    #[arg(long)]
    save_emsc_state: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StepArg {
    Segment,
    Outliers,
    Emsc,
    Resample,
    Normalize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeepArg {
    All,
    Tissue,
}

/// What a preprocessing run did.
#[derive(Debug, Clone, Default)]
pub struct PreprocessSummary {
    /// Images written.
    pub images: usize,
    /// Spectra written.
    pub spectra: u64,
    /// Tissue spectra among them.
    pub tissue: u64,
    /// Outliers among them.
    pub outliers: u64,
    /// Inputs rejected.
    pub rejects: Vec<Reject>,
    /// Wall time, seconds.
    pub seconds: f64,
}

pub(super) fn run(args: PreprocessArgs) -> anyhow::Result<Outcome> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(steps) = &args.steps {
        cfg.preprocess.steps = steps
            .iter()
            .map(|s| match s {
                StepArg::Segment => Step::Segment,
                StepArg::Outliers => Step::Outliers,
                StepArg::Emsc => Step::Emsc,
                StepArg::Resample => Step::Resample,
                StepArg::Normalize => Step::Normalize,
            })
            .collect();
        cfg.preprocess.steps.sort();
    }
    if let Some(keep) = args.keep {
        cfg.preprocess.keep = match keep {
            KeepArg::All => Keep::All,
            KeepArg::Tissue => Keep::Tissue,
        };
    }
    cfg.validate()?;
    let state = match &args.emsc_state {
        Some(p) => Some(EmscState::load(p)?),
        None => None,
    };
    let summary = preprocess(&cfg, &args.inputs, &args.out, state, args.save_emsc_state.as_deref())?;
    for r in &summary.rejects {
        eprintln!("rejected: {}: [{}] {}", r.path.display(), r.stage, r.reason);
    }
    println!(
        "preprocessed {} image(s): {} spectra ({} tissue, {} outliers) into {} in {:.1} s ({:.0} spectra/s); {} rejected",
        summary.images,
        summary.spectra,
        summary.tissue,
        summary.outliers,
        args.out.display(),
        summary.seconds,
        summary.spectra as f64 / summary.seconds.max(1e-9),
        summary.rejects.len()
    );
    Ok(if summary.rejects.is_empty() { Outcome::Complete } else { Outcome::SomeRejected })
}

fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<Vec<RecordBatch>, Reject> {
    super::convert::read_image(entry, batch_rows).map(|(_, batches, _)| batches)
}

fn count_true(batches: &[RecordBatch], name: &str) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned()))
        .map(|m| m.true_count() as u64)
        .sum()
}

/// Runs the chain of `cfg` over `inputs` into `out`. Images that fail (at reading, fitting or any
/// step) are rejected with the step named; an error is returned only when nothing useful can be
/// done (no EMSC reference can be fitted, the output cannot be written).
pub fn preprocess(
    cfg: &Config,
    inputs: &[PathBuf],
    out: &Path,
    state: Option<EmscState>,
    save_state: Option<&Path>,
) -> anyhow::Result<PreprocessSummary> {
    let start = Instant::now();
    let p = &cfg.preprocess;
    let (mut entries, mut rejects) = expand_inputs(inputs);
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    entries.retain(|e| match seen.get(&e.sample) {
        Some(first) => {
            rejects.push(Reject {
                path: e.path.clone(),
                stage: "combine",
                reason: format!("sample id `{}` is already used by {}", e.sample, first.display()),
            });
            false
        }
        None => {
            seen.insert(e.sample.clone(), e.path.clone());
            true
        }
    });
    let mut failed: HashMap<PathBuf, ()> = HashMap::new();
    let state = match (state, p.runs(Step::Emsc)) {
        (Some(s), _) => Some(s),
        (None, false) => None,
        (None, true) => {
            let progress = Progress::new("fitting EMSC reference", entries.len() as u64);
            let mut fitter = EmscFitter::new(p, entries.len())?;
            for (i, entry) in entries.iter().enumerate() {
                progress.set(i as u64, &entry.sample);
                let result = read_image(entry, p.batch_rows)
                    .and_then(|b| fitter.add_image(b).map_err(|e| Reject { path: entry.path.clone(), stage: "emsc-fit", reason: e.to_string() }));
                if let Err(r) = result {
                    failed.insert(r.path.clone(), ());
                    rejects.push(r);
                }
            }
            progress.finish();
            let sources: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            Some(fitter.finish(&format!("fitted by `ftirflow preprocess` on {}", sources.join(", "))).context("cannot fit the EMSC reference")?)
        }
    };
    if let (Some(path), Some(s)) = (save_state, &state) {
        s.save(path).with_context(|| format!("cannot write EMSC state {}", path.display()))?;
    }
    let plan = PreprocessPlan::new(p, state.as_ref())?;
    let kv = vec![
        ("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("ftirflow:preprocess".to_string(), serde_json::to_string(p).expect("config serializes")),
    ];
    let mut table = SpectraTableWriter::new(out, kv);
    let mut summary = PreprocessSummary::default();
    let todo: Vec<&ImageEntry> = entries.iter().filter(|e| !failed.contains_key(&e.path)).collect();
    let progress = Progress::new("images", todo.len() as u64);
    for (i, entry) in todo.iter().enumerate() {
        progress.set(i as u64, &format!("{} ({} spectra so far)", entry.sample, summary.spectra));
        let batches = match read_image(entry, p.batch_rows) {
            Ok(b) => b,
            Err(r) => {
                rejects.push(r);
                continue;
            }
        };
        let done = match plan.run_image(batches) {
            Ok(b) => b,
            Err(e) => {
                rejects.push(Reject { path: entry.path.clone(), stage: "preprocess", reason: e.to_string() });
                continue;
            }
        };
        let Some(schema) = done.first().map(|b| b.schema()) else {
            summary.images += 1;
            continue;
        };
        match table.write_image(&schema, &done) {
            Ok(rows) => summary.spectra += rows,
            Err(TableError::Incompatible(reason)) => {
                rejects.push(Reject { path: entry.path.clone(), stage: "combine", reason });
                continue;
            }
            Err(e) => return Err(e).context("cannot write the output file"),
        }
        summary.images += 1;
        summary.tissue += count_true(&done, crate::operators::segment::TISSUE);
        summary.outliers += count_true(&done, crate::operators::outliers::OUTLIER);
    }
    progress.finish();
    table.finish().context("cannot finish the output file")?;
    summary.rejects = rejects;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
