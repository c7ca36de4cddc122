//! Where a run's networks live and how spectra are scored: each worker's own copy of the models
//! (CPU), or one inference service thread per process that owns them on the device (CUDA) and
//! scores the workers' requests in arrival order. Scoring pads the last batch of an image to a
//! fixed shape quantum so libtorch's per-shape kernel cache stays bounded.
use crate::bundle::{Bundle, BundleError};
use crate::error::Error;
use crate::operators::OpError;

use super::OP;

/// Which model of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The type (CA vs AT) model.
    Type,
    /// The subtype model.
    Subtype,
}

/// One scoring request to a shared inference service.
pub struct Request {
    which: Which,
    values: Vec<f32>,
    rows: usize,
    reply: crossbeam_channel::Sender<Result<Scored, OpError>>,
}

/// Where the networks run: in the worker itself (CPU: every worker has its own copy), or in one
/// inference service thread per process that owns the networks on the device (CUDA: the workers
/// send it batches through a channel and go on preprocessing while it computes).
pub enum Engine {
    /// The worker's own networks.
    Local {
        /// Type model.
        types: Box<Bundle>,
        /// Subtype model.
        subtypes: Option<Box<Bundle>>,
    },
    /// A channel to the process's inference service.
    Shared(crossbeam_channel::Sender<Request>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Local { .. } => "Engine::Local",
            Engine::Shared(_) => "Engine::Shared",
        })
    }
}

/// The models of a run as a worker sees them: class names and grid of the type model and, when
/// given, the subtype model, and where they run. A worker shares its `Models` between the
/// classify kernels of its images through an `Rc`: libtorch modules are `Send` but not `Sync`, so
/// the type system keeps them on the worker's thread.
#[derive(Debug)]
pub struct Models {
    /// Type model classes.
    pub types: Vec<String>,
    /// Subtype model classes.
    pub subtypes: Option<Vec<String>>,
    /// The model grid.
    pub grid: Vec<f64>,
    /// Where the networks run.
    pub engine: Engine,
    /// Spectra per inference batch.
    pub batch: usize,
    /// Whether to compute Grad-CAM maps.
    pub gradcam: bool,
}

impl Models {
    /// Models that run in the calling worker.
    pub fn local(types: Bundle, subtypes: Option<Bundle>, batch: usize, gradcam: bool) -> Self {
        Self {
            types: types.classifier.classes().to_vec(),
            subtypes: subtypes.as_ref().map(|b| b.classifier.classes().to_vec()),
            grid: types.classifier.grid().to_vec(),
            engine: Engine::Local { types: Box::new(types), subtypes: subtypes.map(Box::new) },
            batch,
            gradcam,
        }
    }

    /// Scores `rows` spectra with one model (see [`score`]).
    pub(super) fn score(&self, which: Which, values: &[f32], rows: usize) -> Result<Scored, OpError> {
        match &self.engine {
            Engine::Local { types, subtypes } => {
                let bundle: &Bundle = match which {
                    Which::Type => types,
                    Which::Subtype => subtypes.as_deref().ok_or_else(|| OpError::internal(OP, "no subtype model"))?,
                };
                score(bundle, values, rows, self.batch, self.gradcam)
            }
            Engine::Shared(tx) => {
                let (reply, rx) = crossbeam_channel::bounded(1);
                tx.send(Request { which, values: values.to_vec(), rows, reply })
                    .map_err(|_| OpError::internal(OP, "the inference service stopped"))?;
                rx.recv().map_err(|_| OpError::internal(OP, "the inference service stopped"))?
            }
        }
    }
}

/// Starts the inference service of a process: a thread that owns the networks (loaded by `load`
/// on the device) and scores the workers' requests in arrival order. It ends when every sender
/// is dropped.
pub fn spawn_service(
    load: impl FnOnce() -> Result<(Bundle, Option<Bundle>), BundleError> + Send + 'static,
    batch: usize,
    gradcam: bool,
    threads: usize,
) -> Result<(crossbeam_channel::Sender<Request>, std::thread::JoinHandle<()>), Error> {
    let (tx, rx) = crossbeam_channel::bounded::<Request>(64);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), BundleError>>(1);
    let handle = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            tch::set_num_threads(threads as i32);
            let (types, subtypes) = match load() {
                Ok(m) => {
                    let _ = ready_tx.send(Ok(()));
                    m
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for r in rx {
                let bundle = match r.which {
                    Which::Type => Some(&types),
                    Which::Subtype => subtypes.as_ref(),
                };
                let result = match bundle {
                    Some(b) => score(b, &r.values, r.rows, batch, gradcam),
                    None => Err(OpError::internal(OP, "no subtype model")),
                };
                let _ = r.reply.send(result);
            }
        })
        .map_err(|e| Error::invalid(format!("cannot start the inference service: {e}")))?;
    ready_rx.recv().map_err(|_| Error::invalid("the inference service did not start"))??;
    Ok((tx, handle))
}

/// Probabilities and maps of `rows` spectra from one model, in fixed batches.
pub struct Scored {
    pub(super) probs: Vec<f32>,
    pub(super) predicted: Vec<u32>,
    pub(super) maps: Vec<f32>,
}

/// Inference batches are padded to a multiple of this many rows.
///
/// libtorch (oneDNN) builds and caches a kernel per input shape; with one shape per image's
/// leftover rows the cache — and the process's memory — grew with the archive. Padding the last
/// batch of an image to a multiple of 64 rows bounds the shapes to `batch / 64` (the padded rows
/// are zeros and their outputs are dropped; every row is computed independently in evaluation
/// mode).
pub const SHAPE_QUANTUM: usize = 64;

fn score(bundle: &Bundle, values: &[f32], rows: usize, batch: usize, gradcam: bool) -> Result<Scored, OpError> {
    let n = bundle.classifier.grid().len();
    let k = bundle.classifier.classes().len();
    let mut s = Scored { probs: Vec::new(), predicted: Vec::new(), maps: Vec::new() };
    let mut padded = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + batch).min(rows);
        let len = end - start;
        let shape = len.div_ceil(SHAPE_QUANTUM) * SHAPE_QUANTUM;
        let chunk: &[f32] = if shape == len {
            &values[start * n..end * n]
        } else {
            padded.clear();
            padded.extend_from_slice(&values[start * n..end * n]);
            padded.resize(shape * n, 0.0);
            &padded
        };
        if gradcam {
            let (p, m) = bundle.classifier.predict_values_with_gradcam(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
            s.maps.extend_from_slice(&m.maps[..len * m.points]);
        } else {
            let p = bundle.classifier.predict_values(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
        }
        start = end;
    }
    Ok(s)
}
