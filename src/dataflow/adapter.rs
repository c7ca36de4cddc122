//! The one generic adapter that runs any per-image stage inside timely — an operator [`Kernel`]
//! or classification — and the items that flow between the operators.
//!
//! Each image travels at its own timestamp (its index in the archive), within its worker, and
//! ends with [`Item::End`]. The adapter keeps one stage per open timestamp: it feeds the image's
//! batches to the stage as they arrive and calls `finish` at the image's end marker, so an image
//! goes through its worker's operators without waiting for any other worker's progress (the
//! input frontier passing the timestamp ends an image too, should a marker ever be missing). A
//! stage whose work goes on elsewhere after `finish` (classification by a shared inference
//! service) keeps its image open: the service wakes the operator when it replied, the adapter
//! polls the stage then, and meanwhile the worker reads and preprocesses its next image. A
//! stage error does not stop the run: the image's data is dropped and an
//! [`Item::Failed`] naming the stage flows on in its place (timely's `ok_err` idea), which ends
//! up in `rejects.parquet`.
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::classify::{ClassifyKernel, Outcome, Wake};
use crate::job::RunJob;
use crate::operators::{Kernel, OpError};
use crate::outputs::records::{Diff, ImageSummary, Record};
use crate::reject::Reject;

/// What flows between the operators: an image's record batches and, after classification, its
/// summary; or the news that it failed; or the stored records of an image that this run reuses.
#[derive(Clone, Debug)]
pub enum Item {
    /// A batch of the image.
    Batch(RecordBatch),
    /// The image's summary (core row and Grad-CAM sums), after its last prediction batch.
    Summary(Box<ImageSummary>),
    /// The image was rejected.
    Failed(Reject),
    /// The summary records of an image processed by an earlier run.
    Reused(Arc<Vec<(Record, Diff)>>),
    /// The image's last item: everything of it has gone by.
    End,
}

/// The stream type of the pipeline.
pub type Items<'scope> = Stream<'scope, u64, Vec<Item>>;

/// One image's work at one operator: batches in, items out.
pub trait Stage {
    /// The stage's name (in rejects).
    fn name(&self) -> &'static str;
    /// Consumes one batch of the image, appending finished items to `out`.
    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<Item>) -> Result<(), OpError>;
    /// Ends the image, appending what was held back to `out`: `Ok(true)` when all of it was,
    /// `Ok(false)` when the stage goes on elsewhere and calls `wake` (from any thread) when
    /// [`poll`](Stage::poll) has news.
    fn finish(&mut self, out: &mut Vec<Item>, wake: &Wake) -> Result<bool, OpError>;
    /// After a `finish` that returned `Ok(false)`: appends what came meanwhile, `Ok(true)` once the
    /// image is complete.
    fn poll(&mut self, _out: &mut Vec<Item>, _wake: &Wake) -> Result<bool, OpError> {
        Ok(true)
    }
}

impl Stage for Box<dyn Kernel> {
    fn name(&self) -> &'static str {
        self.as_ref().name()
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<Item>) -> Result<(), OpError> {
        let mut batches = Vec::new();
        self.as_mut().push_batch(batch, &mut batches)?;
        out.extend(batches.into_iter().map(Item::Batch));
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Item>, _wake: &Wake) -> Result<bool, OpError> {
        let mut batches = Vec::new();
        self.as_mut().finish(&mut batches)?;
        out.extend(batches.into_iter().map(Item::Batch));
        Ok(true)
    }
}

impl Stage for ClassifyKernel {
    fn name(&self) -> &'static str {
        crate::classify::OP
    }

    fn push_batch(&mut self, batch: &RecordBatch, _out: &mut Vec<Item>) -> Result<(), OpError> {
        ClassifyKernel::push_batch(self, batch);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Item>, wake: &Wake) -> Result<bool, OpError> {
        let outcome = ClassifyKernel::finish(self, wake)?;
        Ok(emit(outcome, out))
    }

    fn poll(&mut self, out: &mut Vec<Item>, wake: &Wake) -> Result<bool, OpError> {
        let outcome = ClassifyKernel::poll(self, wake)?;
        Ok(emit(outcome, out))
    }
}

/// Appends a classified image's items to `out`; whether it is complete.
fn emit(outcome: Outcome, out: &mut Vec<Item>) -> bool {
    match outcome {
        Outcome::Waiting => false,
        Outcome::Empty => true,
        Outcome::Done(batches, summary) => {
            out.extend(batches.into_iter().map(Item::Batch));
            out.push(Item::Summary(summary));
            true
        }
    }
}

/// Makes a fresh stage for an image (on the worker's thread: stages need not be `Send`).
pub type StageFactory = Box<dyn Fn() -> Result<Box<dyn Stage>, OpError>>;

/// Ends image `t` at a stage (`finish`, or `poll` once it was finished): appends its finished
/// items, or the reject of a failing stage, and the end marker; or returns the stage when it
/// still works on the image elsewhere.
fn close(t: u64, state: State, items: &mut Vec<Item>, wake: &Wake, reject: &dyn Fn(u64, &str, OpError) -> Item) -> Option<State> {
    let (mut k, finished) = match state {
        State::Running(k) => (k, false),
        State::Finishing(k) => (k, true),
        State::Fresh | State::Done => {
            items.push(Item::End);
            return None;
        }
    };
    let mut out = Vec::new();
    let step = if finished { k.poll(&mut out, wake) } else { k.finish(&mut out, wake) };
    match step {
        Ok(false) => {
            items.append(&mut out);
            return Some(State::Finishing(k));
        }
        Ok(true) => items.append(&mut out),
        Err(e) => items.push(reject(t, k.name(), e)),
    }
    items.push(Item::End);
    None
}

/// Runs stages inside timely.
pub trait ApplyStage<'scope> {
    /// Applies a fresh stage from `factory` to each image of `job` (see the module docs).
    fn apply_stage(self, name: &'static str, factory: StageFactory, job: &Arc<RunJob>) -> Items<'scope>;
}

/// The stage of one open image.
enum State {
    /// No batch seen yet.
    Fresh,
    /// Running.
    Running(Box<dyn Stage>),
    /// Finished, its results still on their way (see [`Stage::poll`]).
    Finishing(Box<dyn Stage>),
    /// The image failed (or was reused): its batches are dropped.
    Done,
}

impl<'scope> ApplyStage<'scope> for Items<'scope> {
    fn apply_stage(self, name: &'static str, factory: StageFactory, job: &Arc<RunJob>) -> Items<'scope> {
        let job = Arc::clone(job);
        let reject = move |t: u64, stage: &str, e: OpError| Item::Failed(job.images[t as usize].reject(stage, job.plan.explain(e)));
        let worker = self.scope().worker();
        self.unary_frontier::<CapacityContainerBuilder<Vec<Item>>, _, _, _>(Pipeline, name, move |_cap, info| {
            let mut open: BTreeMap<u64, (Capability<u64>, State)> = BTreeMap::new();
            // Schedules this operator again (and unparks its worker) from any thread.
            let activator = worker.sync_activator_for(info.address.to_vec());
            let wake: Wake = Arc::new(move || {
                // An error means the worker is gone (the run is ending): nothing to wake.
                let _ = activator.activate();
            });
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(c) = cap.retain_least(output.output_index()) else { return };
                    let t = *c.time();
                    let entry = open.entry(t).or_insert((c, State::Fresh));
                    let mut emitted: Vec<Item> = Vec::new();
                    let mut ended = false;
                    for item in data.drain(..) {
                        match item {
                            Item::Batch(b) => {
                                if matches!(entry.1, State::Fresh) {
                                    entry.1 = match factory() {
                                        Ok(k) => State::Running(k),
                                        Err(e) => {
                                            emitted.push(reject(t, name, e));
                                            State::Done
                                        }
                                    };
                                }
                                if let State::Running(k) = &mut entry.1 {
                                    let mut out = Vec::new();
                                    match k.push_batch(&b, &mut out) {
                                        Ok(()) => emitted.append(&mut out),
                                        Err(e) => {
                                            emitted.push(reject(t, k.name(), e));
                                            entry.1 = State::Done;
                                        }
                                    }
                                }
                            }
                            Item::Summary(s) => emitted.push(Item::Summary(s)),
                            Item::End => ended = true,
                            other => {
                                // A failure upstream or a reused image: nothing to compute here.
                                entry.1 = State::Done;
                                emitted.push(other);
                            }
                        }
                    }
                    if ended {
                        let (cap, state) = open.remove(&t).expect("present");
                        let rest = close(t, state, &mut emitted, &wake, &reject);
                        output.session(&cap).give_iterator(emitted.into_iter());
                        if let Some(state) = rest {
                            open.insert(t, (cap, state));
                        }
                    } else if !emitted.is_empty() {
                        output.session(&entry.0).give_iterator(emitted.into_iter());
                    }
                });
                // Images whose end marker was seen (their stage finishing elsewhere) or whose
                // timestamp the input frontier passed: finish or poll them, in timestamp order.
                let ready: Vec<u64> = open
                    .iter()
                    .filter(|(t, (_, state))| matches!(state, State::Finishing(_)) || !frontier.less_equal(t))
                    .map(|(&t, _)| t)
                    .collect();
                for t in ready {
                    let (cap, state) = open.remove(&t).expect("present");
                    let mut items = Vec::new();
                    let rest = close(t, state, &mut items, &wake, &reject);
                    if !items.is_empty() {
                        output.session(&cap).give_iterator(items.into_iter());
                    }
                    if let Some(state) = rest {
                        open.insert(t, (cap, state));
                    }
                }
            }
        })
    }
}
