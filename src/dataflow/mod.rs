//! The timely-dataflow graph of `ftirflow run` (ARCHITECTURE.md, "The dataflow graph") — the only
//! timely code.
//!
//! ```text
//! source (whole files per worker) → preprocess stages (segment, fused per-spectrum steps,
//! residual outliers) → classify (type, then subtype, with Grad-CAM; the image's summary follows
//! its prediction batches) → write parts → summary records as a differential collection
//! → consolidated on worker 0 → tables
//! ```
//!
//! Image `i` of the archive (sorted by sample id) is read by the worker [`crate::job::deal`] gives
//! it (of all workers of all processes: the next unit to the worker with the least work so far),
//! and travels at timestamp `i`, followed by an end marker that closes it at every operator, so
//! an image goes through its worker's operators without waiting for the other workers. A worker
//! finishes its previous image in the first steps of reading the next and waits for it to be
//! written before reading another, so it holds one image (and, briefly, the previous one's last
//! stages) whatever the archive's size. With a shared inference service, classify sends an
//! image's spectra and returns; the service wakes it when the scores are there, while the worker
//! reads its next image. Batches never leave their worker; only the summary records
//! (integers, see [`crate::outputs::records`]) are exchanged, so the run's rows and totals are the
//! same for any layout of workers and processes.
pub mod adapter;
pub mod parts;
pub mod source;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::InputHandle;

pub use adapter::{ApplyStage, Item, Items, Stage, StageFactory};
pub use parts::WriteParts;

use crate::classify::{ClassifyKernel, Models};
use crate::error::Error;
use crate::job::RunJob;
use crate::outputs::records::{Diff, Record};

/// The preprocessing chain as timely operators (one per step of the plan).
pub trait Preprocess<'scope> {
    /// Segmentation, the fused per-spectrum steps and the residual outlier check.
    fn preprocess(self, job: &Arc<RunJob>) -> Items<'scope>;
}

impl<'scope> Preprocess<'scope> for Items<'scope> {
    fn preprocess(self, job: &Arc<RunJob>) -> Items<'scope> {
        let mut stream = self;
        for step in job.plan.chain() {
            let plan = Arc::clone(&job.plan);
            let factory: StageFactory = Box::new(move || Ok(Box::new(plan.kernel(step)?) as Box<dyn Stage>));
            stream = stream.apply_stage(step.name(), factory, job);
        }
        stream
    }
}

/// Classification with the worker's models.
pub trait Classify<'scope> {
    /// The type model on tissue spectra, the subtype model on cancer cores (with Grad-CAM).
    fn classify(self, job: &Arc<RunJob>, models: Rc<Models>) -> Items<'scope>;
}

impl<'scope> Classify<'scope> for Items<'scope> {
    fn classify(self, job: &Arc<RunJob>, models: Rc<Models>) -> Items<'scope> {
        let labels = Arc::clone(&job.labels);
        let factory: StageFactory = Box::new(move || Ok(Box::new(ClassifyKernel::new(Rc::clone(&models), Arc::clone(&labels)))));
        self.apply_stage(crate::classify::OP, factory, job)
    }
}

/// What one worker hands back.
#[derive(Debug, Default)]
pub struct WorkerOutput {
    /// The consolidated summary records (only worker 0 of process 0 receives any).
    pub records: Vec<(Record, Diff)>,
    /// How long the worker waited, with its next image not yet read, for its previous one to be
    /// classified and written: the time a shared inference service kept it from reading.
    pub waited: std::time::Duration,
}

/// How the workers of a run talk to each other, set up by the caller: timely's allocator
/// builders (one per local worker), what must live as long as they run (a cluster's network
/// threads), and this process's index in a cluster.
pub struct Communication {
    /// One allocator builder per local worker.
    pub builders: Vec<timely::communication::AllocatorBuilder>,
    /// Kept alive until the workers finish.
    pub guard: Box<dyn std::any::Any + Send>,
    /// This process's index, in a cluster run.
    pub process: Option<usize>,
}

/// Runs the graph on `comm`'s workers; returns each local worker's output.
pub fn execute(job: Arc<RunJob>, comm: Communication) -> Result<Vec<WorkerOutput>, Error> {
    if let Some(process) = comm.process {
        peer_watchdog(process);
    }
    let guards = timely::execute::execute_from(comm.builders, comm.guard, timely::WorkerConfig::default(), move |worker| {
        run_worker(worker, Arc::clone(&job))
    })
    .map_err(|e| Error::invalid(format!("cannot start the workers: {e}")))?;
    let mut outputs = Vec::new();
    for r in guards.join() {
        match r {
            Ok(Ok(o)) => outputs.push(o),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::invalid(format!("a worker failed: {e}"))),
        }
    }
    Ok(outputs)
}

fn run_worker(worker: &mut timely::worker::Worker, job: Arc<RunJob>) -> Result<WorkerOutput, Error> {
    let index = worker.index();
    // libtorch's intra-op thread count is per thread (OpenMP): set it in every worker, or each
    // would start a team as wide as the machine and the workers would oversubscribe the cores.
    tch::set_num_threads(job.run.threads as i32);
    let models = Rc::new(job.load_models()?);
    let collected: Rc<RefCell<Vec<(Record, Diff)>>> = Rc::new(RefCell::new(Vec::new()));
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Item>>> = InputHandle::new();
    let finished = Rc::new(Cell::new(0usize));
    let own = job.images_of(index).count();
    let mut waited = std::time::Duration::ZERO;
    {
        let (job, collected, finished) = (Arc::clone(&job), Rc::clone(&collected), Rc::clone(&finished));
        worker.dataflow::<u64, _, _>(|scope| {
            let records = timely::dataflow::operators::core::input::Input::input_from(&scope, &mut input)
                .preprocess(&job)
                .classify(&job, models)
                .write_parts(&job, own, finished);
            records.as_collection().consolidate().inner.sink(
                Exchange::new(|_: &(Record, u64, Diff)| 0u64),
                "collect",
                move |(input, _frontier)| {
                    input.for_each(|_cap, data| {
                        collected.borrow_mut().extend(data.drain(..).map(|(r, _t, d)| (r, d)));
                    });
                },
            );
        });
    }
    for (fed, (i, image)) in job.images_of(index).enumerate() {
        input.advance_to(i as u64);
        if let Some(reason) = job.stopped() {
            // The outputs cannot be written: account for the image without reading it.
            input.send(Item::Failed(image.reject("write", format!("not processed: {reason}"))));
        } else {
            source::feed(
                image,
                job.run.batch_rows,
                job.plan.read_band(),
                job.unit_budget,
                |item| input.send(item),
                || {
                    worker.step();
                },
            );
        }
        input.send(Item::End);
        input.flush();
        // Bounded memory: each operator closes an image at its end marker, whatever the other
        // workers are doing, so the worker's previous image was finished and written in the first
        // steps of this one's reading (its marker came first); wait for that, then hand the pages
        // it freed back, from both allocators: mimalloc (Rust's) keeps them for a while
        // otherwise, and glibc's malloc (libtorch's) keeps freed tensor memory for reuse, which
        // grew with every new batch shape — peak memory crept up with the number of images (a
        // 4 × 5 slide's 18 cores on one worker: 0.71 GB against 0.55 GB with the trim;
        // docs/performance.md, whole slides). A worker so holds the image it reads and, while
        // the first batches come, the previous one's last stages. Handing pages back while no
        // image is held instead (waiting for this one to be written) cost the kernel 3× the time
        // faulting them in again for the next image (a 4 × 5 slide, 2 workers: 15 s against 5 s).
        if fed > 0 {
            let waiting = std::time::Instant::now();
            while finished.get() < fed {
                // Parked, not spinning, when there is nothing to do: a spinning worker took a
                // core from the inference service threads and the other workers.
                worker.step_or_park(Some(PARK));
            }
            waited += waiting.elapsed();
            // SAFETY: plain FFI call without arguments that point anywhere.
            unsafe { libmimalloc_sys::mi_collect(true) };
            crate::operators::model::release_freed_tensor_memory();
        }
    }
    drop(input);
    while worker.step_or_park(None) {}
    let records = std::mem::take(&mut *collected.borrow_mut());
    Ok(WorkerOutput { records, waited })
}

/// Longest a waiting worker parks before it looks again (news from other threads wakes it
/// sooner).
const PARK: std::time::Duration = std::time::Duration::from_millis(1);

/// Exit code of a process whose cluster peer went away (the run did not finish).
pub const EXIT_PEER_LOST: i32 = 2;

/// Ends this process with a clear error when its connection to another process of a cluster run
/// breaks (that process died or its machine went away).
///
/// Timely's network threads panic with "timely communication error: …" when a peer's socket
/// closes; the workers would then wait for that peer's progress forever. A run's outputs are safe
/// to abandon at any point (each image is committed by renames and one manifest line), so the
/// process stops at once with a message naming the cause, and a rerun of all processes resumes
/// the job.
fn peer_watchdog(process: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg =
                payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
            let network = std::thread::current().name().is_some_and(|n| n.starts_with("timely:"));
            if msg.contains("timely communication error") || network {
                eprintln!(
                    "error: process {process} lost its connection to another process of the cluster run ({msg}); it stops. \
                     Images finished so far are kept: start all processes again with the same arguments to complete the job."
                );
                // `_exit`, not `exit`: the workers are still running libtorch, whose static
                // destructors `exit` would run under their feet (that crashed with SIGSEGV).
                extern "C" {
                    fn _exit(code: i32) -> !;
                }
                // SAFETY: `_exit` ends the process at once; it takes no pointers.
                unsafe { _exit(EXIT_PEER_LOST) }
            }
            default(info);
        }));
    });
}
