//! The real `ftirflow` binary in a temp dir: files written and exit codes (README.md, Commands).
use std::path::Path;
use std::process::{Command, Output};

use ftirflow::io::{agilent, parquet, ImageCube};

fn ftirflow(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftirflow")).args(args).current_dir(cwd).output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn parquet_rows(path: &Path) -> i64 {
    let f = std::fs::File::open(path).unwrap();
    let r = ::parquet::file::reader::SerializedFileReader::new(f).unwrap();
    ::parquet::file::reader::FileReader::metadata(&r).file_metadata().num_rows()
}

fn cube(points: usize) -> ImageCube {
    ImageCube {
        width: 4,
        height: 4,
        wavenumbers: (0..points).map(|i| 2.0 * (500 + i) as f64).collect(),
        values: (0..16 * points).map(|v| v as f32).collect(),
    }
}

#[test]
fn help_is_available_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        vec!["--help"],
        vec!["synth", "--help"],
        vec!["convert", "--help"],
        vec!["demo", "--help"],
        vec!["report", "--help"],
        vec!["inspect", "--help"],
    ] {
        let o = ftirflow(&sub, dir.path());
        assert!(o.status.success(), "{sub:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{sub:?}");
    }
    let o = ftirflow(&["--help"], dir.path());
    assert!(text(&o).contains("Exit codes"));
}

#[test]
fn convert_rejects_bad_files_and_converts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    agilent::write_mosaic(&d.join("good.dmt"), &cube(3), 4).unwrap();
    parquet::write_cube(&d.join("good2.parquet"), &cube(3), "good2").unwrap();
    // A tile whose data file is cut short.
    agilent::write_tile(&d.join("cut.dat"), &cube(3)).unwrap();
    let bytes = std::fs::read(d.join("cut.dat")).unwrap();
    std::fs::write(d.join("cut.dat"), &bytes[..1100]).unwrap();
    // Another axis.
    agilent::write_mosaic(&d.join("other.dmt"), &cube(5), 4).unwrap();
    std::fs::write(d.join("notes.txt"), b"hello").unwrap();
    let o = ftirflow(
        &["convert", "good.dmt", "good2.parquet", "cut.dat", "other.dmt", "notes.txt", "missing.hdr", "--out", "out/all.parquet"],
        d,
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("cut.dat"), "{t}");
    assert!(t.contains("other.dmt: [combine] wavenumber axis"), "{t}");
    assert!(t.contains("notes.txt: [discover] unrecognised file type"), "{t}");
    assert!(t.contains("missing.hdr: [discover] no such file"), "{t}");
    assert_eq!(parquet_rows(&d.join("out/all.parquet")), 32);
}

#[test]
fn convert_with_nothing_good_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.hdr"), b"not envi").unwrap();
    let o = ftirflow(&["convert", "a.hdr", "--out", "x.parquet"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!dir.path().join("x.parquet").exists());
}

#[test]
fn unwritable_output_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    agilent::write_mosaic(&dir.path().join("good.dmt"), &cube(3), 4).unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let o = ftirflow(&["convert", "good.dmt", "--out", "file/x.parquet"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("error:"));
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = ftirflow(&["synth", "--out", "a", "--cores", "3"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("even"), "{}", text(&o));
    let o = ftirflow(&["convert"], dir.path());
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn synth_then_convert_every_format() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["envi", "agilent", "parquet"] {
        let out = format!("arch-{format}");
        let o = ftirflow(&["synth", "--out", &out, "--cores", "2", "--size", "16", "--format", format], dir.path());
        assert!(o.status.success(), "{}", text(&o));
        let table = format!("{format}.parquet");
        let o = ftirflow(&["convert", &format!("{out}/images"), "--out", &table], dir.path());
        assert!(o.status.success(), "{format}: {}", text(&o));
        assert_eq!(parquet_rows(&dir.path().join(&table)), 2 * 16 * 16, "{format}");
    }
}
