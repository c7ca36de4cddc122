//! `ftirflow run` end to end with the real binary, real (briefly trained) models and a synthetic
//! archive: the same rows and summaries for any worker layout (1, 2, 3 workers; 2 processes × 1
//! worker over TCP on localhost) and batch size; a run killed at any point and restarted gives
//! the uninterrupted outputs; a rerun processes only new and changed images; the lock, bad
//! models and bad images give the documented exit codes. Its helpers (the fixture, running the
//! binary, reading a run's tables) are shared with `tests/robust.rs`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftirflow"))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A synthetic archive (4 patients × 2 cores of 20×20 px) with briefly trained type and subtype
/// models, made once per test binary.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The directory holding `arch/`, `type_model/` and `sub_model/`.
    pub root: PathBuf,
}

/// The shared fixture (also used by the report tests).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ok = |o: Output| assert!(o.status.success(), "{}", text(&o));
        ok(bin().args(["synth", "--out", "arch", "--cores", "8", "--size", "20", "--seed", "3"]).current_dir(&root).output().unwrap());
        for (task, out) in [("type", "type_model"), ("subtype", "sub_model")] {
            ok(bin()
                .args(["train", "--task", task, "--labels", "arch/labels.csv", "--epochs", "1", "--folds", "0"])
                .args(["--spectra-per-epoch", "250", "arch/images", "--out", out])
                .current_dir(&root)
                .output()
                .unwrap());
        }
        Fixture { _dir: dir, root }
    })
}

/// `ftirflow run` of the fixture's models on its archive into `out`.
pub fn run(root: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["run", "--model", "type_model", "--subtype-model", "sub_model", "arch/images", "--out"])
        .arg(out)
        .args(extra)
        .current_dir(root)
        .output()
        .unwrap()
}

/// Every table of a run directory as sorted text rows (schema metadata ignored: it holds the
/// configuration, which differs between layouts).
pub(crate) fn outputs(out: &Path) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    let mut read = |name: String, path: &Path| {
        let batches: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        let mut rows = Vec::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(c, f)| format!("{}={}", f.name(), array_value_to_string(b.column(c), i).unwrap()))
                    .collect();
                rows.push(cells.join(","));
            }
        }
        rows.sort();
        tables.entry(name).or_insert_with(Vec::new).extend(rows);
    };
    for t in ["cores", "gradcam", "bands", "rejects"] {
        read(t.to_string(), &out.join(format!("{t}.parquet")));
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out.join("predictions")).unwrap().map(|e| e.unwrap().path()).collect();
    parts.sort();
    for p in parts {
        read(format!("predictions/{}", p.file_name().unwrap().to_string_lossy()), &p);
    }
    tables
}

pub(crate) fn assert_same(a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: tables differ");
    for (k, rows) in a {
        assert!(rows == &b[k], "{what}: {k} differs ({} vs {} rows)", rows.len(), b[k].len());
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_outputs_are_the_same_for_any_worker_layout_and_batch_size() {
    let f = fixture();
    let base = f.root.join("w1");
    let o = run(&f.root, &base, &["--workers", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = outputs(&base);
    assert_eq!(reference["cores"].len(), 8);
    assert!(reference["gradcam"].len() > 467, "Grad-CAM summaries are written");
    assert!(reference["cores"].iter().any(|r| r.contains("truth_type=CA")), "labels.csv beside images/ is found");
    for w in ["2", "3"] {
        let out = f.root.join(format!("w{w}"));
        let o = run(&f.root, &out, &["--workers", w]);
        assert!(o.status.success(), "{}", text(&o));
        assert_same(&reference, &outputs(&out), &format!("{w} workers"));
    }
    // Another reading batch size (the inference batches are cut from each image's classified
    // rows, so they do not change; `[run] batch` itself is part of the numerical set-up).
    let cfg = f.root.join("small_batches.toml");
    std::fs::write(&cfg, "[run]\nbatch_rows = 33\n").unwrap();
    let out = f.root.join("batches");
    let o = run(&f.root, &out, &["--workers", "2", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&reference, &outputs(&out), "read batches of 33");
    // The networks in one shared inference thread fed by the workers through a channel (the
    // CUDA layout), here on the CPU; the maps are finished by the workers. run.json records what
    // the service did.
    let cfg = f.root.join("shared.toml");
    std::fs::write(&cfg, "[run]\ninference = \"shared\"\n").unwrap();
    // One worker, whose classify operator is woken by the service while it reads its next image
    // (and at the end, when nothing else is left to do), and three.
    let one = f.root.join("shared_one");
    let o = run(&f.root, &one, &["--workers", "1", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&reference, &outputs(&one), "shared inference thread, one worker");
    let out = f.root.join("shared");
    let o = run(&f.root, &out, &["--workers", "3", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&reference, &outputs(&out), "shared inference thread");
    let run_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let service = &run_json["inference_service"];
    // Every classified spectrum once for the type model, and again for the subtype model in a
    // core called cancer.
    let cell = |row: &str, name: &str| row.split(',').find_map(|c| c.strip_prefix(&format!("{name}="))).unwrap_or("").to_string();
    let (mut scored, mut requests) = (0u64, 0u64);
    for row in &reference["cores"] {
        let n: u64 = cell(row, "classified").parse().unwrap();
        let cancer = cell(row, "majority") == "CA";
        scored += if cancer { 2 * n } else { n };
        requests += 1 + cancer as u64;
    }
    assert_eq!(service["spectra"].as_u64(), Some(scored), "{service}");
    assert_eq!(service["requests"].as_u64(), Some(requests), "{service}");
    assert!(service["busy_seconds"].as_f64().unwrap() > 0.0, "{service}");
    let local: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.root.join("w2/run.json")).unwrap()).unwrap();
    assert!(local["inference_service"].is_null(), "workers' own networks: no service");
    // Two processes × one worker, real TCP on localhost.
    let hosts = f.root.join("hosts.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let out = f.root.join("p2");
    let spawn = |i: &str| {
        bin()
            .args(["run", "--model", "type_model", "--subtype-model", "sub_model", "arch/images", "--out"])
            .arg(&out)
            .args(["--workers", "1", "--processes", "2", "--process", i, "--hostfile"])
            .arg(&hosts)
            .current_dir(&f.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p0, p1) = (spawn("0"), spawn("1"));
    let (o0, o1) = (p0.wait_with_output().unwrap(), p1.wait_with_output().unwrap());
    assert!(o0.status.success(), "process 0: {}", text(&o0));
    assert!(o1.status.success(), "process 1: {}", text(&o1));
    assert_same(&reference, &outputs(&out), "2 processes × 1 worker");
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_outputs() {
    let f = fixture();
    let whole = f.root.join("whole");
    let o = run(&f.root, &whole, &["--workers", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = outputs(&whole);
    // Kill at several points (reading, inference, writing parts); then finish the run.
    for (k, delay_ms) in [150u64, 400, 700, 1100].into_iter().enumerate() {
        let out = f.root.join(format!("killed{k}"));
        let mut child = bin()
            .args(["run", "--model", "type_model", "--subtype-model", "sub_model", "arch/images", "--out"])
            .arg(&out)
            .args(["--workers", "2"])
            .current_dir(&f.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let o = run(&f.root, &out, &["--workers", "2"]);
        assert!(o.status.success(), "resume after {delay_ms} ms: {}", text(&o));
        assert_same(&reference, &outputs(&out), &format!("killed after {delay_ms} ms"));
        let leftovers: Vec<_> = walk(&out).into_iter().filter(|p| p.to_string_lossy().ends_with(".partial")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_rerun_processes_only_new_and_changed_images() {
    let f = fixture();
    // A private copy of the archive, so the other tests see the original.
    let arch = f.root.join("arch_inc");
    std::fs::create_dir_all(arch.join("images")).unwrap();
    for e in std::fs::read_dir(f.root.join("arch/images")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, arch.join("images").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(f.root.join("arch/labels.csv"), arch.join("labels.csv")).unwrap();
    let run_on = |out: &Path| {
        bin()
            .args(["run", "--model", "type_model", "--subtype-model", "sub_model", "arch_inc/images", "--out"])
            .arg(out)
            .args(["--workers", "2"])
            .current_dir(&f.root)
            .output()
            .unwrap()
    };
    let out = f.root.join("nightly");
    let o = run_on(&out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(8 processed, 0 reused"), "{}", text(&o));
    let o = run_on(&out);
    assert!(text(&o).contains("(0 processed, 8 reused"), "an unchanged archive is not reprocessed: {}", text(&o));
    // Two new cores (copies under new names) and one changed core.
    for (from, to) in [("P01_CA", "P09_CA"), ("P02_AT", "P09_AT")] {
        for ext in ["hdr", "img"] {
            std::fs::copy(arch.join(format!("images/{from}.{ext}")), arch.join(format!("images/{to}.{ext}"))).unwrap();
        }
    }
    let changed = arch.join("images/P03_CA.img");
    let mut bytes = std::fs::read(&changed).unwrap();
    let other = std::fs::read(arch.join("images/P04_CA.img")).unwrap();
    bytes.copy_from_slice(&other);
    std::fs::write(&changed, bytes).unwrap();
    let o = run_on(&out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(3 processed, 7 reused"), "{}", text(&o));
    let fresh = f.root.join("nightly_fresh");
    let o = run_on(&fresh);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&outputs(&fresh), &outputs(&out), "incremental vs from scratch");
}

#[test]
fn the_lock_a_bad_model_and_a_bad_image_give_the_documented_exit_codes() {
    let f = fixture();
    // A second run on a locked output directory: exit 2 with a clear message.
    let out = f.root.join("locked");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(out.join(".ftirflow.lock")).unwrap();
    lock.lock().unwrap();
    let o = run(&f.root, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("another ftirflow run"), "{}", text(&o));
    drop(lock);

    // A model bundle with tampered weights: exit 2 before anything is written.
    let bad = f.root.join("bad_model");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(f.root.join("type_model")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            continue; // the bundle's report/
        }
        std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
    }
    let w = bad.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&w, bytes).unwrap();
    let out = f.root.join("badmodel_out");
    let o = bin().args(["run", "--model", "bad_model", "arch/images", "--out"]).arg(&out).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.join("cores.parquet").exists());

    // An archive with a truncated image: the others are processed, exit 1, the reject is listed.
    let arch = f.root.join("arch_bad/images");
    std::fs::create_dir_all(&arch).unwrap();
    for s in ["P01_CA", "P01_AT"] {
        for ext in ["hdr", "img"] {
            std::fs::copy(f.root.join(format!("arch/images/{s}.{ext}")), arch.join(format!("{s}.{ext}"))).unwrap();
        }
    }
    let img = arch.join("P01_AT.img");
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(len / 2).unwrap();
    let out = f.root.join("bad_out");
    let o = bin().args(["run", "--model", "type_model", "arch_bad/images", "--out"]).arg(&out).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = outputs(&out);
    assert_eq!(t["cores"].len(), 1);
    assert_eq!(t["rejects"].len(), 1);
    assert!(t["rejects"][0].contains("P01_AT.hdr"), "{:?}", t["rejects"]);
    assert!(text(&o).contains("rejected:"), "{}", text(&o));
}

#[test]
fn peak_memory_does_not_grow_with_the_number_of_images() {
    let f = fixture();
    let mut peaks = Vec::new();
    // 12 and 96 cores: both past the warm-up (libtorch builds its kernels for the first few
    // batch shapes it meets), 8× apart. A raw 24×24 core is 3.5 MB, so keeping any copy of every
    // image (or of every corrected spectrum, 1.1 MB per core) would add ≥ 90 MB, past the 64 MB
    // allowance. The allowance is wide because peak RSS also depends on how many batches are in
    // flight when the machine is loaded: CI, running the suite 2 tests at a time, once measured
    // 258 → 294 MB for 12 → 48 cores, where the idle machine gives 258–275 MB for 12 to 192.
    for (name, patients) in [("small", "6"), ("large", "48")] {
        let arch = f.root.join(format!("mem_{name}"));
        let o = bin()
            .args(["synth", "--out"])
            .arg(&arch)
            .args(["--cores", &(patients.parse::<u32>().unwrap() * 2).to_string(), "--size", "24"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let out = f.root.join(format!("mem_{name}_out"));
        let o = bin()
            .args(["run", "--model", "type_model", "--subtype-model", "sub_model"])
            .arg(arch.join("images"))
            .arg("--out")
            .arg(&out)
            .args(["--workers", "1"])
            .current_dir(&f.root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
        peaks.push(run["peak_rss_bytes"].as_u64().expect("peak RSS in run.json"));
    }
    eprintln!("peak RSS: 12 cores {} MB, 96 cores {} MB", peaks[0] / 1_000_000, peaks[1] / 1_000_000);
    assert!(peaks[1] <= peaks[0] + 64_000_000, "peak RSS grew from {} to {} bytes with 8× the images", peaks[0], peaks[1]);
}

#[test]
fn the_outputs_read_in_pyarrow_duckdb_and_polars() {
    let f = fixture();
    let out = f.root.join("interop");
    let o = run(&f.root, &out, &["--workers", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let py = |module: &str, script: &str| -> Option<String> {
        let probe = Command::new("python3").args(["-c", &format!("import {module}")]).output().ok()?;
        if !probe.status.success() {
            eprintln!("skipped: python3 has no {module} (CI installs it)");
            return None;
        }
        let o = Command::new("python3").args(["-c", script]).current_dir(&out).output().unwrap();
        assert!(o.status.success(), "{module}: {}", String::from_utf8_lossy(&o.stderr));
        Some(String::from_utf8(o.stdout).unwrap())
    };
    let arrow = r#"
import pyarrow.parquet as pq, pyarrow.dataset as ds
cores = pq.read_table("cores.parquet")
preds = ds.dataset("predictions", format="parquet").to_table()
g = pq.read_table("gradcam.parquet"); b = pq.read_table("bands.parquet"); r = pq.read_table("rejects.parquet")
assert pq.read_metadata("cores.parquet").metadata[b"ftirflow:model_hash"]
# Every table names the run that wrote it; a prediction part carries statistics on its key columns.
run_id = pq.read_metadata("cores.parquet").metadata[b"ftirflow:run_id"]
part = sorted(ds.dataset("predictions", format="parquet").files)[0]
meta = pq.read_metadata(part)
assert meta.metadata[b"ftirflow:run_id"] == run_id
names = [meta.schema.column(i).name for i in range(meta.num_columns)]
for key in ("sample", "x", "y", "pred_class"):
    st = meta.row_group(0).column(names.index(key)).statistics
    assert st is not None and st.has_min_max, key
print(cores.num_rows, preds.num_rows, sum(cores.column("spectra").to_pylist()), r.num_rows)
"#;
    if let Some(s) = py("pyarrow", arrow) {
        let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], 8);
        assert_eq!(v[1], v[2], "one prediction row per spectrum");
        assert_eq!(v[3], 0);
    }
    let duck = r#"
import duckdb
n = duckdb.sql("select count(*) from 'predictions/*.parquet' where pred_class is not null").fetchone()[0]
m = duckdb.sql("select sum(classified) from 'cores.parquet'").fetchone()[0]
k = duckdb.sql("select count(distinct class) from 'gradcam.parquet' where scope = 'predicted'").fetchone()[0]
print(n, m, k)
"#;
    if let Some(s) = py("duckdb", duck) {
        let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], v[1], "classified spectra agree between predictions and cores");
        assert!(v[2] >= 2);
    }
    let polars = r#"
import polars as pl
preds = pl.scan_parquet("predictions/*.parquet")
n = preds.filter(pl.col("pred_class").is_not_null()).select(pl.len()).collect().item()
m = pl.read_parquet("cores.parquet").select(pl.col("classified").sum()).item()
per_core = preds.group_by("sample").agg(pl.len()).collect().height
print(n, m, per_core)
"#;
    if let Some(s) = py("polars", polars) {
        let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], v[1], "polars: classified spectra agree between predictions and cores");
        assert_eq!(v[2], 8, "one sample per core in the predictions glob");
    }
}
