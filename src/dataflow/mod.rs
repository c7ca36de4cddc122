//! The timely-dataflow graph of `ftirflow run` (DESIGN.md §3, §7, §8) — the only timely code.
//!
//! ```text
//! source (whole files per worker) → preprocess kernels (segment, fused per-spectrum steps,
//! residual outliers) → classify (type, then subtype, with Grad-CAM) → write parts
//! → summary records as a differential collection → consolidated on worker 0 → tables
//! ```
//!
//! Image `i` of the archive (sorted by sample id) is read by worker `i mod W` of all `W` workers
//! of all processes, and travels at timestamp `i`. A worker reads its next image only once its
//! previous one has left the graph (the probe), so at most two of its images are in memory
//! whatever the archive's size. Batches never leave their worker; only the summary records
//! (integers, see [`crate::run::summary`]) are exchanged, so the run's rows and totals are the
//! same for any layout of workers and processes.
pub mod adapter;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Stream};

pub use adapter::{ApplyKernel, Item, Items, KernelFactory};

use crate::io::parquet::AtomicParquetWriter;
use crate::operators::Kernel;
use crate::run::classify::{ClassifyKernel, Models, SummaryBox};
use crate::run::manifest::{Entry, ManifestWriter};
use crate::run::summary::{image_records, Diff, Record};
use crate::run::{ImageTask, RunJob, Task};

/// The preprocessing chain as timely operators (one per kernel of the plan).
pub trait Preprocess<'scope> {
    /// Segmentation, the fused per-spectrum steps and the residual outlier check.
    fn preprocess(self, job: &Arc<RunJob>) -> Items<'scope>;
}

impl<'scope> Preprocess<'scope> for Items<'scope> {
    fn preprocess(self, job: &Arc<RunJob>) -> Items<'scope> {
        let n = job.plan.kernels().map(|k| k.len()).unwrap_or(0);
        let mut stream = self;
        for i in 0..n {
            let plan = job.plan.clone();
            let name = plan.kernels().map(|k| k[i].name()).unwrap_or("preprocess");
            let factory: KernelFactory = Arc::new(move || Ok(plan.kernels()?.swap_remove(i)));
            stream = stream.apply_kernel(name, factory);
        }
        stream
    }
}

/// Classification with the run's models.
pub trait Classify<'scope> {
    /// The type model on tissue spectra, the subtype model on cancer cores (with Grad-CAM).
    fn classify(self, job: &Arc<RunJob>, models: Arc<Models>, summaries: SummaryBox) -> Items<'scope>;
}

impl<'scope> Classify<'scope> for Items<'scope> {
    fn classify(self, job: &Arc<RunJob>, models: Arc<Models>, summaries: SummaryBox) -> Items<'scope> {
        let labels = job.labels.clone();
        let factory: KernelFactory =
            Arc::new(move || Ok(Box::new(ClassifyKernel::new(models.clone(), labels.clone(), summaries.clone())) as Box<dyn Kernel>));
        self.apply_kernel("classify", factory)
    }
}

/// Writing each image's outputs.
pub trait WriteParts<'scope> {
    /// Writes each finished image's prediction part and summary part, records it in the
    /// manifest, and emits its summary records (or its reject).
    fn write_parts(self, job: &Arc<RunJob>, summaries: SummaryBox, worker: (usize, usize)) -> Stream<'scope, u64, Vec<(Record, u64, Diff)>>;
}

impl<'scope> WriteParts<'scope> for Items<'scope> {
    fn write_parts(self, job: &Arc<RunJob>, summaries: SummaryBox, worker: (usize, usize)) -> Stream<'scope, u64, Vec<(Record, u64, Diff)>> {
        let job = job.clone();
        let (index, peers) = worker;
        let last_own = (0..job.tasks.len()).rfind(|i| i % peers == index).map(|i| i as u64);
        self.unary_frontier::<CapacityContainerBuilder<Vec<(Record, u64, Diff)>>, _, _, _>(Pipeline, "write_parts", move |_c, _info| {
            let mut open: BTreeMap<u64, (Capability<u64>, Vec<Item>)> = BTreeMap::new();
            let mut manifest: Option<ManifestWriter> = None;
            // Per-class Grad-CAM sums of this worker's images, added up here (exact integers) and
            // sent once with the worker's last image: per-image updates would pile up in the
            // consolidation's trace as the archive grows.
            let mut cams: BTreeMap<Record, Diff> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(c) = cap.retain_least(output.output_index()) else { return };
                    let t = *c.time();
                    let e = open.entry(t).or_insert((c, Vec::new()));
                    e.1.append(data);
                });
                while let Some((&t, _)) = open.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let (cap, items) = open.remove(&t).expect("present");
                    let task = &job.tasks[t as usize];
                    let records = finish_image(&job, task, items, &summaries, &mut manifest);
                    job.progress.images.fetch_add(1, Ordering::Relaxed);
                    let mut now = Vec::new();
                    for (r, d) in records {
                        if matches!(r, Record::Cam { .. }) {
                            let e = cams.entry(r).or_insert((0, 0, 0));
                            e.0 += d.0;
                            e.1 += d.1;
                            e.2 += d.2;
                        } else {
                            now.push((r, t, d));
                        }
                    }
                    if Some(t) == last_own {
                        now.extend(std::mem::take(&mut cams).into_iter().map(|(r, d)| (r, t, d)));
                    }
                    output.session(&cap).give_iterator(now.into_iter());
                }
            }
        })
    }
}

fn reject(task: &ImageTask, stage: &str, reason: String) -> Vec<(Record, Diff)> {
    tracing::warn!("rejected: {}: [{stage}] {reason}", task.entry.path.display());
    vec![(Record::Reject { path: task.entry.path.display().to_string(), stage: stage.to_string(), reason }, (1, 0, 0))]
}

/// Ends one image: its records (written parts and manifest line first).
fn finish_image(
    job: &RunJob,
    task: &ImageTask,
    items: Vec<Item>,
    summaries: &SummaryBox,
    manifest: &mut Option<ManifestWriter>,
) -> Vec<(Record, Diff)> {
    let summary = summaries.lock().ok().and_then(|mut m| m.remove(&task.entry.sample));
    let mut batches = Vec::new();
    for item in items {
        match item {
            Item::Batch(b) => batches.push(b),
            Item::Failed { stage, reason } => return reject(task, &stage, reason),
            Item::Reused(records) => return records.iter().filter(|(r, _)| r.is_shared()).cloned().collect(),
        }
    }
    let Some(summary) = summary else {
        return reject(task, "read", "the image holds no spectra".to_string());
    };
    // An image without a single classified spectrum has nothing to say about its core (NaN or
    // inf everywhere, a wrong byte order, a core with no tissue): it is reported, not counted.
    let r = &summary.row;
    if r.type_counts.iter().sum::<u64>() == 0 {
        let reason = if r.tissue == 0 {
            format!(
                "no tissue found: {} spectra, {} paraffin, {} outliers (non-finite values), the rest bare slide",
                r.spectra, r.paraffin, r.outliers
            )
        } else {
            format!(
                "none of the {} tissue spectra passed the outlier checks (non-finite values, amide I out of range, EMSC \
                 residual; a wrong byte order looks like this)",
                r.tissue
            )
        };
        return reject(task, "classify", reason);
    }
    match write_image(job, task, &batches, &summary, manifest) {
        Ok(records) => records,
        Err(e) => {
            // An output that cannot be written is not the image's fault, but the run must not
            // pretend it has the image: reject it with the reason (the exit code says so). A full
            // or read-only disk also stops this process's workers: every later write would fail.
            if crate::run::is_storage_error(&e) {
                job.stop(format!("cannot write the outputs of {}: {e:#}", task.entry.path.display()));
            }
            reject(task, "write", format!("{e:#}"))
        }
    }
}

fn write_image(
    job: &RunJob,
    task: &ImageTask,
    batches: &[arrow::array::RecordBatch],
    summary: &crate::run::classify::ImageSummary,
    manifest: &mut Option<ManifestWriter>,
) -> anyhow::Result<Vec<(Record, Diff)>> {
    use anyhow::Context;
    let Some(first) = batches.first() else { anyhow::bail!("no prediction rows") };
    let pred_path = job.out.join("predictions").join(format!("{}.parquet", task.part));
    let mut w = AtomicParquetWriter::create(&pred_path, first.schema(), job.key_values.clone())?;
    let mut rows = 0u64;
    for b in batches {
        w.write(b)?;
        rows += b.num_rows() as u64;
    }
    w.finish()?;
    job.progress.spectra.fetch_add(rows, Ordering::Relaxed);
    let mut records = image_records(&task.rel_path, summary);
    let part_path = job.out.join("parts").join(format!("{}.json", task.part));
    let text = serde_json::to_vec(&records)?;
    write_atomic(&part_path, &text)?;
    // Only what is added up across images travels on; the per-core Grad-CAM rows stay in the
    // part (the tables writer streams them from there), so memory does not grow with the archive.
    records.retain(|(r, _)| r.is_shared());
    let content_sha256 = crate::run::manifest::content_hash(&task.entry.path).context("hashing the image")?;
    let identity = match &task.identity {
        Some(i) => i.clone(),
        None => crate::run::manifest::identity(&task.entry.path)?,
    };
    let entry = Entry {
        sample: task.entry.sample.clone(),
        path: task.rel_path.clone(),
        identity,
        content_sha256,
        model_hash: job.model_hash.clone(),
        part: task.part.clone(),
        spectra: rows,
    };
    if manifest.is_none() {
        *manifest = Some(ManifestWriter::open(&job.out)?);
    }
    manifest.as_mut().expect("opened").append(&entry)?;
    Ok(records)
}

/// Writes `bytes` to `path` through a temporary name (durably). On error (a full disk, say) the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = crate::io::parquet::partial_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What one worker hands back.
#[derive(Debug, Default)]
pub struct WorkerOutput {
    /// The consolidated summary records (only worker 0 of process 0 receives any).
    pub records: Vec<(Record, Diff)>,
}

/// Runs the graph on `config`'s workers; returns each local worker's output.
pub fn execute(job: Arc<RunJob>, config: timely::Config) -> anyhow::Result<Vec<WorkerOutput>> {
    if let timely::CommunicationConfig::Cluster { process, .. } = &config.communication {
        peer_watchdog(*process);
    }
    let guards = timely::execute(config, move |worker| -> Result<WorkerOutput, String> { run_worker(worker, job.clone()) })
        .map_err(|e| anyhow::anyhow!("cannot start the workers: {e}"))?;
    let mut outputs = Vec::new();
    for r in guards.join() {
        match r {
            Ok(Ok(o)) => outputs.push(o),
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(e) => anyhow::bail!("a worker failed: {e}"),
        }
    }
    Ok(outputs)
}

fn run_worker(worker: &mut timely::worker::Worker, job: Arc<RunJob>) -> Result<WorkerOutput, String> {
    let (index, peers) = (worker.index(), worker.peers());
    // libtorch's intra-op thread count is per thread (OpenMP): set it in every worker, or each
    // would start a team as wide as the machine and the workers would oversubscribe the cores.
    tch::set_num_threads(job.run.threads as i32);
    let models = Arc::new(job.load_models().map_err(|e| format!("{e:#}"))?);
    let summaries: SummaryBox = Arc::new(Mutex::new(HashMap::new()));
    let collected: Rc<RefCell<Vec<(Record, Diff)>>> = Rc::new(RefCell::new(Vec::new()));
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Item>>> = InputHandle::new();
    let probe = ProbeHandle::new();
    {
        let (job, collected, summaries) = (job.clone(), collected.clone(), summaries.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let records = timely::dataflow::operators::core::input::Input::input_from(&scope, &mut input)
                .preprocess(&job)
                .classify(&job, models, summaries.clone())
                .write_parts(&job, summaries, (index, peers))
                .probe_with(&probe);
            records
                .as_collection()
                .consolidate()
                .inner
                .sink(Exchange::new(|_: &(Record, u64, Diff)| 0u64), "collect", move |(input, _frontier)| {
                    input.for_each(|_cap, data| {
                        collected.borrow_mut().extend(data.drain(..).map(|(r, _t, d)| (r, d)));
                    });
                });
        });
    }
    let mut last_own: Option<u64> = None;
    for (i, task) in job.tasks.iter().enumerate().filter(|(i, _)| i % peers == index) {
        let t = i as u64;
        input.advance_to(t);
        if let Some(reason) = job.stopped() {
            // The outputs cannot be written: account for the image without reading it.
            input.send(Item::Failed { stage: "write".into(), reason: format!("not processed: {reason}") });
            continue;
        }
        match &task.task {
            Task::Reuse(records) => input.send(Item::Reused(records.clone())),
            Task::Refuse { stage, reason } => input.send(Item::Failed { stage: stage.clone(), reason: reason.clone() }),
            Task::Process => {
                match crate::io::open_as(&task.entry.path, task.entry.format, &crate::io::ReadOptions { batch_rows: job.batch_rows, sample: task.entry.sample.clone() }) {
                    Ok(reader) => {
                        let mut seen = None;
                        for b in reader {
                            match b.map_err(|e| crate::cli::Reject::from_error(&task.entry.path, "read", &e).reason).and_then(|b| as_image(b, &task.entry.sample, &mut seen)) {
                                Ok(b) => input.send(Item::Batch(b)),
                                Err(reason) => {
                                    input.send(Item::Failed { stage: "read".into(), reason });
                                    break;
                                }
                            }
                            worker.step();
                        }
                    }
                    Err(e) => {
                        let c = crate::cli::Reject::from_error(&task.entry.path, "open", &e);
                        input.send(Item::Failed { stage: "open".into(), reason: c.reason });
                    }
                }
            }
        }
        // Bounded memory: wait until this worker's previous image has left the graph, then hand
        // the pages it freed back (mimalloc keeps them for a while otherwise, and peak memory
        // would creep up with the number of images).
        if let Some(prev) = last_own {
            input.advance_to(t + 1);
            while probe.less_equal(&prev) {
                worker.step();
            }
            // SAFETY: plain FFI call without arguments that point anywhere.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
        last_own = Some(t);
    }
    drop(input);
    while worker.step_or_park(None) {}
    let records = std::mem::take(&mut *collected.borrow_mut());
    Ok(WorkerOutput { records })
}

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
            let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
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

/// A read batch as rows of the image `sample`: in a run an image is one file and its id is its
/// archive id, so a table's own `sample` column (a Parquet table converted elsewhere) is replaced
/// by it; a table that names several samples is not one image and is rejected.
fn as_image(batch: arrow::array::RecordBatch, sample: &str, seen: &mut Option<String>) -> Result<arrow::array::RecordBatch, String> {
    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use crate::operators::schema::{sample_column, SAMPLE};
    let col = sample_column(&batch).map_err(|e| e.to_string())?;
    let schema = batch.schema();
    let idx = schema.index_of(SAMPLE).map_err(|e| e.to_string())?;
    if schema.field(idx).data_type() == &DataType::Utf8 && col.null_count() == 0 && col.iter().all(|v| v == Some(sample)) {
        return Ok(batch);
    }
    for v in col.iter() {
        let v = v.unwrap_or("");
        match seen {
            None => *seen = Some(v.to_string()),
            Some(s) if s != v => {
                return Err(format!("the table holds several samples (`{s}`, `{v}`); an archive table must hold one image"))
            }
            Some(_) => {}
        }
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[idx] = Field::new(SAMPLE, DataType::Utf8, schema.field(idx).is_nullable());
    let mut columns = batch.columns().to_vec();
    columns[idx] = std::sync::Arc::new(StringArray::from(vec![sample; batch.num_rows()]));
    arrow::array::RecordBatch::try_new(std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), columns)
        .map_err(|e| e.to_string())
}
