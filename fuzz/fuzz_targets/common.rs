//! Shared by the fuzz targets: the readers open paths, so each input is written as files into a
//! private directory (in `/dev/shm` when present) and read through the public entry point, the
//! same way `ftirflow run` reads an archive.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// Separates the files of one multi-file input (header, data, tiles) in a fuzz input.
pub const SEP: &[u8] = b"\n--ftirflow-fuzz-part--\n";

/// The input split into at most `n` files (missing parts are empty).
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    while parts.len() < n {
        parts.push(&[]);
    }
    parts
}

/// A fresh, empty directory of this process.
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("ftirflow-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Writes `files` (name, bytes) into a fresh scratch directory and reads `entry` completely with
/// the reader its format calls for. Errors are fine; panics, hangs and huge allocations are not.
pub fn read_files(files: &[(&str, &[u8])], entry: &str) {
    let dir = scratch();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write fuzz file");
    }
    let opts = ftirflow::io::ReadOptions { batch_rows: 64, sample: "fuzz".into(), window: None, bands: None };
    if let Ok(reader) = ftirflow::io::open(&dir.join(entry), &opts) {
        let _ = reader.schema();
        for batch in reader {
            if batch.is_err() {
                break;
            }
        }
    }
}

/// An Agilent mosaic input: `.dmt` header, SEP, tile 0000_0000, SEP, tile 0001_0000, SEP, tile
/// 0000_0001 (empty tiles are left out), read completely.
pub fn read_mosaic(data: &[u8]) {
    let p = split(data, 4);
    let names = ["m_0000_0000.dmd", "m_0001_0000.dmd", "m_0000_0001.dmd"];
    let mut files: Vec<(&str, &[u8])> = vec![("m.dmt", p[0])];
    for (name, bytes) in names.iter().zip(&p[1..]) {
        if !bytes.is_empty() {
            files.push((name, bytes));
        }
    }
    read_files(&files, "m.dmt");
}
