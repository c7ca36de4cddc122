//! Reliability and security of `ftirflow run` with the real binary (issue 8): an archive that
//! mixes hostile and broken files with good ones; run-level problems (bad bundle, config,
//! labels) that stop before any work; kill -9 at random points; a full output disk; a read-only
//! output directory; a process of a cluster run that dies; symbolic links out of the archive;
//! the cluster's listening addresses; and every fuzzing crash as a regression test.
//!
//! The fault tests that need root (a size-limited tmpfs, a read-only bind mount) skip with a
//! one-line message where `mount` is not permitted.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::run::{assert_same, bin, fixture, free_port, outputs, text, walk};

/// `ftirflow run` with the fixture's models on `archive` (relative to `root`).
fn run_cmd(root: &Path, archive: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["run", "--model", "type_model", "--subtype-model", "sub_model", archive, "--out"]).arg(out).args(extra).current_dir(root);
    c
}

fn run_on(root: &Path, archive: &str, out: &Path, extra: &[&str]) -> Output {
    run_cmd(root, archive, out, extra).output().unwrap()
}

/// Copies image `sample` (its `.hdr` and `.img`) of the fixture archive into `dir` as `name`.
fn copy_envi(root: &Path, sample: &str, dir: &Path, name: &str) {
    for ext in ["hdr", "img"] {
        std::fs::copy(root.join(format!("arch/images/{sample}.{ext}")), dir.join(format!("{name}.{ext}"))).unwrap();
    }
}

/// The fixture's `sample` header with `key = value` lines replaced.
fn header_with(root: &Path, sample: &str, set: &[(&str, &str)]) -> String {
    let text = std::fs::read_to_string(root.join(format!("arch/images/{sample}.hdr"))).unwrap();
    text.lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            match set.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => format!("{k} = {v}"),
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rows of a run's `rejects.parquet` as (file name, stage, reason).
fn rejects(out: &Path) -> Vec<(String, String, String)> {
    let rows = outputs(out).remove("rejects").unwrap_or_default();
    rows.iter()
        .map(|r| {
            let field = |name: &str| -> String {
                let start = r.find(&format!("{name}=")).map(|i| i + name.len() + 1).unwrap();
                let rest = &r[start..];
                let end = ["path=", "stage=", "reason="].iter().filter_map(|k| rest.find(&format!(",{k}"))).min().unwrap_or(rest.len());
                rest[..end].to_string()
            };
            let path = field("path");
            let file = Path::new(&path).file_name().unwrap().to_string_lossy().into_owned();
            (file, field("stage"), field("reason"))
        })
        .collect()
}

/// The mixed archive and the archive of its good files only.
fn mixed_archive(root: &Path) -> (PathBuf, PathBuf) {
    let mixed = root.join("mixed/images");
    let good = root.join("mixed_good/images");
    if mixed.exists() {
        return (mixed, good);
    }
    for d in [&mixed, &good] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Good files: three ENVI images, a Parquet table and an Agilent mosaic.
    for (s, name) in [("P01_CA", "good_envi_1"), ("P01_AT", "good_envi_2"), ("P02_CA", "good_envi_3")] {
        copy_envi(root, s, &mixed, name);
        copy_envi(root, s, &good, name);
    }
    let o = bin()
        .args(["synth", "--out", "synth_pq", "--cores", "2", "--size", "20", "--seed", "5", "--format", "parquet"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = bin()
        .args(["synth", "--out", "synth_ag", "--cores", "2", "--size", "24", "--seed", "6", "--format", "agilent"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for d in [&mixed, &good] {
        std::fs::copy(root.join("synth_pq/images/P01_CA.parquet"), d.join("good_table.parquet")).unwrap();
        for e in std::fs::read_dir(root.join("synth_ag/images")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("P01_CA") {
                std::fs::copy(&p, d.join(format!("good_mosaic{rest}"))).unwrap();
            }
        }
    }
    let w = |name: &str, bytes: &[u8]| std::fs::write(mixed.join(name), bytes).unwrap();
    let img = std::fs::read(root.join("arch/images/P02_AT.img")).unwrap();
    let hdr = |set: &[(&str, &str)]| header_with(root, "P02_AT", set);
    // Truncated data.
    w("truncated.hdr", hdr(&[]).as_bytes());
    w("truncated.img", &img[..img.len() / 2 + 3]);
    // A header that claims far more pixels than the file holds.
    w("lying_size.hdr", hdr(&[("samples", "1000000000")]).as_bytes());
    w("lying_size.img", &img);
    // Zero and huge dimensions.
    w("zero_lines.hdr", hdr(&[("lines", "0")]).as_bytes());
    w("zero_lines.img", &[]);
    w("huge_dims.hdr", hdr(&[("samples", "4294967295"), ("lines", "4294967295"), ("bands", "1506")]).as_bytes());
    w("huge_dims.img", &img);
    // A byte order that does not exist, and the data written big-endian under a header that
    // says little-endian.
    w("bad_byte_order.hdr", hdr(&[("byte order", "7")]).as_bytes());
    w("bad_byte_order.img", &img);
    let swapped: Vec<u8> = img.chunks_exact(4).flat_map(|c| [c[3], c[2], c[1], c[0]]).collect();
    w("swapped_bytes.hdr", hdr(&[]).as_bytes());
    w("swapped_bytes.img", &swapped);
    // NaN- and inf-filled spectra.
    let filled = |v: f32| -> Vec<u8> { std::iter::repeat_n(v.to_le_bytes(), img.len() / 4).flatten().collect() };
    w("all_nan.hdr", hdr(&[]).as_bytes());
    w("all_nan.img", &filled(f32::NAN));
    w("all_inf.hdr", hdr(&[]).as_bytes());
    w("all_inf.img", &filled(f32::INFINITY));
    // An empty image (a header whose data file is empty) and a header without data.
    w("empty.hdr", hdr(&[]).as_bytes());
    w("empty.img", &[]);
    w("no_data.hdr", hdr(&[]).as_bytes());
    // An image with no tissue: bare slide everywhere (flat, near-zero absorbance).
    w("no_tissue.hdr", hdr(&[]).as_bytes());
    w("no_tissue.img", &filled(0.001));
    // A header that is not ENVI at all.
    w("garbage.hdr", b"\x00\xffnot a header\n\x01\x02");
    w("garbage_with_data.hdr", b"ENVI\nsamples = banana\n");
    w("garbage_with_data.img", &img[..4096]);
    // A mosaic with a missing tile.
    for e in std::fs::read_dir(root.join("synth_ag/images")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("P01_AT") {
            if rest != "_0001_0001.dmd" {
                std::fs::copy(&p, mixed.join(format!("missing_tile{rest}"))).unwrap();
            }
        }
    }
    // A truncated Parquet table and a Parquet file that is not Parquet.
    let table = std::fs::read(root.join("synth_pq/images/P01_AT.parquet")).unwrap();
    w("truncated_table.parquet", &table[..table.len() / 2]);
    w("not_parquet.parquet", b"PAR1 but not really");
    // A table with the spectra's columns and no rows (once counted as processed and lost
    // without a word).
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(root.join("synth_pq/images/P01_AT.parquet")).unwrap(),
    )
    .unwrap();
    let empty = std::fs::File::create(mixed.join("empty_table.parquet")).unwrap();
    parquet::arrow::ArrowWriter::try_new(empty, std::sync::Arc::clone(reader.schema()), None).unwrap().close().unwrap();
    // An Agilent tile whose header is cut short.
    let bsp = vec![0u8; 100];
    w("short_header.bsp", &bsp);
    w("short_header.dat", &[0u8; 4096]);
    // Symbolic links that lead outside the archive (a header, and the data of a regular header).
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    copy_envi(root, "P03_CA", &outside, "secret");
    std::os::unix::fs::symlink(outside.join("secret.hdr"), mixed.join("linked_out.hdr")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.img"), mixed.join("linked_out.img")).unwrap();
    w("linked_data.hdr", hdr(&[]).as_bytes());
    std::os::unix::fs::symlink(outside.join("secret.img"), mixed.join("linked_data.img")).unwrap();
    // A linked directory that loops back (not entered: no hang, no duplicate images).
    std::os::unix::fs::symlink("..", mixed.join("loop")).unwrap();
    // Labels (shared by both archives, beside images/): a sample whose id looks like a path.
    let mut labels = std::fs::read_to_string(root.join("arch/labels.csv")).unwrap();
    labels.push_str("../../../escaped,P99,CA,LA\n/tmp/ftirflow-escaped,P99,AT,\n");
    for d in ["mixed", "mixed_good"] {
        std::fs::write(root.join(d).join("labels.csv"), &labels).unwrap();
    }
    (mixed, good)
}

/// Every bad file of the mixed archive, the stage that must reject it and a word of the reason.
const BAD: &[(&str, &str, &str)] = &[
    ("truncated.hdr", "open", "truncated"),
    ("lying_size.hdr", "open", "truncated"),
    ("zero_lines.hdr", "open", "lines"),
    ("huge_dims.hdr", "open", "do not fit"),
    ("bad_byte_order.hdr", "open", "byte order"),
    ("swapped_bytes.hdr", "classify", "outlier"),
    ("all_nan.hdr", "classify", "no tissue"),
    ("all_inf.hdr", "classify", "no tissue"),
    ("empty.hdr", "open", "truncated"),
    ("no_data.hdr", "open", "no data file"),
    ("no_tissue.hdr", "classify", "no tissue"),
    ("garbage.hdr", "open", "not an ENVI header"),
    ("garbage_with_data.hdr", "open", "samples"),
    ("missing_tile.dmt", "open", "tile"),
    ("truncated_table.parquet", "open", "parquet"),
    ("not_parquet.parquet", "open", "parquet"),
    ("empty_table.parquet", "read", "no spectra"),
    ("short_header.dat", "open", "truncated"),
    ("linked_out.hdr", "discover", "outside the archive"),
    ("linked_data.hdr", "discover", "outside the archive"),
];

#[test]
fn a_mixed_archive_processes_every_good_file_and_rejects_every_bad_one() {
    let f = fixture();
    let (_mixed, _good) = mixed_archive(&f.root);
    let good_out = f.root.join("mixed_good_out");
    let o = run_on(&f.root, "mixed_good/images", &good_out, &["--workers", "2"]);
    assert!(o.status.success(), "good files alone: {}", text(&o));
    let out = f.root.join("mixed_out");
    let o = run_on(&f.root, "mixed/images", &out, &["--workers", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Every bad file is in rejects.parquet with its stage and a reason, and printed.
    let got = rejects(&out);
    let mut table = Vec::new();
    for (file, stage, word) in BAD {
        let r = got.iter().find(|r| &r.0 == file);
        table.push(format!("{file:<26} {}", r.map(|r| format!("[{}] {}", r.1, r.2)).unwrap_or_else(|| "NOT REJECTED".into())));
        let Some(r) = r else { continue };
        assert!(stage.is_empty() || r.1 == *stage, "{file}: rejected at {} ({}), expected {stage}", r.1, r.2);
        assert!(r.2.to_lowercase().contains(&word.to_lowercase()), "{file}: reason `{}` does not mention `{word}`", r.2);
        assert!(!r.2.trim().is_empty());
        assert!(text(&o).contains(&format!("{file}: [{}]", r.1)), "{file} is printed as rejected");
    }
    eprintln!("bad inputs × outcome:\n{}", table.join("\n"));
    let missing: Vec<_> = table.iter().filter(|l| l.ends_with("NOT REJECTED")).collect();
    assert!(missing.is_empty(), "bad files not rejected: {missing:?}");
    assert_eq!(got.len(), BAD.len(), "only the bad files are rejected: {got:?}");

    // Every good file is processed exactly as in a run over the good files alone.
    let mut a = outputs(&good_out);
    let mut b = outputs(&out);
    a.remove("rejects");
    b.remove("rejects");
    assert_eq!(a["cores"].len(), 5);
    assert_same(&a, &b, "the good files of the mixed archive vs the good files alone");

    // Nothing was written outside the output directory, and the loop link added nothing.
    let canon = std::fs::canonicalize(&out).unwrap();
    for p in walk(&out) {
        assert!(std::fs::canonicalize(&p).unwrap().starts_with(&canon), "{} is outside the output", p.display());
    }
    assert!(!Path::new("/tmp/ftirflow-escaped").exists());
    assert!(!f.root.join("escaped").exists() && !f.root.parent().unwrap().join("escaped").exists());
    assert!(text(&o).contains("not in the archive"), "labels of unknown samples are named: {}", text(&o));
}

#[test]
fn run_level_problems_exit_2_naming_the_problem_before_any_work() {
    let f = fixture();
    let root = &f.root;
    let bundle_copy = |name: &str| -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(root.join("type_model")).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                // (a trained bundle also holds its `report/` folder)
                std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
            }
        }
        d
    };
    // A bundle whose grid is not the architecture's (one wavenumber dropped).
    let d = bundle_copy("bad_grid_model");
    let m = d.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["wavenumbers"].as_array_mut().expect("manifest wavenumbers").pop();
    std::fs::write(&m, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    // A bundle with corrupted weights.
    let d = bundle_copy("corrupt_model");
    let w = d.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 64] {
        *b ^= 0xA5;
    }
    std::fs::write(&w, bytes).unwrap();
    std::fs::write(root.join("unknown_key.toml"), "[run]\nworkers = 1\nwokers = 2\n").unwrap();
    std::fs::write(root.join("bad_value.toml"), "[run]\nbatch = 0\n").unwrap();
    let labels = std::fs::read_to_string(root.join("arch/labels.csv")).unwrap();
    let first = labels.lines().nth(1).unwrap().to_string();
    std::fs::write(root.join("dup_labels.csv"), format!("{labels}{first}\n")).unwrap();
    std::fs::write(root.join("bad_labels.csv"), "sample,patient,type,subtype\nP01_CA,P01,TUMOUR,LA\n").unwrap();
    std::fs::write(root.join("no_columns.csv"), "id,kind\nP01_CA,CA\n").unwrap();
    let hosts_wild = root.join("hosts_wildcard.txt");
    std::fs::write(&hosts_wild, format!("0.0.0.0:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let hosts_two = root.join("hosts_two.txt");
    std::fs::write(&hosts_two, format!("127.0.0.1:{} 127.0.0.2:{}\n127.0.0.1:{}\n", free_port(), free_port(), free_port())).unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("bundle with a wrong grid", vec!["--model".into(), "bad_grid_model".into()], "grid"),
        ("bundle with corrupted weights", vec!["--model".into(), "corrupt_model".into()], "weights"),
        ("config with an unknown key", vec!["--config".into(), "unknown_key.toml".into()], "wokers"),
        ("config with a bad value", vec!["--config".into(), "bad_value.toml".into()], "batch"),
        ("labels with a duplicate row", vec!["--labels".into(), "dup_labels.csv".into()], "listed twice"),
        ("labels with an unknown type", vec!["--labels".into(), "bad_labels.csv".into()], "TUMOUR"),
        ("labels without the columns", vec!["--labels".into(), "no_columns.csv".into()], "sample, patient, type"),
        (
            "host file with a wildcard address",
            vec!["--processes".into(), "2".into(), "--hostfile".into(), hosts_wild.display().to_string()],
            "wildcard",
        ),
        (
            "host file with two addresses on a line",
            vec!["--processes".into(), "2".into(), "--hostfile".into(), hosts_two.display().to_string()],
            "one host:port",
        ),
    ];
    let mut table = Vec::new();
    for (k, (what, args, word)) in cases.iter().enumerate() {
        let out = root.join(format!("runlevel_{k}"));
        let mut c = bin();
        c.arg("run");
        if !args.contains(&"--model".to_string()) {
            c.args(["--model", "type_model"]);
        }
        let o = c.args(args).args(["arch/images", "--out"]).arg(&out).current_dir(root).output().unwrap();
        let t = text(&o);
        let line = t.lines().find(|l| l.starts_with("error:")).unwrap_or("").to_string();
        table.push(format!("{what:<40} exit {:?}: {line}", o.status.code()));
        assert_eq!(o.status.code(), Some(2), "{what}: {t}");
        assert!(!line.is_empty() && t[t.find("error:").unwrap()..].contains(word), "{what}: the error does not name `{word}`: {t}");
        assert!(!out.exists(), "{what}: the output directory was created before the check");
    }
    eprintln!("run-level problems × outcome:\n{}", table.join("\n"));
}

/// Seed of the randomized fault tests: `FTIRFLOW_FAULT_SEED` (default fixed), printed.
fn fault_rng() -> rand_chacha::ChaCha8Rng {
    let seed = std::env::var("FTIRFLOW_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261126u64);
    eprintln!("fault seed {seed} (FTIRFLOW_FAULT_SEED)");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn kill_9_at_random_points_then_a_rerun_gives_exactly_the_uninterrupted_outputs() {
    let f = fixture();
    let whole = f.root.join("rand_whole");
    let t0 = Instant::now();
    let o = run_on(&f.root, "arch/images", &whole, &["--workers", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let full = t0.elapsed();
    let reference = outputs(&whole);
    let trials: usize = std::env::var("FTIRFLOW_KILL_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut rng = fault_rng();
    let mut kills = 0;
    let mut log = Vec::new();
    for trial in 0..trials {
        let out = f.root.join(format!("rand_killed{trial}"));
        // One to three kills in a row (each run resumes the previous one), then a run to the end.
        for _ in 0..rng.random_range(1..=3) {
            let delay = Duration::from_secs_f64(full.as_secs_f64() * rng.random_range(0.0..1.1));
            let mut child =
                run_cmd(&f.root, "arch/images", &out, &["--workers", "2"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(delay);
            let finished = child.try_wait().unwrap().is_some();
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            kills += usize::from(!finished);
            log.push(format!("{trial}:{}ms{}", delay.as_millis(), if finished { "(done)" } else { "" }));
        }
        let o = run_on(&f.root, "arch/images", &out, &["--workers", "2"]);
        assert!(o.status.success(), "trial {trial}: {}", text(&o));
        assert_same(&reference, &outputs(&out), &format!("trial {trial} ({log:?})"));
        let leftovers: Vec<_> = walk(&out).into_iter().filter(|p| p.to_string_lossy().ends_with(".partial")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    eprintln!("kill -9: {trials} trials, {kills} kills while running (full run {full:?}); data lost: 0; kills at {log:?}");
    assert!(kills >= trials / 2, "most kills should land while the run is going");
}

/// A mount made for one test, removed when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Mounts with `args` on `at`, or `None` after printing why the test is skipped.
    fn new(at: &Path, args: &[&str], what: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount").args(args).arg(at).output();
        match o {
            Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount {what} ({}): needs root", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount for {what}: {e}");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir).into_iter().filter(|p| !p.ends_with(".ftirflow.lock")).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn a_full_output_disk_stops_with_a_clear_error_and_keeps_the_previous_outputs() {
    let f = fixture();
    let arch = f.root.join("disk_arch/images");
    std::fs::create_dir_all(&arch).unwrap();
    for s in ["P01_CA", "P01_AT"] {
        copy_envi(&f.root, s, &arch, s);
    }
    std::fs::copy(f.root.join("arch/labels.csv"), f.root.join("disk_arch/labels.csv")).unwrap();
    let disk = f.root.join("small_disk");
    let Some(_mount) = Mount::new(&disk, &["-t", "tmpfs", "-o", "size=8m", "tmpfs"], "a 8 MB tmpfs") else { return };
    let out = disk.join("out");
    let o = run_on(&f.root, "disk_arch/images", &out, &["--workers", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let before = snapshot(&out);
    // Tonight's archive has six more images; fill the disk to the last block.
    for s in ["P02_CA", "P02_AT", "P03_CA", "P03_AT", "P04_CA", "P04_AT"] {
        copy_envi(&f.root, s, &arch, s);
    }
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
        let block = vec![7u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let one = [7u8; 1];
        while filler.write_all(&one).is_ok() {}
    }
    let o = run_on(&f.root, "disk_arch/images", &out, &["--workers", "2"]);
    let t = text(&o);
    eprintln!("full disk: exit {:?}: {}", o.status.code(), t.lines().find(|l| l.starts_with("error:")).unwrap_or(""));
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("No space left on device"), "the error names the cause: {t}");
    assert!(t.contains("rerun"), "the error says what to do: {t}");
    let leftovers: Vec<_> = walk(&out).into_iter().filter(|p| p.to_string_lossy().ends_with(".partial")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let after = snapshot(&out);
    for (p, bytes) in &before {
        if p.ends_with("manifest.jsonl") {
            // Appended to, never rewritten: the earlier lines are intact.
            assert!(after[p].starts_with(bytes), "the manifest's earlier lines changed");
        } else {
            assert!(after.get(p) == Some(bytes), "{} changed or vanished", p.display());
        }
    }
    // With space again, a rerun completes the job: the same outputs as a run that never failed.
    std::fs::remove_file(disk.join("filler")).unwrap();
    let o = run_on(&f.root, "disk_arch/images", &out, &["--workers", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let fresh = f.root.join("disk_fresh");
    let o2 = run_on(&f.root, "disk_arch/images", &fresh, &["--workers", "2"]);
    assert!(o2.status.success(), "{}", text(&o2));
    assert_same(&outputs(&fresh), &outputs(&out), "after the disk had space again");
}

#[test]
fn a_read_only_output_directory_exits_2_before_any_work() {
    let f = fixture();
    let src = f.root.join("ro_src");
    std::fs::create_dir_all(&src).unwrap();
    let at = f.root.join("ro_out");
    let Some(_bind) = Mount::new(&at, &["--bind", src.to_str().unwrap()], "a bind mount") else { return };
    let Some(_ro) = Mount::new(&at, &["-o", "remount,bind,ro"], "a read-only bind mount") else { return };
    assert!(std::fs::write(at.join("probe"), b"").is_err(), "the bind mount is read-only");
    let t0 = Instant::now();
    let o = run_on(&f.root, "arch/images", &at, &[]);
    let t = text(&o);
    eprintln!(
        "read-only output: exit {:?} in {:?}: {}",
        o.status.code(),
        t0.elapsed(),
        t.lines().find(|l| l.starts_with("error:")).unwrap_or("")
    );
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("not writable") && t.contains("Read-only file system"), "{t}");
    assert!(!t.contains("image(s) in"), "no image was looked at: {t}");
}

fn spawn_process(root: &Path, out: &Path, hosts: &Path, i: &str) -> Child {
    run_cmd(root, "arch/images", out, &["--workers", "1", "--processes", "2", "--process", i, "--hostfile"])
        .arg(hosts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn manifest_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("manifest.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn when_a_process_of_a_cluster_run_dies_the_other_stops_within_seconds_and_a_rerun_completes() {
    let f = fixture();
    let reference_dir = f.root.join("peer_reference");
    let o = run_on(&f.root, "arch/images", &reference_dir, &["--workers", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = outputs(&reference_dir);
    let hosts = f.root.join("peer_hosts.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let out = f.root.join("peer_out");
    let mut rng = fault_rng();
    let victim = rng.random_range(0..2usize);
    let mut procs = vec![spawn_process(&f.root, &out, &hosts, "0"), spawn_process(&f.root, &out, &hosts, "1")];
    let mut survivor = procs.remove(1 - victim);
    let mut dead = procs.remove(0);
    // Kill one process once the run is under way (the first image is recorded).
    let start = Instant::now();
    while manifest_lines(&out) == 0 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(manifest_lines(&out) > 0, "the cluster run did not start");
    dead.kill().unwrap();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = survivor.try_wait().unwrap() {
            break s;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "the surviving process hangs after its peer died");
        std::thread::sleep(Duration::from_millis(20));
    };
    let waited = killed_at.elapsed();
    let o = survivor.wait_with_output().unwrap();
    let _ = dead.wait();
    let t = text(&o);
    eprintln!(
        "peer {victim} killed: the other stopped in {waited:?} with {status}: {}",
        t.lines().find(|l| l.starts_with("error:")).unwrap_or("")
    );
    assert!(waited < Duration::from_secs(10), "stopping took {waited:?}");
    assert_eq!(status.code(), Some(2), "{t}");
    assert!(t.contains("lost its connection to another process"), "{t}");
    // A rerun of both processes completes the job.
    let (p0, p1) = (spawn_process(&f.root, &out, &hosts, "0"), spawn_process(&f.root, &out, &hosts, "1"));
    let (o0, o1) = (p0.wait_with_output().unwrap(), p1.wait_with_output().unwrap());
    assert!(o0.status.success(), "rerun process 0: {}", text(&o0));
    assert!(o1.status.success(), "rerun process 1: {}", text(&o1));
    assert_same(&reference, &outputs(&out), "rerun after a dead peer");
}

#[test]
fn the_cluster_mode_listens_only_on_the_hostfile_address() {
    let f = fixture();
    let port = free_port();
    let hosts = f.root.join("listen_hosts.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{port}\n127.0.0.1:{}\n", free_port())).unwrap();
    // Process 0 alone: it listens for process 1, which never comes.
    let mut p0 = spawn_process(&f.root, &f.root.join("listen_out"), &hosts, "0");
    let want = format!(":{port:04X} ");
    let start = Instant::now();
    let listening = loop {
        let tcp =
            std::fs::read_to_string("/proc/net/tcp").unwrap_or_default() + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
        // Local addresses (column 2) of listening sockets (state 0A) on the port.
        let found: Vec<String> = tcp
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() > 3 && cols[3] == "0A" && format!("{} ", cols[1]).ends_with(&want)).then(|| cols[1].to_string())
            })
            .collect();
        if !found.is_empty() || start.elapsed() > Duration::from_secs(60) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = p0.kill();
    let _ = p0.wait();
    assert_eq!(listening, vec![format!("0100007F:{port:04X}")], "listens on 127.0.0.1:{port} only");
}

/// Inputs found by fuzzing that once crashed, hung or over-allocated (each must now be a clean
/// error).
/// Runs `f` on its own thread and returns its result; a call still busy after 60 s (a reader
/// that hangs) fails the test instead of hanging it.
fn within_60_s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the Parquet reader was still busy after 60 s")
}

#[test]
fn fuzzing_finds_stay_fixed() {
    // config: `points = 2147483647` made validation allocate a 17 GB grid and abort.
    let found = "[run]\nworkers = 12\nbatch = 64\n[preprocess.resample]\nstart = 900\nend = 1800\npoints = 2147483647\n";
    let e = ftirflow::config::Config::parse(found, "fuzz.toml").unwrap_err().to_string();
    assert!(e.contains("too fine"), "{e}");
    // parquet_spectra: a footer whose unknown fields are lists of 2³¹ − 1 booleans. The parquet
    // crate skipped each in ~8 s without consuming input (9 bytes each: 1,000 of them held a
    // reader for hours); the footer check refuses the file at once. A reader still busy after
    // 60 s fails the test rather than hanging it.
    let dir = tempfile::tempdir().unwrap();
    let field = [0x09u8, 0xc8, 0x01, 0xf1, 0xff, 0xff, 0xff, 0xff, 0x07];
    let mut footer: Vec<u8> = field.iter().copied().cycle().take(field.len() * 1000).collect();
    footer.push(0);
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(&footer);
    file.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    let path = dir.path().join("bool_lists.parquet");
    std::fs::write(&path, file).unwrap();
    let err = within_60_s(move || {
        let opts = ftirflow::io::ReadOptions { batch_rows: 64, sample: "fuzz".into(), window: None, bands: None };
        ftirflow::io::open(&path, &opts).err().map(|e| e.to_string())
    });
    let err = err.expect("a footer of 2³¹-element boolean lists is refused");
    assert!(err.contains("not a readable Parquet file") && err.contains("2147483647 elements"), "{err}");
    // parquet_spectra, after that fix: the same skip in a page header, where the crate makes a
    // `read` call per boolean (> 100 s for an 80 KB file). A valid file's first page header gets
    // an unknown field holding such a list (the column chunk then also overruns its recorded
    // size; either finding must refuse the file before the crate reads the header).
    let good = dir.path().join("good.parquet");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftirflow"))
        .args(["synth", "--out"])
        .arg(dir.path().join("pq"))
        .args(["--cores", "2", "--size", "8", "--format", "parquet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = std::fs::read_dir(dir.path().join("pq/images")).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    std::fs::copy(&first, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let at = 4; // the first column chunk, so its first page header, starts after the magic
    let (len, _) = ftirflow::io::parquet_guard::page_header(&bytes[at..]).expect("the first page header is well formed");
    // Insert the list as field 100 just before the header's stop byte.
    let mut bad = bytes[..at + len - 1].to_vec();
    bad.extend_from_slice(&field);
    bad.extend_from_slice(&bytes[at + len - 1..]);
    let path = dir.path().join("bool_list_page.parquet");
    std::fs::write(&path, &bad).unwrap();
    let err = within_60_s(move || {
        let opts = ftirflow::io::ReadOptions { batch_rows: 64, sample: "fuzz".into(), window: None, bands: None };
        match ftirflow::io::open(&path, &opts).map(|reader| reader.map(|b| b.map(|_| ())).collect::<Result<Vec<_>, _>>()) {
            Err(e) => Some(e.to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Ok(Ok(_)) => None,
        }
    });
    let err = err.expect("a page header with a 2³¹-element boolean list is refused");
    assert!(err.contains("not a readable Parquet file"), "{err}");
}
