//! The source of the graph: each worker reads its units of work (whole files, or the window of a
//! slide's core; batch by batch) into the dataflow's input, or feeds a reused unit's stored
//! records, or its reject.
use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::sync::Arc;

use super::adapter::Item;
use crate::io::ReadOptions;
use crate::job::{Action, ImageJob};
use crate::operators::axis::Band;
use crate::operators::schema::{sample_column, SAMPLE};

/// Feeds one image into `send`: its batches as they are read (only the points of `bands`, see
/// [`ReadOptions::bands`]; calling `step` after each, so the graph works while the reader reads),
/// its stored records, or its reject — also when its spectra would take more than `budget` bytes.
pub fn feed(image: &ImageJob, batch_rows: usize, bands: Option<Band>, budget: u64, mut send: impl FnMut(Item), mut step: impl FnMut()) {
    let path = &image.entry.path;
    match &image.action {
        Action::Reuse(records) => send(Item::Reused(Arc::clone(records))),
        Action::Refuse(reject) => send(Item::Failed(reject.clone())),
        Action::Process => {
            let opts =
                ReadOptions { batch_rows, sample: image.entry.sample.clone(), window: image.core.as_ref().map(|c| c.window()), bands };
            match crate::io::open_as(path, image.entry.format, &opts) {
                Ok(reader) => {
                    let info = reader.info();
                    let bytes = info.n_spectra.saturating_mul(info.wavenumbers.len() as u64).saturating_mul(4);
                    if bytes > budget {
                        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
                        send(Item::Failed(image.reject(
                            "read",
                            format!(
                                "its {} spectra take {:.2} GiB, more than the {:.2} GiB a unit of work may hold ([run] \
                                 memory_budget over twice the workers per process); de-array it as a slide ([tma]), run \
                                 fewer workers or raise memory_budget",
                                info.n_spectra,
                                gib(bytes),
                                gib(budget)
                            ),
                        )));
                        return;
                    }
                    let mut seen = None;
                    for b in reader {
                        let batch = b
                            .map_err(|e| image.read_reject("read", &e))
                            .and_then(|b| as_image(b, &image.entry.sample, &mut seen).map_err(|reason| image.reject("read", reason)));
                        match batch {
                            Ok(b) => send(Item::Batch(b)),
                            Err(reject) => {
                                send(Item::Failed(reject));
                                break;
                            }
                        }
                        step();
                    }
                }
                Err(e) => send(Item::Failed(image.read_reject("open", &e))),
            }
        }
    }
}

/// A read batch as rows of the image `sample`: in a run an image is one file and its id is its
/// archive id, so a table's own `sample` column (a Parquet table converted elsewhere) is replaced
/// by it; a table that names several samples is not one image and is rejected.
fn as_image(batch: RecordBatch, sample: &str, seen: &mut Option<String>) -> Result<RecordBatch, String> {
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
    RecordBatch::try_new(std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), columns)
        .map_err(|e| e.to_string())
}
