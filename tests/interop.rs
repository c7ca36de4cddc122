//! Interoperability with pyarrow: a table a user builds with pyarrow alone is read by ftirflow, and
//! what `ftirflow convert` writes is read back by pyarrow. Skips with a message when python3 has no
//! pyarrow (CI installs it).
use std::path::Path;
use std::process::Command;

use ftirflow::io::{self, ReadOptions};
use ftirflow::operators::schema::SpectraLayout;

fn python(script: &str, cwd: &Path) -> Option<String> {
    let probe = Command::new("python3").args(["-c", "import pyarrow"]).output().ok()?;
    if !probe.status.success() {
        eprintln!("skipped: python3 with pyarrow is not available");
        return None;
    }
    let o = Command::new("python3").args(["-c", script]).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "python failed: {}", String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8(o.stdout).unwrap())
}

#[test]
fn pyarrow_built_table_reads_and_converted_table_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let build = r#"
import json, pyarrow as pa, pyarrow.parquet as pq
axis = [1800.0, 1798.0, 1796.0]
t = pa.table({
    "sample": ["slide1/A01"] * 2,
    "x": pa.array([0, 1], pa.int64()),
    "y": pa.array([0, 0], pa.int64()),
    "spectrum": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
}).replace_schema_metadata({"ftirflow:wavenumbers": json.dumps(axis)})
pq.write_table(t, "user.parquet")
print("ok")
"#;
    let Some(out) = python(build, dir.path()) else { return };
    assert_eq!(out.trim(), "ok");
    let batches = io::read_all(&dir.path().join("user.parquet"), &ReadOptions::new("unused")).unwrap();
    let layout = SpectraLayout::validate_batch(&batches[0]).unwrap();
    assert_eq!(layout.wavenumbers, vec![1800.0, 1798.0, 1796.0]);
    assert_eq!(SpectraLayout::values(&batches[0]).unwrap(), &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);

    let o = Command::new(env!("CARGO_BIN_EXE_ftirflow"))
        .args(["convert", "user.parquet", "--out", "back.parquet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read_back = r#"
import json, pyarrow.parquet as pq
t = pq.read_table("back.parquet")
axis = json.loads(t.schema.metadata[b"ftirflow:wavenumbers"])
print("|".join(map(str, [t.num_rows, t.schema.field("spectrum").type, t.column("sample")[1], axis[0], t.column("spectrum")[1].as_py()[2]])))
"#;
    let out = python(read_back, dir.path()).unwrap();
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(fields[0], "2");
    assert!(fields[1].starts_with("fixed_size_list<item: float>[3]"), "{out}");
    assert_eq!(fields[2], "slide1/A01");
    assert_eq!(fields[3], "1800.0");
    assert!((fields[4].parse::<f64>().unwrap() - 0.6).abs() < 1e-6, "{out}");
}
