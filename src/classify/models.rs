//! Where a run's networks live and how spectra are scored: each worker's own copy of the models
//! (CPU), or one inference service per process whose threads own them on the device (CUDA),
//! score the workers' requests in arrival order and leave the maps' host-side finish to the
//! workers. Scoring pads the last batch of an image to a
//! fixed shape quantum so libtorch's per-shape kernel cache stays bounded.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::bundle::{Bundle, BundleError};
use crate::error::Error;
use crate::operators::grad_cam::MapKind;
use crate::operators::model::RawCams;
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

/// Called by an inference service thread after it replied to a request, from that thread: wakes
/// the worker that sent it (whose classify operator then takes the reply).
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// One scoring request to a shared inference service.
pub struct Request {
    which: Which,
    /// The worker's own spectra of the image, shared (not copied) while they are scored.
    values: std::sync::Arc<[f32]>,
    rows: usize,
    reply: crossbeam_channel::Sender<Result<RawScored, OpError>>,
    wake: Wake,
}

/// A process's inference service as its users hold it: the queue to its threads and the tally of
/// what it did.
#[derive(Clone, Debug)]
pub struct Service {
    tx: crossbeam_channel::Sender<Request>,
    tally: std::sync::Arc<Tally>,
}

/// Nanoseconds and counts of an inference service.
#[derive(Default, Debug)]
struct Tally {
    busy_ns: AtomicU64,
    requests: AtomicU64,
    spectra: AtomicU64,
}

/// What an inference service did in a run (`run.json`'s `inference_service`): how busy its
/// thread was and how long the workers waited for it. A thread busy for most of the run means
/// the device side bounds it; a mostly idle one means the workers (reading, preprocessing) do.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ServiceUsage {
    /// Seconds the service threads spent scoring, summed over them.
    pub busy_seconds: f64,
    /// Seconds the workers of this process spent waiting for the service, summed over them: a
    /// worker sends an image's spectra and reads and preprocesses its next image meanwhile, and
    /// waits only when that one is read and its previous one is still being scored (measured
    /// by the workers, see [`Service::usage`]).
    pub worker_wait_seconds: f64,
    /// Requests scored (one per image and model).
    pub requests: u64,
    /// Spectra scored, both models.
    pub spectra: u64,
}

impl Service {
    /// The tally so far, with the time the workers waited for replies (`worker_wait`, summed
    /// over them).
    pub fn usage(&self, worker_wait: std::time::Duration) -> ServiceUsage {
        let t = &*self.tally;
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        ServiceUsage {
            busy_seconds: s(&t.busy_ns),
            worker_wait_seconds: worker_wait.as_secs_f64(),
            requests: t.requests.load(Ordering::Relaxed),
            spectra: t.spectra.load(Ordering::Relaxed),
        }
    }
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Where the networks run: in the worker itself (CPU: every worker has its own copy), or in the
/// process's inference service, whose threads own the networks on the device (CUDA: a worker
/// sends a core's spectra through a channel and waits for the scores, while other workers read
/// and preprocess).
pub enum Engine {
    /// The worker's own networks.
    Local {
        /// Type model.
        types: Box<Bundle>,
        /// Subtype model.
        subtypes: Option<Box<Bundle>>,
    },
    /// The process's inference service.
    Shared(Service),
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
    /// Which maps ([`MapKind`]): the workers turn the raw maps into these.
    pub explain: MapKind,
}

impl Models {
    /// Models that run in the calling worker.
    pub fn local(types: Bundle, subtypes: Option<Bundle>, batch: usize, gradcam: bool, explain: MapKind) -> Self {
        Self {
            types: types.classifier.classes().to_vec(),
            subtypes: subtypes.as_ref().map(|b| b.classifier.classes().to_vec()),
            grid: types.classifier.grid().to_vec(),
            engine: Engine::Local { types: Box::new(types), subtypes: subtypes.map(Box::new) },
            batch,
            gradcam,
            explain,
        }
    }

    /// Starts scoring `rows` spectra with one model (see [`score`]): in the worker at once
    /// ([`Engine::Local`]), or by sending them to the inference service, which calls `wake` once
    /// it replied ([`Engine::Shared`]). [`Scoring::poll`] gives the scores.
    pub(super) fn submit(&self, which: Which, values: &std::sync::Arc<[f32]>, rows: usize, wake: &Wake) -> Result<Scoring, OpError> {
        match &self.engine {
            Engine::Local { types, subtypes } => {
                let bundle: &Bundle = match which {
                    Which::Type => types,
                    Which::Subtype => subtypes.as_deref().ok_or_else(|| OpError::internal(OP, "no subtype model"))?,
                };
                let scored = score(bundle, values, rows, self.batch, self.gradcam)?.finish(self.explain);
                Ok(Scoring::Ready(Some(scored)))
            }
            Engine::Shared(service) => {
                let (reply, rx) = crossbeam_channel::bounded(1);
                let request = Request { which, values: std::sync::Arc::clone(values), rows, reply, wake: std::sync::Arc::clone(wake) };
                service.tx.send(request).map_err(|_| OpError::internal(OP, "the inference service stopped"))?;
                Ok(Scoring::Sent { rx, explain: self.explain })
            }
        }
    }
}

/// One model's scores of one image, as [`Models::submit`] started them.
pub(super) enum Scoring {
    /// Scored in the worker (taken by the first poll).
    Ready(Option<Scored>),
    /// Sent to the inference service.
    Sent { rx: crossbeam_channel::Receiver<Result<RawScored, OpError>>, explain: MapKind },
}

impl Scoring {
    /// The scores, once there; `None` while the service is still at them (it wakes the worker
    /// when it replies). Called again after it gave the scores, it is an error.
    pub(super) fn poll(&mut self) -> Option<Result<Scored, OpError>> {
        match self {
            Scoring::Ready(s) => Some(s.take().ok_or_else(|| OpError::internal(OP, "the scores were taken already"))),
            Scoring::Sent { rx, explain } => match rx.try_recv() {
                // The maps' host-side finish runs here, in the worker, not in the service thread.
                Ok(raw) => Some(raw.map(|r| r.finish(*explain))),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Err(OpError::internal(OP, "the inference service stopped"))),
            },
        }
    }
}

/// Starts the inference service of a process: `service_threads` threads, each owning its own copy
/// of the networks (loaded by `load` on the device), that take the workers' requests from one
/// queue in arrival order and tally their busy time. While one thread waits for its batch's
/// results to come back from the device, another launches the next batch's work, so the device
/// is not idle during the host's share of each batch. The service ends when every sender is
/// dropped.
pub fn spawn_service(
    load: impl Fn() -> Result<(Bundle, Option<Bundle>), BundleError> + Send + Sync + 'static,
    batch: usize,
    gradcam: bool,
    threads: usize,
    service_threads: usize,
) -> Result<(Service, Vec<std::thread::JoinHandle<()>>), Error> {
    let (tx, rx) = crossbeam_channel::bounded::<Request>(64);
    let service_threads = service_threads.max(1);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), BundleError>>(service_threads);
    let tally = std::sync::Arc::new(Tally::default());
    let load = std::sync::Arc::new(load);
    let mut handles = Vec::with_capacity(service_threads);
    for i in 0..service_threads {
        let (rx, ready_tx, busy, load) = (rx.clone(), ready_tx.clone(), std::sync::Arc::clone(&tally), std::sync::Arc::clone(&load));
        let handle = std::thread::Builder::new()
            .name(format!("inference-{i}"))
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
                    let start = Instant::now();
                    let bundle = match r.which {
                        Which::Type => Some(&types),
                        Which::Subtype => subtypes.as_ref(),
                    };
                    let result = match bundle {
                        Some(b) => score(b, &r.values, r.rows, batch, gradcam),
                        None => Err(OpError::internal(OP, "no subtype model")),
                    };
                    busy.busy_ns.fetch_add(nanos(start), Ordering::Relaxed);
                    busy.requests.fetch_add(1, Ordering::Relaxed);
                    busy.spectra.fetch_add(r.rows as u64, Ordering::Relaxed);
                    let _ = r.reply.send(result);
                    (r.wake)();
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the inference service: {e}")))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..service_threads {
        ready_rx.recv().map_err(|_| Error::invalid("the inference service did not start"))??;
    }
    Ok((Service { tx, tally }, handles))
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

/// What a model computes for a request: probabilities, classes and the raw class-activation maps
/// (the device's part; [`RawScored::finish`] turns the maps into Grad-CAM maps on the host).
pub struct RawScored {
    probs: Vec<f32>,
    predicted: Vec<u32>,
    /// `rows × length` raw maps (empty without Grad-CAM).
    raw: RawCams,
}

impl RawScored {
    /// The scored spectra with their maps of `kind`.
    fn finish(self, kind: MapKind) -> Scored {
        Scored { maps: self.raw.maps_as(kind).maps, probs: self.probs, predicted: self.predicted }
    }
}

fn score(bundle: &Bundle, values: &[f32], rows: usize, batch: usize, gradcam: bool) -> Result<RawScored, OpError> {
    let n = bundle.classifier.grid().len();
    let k = bundle.classifier.classes().len();
    let mut s = RawScored {
        probs: Vec::with_capacity(rows * k),
        predicted: Vec::with_capacity(rows),
        raw: RawCams { length: 0, points: n, values: Vec::new() },
    };
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
            let (p, r) = bundle.classifier.predict_values_with_raw_cam(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
            s.raw.length = r.length;
            // Every chunk's maps have the first one's length: room for all of them at once.
            s.raw.values.reserve_exact((rows - start) * r.length);
            s.raw.values.extend_from_slice(&r.values[..len * r.length]);
        } else {
            let p = bundle.classifier.predict_values(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
        }
        start = end;
    }
    Ok(s)
}
