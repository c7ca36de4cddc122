//! The manifest of processed inputs and the output directory's lock (docs/outputs.md, nightly runs).
//!
//! Every image a run finishes appends one JSON line to `OUT_DIR/manifest.jsonl` — its sample id,
//! path, the size and modification time of each of its files, a BLAKE3 hash of their contents, the
//! model hash and the names of its output parts — after those parts were renamed into place. A
//! later run over the same archive reuses an image whose files still have the recorded sizes and
//! modification times and whose model hash matches, and whose parts still exist; anything else
//! is processed again. A run killed at any point (even `kill -9`) therefore leaves either a
//! complete, recorded image or one that the next run redoes: a torn last line is ignored, a
//! stray `*.partial` file is removed, and no image is counted twice because the last record of a
//! sample wins. A successful run rewrites the manifest compactly (one line per current image).
//!
//! The lock is an advisory `flock` on `OUT_DIR/.ftirflow.lock`, released by the kernel when the
//! process ends however it ends, so a killed run never leaves a stale lock behind.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// File name of the manifest inside the output directory.
pub const MANIFEST: &str = "manifest.jsonl";
/// File name of the lock inside the output directory.
pub const LOCK: &str = ".ftirflow.lock";

/// One file of an image: name (relative to the image's directory), size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

/// What identifies an image's content cheaply: its files with sizes and modification times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The image's files, sorted by name.
    pub files: Vec<FileStamp>,
}

/// The files that make up the image whose entry file is `path`: every file in its directory
/// whose name, lower-cased, is the entry's stem followed by `.` or `_` (ENVI header and data,
/// Agilent `.dat`/`.bsp`, mosaic `.dmt` and its `_XXXX_YYYY.dmd` tiles).
pub fn image_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_lowercase();
        let belongs = name.strip_prefix(&stem).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'));
        if belongs && !crate::io::atomic::is_partial(&name) && e.file_type()?.is_file() {
            files.push(e.path());
        }
    }
    if !files.iter().any(|f| f == path) {
        files.push(path.to_path_buf());
    }
    files.sort();
    Ok(files)
}

/// The identity of the image whose entry file is `path`.
pub fn identity(path: &Path) -> std::io::Result<Identity> {
    let mut files = Vec::new();
    for f in image_files(path)? {
        let meta = std::fs::metadata(&f)?;
        let mtime_ns = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        files.push(FileStamp { name: f.file_name().unwrap_or_default().to_string_lossy().into_owned(), size: meta.len(), mtime_ns });
    }
    Ok(Identity { files })
}

/// `blake3:` and the BLAKE3 hash (hex) of the contents of the image's files, in name order
/// (each file's name, then its bytes). BLAKE3 rather than SHA-256: it hashes a slide of 12 GB in a
/// fraction of the time (docs/performance.md, whole slides); entries of earlier versions hold a
/// plain SHA-256 hex string.
pub fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    // Reused, so the reads copy into cached pages (a fresh buffer per read faults every page).
    let mut buf = vec![0u8; 1 << 20];
    for f in image_files(path)? {
        h.update(f.file_name().unwrap_or_default().to_string_lossy().as_bytes());
        let mut file = File::open(&f)?;
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{CONTENT_HASH_PREFIX}{}", h.finalize().to_hex()))
}

/// What [`content_hash`] values start with.
pub const CONTENT_HASH_PREFIX: &str = "blake3:";

/// One processed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Sample id (unique in the archive).
    pub sample: String,
    /// The entry file, relative to the archive root.
    pub path: String,
    /// Sizes and modification times of the image's files when it was processed.
    pub identity: Identity,
    /// [`content_hash`] of the image's files (read from `content_sha256`, the plain SHA-256 hex
    /// of earlier versions, too).
    #[serde(alias = "content_sha256")]
    pub content_hash: String,
    /// Hash of the model bundle(s) it was classified with.
    pub model_hash: String,
    /// The output part name (`predictions/<part>.parquet`, `parts/<part>.json`).
    pub part: String,
    /// Spectra in the image.
    pub spectra: u64,
}

/// The manifest as read at the start of a run: the last record of each sample.
#[derive(Debug, Default)]
pub struct RunManifest {
    entries: BTreeMap<String, ManifestEntry>,
    /// Lines that could not be parsed (a torn last line after a kill).
    pub skipped_lines: usize,
}

impl RunManifest {
    /// Reads `OUT_DIR/manifest.jsonl` (empty when absent).
    pub fn load(out_dir: &Path) -> std::io::Result<Self> {
        let path = out_dir.join(MANIFEST);
        let mut m = RunManifest::default();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            let line = line?;
            match serde_json::from_str::<ManifestEntry>(&line) {
                Ok(e) => {
                    m.entries.insert(e.sample.clone(), e);
                }
                Err(_) => m.skipped_lines += 1,
            }
        }
        Ok(m)
    }

    /// The record of `sample`, if any.
    pub fn get(&self, sample: &str) -> Option<&ManifestEntry> {
        self.entries.get(sample)
    }

    /// Number of samples recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Appends entries to the manifest, one durable line each (one `write` of the whole line on a
/// file opened for appending, then `fsync`: safe with several workers and processes appending).
#[derive(Debug)]
pub struct ManifestWriter {
    file: File,
}

impl ManifestWriter {
    /// Opens `OUT_DIR/manifest.jsonl` for appending.
    /// A torn last line (a run killed, or a disk that filled up, in the middle of a write) is
    /// ended first, so that the next line is not glued to it.
    pub fn open(out_dir: &Path) -> std::io::Result<Self> {
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(out_dir.join(MANIFEST))?;
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Self { file })
    }

    /// Appends one entry durably.
    pub fn append(&mut self, e: &ManifestEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

/// Rewrites the manifest with exactly `entries` (through a temporary file and a rename).
pub fn compact(out_dir: &Path, entries: &[ManifestEntry]) -> std::io::Result<()> {
    let path = out_dir.join(MANIFEST);
    let mut text = Vec::new();
    for e in entries {
        text.extend(serde_json::to_vec(e).map_err(std::io::Error::other)?);
        text.push(b'\n');
    }
    crate::io::atomic::write_atomic(&path, &text)
}

/// The held lock of an output directory (released on drop or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the lock of `out_dir`, or says who holds it.
pub fn lock(out_dir: &Path) -> Result<DirLock, Error> {
    let path = out_dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("cannot create the lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = (&file).write_all(format!("{}\n", std::process::id()).as_bytes());
            Ok(DirLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(Error::invalid(format!(
                "another ftirflow run (pid {}) is writing to {}; wait for it to finish or choose another --out",
                holder.trim(),
                out_dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &path, e)),
    }
}

/// Removes `*.partial` files left in `dir` (and one level below) by a killed run.
pub fn remove_partials(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        dirs.extend(rd.filter_map(|e| e.ok()).filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            if crate::io::atomic::is_partial(&e.file_name().to_string_lossy()) {
                // A killed report leaves a directory (`report.partial/`), the writers files.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(e.path())?;
                } else {
                    std::fs::remove_file(e.path())?;
                }
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sample: &str, spectra: u64) -> ManifestEntry {
        ManifestEntry {
            sample: sample.into(),
            path: format!("{sample}.hdr"),
            identity: Identity { files: vec![] },
            content_hash: "00".into(),
            model_hash: "m".into(),
            part: sample.into(),
            spectra,
        }
    }

    #[test]
    fn the_last_record_wins_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ManifestWriter::open(dir.path()).unwrap();
        w.append(&entry("a", 1)).unwrap();
        w.append(&entry("b", 2)).unwrap();
        w.append(&entry("a", 3)).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(dir.path().join(MANIFEST)).unwrap();
        f.write_all(b"{\"sample\":\"c\",\"pa").unwrap();
        let m = RunManifest::load(dir.path()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a").unwrap().spectra, 3);
        assert_eq!(m.skipped_lines, 1);
        // The next run's first line is not glued to the torn one.
        ManifestWriter::open(dir.path()).unwrap().append(&entry("d", 4)).unwrap();
        let m = RunManifest::load(dir.path()).unwrap();
        assert_eq!((m.len(), m.get("d").map(|e| e.spectra), m.skipped_lines), (3, Some(4), 1));
        compact(dir.path(), &[entry("b", 2)]).unwrap();
        assert!(!crate::io::atomic::partial_path(&dir.path().join(MANIFEST)).exists());
        let m = RunManifest::load(dir.path()).unwrap();
        assert_eq!((m.len(), m.skipped_lines), (1, 0));
    }

    #[test]
    fn an_image_is_its_header_data_and_tiles() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["core.hdr", "core.img", "Core_0000_0001.dmd", "core2.hdr", "other.img", "core.img.partial"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let files: Vec<String> = image_files(&dir.path().join("core.hdr"))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["Core_0000_0001.dmd", "core.hdr", "core.img"]);
        let before = content_hash(&dir.path().join("core.hdr")).unwrap();
        std::fs::write(dir.path().join("core.img"), "changed").unwrap();
        assert_ne!(before, content_hash(&dir.path().join("core.hdr")).unwrap());
        // Each file's name, then its bytes, in name order: BLAKE3 of the concatenation.
        let mut all = Vec::new();
        for f in ["Core_0000_0001.dmd", "core.hdr", "core.img"] {
            all.extend_from_slice(f.as_bytes());
            all.extend_from_slice(&std::fs::read(dir.path().join(f)).unwrap());
        }
        assert_eq!(content_hash(&dir.path().join("core.hdr")).unwrap(), format!("blake3:{}", blake3::hash(&all).to_hex()));
    }

    #[test]
    fn entries_of_earlier_versions_with_a_sha256_still_load() {
        let line =
            r#"{"sample":"a","path":"a.hdr","identity":{"files":[]},"content_sha256":"ab12","model_hash":"m","part":"a","spectra":3}"#;
        let e: ManifestEntry = serde_json::from_str(line).unwrap();
        assert_eq!((e.content_hash.as_str(), e.spectra), ("ab12", 3));
    }

    #[test]
    fn partial_files_and_a_partial_report_directory_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("report.partial/figures")).unwrap();
        std::fs::write(d.join("report.partial/figures/a.png"), b"x").unwrap();
        std::fs::create_dir_all(d.join("predictions")).unwrap();
        std::fs::write(d.join("predictions/p.parquet.partial"), b"x").unwrap();
        std::fs::write(d.join("cores.parquet.partial"), b"x").unwrap();
        std::fs::write(d.join("cores.parquet"), b"keep").unwrap();
        assert_eq!(remove_partials(d).unwrap(), 3);
        assert!(!d.join("report.partial").exists() && !d.join("predictions/p.parquet.partial").exists());
        assert!(d.join("cores.parquet").exists() && d.join("predictions").is_dir());
    }

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let l = lock(dir.path()).unwrap();
        let e = lock(dir.path()).unwrap_err();
        assert!(e.to_string().contains("another ftirflow run"), "{e}");
        drop(l);
        lock(dir.path()).unwrap();
    }
}
