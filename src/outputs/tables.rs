//! The run's tables — `cores.parquet`, `gradcam.parquet`, `bands.parquet` and `rejects.parquet`
//! (docs/outputs.md) — written from the totals of the summary records.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};

use super::records::{per_core, spectrum_side, CoreRow, Diff, GridPlace, Record};
use crate::error::Error;
use crate::io::parquet::{AtomicParquetWriter, Staged};
use crate::operators::grad_cam::{top_bands, CamStats};
use crate::reject::Reject;

/// Grad-CAM sums by (scope, class): (maps, Σ per point, Σ² per point).
pub type CamSums = BTreeMap<(String, String), (i64, Vec<i128>, Vec<i128>)>;

/// The totals of a run, keyed.
#[derive(Debug, Default)]
pub struct Totals {
    /// Core rows by sample.
    pub cores: BTreeMap<String, CoreRow>,
    /// (scope, class) → (count, Σ per point, Σ² per point).
    pub cams: CamSums,
    /// Rejects.
    pub rejects: Vec<Reject>,
}

impl Totals {
    /// Adds up `(record, diff)` pairs (any order gives the same totals).
    pub fn add(&mut self, record: Record, diff: Diff, points: usize) {
        match record {
            Record::Core(row) => {
                if diff.0 > 0 {
                    self.cores.insert(row.sample.clone(), *row);
                }
            }
            Record::Cam { scope, class, point } => {
                let e = self.cams.entry((scope, class)).or_insert_with(|| (0, vec![0; points], vec![0; points]));
                let p = point as usize;
                if p < points {
                    e.1[p] += diff.1;
                    e.2[p] += diff.2;
                }
                // Every point of a map carries the same count; take it from point 0.
                if p == 0 {
                    e.0 += diff.0;
                }
            }
            Record::Reject(reject) => {
                if diff.0 > 0 {
                    self.rejects.push(reject);
                }
            }
        }
    }

    /// Spectra over all cores.
    pub fn spectra(&self) -> u64 {
        self.cores.values().map(|c| c.spectra).sum()
    }
}

fn write(path: &Path, batch: RecordBatch, kv: &[(String, String)]) -> Result<Staged, Error> {
    let mut w = AtomicParquetWriter::create(path, batch.schema(), kv.to_vec())?;
    w.write(&batch)?;
    Ok(w.finish_staged()?)
}

fn strings<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

/// The mean preprocessed spectrum and its count per (scope, class): `predicted` or `true`.
type ClassMeans<'a> = HashMap<(&'a str, &'a str), (u64, Vec<f64>)>;

/// Which way a top band of `class` in `scope` (`predicted` or `true`) points
/// ([`crate::operators::grad_cam::direction`]): against the other classes of its model, by predicted or true class
/// as the scope is.
fn band_direction(
    spectra: &ClassMeans,
    (scope, class): (&str, &str),
    model_classes: &[String],
    grid: &[f64],
    band: (f64, f64),
) -> Option<crate::operators::grad_cam::Direction> {
    let (_, own) = spectra.get(&(scope, class))?;
    let others: Vec<(u64, &[f64])> = model_classes
        .iter()
        .filter(|c| c.as_str() != class)
        .filter_map(|c| spectra.get(&(scope, c.as_str())).map(|(n, m)| (*n, m.as_slice())))
        .collect();
    crate::operators::grad_cam::direction(own, &others, grid, band.0, band.1)
}

/// Writes `cores.parquet`, `gradcam.parquet`, `bands.parquet` and `rejects.parquet` into `out`.
/// The per-core Grad-CAM rows are read from `parts` (each image's stored records), one part at a
/// time, so memory does not grow with the archive.
pub fn write_tables(
    out: &Path,
    totals: &Totals,
    parts: &[PathBuf],
    types: &[String],
    subtypes: Option<&[String]>,
    grid: &[f64],
    kv: &[(String, String)],
) -> Result<(), Error> {
    const PROB: f64 = 4_294_967_296.0;
    // cores.parquet
    let cores: Vec<&CoreRow> = totals.cores.values().collect();
    let u64s = |f: &dyn Fn(&CoreRow) -> u64| -> ArrayRef { Arc::new(cores.iter().map(|c| f(c)).collect::<UInt64Array>()) };
    let u32s =
        |f: &dyn Fn(&GridPlace) -> u32| -> ArrayRef { Arc::new(cores.iter().map(|c| c.grid.as_ref().map(f)).collect::<UInt32Array>()) };
    let mut fields = vec![
        Field::new("sample", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("image", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, true),
        Field::new("row", DataType::UInt32, true),
        Field::new("col", DataType::UInt32, true),
        Field::new("bbox_x0", DataType::UInt32, true),
        Field::new("bbox_y0", DataType::UInt32, true),
        Field::new("bbox_x1", DataType::UInt32, true),
        Field::new("bbox_y1", DataType::UInt32, true),
        Field::new("spectra", DataType::UInt64, false),
        Field::new("tissue", DataType::UInt64, false),
        Field::new("paraffin", DataType::UInt64, false),
        Field::new("outliers", DataType::UInt64, false),
        Field::new("classified", DataType::UInt64, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        strings(cores.iter().map(|c| Some(c.sample.as_str()))),
        strings(cores.iter().map(|c| Some(c.path.as_str()))),
        strings(cores.iter().map(|c| Some(c.image.as_str()))),
        strings(cores.iter().map(|c| c.grid.as_ref().map(|g| g.position.as_str()))),
        u32s(&|g| g.row),
        u32s(&|g| g.col),
        u32s(&|g| g.bbox[0]),
        u32s(&|g| g.bbox[1]),
        u32s(&|g| g.bbox[2]),
        u32s(&|g| g.bbox[3]),
        u64s(&|c| c.spectra),
        u64s(&|c| c.tissue),
        u64s(&|c| c.paraffin),
        u64s(&|c| c.outliers),
        u64s(&|c| c.type_counts.iter().sum()),
    ];
    type ClassCounts<'a> = dyn Fn(&CoreRow) -> (&[u64], &[i64]) + 'a;
    let class_columns = |classes: &[String], counts: &ClassCounts, fields: &mut Vec<Field>, cols: &mut Vec<ArrayRef>| {
        for (k, c) in classes.iter().enumerate() {
            fields.push(Field::new(format!("fraction_{c}"), DataType::Float64, true));
            cols.push(Arc::new(
                cores
                    .iter()
                    .map(|r| {
                        let (n, _) = counts(r);
                        let total: u64 = n.iter().sum();
                        (total > 0).then(|| n[k] as f64 / total as f64)
                    })
                    .collect::<Float64Array>(),
            ));
            fields.push(Field::new(format!("mean_p_{c}"), DataType::Float64, true));
            cols.push(Arc::new(
                cores
                    .iter()
                    .map(|r| {
                        let (n, s) = counts(r);
                        let total: u64 = n.iter().sum();
                        (total > 0).then(|| s[k] as f64 / PROB / total as f64)
                    })
                    .collect::<Float64Array>(),
            ));
        }
    };
    class_columns(types, &|r| (&r.type_counts, &r.type_prob_sums), &mut fields, &mut cols);
    fields.push(Field::new("majority", DataType::Utf8, true));
    cols.push(strings(cores.iter().map(|c| c.majority.as_deref())));
    if let Some(subs) = subtypes {
        class_columns(subs, &|r| (&r.subtype_counts, &r.subtype_prob_sums), &mut fields, &mut cols);
        fields.push(Field::new("subtype_majority", DataType::Utf8, true));
        cols.push(strings(cores.iter().map(|c| c.subtype_majority.as_deref())));
    }
    fields.push(Field::new("patient", DataType::Utf8, true));
    cols.push(strings(cores.iter().map(|c| c.patient.as_deref())));
    fields.push(Field::new("truth_type", DataType::Utf8, true));
    cols.push(strings(cores.iter().map(|c| c.truth_type.as_deref())));
    fields.push(Field::new("truth_subtype", DataType::Utf8, true));
    cols.push(strings(cores.iter().map(|c| c.truth_subtype.as_deref())));
    // All four tables appear together or not at all (a full disk leaves the previous ones).
    let mut staged = vec![write(&out.join("cores.parquet"), RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?, kv)?];

    // gradcam.parquet (per class from the totals, then per core from the parts) and bands.parquet
    let gradcam_schema = Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("core", DataType::Utf8, true),
        Field::new("class", DataType::Utf8, false),
        Field::new("wavenumber", DataType::Float64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("std", DataType::Float64, false),
        Field::new("count", DataType::UInt64, false),
    ]));
    let mut gradcam = AtomicParquetWriter::create(&out.join("gradcam.parquet"), Arc::clone(&gradcam_schema), kv.to_vec())?;
    let write_cams = |w: &mut AtomicParquetWriter, cams: &CamSums| -> Result<(), Error> {
        let (mut scope, mut core, mut class, mut wn, mut mean, mut std, mut count) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((sc, cl), (n, sum, sq)) in cams {
            let (scope_name, core_name) = match per_core(sc) {
                Some(("core", sample)) => ("core", Some(sample.to_string())),
                // The per-core mean spectra serve the bands' consistency; not written.
                Some(_) => continue,
                None => (sc.as_str(), None),
            };
            let st = CamStats::from_sums(*n as u64, sum.clone(), sq.clone())?;
            let (m, s) = (st.mean(), st.std());
            for (i, &w) in grid.iter().enumerate().take(m.len()) {
                scope.push(scope_name.to_string());
                core.push(core_name.clone());
                class.push(cl.clone());
                wn.push(w);
                mean.push(m[i]);
                std.push(s[i]);
                count.push(*n as u64);
            }
        }
        if scope.is_empty() {
            return Ok(());
        }
        w.write(&RecordBatch::try_new(
            Arc::clone(&gradcam_schema),
            vec![
                Arc::new(StringArray::from(scope)),
                Arc::new(StringArray::from(core)),
                Arc::new(StringArray::from(class)),
                Arc::new(Float64Array::from(wn)),
                Arc::new(Float64Array::from(mean)),
                Arc::new(Float64Array::from(std)),
                Arc::new(UInt64Array::from(count)),
            ],
        )?)?;
        Ok(())
    };
    // The top bands of every class, with which way each points (from the totals).
    let (mut b_scope, mut b_class, mut b_lo, mut b_hi, mut b_peak, mut b_mean, mut b_assign, mut b_source) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut b_diff, mut b_relative, mut b_direction) = (Vec::new(), Vec::new(), Vec::new());
    // The mean preprocessed spectrum of the spectra predicted as (scope `predicted`), or truly of
    // (scope `true`), each class, and how many.
    let mut spectra: ClassMeans = HashMap::new();
    for ((sc, cl), (n, sum, sq)) in totals.cams.iter() {
        let Some(scope) = spectrum_side(sc) else { continue };
        spectra.insert((scope, cl.as_str()), (*n as u64, CamStats::from_sums(*n as u64, sum.clone(), sq.clone())?.mean()));
    }
    let model_classes = |cl: &str| -> &[String] {
        if types.iter().any(|t| t == cl) {
            types
        } else {
            subtypes.unwrap_or(&[])
        }
    };
    for ((sc, cl), (n, sum, sq)) in totals.cams.iter().filter(|((sc, _), _)| spectrum_side(sc).is_none()) {
        let st = CamStats::from_sums(*n as u64, sum.clone(), sq.clone())?;
        // The classes this one is told apart from: the other classes of its model.
        for b in top_bands(grid, &st.mean(), 0.9)? {
            let d = band_direction(&spectra, (sc, cl), model_classes(cl), grid, (b.lo, b.hi));
            b_diff.push(d.map(|d| d.diff));
            b_relative.push(d.and_then(|d| d.relative));
            b_direction.push(d.map(|d| d.word()));
            b_scope.push(sc.clone());
            b_class.push(cl.clone());
            b_lo.push(b.lo);
            b_hi.push(b.hi);
            b_peak.push(b.peak);
            b_mean.push(b.mean_map);
            b_assign.push(b.assignment);
            b_source.push(b.sources);
        }
    }

    write_cams(&mut gradcam, &totals.cams)?;
    // Per-core rows, one part at a time; the cores' mean spectra are summed per patient (or per
    // core, without patients) and class, for the bands' consistency.
    let by_patient = !cores.is_empty() && cores.iter().all(|c| c.patient.is_some());
    let mut groups: BTreeMap<(String, &str, String), CamStats> = BTreeMap::new();
    for part in parts {
        let text = std::fs::read(part).map_err(|e| Error::io("cannot read", part, e))?;
        let records: Vec<(Record, Diff)> =
            serde_json::from_slice(&text).map_err(|e| Error::invalid(format!("{} is not an image summary: {e}", part.display())))?;
        let mut core_totals = Totals::default();
        for (r, d) in records.into_iter().filter(|(r, _)| !r.is_shared()) {
            core_totals.add(r, d, grid.len());
        }
        write_cams(&mut gradcam, &core_totals.cams)?;
        for ((sc, cl), (n, sum, sq)) in &core_totals.cams {
            let Some((scope, sample)) = per_core(sc).and_then(|(kind, sample)| Some((spectrum_side(kind)?, sample))) else {
                continue;
            };
            let group = match totals.cores.get(sample).and_then(|c| c.patient.clone()) {
                Some(patient) if by_patient => patient,
                _ => sample.to_string(),
            };
            CamStats::merge_into(&mut groups, (group, scope, cl.clone()), &CamStats::from_sums(*n as u64, sum.clone(), sq.clone())?)?;
        }
    }
    staged.push(gradcam.finish_staged()?);

    // Consistency: in how many groups (patients, or cores) the band points the same way as over
    // the whole run, among the groups that hold the class and another class of its model.
    let mut group_means: BTreeMap<&str, ClassMeans> = BTreeMap::new();
    for ((g, scope, cl), st) in &groups {
        group_means.entry(g.as_str()).or_default().insert((scope, cl.as_str()), (st.count(), st.mean()));
    }
    let (mut b_consistent, mut b_groups) = (Vec::new(), Vec::new());
    for i in 0..b_scope.len() {
        let Some(word) = b_direction[i] else {
            b_consistent.push(None);
            b_groups.push(None);
            continue;
        };
        let (mut agree, mut n) = (0u32, 0u32);
        for means in group_means.values() {
            if let Some(d) = band_direction(means, (&b_scope[i], &b_class[i]), model_classes(&b_class[i]), grid, (b_lo[i], b_hi[i])) {
                n += 1;
                agree += (d.word() == word) as u32;
            }
        }
        b_consistent.push(Some(agree));
        b_groups.push(Some(n));
    }
    let grouped_by = if by_patient { "patient" } else { "core" };
    let b_grouped_by: Vec<Option<&str>> = b_groups.iter().map(|g| g.map(|_| grouped_by)).collect();
    let schema = Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("lo", DataType::Float64, false),
        Field::new("hi", DataType::Float64, false),
        Field::new("peak", DataType::Float64, false),
        Field::new("mean_map", DataType::Float64, false),
        Field::new("assignment", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("diff", DataType::Float64, true),
        Field::new("relative", DataType::Float64, true),
        Field::new("direction", DataType::Utf8, true),
        Field::new("consistent", DataType::UInt32, true),
        Field::new("groups", DataType::UInt32, true),
        Field::new("grouped_by", DataType::Utf8, true),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(b_scope)),
            Arc::new(StringArray::from(b_class)),
            Arc::new(Float64Array::from(b_lo)),
            Arc::new(Float64Array::from(b_hi)),
            Arc::new(Float64Array::from(b_peak)),
            Arc::new(Float64Array::from(b_mean)),
            Arc::new(StringArray::from(b_assign)),
            Arc::new(StringArray::from(b_source)),
            Arc::new(Float64Array::from(b_diff)),
            Arc::new(Float64Array::from(b_relative)),
            Arc::new(StringArray::from(b_direction)),
            Arc::new(UInt32Array::from(b_consistent)),
            Arc::new(UInt32Array::from(b_groups)),
            Arc::new(StringArray::from(b_grouped_by)),
        ],
    )?;
    staged.push(write(&out.join("bands.parquet"), batch, kv)?);

    // rejects.parquet
    let mut rejects = totals.rejects.clone();
    crate::reject::sort(&mut rejects);
    let schema = Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(rejects.iter().map(|r| Some(r.path.to_string_lossy())).collect::<StringArray>()),
            strings(rejects.iter().map(|r| Some(r.stage.as_str()))),
            strings(rejects.iter().map(|r| Some(r.reason.as_str()))),
        ],
    )?;
    staged.push(write(&out.join("rejects.parquet"), batch, kv)?);
    for s in staged {
        s.commit()?;
    }
    Ok(())
}
