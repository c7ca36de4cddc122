//! `ftirflow run`: the nightly job around the dataflow graph (docs/outputs.md) — validating the
//! configuration and models before any spectrum is read, locking the output directory, deciding
//! from the manifest which images to process and which to reuse, running the graph on the
//! requested workers and processes, and writing the run's tables and `run.json`.
//!
//! Outputs (`OUT_DIR/`, see [`crate::outputs`]): `predictions/<part>.parquet` (one part per image,
//! the same whatever the layout), `cores.parquet`, `gradcam.parquet`, `bands.parquet`,
//! `rejects.parquet`, `run.json`, `manifest.jsonl`, and `parts/<part>.json` (each image's summary
//! records, reused by later runs). Every file appears only complete (temporary name, then rename).
pub mod cluster;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::bundle::Bundle;
use crate::classify::{Truth, CANCER};
use crate::config::{Config, DearrayMode, Inference, PrecisionChoice};
use crate::error::{Error, ResultExt};
use crate::io::archive::ImageEntry;
use crate::job::{Action, Counters, ImageJob, ModelDirs, ModelInfo, RunJob};
use crate::operators::grad_cam::MapKind;
use crate::operators::model::{Agreement, DeviceChoice, Precision};
use crate::outputs::layouts::{Layout, LayoutRecord};
use crate::outputs::manifest::{self, ManifestEntry, RunManifest};
use crate::outputs::records::{Diff, Record};
use crate::outputs::tables::{write_tables, Totals};
use crate::outputs::{part_name, prediction_path, summary_path};
use crate::plan::PreprocessPlan;
use crate::reject::Reject;

/// What `ftirflow run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration (`[run]` is used; preprocessing comes from the type model's bundle).
    pub config: Config,
    /// The type model bundle.
    pub model: PathBuf,
    /// The subtype model bundle.
    pub subtype_model: Option<PathBuf>,
    /// The archive (a directory of images, or one image).
    pub archive: PathBuf,
    /// `labels.csv` with truth labels (default: `ARCHIVE/labels.csv` when it exists).
    pub labels: Option<PathBuf>,
    /// The output directory.
    pub out: PathBuf,
    /// Processes in the cluster (1: a single process).
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// Host file: one `host:port` per process.
    pub hostfile: Option<PathBuf>,
    /// The run's id (default: a new one from the start time, see [`status::new_run_id`]); give
    /// every process of a cluster run the same one.
    pub run_id: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// The run's id (in `status.json` and every table's metadata).
    pub run_id: String,
    /// Images in the archive.
    pub images: usize,
    /// Images de-arrayed into the cores of a slide.
    pub slides: usize,
    /// Units of work (whole images, cores of slides) processed by this run.
    pub processed: usize,
    /// Units of work reused from earlier runs.
    pub reused: usize,
    /// Rejected inputs, sorted.
    pub rejects: Vec<Reject>,
    /// Cores in the outputs.
    pub cores: usize,
    /// Spectra in the outputs.
    pub spectra: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Workers per process × processes.
    pub workers: usize,
    /// Processes.
    pub processes: usize,
    /// Whether this process wrote the tables (process 0).
    pub wrote_tables: bool,
}

/// Progress of this process's share of a run, reported about five times a second while the
/// graph runs and once more, with `finished`, at its end.
#[derive(Debug, Clone, Copy)]
pub struct RunProgress {
    /// Images finished (processed, reused or rejected) by this process.
    pub images_done: u64,
    /// Images this process runs.
    pub images: u64,
    /// Spectra written by this process.
    pub spectra: u64,
    /// Seconds since the graph started.
    pub seconds: f64,
    /// Whether the graph has finished.
    pub finished: bool,
}

/// The models of a run, checked against each other, with what follows from them.
struct CheckedModels {
    types: Bundle,
    subtypes: Option<Bundle>,
    /// The type model's preprocessing, tissue spectra only.
    plan: PreprocessPlan,
    /// Hash of the weights of both bundles.
    hash: String,
}

/// Runs the job, reporting progress to `progress`. Errors are fatal (exit code 2): bad
/// configuration or models, unwritable output, another run holding the lock. Process 0 records
/// how the run ended in `OUT_DIR/status.json` (and the metrics file, when configured) either way.
pub fn run(opts: &RunOptions, progress: &(dyn Fn(RunProgress) + Sync)) -> Result<RunSummary, Error> {
    let started = SystemTime::now();
    let run_id = run_id(opts, started);
    let mut model_hash = None;
    let result = run_job(opts, &run_id, &mut model_hash, progress);
    if opts.process == 0 {
        record_status(opts, &run_id, started, model_hash, result.as_ref());
    }
    result
}

/// A run refused before it started (its configuration file cannot be used): recorded as failed
/// in `status.json` and the metrics like any other run; returns the error.
pub fn refuse(opts: &RunOptions, error: Error) -> Error {
    if opts.process == 0 {
        let started = SystemTime::now();
        record_status(opts, &run_id(opts, started), started, None, Err(&error));
    }
    error
}

/// `--run-id`, or a new id from the start time ([`status::new_run_id`]).
fn run_id(opts: &RunOptions, started: SystemTime) -> String {
    opts.run_id.clone().unwrap_or_else(|| status::new_run_id(started))
}

/// Writes `status.json` and the metrics file of a run that ended with `result`. A monitor that
/// cannot be told is not a reason to fail the run: what cannot be written is logged.
fn record_status(opts: &RunOptions, run_id: &str, started: SystemTime, model_hash: Option<String>, result: Result<&RunSummary, &Error>) {
    let out = &opts.out;
    let state = match result {
        Ok(s) if s.rejects.is_empty() => status::State::Ok,
        Ok(_) => status::State::Rejects,
        Err(_) => status::State::Failed,
    };
    let mut st = status::Status::new(run_id, started, state, status::Status::load(out).as_ref());
    st.error = result.err().map(|e| e.to_string());
    st.counts = result.ok().map(|s| status::Counts {
        images: s.images,
        slides: s.slides,
        processed: s.processed,
        reused: s.reused,
        rejected: s.rejects.len(),
        cores: s.cores,
        spectra: s.spectra,
    });
    st.model_hash = model_hash;
    st.archive = opts.archive.display().to_string();
    st.out = out.display().to_string();
    // A run refused before it created its output directory (bad configuration or models on a
    // first night) creates nothing; the metrics file still tells.
    if out.is_dir() {
        if let Err(e) = st.store(out) {
            tracing::warn!("cannot write {}: {e}", out.join(status::STATUS).display());
        }
    } else {
        tracing::debug!("no status.json: the output directory {} does not exist", out.display());
    }
    if let Some(path) = &opts.config.run.metrics_file {
        if let Err(e) = status::write_metrics(path, &st) {
            tracing::warn!("cannot write the metrics file {}: {e}", path.display());
        }
    }
}

/// The run itself; `model_hash` is set as soon as the models are known.
fn run_job(
    opts: &RunOptions,
    run_id: &str,
    model_hash: &mut Option<String>,
    progress: &(dyn Fn(RunProgress) + Sync),
) -> Result<RunSummary, Error> {
    let start = Instant::now();
    let cfg = &opts.config;
    cfg.validate()?;
    let workers = cfg.run.workers;
    let processes = opts.processes.max(1);
    let layout = cluster::layout(workers, opts.processes, opts.process, opts.hostfile.as_deref())?;
    let models = check_models(opts)?;
    *model_hash = Some(models.hash.clone());
    let device = cfg.run.device.resolve()?;
    tch::set_num_threads(cfg.run.threads as i32);
    let precision = decide_precision(cfg.run.precision, device, &models)?;
    tracing::info!("precision: {} ({})", precision.used.name(), precision.reason);

    let entries =
        crate::io::archive::discover(&opts.archive).context_with(|| format!("cannot read the archive {}", opts.archive.display()))?;
    let root = if opts.archive.is_dir() { opts.archive.clone() } else { opts.archive.parent().unwrap_or(Path::new("")).to_path_buf() };
    let labels = read_labels(opts, &root)?;
    let _lock = prepare_output(opts)?;
    let n_entries = entries.len();
    let reuse = reuse_key(&models.hash, cfg.run.explain);
    let (images, slides) = plan_images(opts, entries, &root, &reuse)?;
    let labels = match_labels(labels, &images);
    let reused = images.iter().filter(|t| matches!(t.action, Action::Reuse(_))).count();
    let n_images = images.len();
    tracing::info!(
        "run: {} image(s) in {} ({} slide(s) de-arrayed), {} unit(s) of work: {} to process, {} reused; {} worker(s) × {} process(es); device {:?}",
        n_entries,
        opts.archive.display(),
        slides,
        n_images,
        n_images - reused,
        reused,
        workers,
        processes,
        device
    );

    let key_values = vec![
        ("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("ftirflow:model_hash".to_string(), models.hash.clone()),
        ("ftirflow:config".to_string(), toml::to_string(cfg).unwrap_or_default()),
        ("ftirflow:libtorch".to_string(), crate::bundle::LIBTORCH_VERSION.to_string()),
        ("ftirflow:run_id".to_string(), run_id.to_string()),
        (EXPLAIN_KEY.to_string(), cfg.run.explain.name().to_string()),
        (crate::io::parquet::NOT_AN_IMAGE.to_string(), "a table of ftirflow run".to_string()),
    ];
    let shared = match cfg.run.inference {
        Inference::Shared => true,
        Inference::Local => false,
        Inference::Auto => device.is_cuda(),
    };
    let dirs = ModelDirs { types: opts.model.clone(), subtypes: opts.subtype_model.clone(), precision: precision.used };
    let service = if shared {
        let (d, dev) = (dirs.clone(), cfg.run.device);
        Some(crate::classify::spawn_service(
            move || d.load(dev),
            cfg.run.batch,
            cfg.run.gradcam,
            cfg.run.threads,
            cfg.run.inference_threads,
        )?)
    } else {
        None
    };
    let dealt = crate::job::deal(&crate::job::unit_costs(&images), workers * processes);
    let job = Arc::new(RunJob {
        images,
        out: opts.out.clone(),
        plan: Arc::new(models.plan),
        labels: Arc::new(labels),
        model_hash: reuse,
        key_values: key_values.clone(),
        progress: Arc::new(Counters::default()),
        run: cfg.run.clone(),
        models: ModelInfo {
            dirs,
            types: models.types.manifest.classes.clone(),
            subtypes: models.subtypes.as_ref().map(|s| s.manifest.classes.clone()),
            grid: models.types.manifest.wavenumbers.clone(),
        },
        service: service.as_ref().map(|(tx, _)| tx.clone()),
        unit_budget: memory_budget(cfg.run.memory_budget) / (2 * workers as u64),
        content_hashes: std::sync::Mutex::new(HashMap::new()),
        stopped: std::sync::Mutex::new(None),
        workers: dealt,
    });
    let mine = crate::job::images_of_process(&job.workers, workers, opts.process) as u64;
    let outputs =
        layout.connect(Duration::from_secs(cfg.run.connect_timeout)).and_then(|comm| execute_with_progress(&job, comm, mine, progress));
    let waited = outputs.as_ref().map(|o| o.iter().map(|w| w.waited).sum()).unwrap_or_default();
    let service_usage = service.as_ref().map(|(s, _)| s.usage(waited));
    if let Some(u) = &service_usage {
        tracing::info!(
            "inference service: busy {:.1} s scoring {} spectra ({} requests); this process's workers waited {:.1} s in all",
            u.busy_seconds,
            u.spectra,
            u.requests,
            u.worker_wait_seconds
        );
    }
    // The inference service (if any) ends when the last sender — `service` and `job` — is dropped.
    drop(service);
    let outputs = outputs?;
    if let Some(reason) = job.stopped() {
        return Err(Error::Stopped(format!(
            "{reason}. The run stopped; images finished before are kept (see {}), nothing else was changed, and a rerun \
             with space available resumes",
            opts.out.join(manifest::MANIFEST).display()
        )));
    }

    let mut summary = RunSummary {
        run_id: run_id.to_string(),
        images: n_entries,
        slides,
        processed: n_images - reused,
        reused,
        workers: workers * processes,
        processes,
        ..RunSummary::default()
    };
    if opts.process != 0 {
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let points = models.types.manifest.wavenumbers.len();
    let mut totals = Totals::default();
    for (r, d) in outputs.into_iter().flat_map(|o| o.records) {
        totals.add(r, d, points);
    }
    write_outputs(opts, &job, &totals, &models.types, models.subtypes.as_ref(), &key_values)?;

    summary.rejects = totals.rejects.clone();
    crate::reject::sort(&mut summary.rejects);
    summary.cores = totals.cores.len();
    summary.spectra = totals.spectra();
    summary.seconds = start.elapsed().as_secs_f64();
    summary.wrote_tables = true;
    let processed_spectra = job.progress.spectra.load(Ordering::Relaxed);
    let inference = InferenceRecord { shared, service: service_usage };
    write_run_json(opts, &summary, &models.hash, &format!("{device:?}"), &inference, &precision, processed_spectra)?;
    Ok(summary)
}

/// Loads both models on the CPU and checks that they fit together, before anything is read.
fn check_models(opts: &RunOptions) -> Result<CheckedModels, Error> {
    let types =
        Bundle::load(&opts.model, DeviceChoice::Cpu).context_with(|| format!("cannot use the type model {}", opts.model.display()))?;
    let subtypes = match &opts.subtype_model {
        Some(d) => Some(Bundle::load(d, DeviceChoice::Cpu).context_with(|| format!("cannot use the subtype model {}", d.display()))?),
        None => None,
    };
    if let Some(s) = &subtypes {
        if s.manifest.wavenumbers != types.manifest.wavenumbers {
            return Err(Error::invalid("the subtype model's grid differs from the type model's"));
        }
    }
    if subtypes.is_some() && !types.manifest.classes.iter().any(|c| c == CANCER) {
        return Err(Error::invalid(format!(
            "the type model's classes {:?} have no `{CANCER}`: the subtype model cannot be applied",
            types.manifest.classes
        )));
    }
    // Only tissue is classified, so only tissue spectra are corrected (a third of a core).
    let plan = PreprocessPlan::new(&types.manifest.preprocess, types.manifest.emsc.as_ref())
        .context_with(|| "the type model's preprocessing cannot be set up".to_string())?
        .tissue_only();
    let hash = match &subtypes {
        Some(s) => format!("{}+{}", types.manifest.weights_sha256, s.manifest.weights_sha256),
        None => types.manifest.weights_sha256.clone(),
    };
    Ok(CheckedModels { types, subtypes, plan, hash })
}

/// What `[run] precision` came to, and why.
#[derive(Debug, Clone, Serialize)]
struct PrecisionDecision {
    /// The configured setting.
    setting: PrecisionChoice,
    /// What the networks run in.
    used: Precision,
    /// Why.
    reason: String,
    /// The probe check of each bundle (`auto` on a CPU with bfloat16 units).
    agreement: Vec<(String, Agreement)>,
}

/// The share of identical classes on a bundle's probe spectra with which `auto` runs bf16.
pub const BF16_AGREEMENT: f64 = 0.995;
/// … or the largest f32 probability gap between the two most probable classes of a spectrum whose
/// class bf16 changes, below which `auto` also runs bf16: only near-ties changed.
pub const BF16_NEAR_TIE: f32 = 0.05;

/// Resolves `[run] precision`: `auto` is bf16 only on the CPU, with bfloat16 units, when for every
/// bundle bf16 gives its probe spectra (preprocessed training spectra kept in the bundle) the same
/// class as f32 for at least [`BF16_AGREEMENT`] of them, or changes only classes f32 decided by
/// less than [`BF16_NEAR_TIE`] of probability.
fn decide_precision(setting: PrecisionChoice, device: tch::Device, models: &CheckedModels) -> Result<PrecisionDecision, Error> {
    let decided = |used, reason: &str| PrecisionDecision { setting, used, reason: reason.to_string(), agreement: Vec::new() };
    match setting {
        PrecisionChoice::F32 => return Ok(decided(Precision::F32, "configured")),
        PrecisionChoice::Bf16 => return Ok(decided(Precision::Bf16, "configured")),
        PrecisionChoice::Auto if device.is_cuda() => return Ok(decided(Precision::F32, "auto: f32 on CUDA")),
        PrecisionChoice::Auto if !crate::operators::model::cpu_has_bf16() => {
            return Ok(decided(Precision::F32, "auto: this CPU has no bfloat16 units (AVX-512 BF16 or AMX)"))
        }
        PrecisionChoice::Auto => {}
    }
    let mut decision = decided(Precision::Bf16, "");
    for bundle in std::iter::once(&models.types).chain(models.subtypes.as_ref()) {
        let name = bundle.dir.display().to_string();
        let Some((values, rows)) = bundle.probe().map_err(|e| Error::invalid(e.to_string()))? else {
            return Ok(decided(
                Precision::F32,
                &format!("auto: the bundle {name} holds no probe spectra (trained by an earlier version); `precision = \"bf16\"` uses bf16 without the check"),
            ));
        };
        let a = bundle.classifier.agreement(&values, rows, Precision::Bf16).context_with(|| format!("cannot check bf16 on {name}"))?;
        decision.agreement.push((name.clone(), a));
        if a.same_class < BF16_AGREEMENT && a.changed_margin >= BF16_NEAR_TIE {
            decision.used = Precision::F32;
            decision.reason = format!(
                "auto: in bf16 the bundle {name} gives {:.2} % of its probe spectra the same class as in f32 (below {:.1} %), \
                 and changes a class f32 decided by {:.3} of probability (not a near-tie, < {BF16_NEAR_TIE})",
                100.0 * a.same_class,
                100.0 * BF16_AGREEMENT,
                a.changed_margin
            );
            return Ok(decision);
        }
    }
    let worst = decision.agreement.iter().map(|(_, a)| a.same_class).fold(1.0, f64::min);
    let margin = decision.agreement.iter().map(|(_, a)| a.changed_margin).fold(0.0, f32::max);
    decision.reason = format!(
        "auto: bfloat16 units; {:.2} % of the probe spectra keep their class in bf16, the others were near-ties in f32 \
         (probability gap ≤ {margin:.3})",
        100.0 * worst
    );
    Ok(decision)
}

/// Truth labels: `--labels`, else `labels.csv` in the archive or the folder above it (where
/// `ftirflow synth` puts it beside `images/`), read and checked before any output is created;
/// [`match_labels`] fits them to the run's units.
fn read_labels(opts: &RunOptions, root: &Path) -> Result<HashMap<String, Truth>, Error> {
    let path = opts
        .labels
        .clone()
        .or_else(|| [root.join("labels.csv"), root.parent().unwrap_or(Path::new("")).join("labels.csv")].into_iter().find(|p| p.is_file()));
    let Some(path) = path else { return Ok(HashMap::new()) };
    Ok(crate::train::data::read_labels(&path)
        .map_err(|e| Error::invalid(e.to_string()))?
        .into_iter()
        .map(|(s, l)| {
            let opt = |v: String| (!v.is_empty()).then_some(v);
            (s, Truth { kind: opt(l.kind), subtype: opt(l.subtype), patient: opt(l.patient) })
        })
        .collect())
}

/// The labels of the run's units: a core of a slide (`S1/B3`) also takes a label whose position
/// is written otherwise (`S1/b03`). Labels of samples that are not in the archive are allowed (a
/// study's labels file covers more than one night's archive) but named, so that a misspelt id
/// does not pass unseen.
fn match_labels(mut labels: HashMap<String, Truth>, images: &[ImageJob]) -> HashMap<String, Truth> {
    // Cores of slides take the label of their position however it is written.
    let by_position: HashMap<String, String> = labels.keys().map(|k| (crate::tma::canonical_sample(k), k.clone())).collect();
    let mut matched: HashSet<String> = HashSet::new();
    for job in images.iter().filter(|j| j.core.is_some()) {
        let sample = &job.entry.sample;
        if labels.contains_key(sample) {
            matched.insert(sample.clone());
        } else if let Some(key) = by_position.get(&crate::tma::canonical_sample(sample)) {
            matched.insert(key.clone());
            let truth = labels[key].clone();
            labels.insert(sample.clone(), truth);
        }
    }
    let samples: HashSet<&str> = images.iter().map(|j| j.entry.sample.as_str()).collect();
    let stems: HashSet<String> = images.iter().filter_map(|j| j.entry.path.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    let mut unknown: Vec<&String> =
        labels.keys().filter(|k| !samples.contains(k.as_str()) && !stems.contains(*k) && !matched.contains(*k)).collect();
    unknown.sort();
    if !unknown.is_empty() {
        tracing::warn!(
            "labels: {} sample(s) are not in the archive and are ignored (e.g. {})",
            unknown.len(),
            unknown.iter().take(3).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        );
    }
    labels
}

/// The output directory: created, writable, locked (process 0), clean of a killed run's
/// temporary files. Writability is tested by writing (permission bits say nothing to root, nor
/// about read-only mounts).
fn prepare_output(opts: &RunOptions) -> Result<Option<manifest::DirLock>, Error> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create the output directory", out, e))?;
    let probe = out.join(format!(".write-test-{}", std::process::id()));
    let not_writable = |e| Error::io_message(format!("the output directory {} is not writable", out.display()), e);
    std::fs::write(&probe, b"").map_err(not_writable)?;
    let _ = std::fs::remove_file(&probe);
    for d in ["predictions", "parts"] {
        std::fs::create_dir_all(out.join(d)).map_err(not_writable)?;
    }
    if opts.process != 0 {
        return Ok(None);
    }
    let lock = manifest::lock(out)?;
    manifest::remove_partials(out).map_err(|e| Error::io("cannot remove temporary files in", out, e))?;
    Ok(Some(lock))
}

/// The key-value metadata entry of every run table naming the kind of maps (`gradcam` or
/// `signed`, `[run] explain`).
pub const EXPLAIN_KEY: &str = "ftirflow:explain";

/// What a part must have been computed with to be reused (the manifest's `model_hash`): the
/// models' hash, and `+signed` when the maps are signed — a default run's key is the hash alone,
/// so manifests of earlier versions stay valid.
fn reuse_key(model_hash: &str, explain: MapKind) -> String {
    match explain {
        MapKind::Gradcam => model_hash.to_string(),
        MapKind::Signed => format!("{model_hash}+signed"),
    }
}

/// The units of work and what to do with each: an image is de-arrayed (`[tma]`, see
/// [`crate::tma`]) into the cores of a slide or stays whole; a file linking outside the archive
/// is refused; a unit whose files, model and parts are unchanged since the manifest recorded it
/// is reused; the rest is processed. Returns the units and the number of slides.
fn plan_images(opts: &RunOptions, entries: Vec<ImageEntry>, root: &Path, model_hash: &str) -> Result<(Vec<ImageJob>, usize), Error> {
    let out = &opts.out;
    let tma = &opts.config.tma;
    let previous = RunManifest::load(out).map_err(|e| Error::io("cannot read the manifest in", out, e))?;
    // The layout of every readable image inside the archive: cached, or found by the pass.
    let refused: Vec<Option<String>> = entries.iter().map(|e| crate::io::archive::escaping_link(root, &e.path)).collect();
    let identities: Vec<Option<manifest::Identity>> =
        entries.iter().zip(&refused).map(|(e, r)| r.is_none().then(|| manifest::identity(&e.path).ok()).flatten()).collect();
    let mut layouts: Vec<Option<Layout>> = entries
        .iter()
        .zip(&identities)
        .map(|(e, id)| id.as_ref().and_then(|id| crate::outputs::layouts::cached(out, &part_name(&e.sample), id, tma)))
        .collect();
    let todo: Vec<usize> = (0..entries.len()).filter(|&i| refused[i].is_none() && layouts[i].is_none()).collect();
    if !todo.is_empty() && tma.dearray != DearrayMode::Off {
        tracing::info!("de-arraying: mapping {} image(s)", todo.len());
    }
    let found = crate::tma::decide_all(
        &todo.iter().map(|&i| &entries[i]).collect::<Vec<_>>(),
        tma,
        opts.config.run.batch_rows,
        opts.config.run.workers,
    );
    for (&i, d) in todo.iter().zip(found) {
        // Process 0 records what depends only on the image (the other processes find the same).
        if let (true, 0, Some(id)) = (d.lasting, opts.process, &identities[i]) {
            let record = LayoutRecord { identity: id.clone(), tma: tma.clone(), layout: d.layout.clone() };
            if let Err(e) = crate::outputs::layouts::store(out, &part_name(&entries[i].sample), &record) {
                tracing::warn!("cannot record the layout of {}: {e}", entries[i].path.display());
            }
        }
        layouts[i] = Some(d.layout);
    }

    let mut images = Vec::with_capacity(entries.len());
    let mut slides = 0;
    for ((entry, refused), (identity, layout)) in entries.into_iter().zip(refused).zip(identities.into_iter().zip(layouts)) {
        let rel_path = entry.path.strip_prefix(root).unwrap_or(&entry.path).to_string_lossy().into_owned();
        let whole = |action| ImageJob {
            part: part_name(&entry.sample),
            entry: entry.clone(),
            rel_path: rel_path.clone(),
            identity: identity.clone(),
            action,
            core: None,
        };
        if let Some(reason) = refused {
            images.push(whole(Action::Refuse(Reject::new(&entry.path, "discover", reason))));
            continue;
        }
        let units = match layout.unwrap_or(Layout::Whole) {
            Layout::Whole => vec![whole(Action::Process)],
            Layout::Refused(reason) => vec![whole(Action::Refuse(Reject::new(&entry.path, "dearray", reason)))],
            Layout::Slide { cores, .. } => {
                slides += 1;
                cores
                    .into_iter()
                    .map(|core| {
                        let sample = core.sample();
                        ImageJob {
                            part: part_name(&sample),
                            entry: ImageEntry { sample, ..entry.clone() },
                            rel_path: rel_path.clone(),
                            identity: identity.clone(),
                            action: Action::Process,
                            core: Some(core),
                        }
                    })
                    .collect()
            }
        };
        for mut unit in units {
            if matches!(unit.action, Action::Process) {
                if let Some(records) = reusable(&previous, &unit, out, model_hash) {
                    unit.action = Action::Reuse(Arc::new(records));
                }
            }
            images.push(unit);
        }
    }
    Ok((images, slides))
}

/// The stored records of a unit whose files, model and parts are unchanged since the manifest
/// recorded it.
fn reusable(previous: &RunManifest, unit: &ImageJob, out: &Path, model_hash: &str) -> Option<Vec<(Record, Diff)>> {
    let m = previous.get(&unit.entry.sample)?;
    let same = Some(&m.identity) == unit.identity.as_ref() && m.model_hash == model_hash && m.part == unit.part;
    if !(same && prediction_path(out, &unit.part).is_file()) {
        return None;
    }
    let text = std::fs::read(summary_path(out, &unit.part)).ok()?;
    serde_json::from_slice::<Vec<(Record, Diff)>>(&text).ok()
}

/// Runs the graph while a reporter thread hands the counters to `progress`.
fn execute_with_progress(
    job: &Arc<RunJob>,
    comm: crate::dataflow::Communication,
    images: u64,
    progress: &(dyn Fn(RunProgress) + Sync),
) -> Result<Vec<crate::dataflow::WorkerOutput>, Error> {
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let counters = Arc::clone(&job.progress);
    let tick = |finished: bool| RunProgress {
        images_done: counters.images.load(Ordering::Relaxed).min(images),
        images,
        spectra: counters.spectra.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        finished,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                progress(tick(false));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let outputs = crate::dataflow::execute(Arc::clone(job), comm);
        done.store(true, Ordering::Relaxed);
        outputs
    })
    .inspect(|_| progress(tick(true)))
}

/// Writes the tables and compacts the manifest to exactly the archive's images that have outputs;
/// parts of images that left the archive are removed.
fn write_outputs(
    opts: &RunOptions,
    job: &RunJob,
    totals: &Totals,
    types: &Bundle,
    subtypes: Option<&Bundle>,
    key_values: &[(String, String)],
) -> Result<(), Error> {
    let out = &opts.out;
    let recorded = RunManifest::load(out).map_err(|e| Error::io("cannot read the manifest in", out, e))?;
    let keep: Vec<ManifestEntry> =
        job.images.iter().filter_map(|t| recorded.get(&t.entry.sample).filter(|e| totals.cores.contains_key(&e.sample)).cloned()).collect();
    let parts: Vec<PathBuf> = keep.iter().map(|e| summary_path(out, &e.part)).collect();
    let sub_classes = subtypes.map(|s| s.manifest.classes.clone());
    write_tables(out, totals, &parts, &types.manifest.classes, sub_classes.as_deref(), &types.manifest.wavenumbers, key_values)
        .context_with(|| format!("cannot write the tables in {} (the previous tables are left as they were)", out.display()))?;
    manifest::compact(out, &keep).map_err(|e| Error::io("cannot rewrite the manifest in", out, e))?;
    let live: HashSet<&str> = keep.iter().map(|e| e.part.as_str()).collect();
    // Layouts of images that left the archive go too.
    let images: HashSet<String> =
        job.images.iter().map(|t| part_name(t.core.as_ref().map_or(t.entry.sample.as_str(), |c| c.image.as_str()))).collect();
    if let Ok(rd) = std::fs::read_dir(out.join(crate::outputs::layouts::LAYOUTS)) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_suffix(".json").is_some_and(|stem| !images.contains(stem)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for (dir, ext) in [("predictions", "parquet"), ("parts", "json")] {
        if let Ok(rd) = std::fs::read_dir(out.join(dir)) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(&format!(".{ext}")) {
                    if !live.contains(stem) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Where a run's networks ran, for `run.json`: shared or local, and what the shared service did.
struct InferenceRecord {
    shared: bool,
    service: Option<crate::classify::ServiceUsage>,
}

/// `run.json`: the description of the last successful run.
fn write_run_json(
    opts: &RunOptions,
    s: &RunSummary,
    model_hash: &str,
    device: &str,
    inference: &InferenceRecord,
    precision: &PrecisionDecision,
    processed_spectra: u64,
) -> Result<(), Error> {
    let run_json = serde_json::json!({
        "run_id": s.run_id,
        "ftirflow_version": env!("CARGO_PKG_VERSION"),
        "libtorch": crate::bundle::LIBTORCH_VERSION,
        "archive": opts.archive.display().to_string(),
        "model": opts.model.display().to_string(),
        "subtype_model": opts.subtype_model.as_ref().map(|p| p.display().to_string()),
        "model_hash": model_hash,
        "config": &opts.config,
        "layout": { "workers_per_process": opts.config.run.workers, "processes": s.processes },
        "device": device,
        "inference": if inference.shared { "shared" } else { "local" },
        "inference_service": inference.service,
        "precision": precision,
        "counts": {
            "images": s.images, "slides": s.slides, "processed": s.processed, "reused": s.reused,
            "rejected": s.rejects.len(), "cores": s.cores, "spectra": s.spectra,
        },
        "seconds": s.seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "spectra_per_second_processed": processed_spectra as f64 / s.seconds.max(1e-9),
    });
    let path = opts.out.join("run.json");
    let text = serde_json::to_string_pretty(&run_json).map_err(|e| Error::invalid(format!("cannot encode run.json: {e}")))?;
    crate::io::atomic::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io("cannot write", &path, e))
}

/// The run's memory budget in bytes: `[run] memory_budget` MiB, or 60 % of the machine's memory
/// (`MemTotal`; 8 GiB when the system does not say).
fn memory_budget(mib: u64) -> u64 {
    if mib > 0 {
        return mib.saturating_mul(1 << 20);
    }
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(8 << 30, |kb| kb * 1024);
    total / 10 * 6
}

/// This process's peak resident set size (`VmHWM`), when the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
