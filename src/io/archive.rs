//! Archive discovery: the images in a directory tree, one entry per image, with a `sample` id that
//! is unique in the archive (the path relative to the archive root, without extension, `/`-separated).
//!
//! A file is an image entry when its format is recognised ([`Format::detect`]): `.hdr` (ENVI),
//! `.dmt` (Agilent mosaic), `.dat` beside a `.bsp` (Agilent tile), `.parquet`. Companion files
//! (`.img`, `.dmd`, `.bsp`, `.seq`, …) are not entries of their own. When several entries share a
//! directory and stem (an instrument often writes a mosaic both as `.dmt` + tiles and as an
//! assembled ENVI file), one is kept, in this order of preference: Agilent mosaic, Agilent tile,
//! ENVI, Parquet. CSV tables are read only when named explicitly, never discovered (an archive
//! usually holds a labels CSV). Hidden files, `*.partial` files and Parquet tables that ftirflow wrote
//! (marked [`NOT_AN_IMAGE`](super::parquet::NOT_AN_IMAGE): `ftirflow synth`'s truth, `run`'s
//! outputs) are skipped. Entries are sorted
//! by sample id, so the order is the same on every machine.
//!
//! Symbolic links: a linked directory is not entered (no loops, no walking out of the archive);
//! a linked file is an entry like any other, and [`escaping_link`] names the images that have a
//! file linking outside the archive root, which `ftirflow run` rejects instead of reading.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Format, ReadError};

/// One image of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The file to open (`.hdr`, `.dat`, `.dmt`, `.parquet`).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its sample id.
    pub sample: String,
}

fn preference(f: Format) -> u8 {
    match f {
        Format::AgilentMosaic => 0,
        Format::AgilentTile => 1,
        Format::Envi => 2,
        Format::Parquet => 3,
        Format::OrangeCsv => 4,
    }
}

/// The sample id of `path` under `root`.
pub fn sample_id(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = rel.with_extension("");
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.is_empty() {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        parts.join("/")
    }
}

/// All images under `root` (a directory), or `root` itself when it is a file.
pub fn discover(root: &Path) -> Result<Vec<ImageEntry>, ReadError> {
    let meta = std::fs::metadata(root).map_err(|e| ReadError::io(root, e))?;
    if meta.is_file() {
        let format = Format::detect(root).ok_or_else(|| ReadError::format(root, "unrecognised file type"))?;
        let sample = root.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![ImageEntry { path: root.to_path_buf(), format, sample }]);
    }
    let mut groups: BTreeMap<(PathBuf, String), ImageEntry> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(&dir).map_err(|e| ReadError::io(&dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') || super::atomic::is_partial(&name) {
                continue;
            }
            let link = std::fs::symlink_metadata(&path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            if path.is_dir() {
                if link {
                    tracing::warn!("{}: a linked directory is not entered", path.display());
                } else {
                    stack.push(path);
                }
                continue;
            }
            let Some(format) = Format::detect(&path) else { continue };
            if format == Format::OrangeCsv {
                continue;
            }
            if format == Format::Parquet && super::parquet::is_marked_not_an_image(&path) {
                tracing::info!("{}: skipped: a table ftirflow wrote, not an image", path.display());
                continue;
            }
            let stem = path.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
            let key = (dir.clone(), stem);
            let entry = ImageEntry { sample: sample_id(root, &path), path, format };
            match groups.get(&key) {
                Some(old) if preference(old.format) <= preference(format) => {}
                _ => {
                    groups.insert(key, entry);
                }
            }
        }
    }
    let mut out: Vec<ImageEntry> = groups.into_values().collect();
    out.sort_by(|a, b| a.sample.cmp(&b.sample).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// Why the image whose entry file is `path` must not be read, when one of its files (the entry,
/// or a companion with the same stem followed by `.` or `_`: ENVI data, `.bsp`, mosaic tiles) is
/// a symbolic link that leads outside `root` or nowhere. `None` for an image whose files all lie
/// inside the archive.
pub fn escaping_link(root: &Path, path: &Path) -> Option<String> {
    let base = if root.is_dir() { root } else { root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")) };
    let base = std::fs::canonicalize(base).ok()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            name.strip_prefix(&stem).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'))
        })
        .collect();
    names.sort();
    for p in names {
        let is_link = std::fs::symlink_metadata(&p).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        if !is_link {
            continue;
        }
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match std::fs::canonicalize(&p) {
            Ok(target) if target.starts_with(&base) => {}
            Ok(target) => return Some(format!("{name} is a symbolic link to {}, outside the archive: not followed", target.display())),
            Err(e) => return Some(format!("{name} is a symbolic link that cannot be followed: {e}")),
        }
    }
    None
}
