//! ftirflow against the Python pipeline a lab would otherwise write
//! (`benches/python/pipeline_baseline.py`: numpy, scikit-learn, PyTorch eager, pyarrow), on the
//! same generated ENVI archive in the same run: seconds and spectra/s per stage (read, segment,
//! EMSC, resample + normalize, inference, inference + Grad-CAM, write) and end to end, peak RSS, and how many
//! predicted classes agree. Not criterion: each measurement is a pass over the whole archive.
//!
//! `cargo bench --bench pipeline [-- --cores N --size PX --threads 1,2]` (defaults: 2 cores of
//! 320×320 px, the default archive's image size; Python at 1 and 2 threads against ftirflow at
//! 1 and 2 workers). The archive and a briefly trained `type` model are cached under
//! `target/bench-pipeline/`. The Python side runs through `scripts/python-baseline` (set it up
//! with `scripts/setup-python-baseline.sh`); without it the table shows ftirflow alone.
//! `-- --stages` times ftirflow's reading and preprocessing stages only (no inference, no
//! end-to-end runs, no Python) and adds each kernel's seconds: the quick loop while profiling.
//!
//! ftirflow's stage rows time the library kernels one at a time on one thread: segmentation with
//! the amide I check (one kernel, one pass) on every spectrum, EMSC, resampling and normalization on the tissue spectra
//! that passed the check (what classification needs, and what the Python baseline corrects).
//! `run` fuses check, EMSC, resampling and normalization into one pass over the tissue spectra,
//! shown as its own row.
//! Python's rows come from its own timers around the same steps. Every stage's spectra/s divides the archive's
//! spectra by the stage's seconds, so the rows are comparable whatever each stage touches.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use ftirflow::bundle::Bundle;
use ftirflow::io::{self, ReadOptions};
use ftirflow::plan::PreprocessPlan;
use ftirflow_operators::model::{self, DeviceChoice};
use ftirflow_operators::schema::SpectraLayout;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;
use support::{arg, bin, ok};

/// Stage rows; `inference_gradcam` is prediction and Grad-CAM together (ftirflow computes both
/// in one pass, so Grad-CAM alone has no time of its own; Python's is `inference + gradcam`).
const STAGES: [&str; 7] = ["read", "segment", "emsc", "resample_normalize", "inference", "inference_gradcam", "write"];

/// Which stage a kernel of the chain belongs to (the segment kernel also makes the amide I check;
/// `outliers` is the EMSC residual check after truncation).
fn stage_of(kernel: &str) -> &'static str {
    match kernel {
        "segment" => "segment",
        "truncate" | "emsc" | "outliers" => "emsc",
        _ => "resample_normalize",
    }
}

fn images(archive: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(archive.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hdr"))
        .collect();
    v.sort();
    v
}

/// Sequential 8 MiB reads of every image's data: the ceiling for reading these bytes.
fn plain_read(archive: &Path) -> f64 {
    let mut buf = vec![0u8; 8 << 20];
    let t = Instant::now();
    for hdr in images(archive) {
        let mut f = std::fs::File::open(hdr.with_extension("img")).unwrap();
        while f.read(&mut buf).unwrap() > 0 {}
    }
    t.elapsed().as_secs_f64()
}

/// ftirflow's stages on one thread, each kernel timed on its own; returns seconds per stage and
/// the fused preprocessing (as `run` runs it) separately.
fn ftirflow_stages(archive: &Path, model_dir: &Path, out: &Path) -> (BTreeMap<&'static str, f64>, BTreeMap<String, f64>, f64, u64) {
    model::set_threads(1);
    let bundle = Bundle::load(model_dir, DeviceChoice::Cpu).unwrap();
    let plan = PreprocessPlan::new(&bundle.manifest.preprocess, bundle.manifest.emsc.as_ref()).unwrap();
    let run_plan = plan.clone().tissue_only();
    let clf = &bundle.classifier;
    let classes = clf.classes().to_vec();
    let points = clf.grid().len();
    let mut secs: BTreeMap<&'static str, f64> = STAGES.iter().map(|s| (*s, 0.0)).collect();
    let mut fused = 0.0;
    let mut kernels: BTreeMap<String, f64> = BTreeMap::new();
    let mut spectra = 0u64;
    std::fs::create_dir_all(out).unwrap();
    for (i, hdr) in images(archive).iter().enumerate() {
        let sample = hdr.file_stem().unwrap().to_string_lossy().to_string();
        // The reader streaming (each batch dropped once counted), as the plain read is timed;
        // then the image again, kept, for the stages below.
        let t = Instant::now();
        for b in io::open(hdr, &ReadOptions::new(sample.clone())).unwrap() {
            std::hint::black_box(b.unwrap().num_rows());
        }
        *secs.get_mut("read").unwrap() += t.elapsed().as_secs_f64();
        let raw = io::read_all(hdr, &ReadOptions::new(sample)).unwrap();
        spectra += raw.iter().map(|b| b.num_rows() as u64).sum::<u64>();

        // Best of 3: the first pass pays for fresh output pages, which the engine reuses across
        // images.
        fused += (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(run_plan.run_image(raw.clone()).unwrap());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);

        let mut batches = raw;
        // As `run` runs it, the segment kernel also makes the amide I / non-finite check, in the
        // same pass over the image (the two kernels it replaces give the same output, a test).
        let mut chain = plan.sequential_kernels().unwrap();
        assert_eq!([chain[0].name(), chain[1].name()], ["segment", "outliers"]);
        chain.splice(..2, [Box::new(plan.segment_kernel().unwrap().unwrap()) as Box<dyn ftirflow_operators::Kernel>]);
        for mut k in chain {
            let t = Instant::now();
            let mut next = Vec::new();
            if k.name() == "truncate" {
                // From here on, the EMSC range of the tissue spectra that passed the amide I
                // check, as Python's EMSC and resampling see them (numpy's `x[np.ix_(rows,
                // cols)]`, inside its EMSC timer): one gather instead of truncating every spectrum.
                for b in &batches {
                    next.push(tissue_range(b, k.as_ref()));
                }
            } else {
                for b in &batches {
                    k.push_batch(b, &mut next).unwrap();
                }
            }
            k.finish(&mut next).unwrap();
            let dt = t.elapsed().as_secs_f64();
            *secs.get_mut(stage_of(k.name())).unwrap() += dt;
            *kernels.entry(format!("{} ({})", k.name(), stage_of(k.name()))).or_default() += dt;
            batches = next;
        }

        // Inference, then inference + Grad-CAM, on the tissue spectra that are not outliers.
        let mut values = Vec::new();
        let mut keep_rows = Vec::new();
        for b in &batches {
            let mask = usable(b);
            keep_rows.push(mask.clone());
            let kept = arrow::compute::filter_record_batch(b, &mask).unwrap();
            values.extend_from_slice(SpectraLayout::values(&kept).unwrap());
        }
        if stages_only() {
            continue; // the preprocessing loop: no inference, no write
        }
        let t = Instant::now();
        let mut preds = Vec::new();
        for chunk in values.chunks(1024 * points) {
            preds.push(clf.predict_values(chunk, chunk.len() / points).unwrap());
        }
        let inference = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for chunk in values.chunks(1024 * points) {
            std::hint::black_box(clf.predict_values_with_gradcam(chunk, chunk.len() / points).unwrap());
        }
        *secs.get_mut("inference").unwrap() += inference;
        *secs.get_mut("inference_gradcam").unwrap() += t.elapsed().as_secs_f64();

        // Write the per-spectrum predictions (masks, flags, class, probabilities; no spectra).
        let t = Instant::now();
        let mut pred_class: Vec<Option<String>> = Vec::new();
        let mut probs: Vec<Vec<Option<f32>>> = vec![Vec::new(); classes.len()];
        let mut flat =
            preds.iter().flat_map(|p| (0..p.predicted.len()).map(move |r| (p.predicted[r], &p.probs[r * p.classes..(r + 1) * p.classes])));
        let mut tables = Vec::new();
        for (b, mask) in batches.iter().zip(&keep_rows) {
            for r in 0..b.num_rows() {
                if mask.value(r) {
                    let (c, p) = flat.next().unwrap();
                    pred_class.push(Some(classes[c as usize].clone()));
                    for (k, v) in p.iter().enumerate() {
                        probs[k].push(Some(*v));
                    }
                } else {
                    pred_class.push(None);
                    probs.iter_mut().for_each(|v| v.push(None));
                }
            }
            let mut fields: Vec<Field> = Vec::new();
            let mut cols: Vec<ArrayRef> = Vec::new();
            for name in ["sample", "x", "y", "tissue", "paraffin", "outlier"] {
                let (idx, f) = b.schema().column_with_name(name).map(|(i, f)| (i, f.clone())).unwrap();
                fields.push(f);
                cols.push(Arc::clone(b.column(idx)));
            }
            fields.push(Field::new("pred_class", arrow::datatypes::DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from(std::mem::take(&mut pred_class))));
            for (k, name) in classes.iter().enumerate() {
                fields.push(Field::new(format!("p_{name}"), arrow::datatypes::DataType::Float32, true));
                cols.push(Arc::new(Float32Array::from(std::mem::take(&mut probs[k]))));
            }
            tables.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap());
        }
        let file = std::fs::File::create(out.join(format!("{i}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, tables[0].schema(), None).unwrap();
        for t in &tables {
            w.write(t).unwrap();
        }
        w.close().unwrap();
        *secs.get_mut("write").unwrap() += t.elapsed().as_secs_f64();
    }
    (secs, kernels, fused, spectra)
}

/// The tissue spectra of `b` that are not outliers, truncated as the `truncate` kernel `k` would
/// (same output schema), copying only the kept values.
fn tissue_range(b: &RecordBatch, k: &dyn ftirflow_operators::Kernel) -> RecordBatch {
    let schema = k.output_schema(&b.schema()).unwrap();
    let (from, to) = (SpectraLayout::of(&b.schema()).unwrap(), SpectraLayout::of(&schema).unwrap());
    let first = from.wavenumbers.iter().position(|w| *w == to.wavenumbers[0]).unwrap();
    let (n, m) = (from.n_points(), to.n_points());
    let keep = usable(b);
    let values = SpectraLayout::values(b).unwrap();
    let mut kept = Vec::with_capacity(keep.true_count() * m);
    for r in keep.values().set_indices() {
        kept.extend_from_slice(&values[r * n + first..r * n + first + m]);
    }
    let columns: Vec<ArrayRef> = b
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == from.spectrum {
                Arc::new(ftirflow_operators::schema::spectrum_array(std::mem::take(&mut kept), m).unwrap()) as ArrayRef
            } else {
                arrow::compute::filter(c, &keep).unwrap()
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// The rows of `b` that are tissue and not flagged as outliers.
fn usable(b: &RecordBatch) -> arrow::array::BooleanArray {
    let flag = |name: &str| b.column_by_name(name).unwrap().as_any().downcast_ref::<arrow::array::BooleanArray>().unwrap().clone();
    let (tissue, outlier) = (flag("tissue"), flag("outlier"));
    (0..b.num_rows()).map(|r| Some(tissue.value(r) && !outlier.value(r))).collect()
}

/// `--stages`: ftirflow's preprocessing stages only, with each kernel's seconds.
fn stages_only() -> bool {
    std::env::args().any(|a| a == "--stages")
}

fn run_json(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap()
}

fn python(script: &str, args: &[String]) -> Option<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(root.join("scripts/python-baseline")).arg(root.join("benches/python").join(script)).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if let Some(reason) = v.get("skipped") {
        println!("Python baseline: skipped ({reason})");
        return None;
    }
    if !o.status.success() {
        println!("Python baseline failed: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some(v)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list here
    }
    let (cores, size) = (arg("--cores", "2"), arg("--size", "320"));
    let threads: Vec<usize> = arg("--threads", "1,2").split(',').map(|t| t.parse().unwrap()).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-pipeline/{cores}x{size}"));
    let archive = root.join("archive");
    let model_dir = root.join("model");
    if !model_dir.join("manifest.json").exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        eprintln!("pipeline bench: generating {cores} cores of {size}×{size} px and a brief type model in {}", root.display());
        ok(bin().args(["synth", "--out", "archive", "--cores", &cores, "--size", &size]).current_dir(&root));
        ok(bin()
            .args(["train", "--task", "type", "--labels", "archive/labels.csv", "--epochs", "3", "--folds", "0"])
            .args(["--spectra-per-epoch", "2500", "archive/images", "--out", "model"])
            .current_dir(&root));
    }
    let images_dir = archive.join("images");

    // Read everything once so both sides read from the page cache.
    let plain = plain_read(&archive);
    let plain = plain_read(&archive).min(plain);
    let (ours, kernels, fused, spectra) = ftirflow_stages(&archive, &model_dir, &root.join("stage_out"));
    let n = spectra as f64;
    if stages_only() {
        println!("\nftirflow stages on 1 thread: {cores} cores of {size}×{size} px ({spectra} spectra)\n");
        for s in ["read", "segment", "emsc", "resample_normalize"] {
            println!("{s:>20}: {:.3} s", ours[s]);
        }
        println!("{:>20}: {fused:.3} s", "fused as run runs it");
        for (k, v) in &kernels {
            println!("    kernel {k}: {v:.3} s");
        }
        return;
    }

    let mut e2e = Vec::new();
    for &w in &threads {
        let out = root.join(format!("run_{w}"));
        let _ = std::fs::remove_dir_all(&out);
        let t = Instant::now();
        let status = bin()
            .args(["run", "--model"])
            .arg(&model_dir)
            .arg(&images_dir)
            .arg("--out")
            .arg(&out)
            .args(["--workers", &w.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "ftirflow run failed");
        let secs = t.elapsed().as_secs_f64();
        let rss = run_json(&out)["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN);
        e2e.push((w, secs, rss));
    }

    let mut py = Vec::new();
    for &t in &threads {
        let out = root.join(format!("py_{t}"));
        let _ = std::fs::remove_dir_all(&out);
        let args: Vec<String> = vec![
            "--archive".into(),
            images_dir.display().to_string(),
            "--model".into(),
            model_dir.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--threads".into(),
            t.to_string(),
            "--compare".into(),
            root.join(format!("run_{t}")).display().to_string(),
        ];
        match python("pipeline_baseline.py", &args) {
            Some(v) => py.push((t, v)),
            None => break,
        }
    }

    let rate = |s: f64| if s > 0.0 { format!("{:.0}", n / s) } else { "–".into() };
    println!("\nftirflow vs the Python baseline: {cores} cores of {size}×{size} px ({spectra} spectra, 1506 points), Grad-CAM on");
    println!("Stages on 1 thread (ftirflow kernels one at a time; Python's own timers):\n");
    println!("| stage | ftirflow s | ftirflow spectra/s | Python s | Python spectra/s | ftirflow / Python |");
    println!("|---|---|---|---|---|---|");
    let py1 = py.iter().find(|(t, _)| *t == 1).map(|(_, v)| v.clone());
    for s in STAGES {
        let o = ours[s];
        let p = py1.as_ref().and_then(|v| match s {
            "inference_gradcam" => Some(v["stages"]["inference"].as_f64()? + v["stages"]["gradcam"].as_f64()?),
            _ => v["stages"][s].as_f64(),
        });
        match p {
            Some(p) => println!("| {s} | {o:.2} | {} | {p:.2} | {} | {:.1}× |", rate(o), rate(p), p / o),
            None => println!("| {s} | {o:.2} | {} | – | – | – |", rate(o)),
        }
    }
    let pre: f64 = ["segment", "emsc", "resample_normalize"].iter().map(|s| ours[s]).sum();
    let py_pre =
        py1.as_ref().map(|v| ["segment", "emsc", "resample_normalize"].iter().map(|s| v["stages"][*s].as_f64().unwrap()).sum::<f64>());
    match py_pre {
        Some(p) => println!(
            "| preprocessing (segment + EMSC + resample/normalize) | {pre:.2} | {} | {p:.2} | {} | {:.1}× |",
            rate(pre),
            rate(p),
            p / pre
        ),
        None => println!("| preprocessing (segment + EMSC + resample/normalize) | {pre:.2} | {} | – | – | – |", rate(pre)),
    }
    match py_pre {
        Some(p) => println!(
            "| preprocessing as `run` runs it (segment, then the fused steps on tissue only) | {fused:.2} | {} | {p:.2} | {} | {:.1}× |",
            rate(fused),
            rate(p),
            p / fused
        ),
        None => println!(
            "| preprocessing as `run` runs it (segment, then the fused steps on tissue only) | {fused:.2} | {} | – | – | – |",
            rate(fused)
        ),
    }
    println!(
        "\nReading: ftirflow {} vs a plain sequential read of the same bytes {} spectra/s ({:.0} %)",
        rate(ours["read"]),
        rate(plain),
        100.0 * plain / ours["read"]
    );
    println!("\nEnd to end (process start to outputs written):\n");
    println!("| threads / workers | ftirflow s | ftirflow spectra/s | ftirflow peak RSS | Python s | Python spectra/s | Python peak RSS | ftirflow / Python |");
    println!("|---|---|---|---|---|---|---|---|");
    for (w, secs, rss) in &e2e {
        match py.iter().find(|(t, _)| t == w) {
            Some((_, v)) => {
                let ps = v["seconds"].as_f64().unwrap();
                let prss = v["peak_rss_bytes"].as_f64().unwrap();
                println!(
                    "| {w} | {secs:.1} | {} | {:.0} MB | {ps:.1} | {} | {:.0} MB | {:.1}× |",
                    rate(*secs),
                    rss / 1e6,
                    rate(ps),
                    prss / 1e6,
                    ps / secs
                );
            }
            None => println!("| {w} | {secs:.1} | {} | {:.0} MB | – | – | – | – |", rate(*secs), rss / 1e6),
        }
    }
    for (t, v) in &py {
        println!("\nPython at {t} thread(s) vs ftirflow at {t} worker(s), predicted classes: {}", v["compare"]);
    }
}
