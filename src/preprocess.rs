//! The `preprocess` job: the preprocessing chain (docs/configuration.md) on any readable input,
//! written as a spectra table with the mask and outlier columns added. EMSC's reference (and
//! paraffin interferents) is fitted on the inputs themselves in a first pass, or taken from a
//! saved state.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};

use crate::config::{Config, Step};
use crate::convert::{duplicate_sample, expand_inputs, write_image, ImageProgress};
use crate::error::{Error, ResultExt};
use crate::io::table::SpectraTableWriter;
use crate::io::ImageEntry;
use crate::plan::{EmscFitter, EmscState, PreprocessPlan};
use crate::reject::Reject;

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

fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<Vec<RecordBatch>, Reject> {
    crate::convert::read_image(entry, batch_rows).map(|(_, batches, _)| batches)
}

fn count_true(batches: &[RecordBatch], name: &str) -> u64 {
    batches.iter().filter_map(|b| b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned())).map(|m| m.true_count() as u64).sum()
}

/// Runs the chain of `cfg` over `inputs` into `out`, reporting each image to `progress`. Images
/// that fail (at reading, fitting or any step) are rejected with the step named; an error is
/// returned only when nothing useful can be done (no EMSC reference can be fitted, the output
/// cannot be written).
pub fn preprocess(
    cfg: &Config,
    inputs: &[PathBuf],
    out: &Path,
    state: Option<EmscState>,
    save_state: Option<&Path>,
    progress: &dyn Fn(ImageProgress),
) -> Result<PreprocessSummary, Error> {
    let start = Instant::now();
    let p = &cfg.preprocess;
    let (mut entries, mut rejects) = expand_inputs(inputs);
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    entries.retain(|e| match seen.get(&e.sample) {
        Some(first) => {
            rejects.push(duplicate_sample(e, first));
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
            const PASS: &str = "fitting EMSC reference";
            let total = entries.len();
            let mut fitter = EmscFitter::new(p, total)?;
            for (i, entry) in entries.iter().enumerate() {
                progress(ImageProgress { pass: PASS, done: i, total, current: &entry.sample });
                let result = read_image(entry, p.batch_rows)
                    .and_then(|b| fitter.add_image(b).map_err(|e| Reject::new(&entry.path, "emsc-fit", e.to_string())));
                if let Err(r) = result {
                    failed.insert(r.path.clone(), ());
                    rejects.push(r);
                }
            }
            progress(ImageProgress { pass: PASS, done: total, total, current: "" });
            let sources: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            let source = format!("fitted by `ftirflow preprocess` on {}", sources.join(", "));
            // When no image could be used, say why the first one could not.
            let why = (failed.len() == total && total > 0).then(|| rejects.iter().find(|r| failed.contains_key(&r.path))).flatten();
            let context = match why {
                Some(r) => format!("cannot fit the EMSC reference: no image could be used ({}: {})", r.path.display(), r.reason),
                None => "cannot fit the EMSC reference".to_string(),
            };
            Some(fitter.finish(&source).context_with(|| context)?)
        }
    };
    if let (Some(path), Some(s)) = (save_state, &state) {
        s.save(path).map_err(|e| Error::io("cannot write EMSC state", path, e))?;
    }
    let plan = PreprocessPlan::new(p, state.as_ref())?;
    let kv = vec![
        ("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("ftirflow:preprocess".to_string(), serde_json::to_string(p).expect("config serializes")),
    ];
    let mut table = SpectraTableWriter::new(out, kv);
    let mut summary = PreprocessSummary::default();
    let todo: Vec<&ImageEntry> = entries.iter().filter(|e| !failed.contains_key(&e.path)).collect();
    let total = todo.len();
    for (i, entry) in todo.iter().enumerate() {
        progress(ImageProgress { pass: "images", done: i, total, current: &entry.sample });
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
                rejects.push(Reject::new(&entry.path, "preprocess", e.to_string()));
                continue;
            }
        };
        let Some(schema) = done.first().map(|b| b.schema()) else {
            summary.images += 1;
            continue;
        };
        match write_image(&mut table, entry, &schema, &done)? {
            Ok(rows) => summary.spectra += rows,
            Err(reject) => {
                rejects.push(reject);
                continue;
            }
        }
        summary.images += 1;
        summary.tissue += count_true(&done, crate::operators::segment::TISSUE);
        summary.outliers += count_true(&done, crate::operators::outliers::OUTLIER);
    }
    progress(ImageProgress { pass: "images", done: total, total, current: "" });
    table.finish().context_with(|| "cannot finish the output file".to_string())?;
    summary.rejects = rejects;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
