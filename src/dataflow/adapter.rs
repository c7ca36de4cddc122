//! The one generic adapter that runs any operator [`Kernel`] inside timely, and the extension
//! traits that make the pipeline read as a chain (`.preprocess(..).classify(..)`).
//!
//! Each image travels at its own timestamp (its index in the archive). The adapter keeps one
//! kernel per open timestamp: it feeds the image's batches to `push_batch` as they arrive and
//! calls `finish` once the input frontier has passed the image's timestamp (no more of its
//! batches can come). A kernel error does not stop the run: the image's data is dropped and a
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

use crate::operators::{Kernel, OpError};
use crate::run::summary::{Diff, Record};

/// What flows between the operators: an image's record batches, or the news that it failed, or
/// the stored records of an image that this run reuses.
#[derive(Clone, Debug)]
pub enum Item {
    /// A batch of the image.
    Batch(RecordBatch),
    /// The image failed at `stage`.
    Failed {
        /// The step that failed (`read`, `segment`, `preprocess`, `classify`, …).
        stage: String,
        /// One-line reason.
        reason: String,
    },
    /// The summary records of an image processed by an earlier run.
    Reused(Arc<Vec<(Record, Diff)>>),
}

/// The stream type of the pipeline.
pub type Items<'scope> = Stream<'scope, u64, Vec<Item>>;

/// Makes a fresh kernel for an image.
pub type KernelFactory = Arc<dyn Fn() -> Result<Box<dyn Kernel>, OpError> + Send + Sync>;

/// Runs kernels inside timely.
pub trait ApplyKernel<'scope> {
    /// Applies a fresh kernel from `factory` to each image (see the module docs).
    fn apply_kernel(self, name: &str, factory: KernelFactory) -> Items<'scope>;
}

/// The kernel of one open image.
enum State {
    /// No batch seen yet.
    Fresh,
    /// Running.
    Running(Box<dyn Kernel>),
    /// The image failed (or was reused): its batches are dropped.
    Done,
}

impl<'scope> ApplyKernel<'scope> for Items<'scope> {
    fn apply_kernel(self, name: &str, factory: KernelFactory) -> Items<'scope> {
        let stage = name.to_string();
        self.unary_frontier::<CapacityContainerBuilder<Vec<Item>>, _, _, _>(Pipeline, name, move |_cap, _info| {
            let mut open: BTreeMap<u64, (Capability<u64>, State)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(c) = cap.retain_least(output.output_index()) else { return };
                    let t = *c.time();
                    let entry = open.entry(t).or_insert((c, State::Fresh));
                    let mut emitted: Vec<Item> = Vec::new();
                    for item in data.drain(..) {
                        match item {
                            Item::Batch(b) => {
                                if matches!(entry.1, State::Fresh) {
                                    entry.1 = match factory() {
                                        Ok(k) => State::Running(k),
                                        Err(e) => {
                                            emitted.push(Item::Failed { stage: stage.clone(), reason: e.to_string() });
                                            State::Done
                                        }
                                    };
                                }
                                if let State::Running(k) = &mut entry.1 {
                                    let mut out = Vec::new();
                                    match k.push_batch(&b, &mut out) {
                                        Ok(()) => emitted.extend(out.into_iter().map(Item::Batch)),
                                        Err(e) => {
                                            emitted.push(Item::Failed { stage: k.name().to_string(), reason: e.to_string() });
                                            entry.1 = State::Done;
                                        }
                                    }
                                }
                            }
                            other => {
                                // A failure upstream or a reused image: nothing to compute here.
                                entry.1 = State::Done;
                                emitted.push(other);
                            }
                        }
                    }
                    if !emitted.is_empty() {
                        output.session(&entry.0).give_iterator(emitted.into_iter());
                    }
                });
                while let Some((&t, _)) = open.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let (cap, state) = open.remove(&t).expect("present");
                    if let State::Running(mut k) = state {
                        let mut out = Vec::new();
                        let items: Vec<Item> = match k.finish(&mut out) {
                            Ok(()) => out.into_iter().map(Item::Batch).collect(),
                            Err(e) => vec![Item::Failed { stage: k.name().to_string(), reason: e.to_string() }],
                        };
                        if !items.is_empty() {
                            output.session(&cap).give_iterator(items.into_iter());
                        }
                    }
                }
            }
        })
    }
}
