//! The description of a nightly run's work that every worker of a process shares: the images and
//! what to do with each, the preprocessing plan and the models, where the outputs go, the counters
//! that progress reporting reads, and the one rule that places images on workers. The driver
//! (`run`) builds it; the dataflow graph (`dataflow`) executes it.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::bundle::{Bundle, BundleError};
use crate::classify::{Engine, Models, Service, Truth};
use crate::config::RunConfig;
use crate::error::Error;
use crate::io::archive::ImageEntry;
use crate::operators::model::{DeviceChoice, Precision};
use crate::outputs::layouts::CorePlace;
use crate::outputs::manifest::Identity;
use crate::outputs::records::{Diff, Record};
use crate::plan::PreprocessPlan;
use crate::reject::Reject;

/// What a run does with one image.
#[derive(Debug, Clone)]
pub enum Action {
    /// Read, preprocess and classify it.
    Process,
    /// Feed the stored summary records of an earlier run (its outputs are current).
    Reuse(Arc<Vec<(Record, Diff)>>),
    /// Do not read it: it is rejected (e.g. a file linking outside the archive).
    Refuse(Reject),
}

/// One image of the run.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// The archive entry.
    pub entry: ImageEntry,
    /// Its path relative to the archive root.
    pub rel_path: String,
    /// Its output part name.
    pub part: String,
    /// Its identity (sizes and modification times) when the run started.
    pub identity: Option<Identity>,
    /// What to do with it.
    pub action: Action,
    /// The core's place on its slide, when the job is one core of a slide (read through its
    /// window); `None` when the job is a whole image.
    pub core: Option<CorePlace>,
}

impl ImageJob {
    /// A reject of this job at `stage`: of its file, the reason naming the core of a slide.
    pub fn reject(&self, stage: &str, reason: impl std::fmt::Display) -> Reject {
        match &self.core {
            Some(c) => Reject::new(&self.entry.path, stage, format!("core {}: {reason}", c.grid.position)),
            None => Reject::new(&self.entry.path, stage, reason.to_string()),
        }
    }

    /// A reject of this job from a reader error.
    pub fn read_reject(&self, stage: &str, e: &crate::io::ReadError) -> Reject {
        let r = Reject::from_read_error(&self.entry.path, stage, e);
        self.reject(stage, r.reason)
    }
}

/// Counters that progress reporting reads while the graph runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Images finished (processed, reused or rejected) in this process.
    pub images: AtomicU64,
    /// Spectra written in this process.
    pub spectra: AtomicU64,
}

/// The model bundles of a run.
#[derive(Debug, Clone)]
pub struct ModelDirs {
    /// The type model bundle.
    pub types: PathBuf,
    /// The subtype model bundle.
    pub subtypes: Option<PathBuf>,
    /// The precision the networks run in (`[run] precision`, resolved).
    pub precision: Precision,
}

impl ModelDirs {
    /// Loads both bundles onto `device`, their networks in [`ModelDirs::precision`].
    pub fn load(&self, device: DeviceChoice) -> Result<(Bundle, Option<Bundle>), BundleError> {
        let load = |dir: &PathBuf| {
            Bundle::load(dir, device).map(|mut b| {
                b.classifier.freeze_as(self.precision);
                b
            })
        };
        let types = load(&self.types)?;
        let subtypes = self.subtypes.as_ref().map(load).transpose()?;
        Ok((types, subtypes))
    }
}

/// What every worker knows of the models without loading them.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The bundles.
    pub dirs: ModelDirs,
    /// Type model classes.
    pub types: Vec<String>,
    /// Subtype model classes, when there is a subtype model.
    pub subtypes: Option<Vec<String>>,
    /// The model grid (cm⁻¹).
    pub grid: Vec<f64>,
}

/// Everything the workers of a process share.
#[derive(Debug)]
pub struct RunJob {
    /// The images, in archive order (image `i` runs at timestamp `i`).
    pub images: Vec<ImageJob>,
    /// The output directory.
    pub out: PathBuf,
    /// The preprocessing plan (from the type model's bundle).
    pub plan: Arc<PreprocessPlan>,
    /// Truth labels by sample.
    pub labels: Arc<HashMap<String, Truth>>,
    /// Hash of the model bundle(s).
    pub model_hash: String,
    /// Parquet key-value metadata of every output.
    pub key_values: Vec<(String, String)>,
    /// Progress counters of this process.
    pub progress: Arc<Counters>,
    /// The `[run]` configuration.
    pub run: RunConfig,
    /// The models.
    pub models: ModelInfo,
    /// The process's inference service, when the networks are shared.
    pub service: Option<Service>,
    /// Bytes of spectra one unit of work may hold (`[run] memory_budget` over twice the workers
    /// per process); a larger unit is rejected before it is read.
    pub unit_budget: u64,
    /// The content hash of each image file, computed once however many cores of it the process
    /// writes (a slide's cores share their file).
    pub content_hashes: Mutex<HashMap<PathBuf, ContentHash>>,
    /// Set when the outputs cannot be written any more (a full or read-only disk): the
    /// process's workers stop reading images and the run ends with this error.
    pub stopped: Mutex<Option<String>>,
    /// The worker (over all processes) that runs each image ([`deal`]).
    pub workers: Vec<usize>,
}

/// One image file's content hash, computed by the first worker that needs it (the others wait).
pub type ContentHash = Arc<std::sync::OnceLock<Result<String, String>>>;

impl RunJob {
    /// The content hash of the files of the image whose entry file is `path` (`manifest.jsonl`,
    /// [`crate::outputs::manifest::content_hash`]), computed once per process.
    pub fn content_hash(&self, path: &std::path::Path) -> Result<String, Error> {
        let cell = match self.content_hashes.lock() {
            Ok(mut m) => Arc::clone(m.entry(path.to_path_buf()).or_default()),
            Err(_) => Arc::default(),
        };
        cell.get_or_init(|| crate::outputs::manifest::content_hash(path).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::invalid(format!("cannot hash the image {}: {e}", path.display())))
    }

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

    /// The images worker `worker` runs ([`RunJob::workers`]), with their indices.
    pub fn images_of(&self, worker: usize) -> impl Iterator<Item = (usize, &ImageJob)> {
        self.images.iter().enumerate().filter(move |(i, _)| self.workers.get(*i) == Some(&worker))
    }

    /// The models as one worker uses them: its own copy, or the process's inference service.
    pub fn load_models(&self) -> Result<Models, Error> {
        let run = &self.run;
        if let Some(service) = &self.service {
            return Ok(Models {
                types: self.models.types.clone(),
                subtypes: self.models.subtypes.clone(),
                grid: self.models.grid.clone(),
                engine: Engine::Shared(service.clone()),
                batch: run.batch,
                gradcam: run.gradcam,
                explain: run.explain,
            });
        }
        let (types, subtypes) = self.models.dirs.load(run.device)?;
        Ok(Models::local(types, subtypes, run.batch, run.gradcam, run.explain))
    }
}

/// The worker of each unit when the run has `peers` workers over all processes (process `p` holds
/// workers `p·W … p·W + W − 1`): in order, each unit goes to the worker with the least work dealt
/// so far (`costs`, e.g. bytes of spectra; ties to the lowest index), so units of equal cost are
/// dealt round-robin and the workers' shares of the work, not of the units, come out even. Every
/// process computes the same deal, and it does not depend on how long any unit takes. The
/// workers' timestamps stay interleaved (each takes the next unit when its share falls behind),
/// which the graph needs: a unit leaves it only once every worker's input has passed it.
///
/// ```
/// use ftirflow::job::deal;
/// assert_eq!(deal(&[1, 1, 1, 1], 2), [0, 1, 0, 1]);
/// assert_eq!(deal(&[5, 1, 1, 1, 1, 5], 2), [0, 1, 1, 1, 1, 1]);
/// assert_eq!(deal(&[5, 1, 1, 1, 1, 5, 1], 2), [0, 1, 1, 1, 1, 1, 0]);
/// ```
pub fn deal(costs: &[u64], peers: usize) -> Vec<usize> {
    let mut load = vec![0u64; peers.max(1)];
    costs
        .iter()
        .map(|&c| {
            let w = (0..load.len()).min_by_key(|&w| (load[w], w)).unwrap_or(0);
            load[w] = load[w].saturating_add(c);
            w
        })
        .collect()
}

/// How many units of a deal ([`deal`]) the process `process` runs with `workers` workers per
/// process.
pub fn images_of_process(deal: &[usize], workers: usize, process: usize) -> usize {
    deal.iter().filter(|&&w| w / workers.max(1) == process).count()
}

/// The work of each unit for [`deal`]: bytes of its files for a whole image being processed, its
/// window's share of its slide's files for a core (in proportion to the windows of the slide's
/// cores), and nothing for a unit reused or refused.
pub fn unit_costs(images: &[ImageJob]) -> Vec<u64> {
    let bytes = |j: &ImageJob| j.identity.as_ref().map_or(0, |i| i.files.iter().map(|f| f.size).sum::<u64>());
    let area = |j: &ImageJob| j.core.as_ref().map_or(0, |c| u64::from(c.window[2]) * u64::from(c.window[3]));
    let mut slide_area: HashMap<&std::path::Path, u64> = HashMap::new();
    for j in images.iter().filter(|j| j.core.is_some()) {
        *slide_area.entry(j.entry.path.as_path()).or_default() += area(j);
    }
    images
        .iter()
        .map(|j| match (&j.action, &j.core) {
            (Action::Process, None) => bytes(j),
            (Action::Process, Some(_)) => {
                let total = slide_area.get(j.entry.path.as_path()).copied().unwrap_or(0).max(1);
                (u128::from(bytes(j)) * u128::from(area(j)) / u128::from(total)) as u64
            }
            _ => 0,
        })
        .collect()
}
