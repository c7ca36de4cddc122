//! `ftirflow run`: the nightly job around the dataflow graph (DESIGN.md §7, §8) — validating the
//! configuration and models before any spectrum is read, locking the output directory, deciding
//! from the manifest which images to process and which to reuse, running the graph on the
//! requested workers and processes, and writing the run's tables and `run.json`.
//!
//! Outputs (`OUT_DIR/`): `predictions/<part>.parquet` (one part per image, the same whatever the
//! layout), `cores.parquet`, `gradcam.parquet`, `bands.parquet`, `rejects.parquet`, `run.json`,
//! `manifest.jsonl`, and `parts/<part>.json` (each image's summary records, reused by later
//! runs). Every file appears only complete (temporary name, then rename).
pub mod classify;
pub mod manifest;
pub mod summary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::bundle::Bundle;
use crate::config::Config;
use crate::io::archive::ImageEntry;
use crate::plan::PreprocessPlan;
use classify::{Models, Truth};
use manifest::Identity;
use summary::{Diff, Record, Totals};

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
}

/// Whether an image is processed or its earlier outputs reused.
#[derive(Debug, Clone)]
pub enum Task {
    /// Read and classify the image.
    Process,
    /// Feed the stored summary records of an earlier run.
    Reuse(Arc<Vec<(Record, Diff)>>),
    /// Do not read it: it is rejected at `stage` for `reason` (e.g. a file linking outside the
    /// archive).
    Refuse {
        /// The stage named in the rejects.
        stage: String,
        /// One-line reason.
        reason: String,
    },
}

/// One image of the run.
#[derive(Debug, Clone)]
pub struct ImageTask {
    /// The archive entry.
    pub entry: ImageEntry,
    /// Its path relative to the archive root.
    pub rel_path: String,
    /// Its output part name.
    pub part: String,
    /// Its identity (sizes and modification times) when the run started.
    pub identity: Option<Identity>,
    /// What to do with it.
    pub task: Task,
}

/// Counters the progress reporter reads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Images finished (processed, reused or rejected) in this process.
    pub images: AtomicU64,
    /// Spectra written in this process.
    pub spectra: AtomicU64,
}

/// Everything the workers share.
#[derive(Debug)]
pub struct RunJob {
    /// The images, in archive order (image `i` runs at timestamp `i`).
    pub tasks: Vec<ImageTask>,
    /// The output directory.
    pub out: PathBuf,
    /// The preprocessing plan (from the type model's bundle).
    pub plan: Arc<PreprocessPlan>,
    /// Truth labels by sample.
    pub labels: Arc<HashMap<String, Truth>>,
    /// Spectra per read batch.
    pub batch_rows: usize,
    /// Hash of the model bundle(s).
    pub model_hash: String,
    /// Parquet key-value metadata of every output.
    pub key_values: Vec<(String, String)>,
    /// Progress counters of this process.
    pub progress: Arc<Counters>,
    /// The `[run]` configuration.
    pub run: crate::config::RunConfig,
    /// Type and subtype bundle directories.
    pub model_dirs: (PathBuf, Option<PathBuf>),
    /// Type classes, subtype classes and the model grid.
    pub meta: (Vec<String>, Option<Vec<String>>, Vec<f64>),
    /// The process's inference service, when the networks are shared.
    pub service: Option<crossbeam_channel::Sender<classify::Request>>,
    /// Set when the outputs cannot be written any more (a full or read-only disk): the
    /// process's workers stop reading images and the run ends with this error.
    pub stopped: std::sync::Mutex<Option<String>>,
}

impl RunJob {
    /// Stops the process's workers after a storage failure (the first reason wins).
    pub fn stop(&self, reason: String) {
        if let Ok(mut s) = self.stopped.lock() {
            if s.is_none() {
                tracing::error!("{reason}; this process stops reading images");
                *s = Some(reason);
            }
        }
    }

    /// The reason the run stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().ok().and_then(|s| s.clone())
    }

    /// The models as one worker uses them: its own copy, or the process's inference service.
    pub fn load_models(&self) -> anyhow::Result<Models> {
        if let Some(tx) = &self.service {
            return Ok(Models {
                types: self.meta.0.clone(),
                subtypes: self.meta.1.clone(),
                grid: self.meta.2.clone(),
                engine: classify::Engine::Shared(tx.clone()),
                batch: self.run.batch,
                gradcam: self.run.gradcam,
            });
        }
        let (types, subtypes) = load_bundles(&self.model_dirs, self.run.device)?;
        Ok(Models::local(types, subtypes, self.run.batch, self.run.gradcam))
    }
}

fn load_bundles(dirs: &(PathBuf, Option<PathBuf>), device: crate::operators::model::DeviceChoice) -> anyhow::Result<(Bundle, Option<Bundle>)> {
    let types = Bundle::load(&dirs.0, device)?;
    let subtypes = dirs.1.as_ref().map(|d| Bundle::load(d, device)).transpose()?;
    Ok((types, subtypes))
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Images in the archive.
    pub images: usize,
    /// Images processed by this run.
    pub processed: usize,
    /// Images reused from earlier runs.
    pub reused: usize,
    /// Rejected inputs (path, stage, reason).
    pub rejects: Vec<(String, String, String)>,
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

/// A part name from a sample id: safe as a file name, unique per sample.
pub fn part_name(sample: &str) -> String {
    let safe: String = sample.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if safe == sample {
        safe
    } else {
        // Keep names distinct when sanitizing merged two ids.
        use sha2::Digest;
        let h = sha2::Sha256::digest(sample.as_bytes());
        format!("{safe}-{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
    }
}

/// Whether `e` says the output storage cannot take more data (full, over quota, file size limit,
/// read-only): not the image's fault, and every later write would fail too.
pub fn is_storage_error(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind;
    let by_kind = e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| {
        matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::ReadOnlyFilesystem | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded)
    });
    let text = format!("{e:#}");
    by_kind || ["No space left on device", "File too large", "Read-only file system", "Disk quota exceeded"].iter().any(|m| text.contains(m))
}

/// The addresses of a host file: one `host:port` per line (blank lines and `#` comments
/// skipped), each resolving, none a wildcard address. Timely listens on exactly this
/// process's line (each whitespace-separated address of it), so a line holding several
/// addresses or `0.0.0.0`/`[::]` would open the unauthenticated transport on interfaces the
/// user did not list: both are refused.
pub fn read_hostfile(hostfile: &Path, processes: usize) -> anyhow::Result<Vec<String>> {
    use std::net::ToSocketAddrs;
    let text = std::fs::read_to_string(hostfile).with_context(|| format!("cannot read host file {}", hostfile.display()))?;
    let addresses: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    anyhow::ensure!(
        addresses.len() == processes,
        "host file {} lists {} addresses for {} processes",
        hostfile.display(),
        addresses.len(),
        processes
    );
    for (i, a) in addresses.iter().enumerate() {
        anyhow::ensure!(
            !a.contains(char::is_whitespace),
            "host file {}: the line of process {i} (`{a}`) must hold one host:port",
            hostfile.display()
        );
        let resolved: Vec<std::net::SocketAddr> = a
            .to_socket_addrs()
            .with_context(|| format!("host file {}: `{a}` (process {i}) is not a reachable host:port", hostfile.display()))?
            .collect();
        anyhow::ensure!(!resolved.is_empty(), "host file {}: `{a}` (process {i}) resolves to no address", hostfile.display());
        anyhow::ensure!(
            resolved.iter().all(|s| !s.ip().is_unspecified()),
            "host file {}: `{a}` (process {i}) is a wildcard address, which would listen on every network interface; \
             list the host's address on the private network instead",
            hostfile.display()
        );
    }
    Ok(addresses)
}

/// The timely configuration of a layout.
pub fn timely_config(workers: usize, opts: &RunOptions) -> anyhow::Result<timely::Config> {
    anyhow::ensure!(workers >= 1, "--workers must be at least 1");
    if opts.processes <= 1 {
        return Ok(timely::Config::process(workers));
    }
    anyhow::ensure!(opts.process < opts.processes, "--process {} must be below --processes {}", opts.process, opts.processes);
    let hostfile = opts.hostfile.as_ref().context("--processes > 1 needs --hostfile (one host:port per process)")?;
    let addresses = read_hostfile(hostfile, opts.processes)?;
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: workers,
            process: opts.process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    })
}

fn read_truth(path: &Path) -> anyhow::Result<HashMap<String, Truth>> {
    let labels = crate::train::data::read_labels(path)?;
    Ok(labels
        .into_iter()
        .map(|(s, l)| {
            let opt = |v: String| (!v.is_empty()).then_some(v);
            (s, Truth { kind: opt(l.kind), subtype: opt(l.subtype) })
        })
        .collect())
}

/// Runs the job. Errors are fatal (exit code 2): bad configuration or models, unwritable output,
/// another run holding the lock.
pub fn run(opts: &RunOptions) -> anyhow::Result<RunSummary> {
    let start = Instant::now();
    let cfg = &opts.config;
    cfg.validate()?;
    let workers = cfg.run.workers;
    let timely_cfg = timely_config(workers, opts)?;

    // Models first: a bad bundle stops the run before anything is read.
    let types = Bundle::load(&opts.model, crate::operators::model::DeviceChoice::Cpu)
        .with_context(|| format!("cannot use the type model {}", opts.model.display()))?;
    let subtypes = opts
        .subtype_model
        .as_ref()
        .map(|d| {
            Bundle::load(d, crate::operators::model::DeviceChoice::Cpu)
                .with_context(|| format!("cannot use the subtype model {}", d.display()))
        })
        .transpose()?;
    if let Some(s) = &subtypes {
        anyhow::ensure!(
            s.manifest.wavenumbers == types.manifest.wavenumbers,
            "the subtype model's grid differs from the type model's"
        );
    }
    anyhow::ensure!(
        types.manifest.classes.iter().any(|c| c == classify::CANCER) || subtypes.is_none(),
        "the type model's classes {:?} have no `{}`: the subtype model cannot be applied",
        types.manifest.classes,
        classify::CANCER
    );
    // Only tissue is classified, so only tissue spectra are corrected (a third of a core).
    let plan = PreprocessPlan::new(&types.manifest.preprocess, types.manifest.emsc.as_ref())
        .context("the type model's preprocessing cannot be set up")?
        .tissue_only();
    let model_hash = match &subtypes {
        Some(s) => format!("{}+{}", types.manifest.weights_sha256, s.manifest.weights_sha256),
        None => types.manifest.weights_sha256.clone(),
    };
    let device = cfg.run.device.resolve()?;
    tch::set_num_threads(cfg.run.threads as i32);

    // The archive and what to do with each image.
    let entries = crate::io::archive::discover(&opts.archive)
        .with_context(|| format!("cannot read the archive {}", opts.archive.display()))?;
    let root = if opts.archive.is_dir() { opts.archive.clone() } else { opts.archive.parent().unwrap_or(Path::new("")).to_path_buf() };
    // Truth labels: --labels, else labels.csv in the archive or the folder above it (where
    // `ftirflow synth` puts it beside images/).
    let labels_path = opts.labels.clone().or_else(|| {
        [root.join("labels.csv"), root.parent().unwrap_or(Path::new("")).join("labels.csv")].into_iter().find(|p| p.is_file())
    });
    let labels = match &labels_path {
        Some(p) => read_truth(p)?,
        None => HashMap::new(),
    };
    // Labels of samples that are not in the archive are allowed (a study's labels file covers
    // more than one night's archive) but named, so that a misspelt id does not pass unseen.
    let samples: std::collections::HashSet<&str> = entries.iter().map(|e| e.sample.as_str()).collect();
    let stems: std::collections::HashSet<String> =
        entries.iter().filter_map(|e| e.path.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    let unknown: Vec<&String> = labels.keys().filter(|k| !samples.contains(k.as_str()) && !stems.contains(*k)).collect();
    if !unknown.is_empty() {
        tracing::warn!(
            "labels: {} sample(s) are not in the archive and are ignored (e.g. {})",
            unknown.len(),
            unknown.iter().take(3).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        );
    }
    // The output directory: writable, locked, clean of a killed run's temporary files.
    // Writability is tested by writing (permission bits say nothing to root, nor about
    // read-only mounts).
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create the output directory {}", opts.out.display()))?;
    let probe = opts.out.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("the output directory {} is not writable", opts.out.display()))?;
    let _ = std::fs::remove_file(&probe);
    for d in ["predictions", "parts"] {
        std::fs::create_dir_all(opts.out.join(d)).with_context(|| format!("the output directory {} is not writable", opts.out.display()))?;
    }
    let _lock = if opts.process == 0 {
        let l = manifest::lock(&opts.out).map_err(anyhow::Error::msg)?;
        manifest::remove_partials(&opts.out)?;
        Some(l)
    } else {
        None
    };

    let previous = manifest::Manifest::load(&opts.out)?;
    let mut tasks = Vec::with_capacity(entries.len());
    for entry in entries {
        let rel_path = entry.path.strip_prefix(&root).unwrap_or(&entry.path).to_string_lossy().into_owned();
        let part = part_name(&entry.sample);
        if let Some(reason) = crate::io::archive::escaping_link(&root, &entry.path) {
            tasks.push(ImageTask { entry, rel_path, part, identity: None, task: Task::Refuse { stage: "discover".into(), reason } });
            continue;
        }
        let identity = manifest::identity(&entry.path).ok();
        let reuse = previous.get(&entry.sample).and_then(|m| {
            let same = Some(&m.identity) == identity.as_ref() && m.model_hash == model_hash && m.part == part;
            let pred = opts.out.join("predictions").join(format!("{part}.parquet"));
            let parts = opts.out.join("parts").join(format!("{part}.json"));
            if !(same && pred.is_file()) {
                return None;
            }
            let text = std::fs::read(parts).ok()?;
            serde_json::from_slice::<Vec<(Record, Diff)>>(&text).ok()
        });
        let task = match reuse {
            Some(r) => Task::Reuse(Arc::new(r)),
            None => Task::Process,
        };
        tasks.push(ImageTask { entry, rel_path, part, identity, task });
    }
    let reused = tasks.iter().filter(|t| matches!(t.task, Task::Reuse(_))).count();
    let n_images = tasks.len();
    tracing::info!(
        "run: {} image(s) in {}, {} to process, {} reused; {} worker(s) × {} process(es); device {:?}",
        n_images,
        opts.archive.display(),
        n_images - reused,
        reused,
        workers,
        opts.processes.max(1),
        device
    );

    let key_values = vec![
        ("ftirflow:version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("ftirflow:model_hash".to_string(), model_hash.clone()),
        ("ftirflow:config".to_string(), toml::to_string(cfg).unwrap_or_default()),
        ("ftirflow:libtorch".to_string(), crate::bundle::LIBTORCH_VERSION.to_string()),
    ];
    let progress = Arc::new(Counters::default());
    let shared = match cfg.run.inference {
        crate::config::Inference::Shared => true,
        crate::config::Inference::Local => false,
        crate::config::Inference::Auto => device.is_cuda(),
    };
    let dirs = (opts.model.clone(), opts.subtype_model.clone());
    let service = if shared {
        let (d, dev) = (dirs.clone(), cfg.run.device);
        Some(classify::spawn_service(move || load_bundles(&d, dev), cfg.run.batch, cfg.run.gradcam, cfg.run.threads)?)
    } else {
        None
    };
    let job = Arc::new(RunJob {
        tasks,
        out: opts.out.clone(),
        plan: Arc::new(plan),
        labels: Arc::new(labels),
        batch_rows: cfg.run.batch_rows,
        model_hash: model_hash.clone(),
        key_values: key_values.clone(),
        progress: progress.clone(),
        run: cfg.run.clone(),
        model_dirs: dirs,
        meta: (
            types.manifest.classes.clone(),
            subtypes.as_ref().map(|s| s.manifest.classes.clone()),
            types.manifest.wavenumbers.clone(),
        ),
        service: service.as_ref().map(|(tx, _)| tx.clone()),
        stopped: std::sync::Mutex::new(None),
    });
    let mine = (0..n_images).filter(|i| i % (workers * opts.processes.max(1)) / workers == opts.process).count();
    let done = Arc::new(AtomicBool::new(false));
    let reporter = crate::cli::progress::spawn_reporter("images", mine as u64, progress.clone(), done.clone());
    let outputs = crate::dataflow::execute(job.clone(), timely_cfg);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    // The inference service (if any) ends when the last sender — `service` and `job` — is dropped.
    drop(service);
    let outputs = outputs?;
    if let Some(reason) = job.stopped() {
        anyhow::bail!(
            "{reason}. The run stopped; images finished before are kept (see {}), nothing else was changed, and a rerun \
             with space available resumes",
            opts.out.join(manifest::MANIFEST).display()
        );
    }

    let mut summary = RunSummary {
        images: n_images,
        processed: n_images - reused,
        reused,
        workers: workers * opts.processes.max(1),
        processes: opts.processes.max(1),
        ..RunSummary::default()
    };
    if opts.process != 0 {
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let points = types.manifest.wavenumbers.len();
    let mut totals = Totals::default();
    for o in outputs {
        for (r, d) in o.records {
            totals.add(r, d, points);
        }
    }
    let type_classes = types.manifest.classes.clone();
    let sub_classes = subtypes.as_ref().map(|s| s.manifest.classes.clone());
    // The manifest: exactly the archive's images that have outputs; parts of images that left
    // the archive are removed.
    let recorded = manifest::Manifest::load(&opts.out)?;
    let keep: Vec<manifest::Entry> = job
        .tasks
        .iter()
        .filter_map(|t| recorded.get(&t.entry.sample).filter(|e| totals.cores.contains_key(&e.sample)).cloned())
        .collect();
    let parts: Vec<PathBuf> = keep.iter().map(|e| opts.out.join("parts").join(format!("{}.json", e.part))).collect();
    summary::write_tables(&opts.out, &totals, &parts, &type_classes, sub_classes.as_deref(), &types.manifest.wavenumbers, &key_values)
        .with_context(|| format!("cannot write the tables in {} (the previous tables are left as they were)", opts.out.display()))?;
    manifest::compact(&opts.out, &keep)?;
    let live: std::collections::HashSet<&str> = keep.iter().map(|e| e.part.as_str()).collect();
    for (dir, ext) in [("predictions", "parquet"), ("parts", "json")] {
        if let Ok(rd) = std::fs::read_dir(opts.out.join(dir)) {
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

    summary.rejects = totals.rejects.clone();
    summary.rejects.sort();
    summary.cores = totals.cores.len();
    summary.spectra = totals.spectra();
    summary.seconds = start.elapsed().as_secs_f64();
    summary.wrote_tables = true;
    let run_json = serde_json::json!({
        "ftirflow_version": env!("CARGO_PKG_VERSION"),
        "libtorch": crate::bundle::LIBTORCH_VERSION,
        "archive": opts.archive.display().to_string(),
        "model": opts.model.display().to_string(),
        "subtype_model": opts.subtype_model.as_ref().map(|p| p.display().to_string()),
        "model_hash": model_hash,
        "config": cfg,
        "layout": { "workers_per_process": workers, "processes": opts.processes.max(1) },
        "device": format!("{device:?}"),
        "inference": if shared { "shared" } else { "local" },
        "counts": {
            "images": summary.images, "processed": summary.processed, "reused": summary.reused,
            "rejected": summary.rejects.len(), "cores": summary.cores, "spectra": summary.spectra,
        },
        "seconds": summary.seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "spectra_per_second_processed": progress.spectra.load(Ordering::Relaxed) as f64 / summary.seconds.max(1e-9),
    });
    crate::dataflow::write_atomic(&opts.out.join("run.json"), serde_json::to_string_pretty(&run_json)?.as_bytes())?;
    Ok(summary)
}

/// This process's peak resident set size (`VmHWM`), when the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
