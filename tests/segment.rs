//! Segmentation (dual K-means tissue/paraffin masks) on the synthetic archive: agreement with the
//! generator's ground-truth masks (tissue IoU ≥ 0.95, paraffin IoU ≥ 0.9 at the default
//! difficulty), and identical masks whatever the batch size and the order of the batches.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use ftirflow::io::{open, ReadOptions};
use ftirflow::operators::kernel::run_image;
use ftirflow::operators::segment::{SegmentParams, SegmentSummary, PARAFFIN, SEGMENT_INVALID, TISSUE};
use ftirflow::synth::{generate, SynthConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// (x, y) → (tissue, paraffin, invalid).
type MaskMap = BTreeMap<(u32, u32), (bool, bool, bool)>;

fn read_image(path: &Path, sample: &str, batch_rows: usize) -> Vec<RecordBatch> {
    let opts = ReadOptions { batch_rows, sample: sample.to_string(), window: None, bands: None };
    open(path, &opts).expect("open image").collect::<Result<Vec<_>, _>>().expect("read image")
}

fn segment(batches: &[RecordBatch]) -> (MaskMap, SegmentSummary) {
    let mut kernel = SegmentParams::default().check().expect("default params").kernel();
    let out = run_image(&mut kernel, batches).expect("segment");
    assert_eq!(out.len(), batches.len(), "one output batch per input batch");
    let mut masks = MaskMap::new();
    for (b, input) in out.iter().zip(batches) {
        assert_eq!(b.num_rows(), input.num_rows());
        let col = |name: &str| b.column_by_name(name).unwrap_or_else(|| panic!("{name} column")).as_boolean().clone();
        let (t, p, inv) = (col(TISSUE), col(PARAFFIN), col(SEGMENT_INVALID));
        let xs = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
        let ys = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
        for i in 0..b.num_rows() {
            let prev = masks.insert((xs.value(i), ys.value(i)), (t.value(i), p.value(i), inv.value(i)));
            assert!(prev.is_none(), "pixel emitted twice");
        }
    }
    (masks, kernel.last_summary().expect("summary").clone())
}

/// sample → (x, y) → ground-truth mask name.
fn truth(path: &Path) -> HashMap<String, HashMap<(u32, u32), String>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let mut out: HashMap<String, HashMap<(u32, u32), String>> = HashMap::new();
    for batch in reader {
        let b = batch.unwrap();
        let sample = b.column_by_name("sample").unwrap().as_string::<i32>();
        let x = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
        let y = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
        let mask = b.column_by_name("mask").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.entry(sample.value(i).to_string()).or_default().insert((x.value(i), y.value(i)), mask.value(i).to_string());
        }
    }
    out
}

#[derive(Default, Clone, Copy)]
struct Iou {
    inter: usize,
    union: usize,
}

impl Iou {
    fn add(&mut self, pred: bool, truth: bool) {
        self.inter += usize::from(pred && truth);
        self.union += usize::from(pred || truth);
    }
    fn value(&self) -> f64 {
        if self.union == 0 {
            1.0
        } else {
            self.inter as f64 / self.union as f64
        }
    }
}

#[test]
fn masks_match_ground_truth_and_do_not_depend_on_batching() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { patients: 4, size: 48, ..SynthConfig::default() };
    generate(&cfg, dir.path(), &|_, _| {}).expect("generate archive");
    let truth = truth(&dir.path().join("truth/masks.parquet"));

    let (mut tissue_all, mut paraffin_all) = (Iou::default(), Iou::default());
    let mut worst = (1.0f64, 1.0f64);
    for p in 1..=cfg.patients {
        for cancer in [true, false] {
            let sample = cfg.sample_name(p, cancer);
            let hdr = dir.path().join("images").join(format!("{sample}.hdr"));
            let batches = read_image(&hdr, &sample, 1000);
            let (masks, summary) = segment(&batches);
            let gt = &truth[&sample];
            assert_eq!(masks.len(), gt.len(), "{sample}: every pixel segmented");

            let (mut ti, mut pi) = (Iou::default(), Iou::default());
            for (xy, &(t, par, invalid)) in &masks {
                assert!(!invalid, "{sample}: synthetic spectra are finite");
                assert!(!(t && par), "{sample}: tissue and paraffin are exclusive");
                let g = gt[xy].as_str();
                ti.add(t, g == "tissue");
                pi.add(par, g == "paraffin");
                tissue_all.add(t, g == "tissue");
                paraffin_all.add(par, g == "paraffin");
            }
            eprintln!(
                "{sample}: tissue IoU {:.4} paraffin IoU {:.4} (tissue {} paraffin {} background {}; steps {:?}/{:?}, separation {:.1}/{:.1})",
                ti.value(),
                pi.value(),
                summary.tissue,
                summary.paraffin,
                summary.background,
                summary.tissue_step.case,
                summary.paraffin_step.case,
                summary.tissue_step.separation,
                summary.paraffin_step.separation,
            );
            worst = (worst.0.min(ti.value()), worst.1.min(pi.value()));

            // Batch size and batch order do not change the masks (nor the fit).
            let small = read_image(&hdr, &sample, 37);
            let (masks_small, summary_small) = segment(&small);
            assert_eq!(masks_small, masks, "{sample}: masks differ between batch_rows 1000 and 37");
            assert_eq!(summary_small, summary, "{sample}: fit differs between batch_rows 1000 and 37");
            let reversed: Vec<RecordBatch> = small.iter().rev().cloned().collect();
            let (masks_rev, summary_rev) = segment(&reversed);
            assert_eq!(masks_rev, masks, "{sample}: masks differ for reversed batch order");
            assert_eq!(summary_rev, summary, "{sample}: fit differs for reversed batch order");
        }
    }
    eprintln!(
        "archive ({} cores of {}×{}): tissue IoU {:.4} paraffin IoU {:.4}; worst core {:.4} / {:.4}",
        cfg.n_cores(),
        cfg.size,
        cfg.size,
        tissue_all.value(),
        paraffin_all.value(),
        worst.0,
        worst.1
    );
    assert!(tissue_all.value() >= 0.95, "tissue IoU {:.4} < 0.95", tissue_all.value());
    assert!(paraffin_all.value() >= 0.9, "paraffin IoU {:.4} < 0.9", paraffin_all.value());
}
