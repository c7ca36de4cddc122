//! The last operator of the graph: once an image has passed every stage, its prediction part and
//! summary part are written (renamed into place), its manifest line appended, and its summary
//! records emitted for consolidation — or its reject, when it failed anywhere.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::adapter::{Item, Items};
use crate::error::Error;
use crate::io::parquet::AtomicParquetWriter;
use crate::job::{ImageJob, RunJob};
use crate::outputs::manifest::{self, ManifestEntry, ManifestWriter};
use crate::outputs::records::{image_records, Diff, ImageSummary, Record};
use crate::outputs::{prediction_path, summary_path};
use crate::reject::Reject;

/// Writing each image's outputs.
pub trait WriteParts<'scope> {
    /// Writes each finished image's prediction part and summary part, records it in the
    /// manifest, and emits its summary records (or its reject). `own` is the number of this
    /// worker's images: with the last of them to be written (not necessarily the last in the
    /// archive's order — a shared inference service may return a later image's scores first),
    /// the worker's added-up Grad-CAM sums are sent.
    /// `finished` counts the worker's images written so far (the worker reads its next image
    /// when the previous one is done).
    fn write_parts(self, job: &Arc<RunJob>, own: usize, finished: Rc<Cell<usize>>) -> Stream<'scope, u64, Vec<(Record, u64, Diff)>>;
}

impl<'scope> WriteParts<'scope> for Items<'scope> {
    fn write_parts(self, job: &Arc<RunJob>, own: usize, finished: Rc<Cell<usize>>) -> Stream<'scope, u64, Vec<(Record, u64, Diff)>> {
        let job = Arc::clone(job);
        self.unary_frontier::<CapacityContainerBuilder<Vec<(Record, u64, Diff)>>, _, _, _>(Pipeline, "write_parts", move |_c, _info| {
            let mut open: BTreeMap<u64, (Capability<u64>, Vec<Item>)> = BTreeMap::new();
            let mut manifest: Option<ManifestWriter> = None;
            let mut sums = WorkerSums::new(own);
            move |(input, frontier), output| {
                // Images whose end marker came, and then (should one be missing) those the
                // frontier has passed.
                let mut ended = Vec::new();
                input.for_each(|cap, data| {
                    let Some(c) = cap.retain_least(output.output_index()) else { return };
                    let t = *c.time();
                    let e = open.entry(t).or_insert((c, Vec::new()));
                    e.1.append(data);
                    if matches!(e.1.last(), Some(Item::End)) {
                        ended.push(t);
                    }
                });
                ended.extend(open.keys().take_while(|t| !frontier.less_equal(*t)).copied());
                for t in ended {
                    let Some((cap, items)) = open.remove(&t) else { continue };
                    let image = &job.images[t as usize];
                    let records = finish_image(&job, image, items, &mut manifest);
                    job.progress.images.fetch_add(1, Ordering::Relaxed);
                    output.session(&cap).give_iterator(sums.image(t, records).into_iter());
                    finished.set(sums.written);
                }
            }
        })
    }
}

/// A worker's per-class Grad-CAM sums, added up over its images (exact integers) and sent once,
/// with the last of its `own` images to be written — not necessarily its last in the archive's
/// order: with a shared inference service a later image's scores may come back first. Per-image
/// updates would pile up in the consolidation's trace as the archive grows.
struct WorkerSums {
    own: usize,
    /// Images written so far.
    written: usize,
    cams: BTreeMap<Record, Diff>,
}

impl WorkerSums {
    fn new(own: usize) -> Self {
        Self { own, written: 0, cams: BTreeMap::new() }
    }

    /// The records of image `t` to send now: all but its per-class Grad-CAM sums, which are
    /// added up, and with the worker's last image the sums of all.
    fn image(&mut self, t: u64, records: Vec<(Record, Diff)>) -> Vec<(Record, u64, Diff)> {
        let mut now = Vec::new();
        for (r, d) in records {
            if matches!(r, Record::Cam { .. }) {
                let e = self.cams.entry(r).or_insert((0, 0, 0));
                e.0 += d.0;
                e.1 += d.1;
                e.2 += d.2;
            } else {
                now.push((r, t, d));
            }
        }
        self.written += 1;
        if self.written == self.own {
            now.extend(std::mem::take(&mut self.cams).into_iter().map(|(r, d)| (r, t, d)));
        }
        now
    }
}

fn rejected(reject: Reject) -> Vec<(Record, Diff)> {
    tracing::warn!("rejected: {reject}");
    vec![(Record::Reject(reject), (1, 0, 0))]
}

/// Ends one image: its records (written parts and manifest line first).
fn finish_image(job: &RunJob, image: &ImageJob, items: Vec<Item>, manifest: &mut Option<ManifestWriter>) -> Vec<(Record, Diff)> {
    let mut batches = Vec::new();
    let mut summary = None;
    for item in items {
        match item {
            Item::Batch(b) => batches.push(b),
            Item::Summary(s) => summary = Some(s),
            Item::Failed(reject) => return rejected(reject),
            Item::Reused(records) => return records.iter().filter(|(r, _)| r.is_shared()).cloned().collect(),
            Item::End => {}
        }
    }
    let path = &image.entry.path;
    let Some(summary) = summary else {
        return rejected(image.reject("read", "the image holds no spectra"));
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
        return rejected(image.reject("classify", reason));
    }
    match write_image(job, image, &batches, &summary, manifest) {
        Ok(records) => records,
        Err(e) => {
            // An output that cannot be written is not the image's fault, but the run must not
            // pretend it has the image: reject it with the reason (the exit code says so). A full
            // or read-only disk also stops this process's workers: every later write would fail.
            if e.is_storage() {
                job.stop(format!("cannot write the outputs of {}: {e}", path.display()));
            }
            rejected(image.reject("write", e))
        }
    }
}

fn write_image(
    job: &RunJob,
    image: &ImageJob,
    batches: &[arrow::array::RecordBatch],
    summary: &ImageSummary,
    manifest: &mut Option<ManifestWriter>,
) -> Result<Vec<(Record, Diff)>, Error> {
    let Some(first) = batches.first() else { return Err(Error::invalid("no prediction rows")) };
    let mut w = AtomicParquetWriter::create(&prediction_path(&job.out, &image.part), first.schema(), job.key_values.clone())?;
    let mut rows = 0u64;
    for b in batches {
        w.write(b)?;
        rows += b.num_rows() as u64;
    }
    w.finish()?;
    job.progress.spectra.fetch_add(rows, Ordering::Relaxed);
    let (slide, grid) = match &image.core {
        Some(c) => (c.image.as_str(), Some(&c.grid)),
        None => (image.entry.sample.as_str(), None),
    };
    let mut records = image_records(&image.rel_path, slide, grid, summary);
    let part_path = summary_path(&job.out, &image.part);
    let text = serde_json::to_vec(&records).map_err(|e| Error::invalid(format!("cannot encode the image summary: {e}")))?;
    crate::io::atomic::write_atomic(&part_path, &text).map_err(|e| Error::io("cannot write", &part_path, e))?;
    // Only what is added up across images travels on; the per-core Grad-CAM rows stay in the
    // part (the tables writer streams them from there), so memory does not grow with the archive.
    records.retain(|(r, _)| r.is_shared());
    let path = &image.entry.path;
    let content_hash = job.content_hash(path)?;
    let identity = match &image.identity {
        Some(i) => i.clone(),
        None => manifest::identity(path).map_err(|e| Error::io("cannot read", path, e))?,
    };
    let entry = ManifestEntry {
        sample: image.entry.sample.clone(),
        path: image.rel_path.clone(),
        identity,
        content_hash,
        model_hash: job.model_hash.clone(),
        part: image.part.clone(),
        spectra: rows,
    };
    let manifest_path = job.out.join(manifest::MANIFEST);
    if manifest.is_none() {
        *manifest = Some(ManifestWriter::open(&job.out).map_err(|e| Error::io("cannot open", &manifest_path, e))?);
    }
    manifest.as_mut().expect("opened").append(&entry).map_err(|e| Error::io("cannot append to", &manifest_path, e))?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(class: &str) -> Record {
        Record::Cam { scope: "predicted".into(), class: class.into(), point: 0 }
    }

    #[test]
    fn the_sums_go_out_once_with_the_last_image_written_whatever_its_timestamp() {
        let mut sums = WorkerSums::new(3);
        let reject = |n: &str| Record::Reject(Reject::new(std::path::PathBuf::from(n), "read", "bad"));
        // Images 2 and 9 are written first; image 5 (a cancer core waiting for its subtype
        // scores) last, after the worker's last image in the archive's order.
        let first = sums.image(2, vec![(cam("CA"), (1, 10, 100)), (reject("a"), (1, 0, 0))]);
        assert_eq!(first, vec![(reject("a"), 2, (1, 0, 0))]);
        assert!(sums.image(9, vec![(cam("CA"), (2, 20, 200)), (cam("AT"), (1, 1, 1))]).is_empty());
        let last = sums.image(5, vec![(cam("CA"), (4, 40, 400))]);
        assert_eq!(last, vec![(cam("AT"), 5, (1, 1, 1)), (cam("CA"), 5, (7, 70, 700))]);
        assert_eq!(sums.written, 3);
    }
}
