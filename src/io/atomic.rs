//! Atomic writes: the one way ftirflow makes a file (or a directory) appear only when it is complete.
//!
//! A file `dir/name` is written as `dir/name.partial` ([`partial_path`]; archive discovery skips
//! `*.partial`, and a killed run's leftovers are recognised by that name), flushed and `sync_all`ed,
//! renamed over `dir/name`, and then `dir` itself is fsynced so that the rename survives a crash. On
//! any error the `.partial` file is removed and the target is left as it was (absent, or its old
//! contents).
//!
//! - [`write_atomic`] writes a byte slice;
//! - [`write_atomic_with`] lets a closure fill the file (buffered [`Write`], or the [`File`] for
//!   positioned writes);
//! - [`write_atomic_at`] is for libraries that only write to a path they are given;
//! - [`AtomicFile`] streams: [`AtomicFile::commit`] publishes, or [`AtomicFile::finish`] stages the
//!   complete file durably so that several files can be published together ([`Staged::commit`]),
//!   or none of them when one fails;
//! - [`AtomicDir`] does the same for a directory (`report.partial/` → `report/`);
//! - [`sync_dir`] fsyncs a directory.
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Buffer size of [`AtomicFile`]'s writer.
const BUFFER_BYTES: usize = 64 << 10;

/// The suffix of the temporary name a file or directory is written under.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Whether a file name is a temporary name of this module (a write in progress, or left by a
/// killed process).
pub fn is_partial(name: &str) -> bool {
    name.ends_with(PARTIAL_SUFFIX)
}

/// `<path>.partial`: where `path` is written before it is renamed into place.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(PARTIAL_SUFFIX);
    path.with_file_name(name)
}

/// The directory that holds `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes the directory `dir` to disk, so that the entries created, renamed or removed in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: the file appears complete, durably, or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` atomically with what `fill` writes into the [`AtomicFile`]; an error from `fill`
/// removes the temporary file, leaves `path` as it was, and is returned.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut AtomicFile) -> io::Result<()>) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    fill(&mut file)?;
    file.commit()
}

/// Writes `path` atomically through a writer that insists on a path of its own (a library's
/// `save(path)`): `write` is given the temporary path and must create the file there.
pub fn write_atomic_at(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    // From here on, dropping `staged` (on any error) removes whatever `write` left behind.
    let staged = Staged(Pending { tmp: partial_path(path), path: path.to_path_buf() });
    write(staged.partial_path())?;
    File::open(staged.partial_path())?.sync_all()?;
    staged.commit()
}

/// A file being written under its temporary name ([`partial_path`]). [`Write`] is buffered;
/// [`AtomicFile::file`] gives the [`File`] itself for positioned writes. Dropped without
/// [`commit`](AtomicFile::commit) or [`finish`](AtomicFile::finish), the temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished (the temporary file then belongs to a [`Staged`]).
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates (or truncates) the temporary file of `path`. Fails when the directory of `path`
    /// does not exist or is not writable.
    pub fn create(path: &Path) -> io::Result<Self> {
        let tmp = partial_path(path);
        let file = File::create(&tmp)?;
        Ok(Self { path: path.to_path_buf(), tmp, writer: Some(BufWriter::with_capacity(BUFFER_BYTES, file)) })
    }

    /// The file this one will become.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it is being written.
    pub fn partial_path(&self) -> &Path {
        &self.tmp
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("an AtomicFile is written only before it is finished")
    }

    /// The file itself, for positioned writes (`FileExt::write_all_at`): the buffer is flushed
    /// first, so the bytes written through [`Write`] so far are in it.
    pub fn file(&mut self) -> io::Result<&File> {
        let w = self.writer();
        w.flush()?;
        Ok(w.get_ref())
    }

    /// Flushes and `sync_all`s the file under its temporary name and hands it over to
    /// [`Staged::commit`]. On error the temporary file is removed.
    pub fn finish(mut self) -> io::Result<Staged> {
        let file = self.writer.take().expect("finished once").into_inner().map_err(io::IntoInnerError::into_error);
        // The temporary file belongs to `staged` now: its drop removes it if syncing fails.
        let staged = Staged(Pending { tmp: std::mem::take(&mut self.tmp), path: std::mem::take(&mut self.path) });
        file?.sync_all()?;
        Ok(staged)
    }

    /// Publishes the file: [`finish`](AtomicFile::finish), then [`Staged::commit`].
    pub fn commit(self) -> io::Result<()> {
        self.finish()?.commit()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            // Discard the buffer rather than flush it into a file about to be removed.
            drop(w.into_parts());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary file or directory and the path it is to become; dropped before
/// [`Pending::rename_into_place`] succeeds, the temporary is removed (a directory with its contents).
#[derive(Debug)]
struct Pending {
    tmp: PathBuf,
    path: PathBuf,
}

impl Pending {
    /// Renames the temporary over `path`, then fsyncs the directory that holds it.
    fn rename_into_place(mut self) -> io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.tmp = PathBuf::new();
        sync_dir(parent_dir(&self.path))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.tmp.as_os_str().is_empty() {
            return;
        }
        let _ = if self.tmp.is_dir() { std::fs::remove_dir_all(&self.tmp) } else { std::fs::remove_file(&self.tmp) };
    }
}

/// A complete, durable file under its temporary name: [`Staged::commit`] renames it into place;
/// dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Staged(Pending);

impl Staged {
    /// The file this one will become.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Where the complete file lies until it is committed.
    pub fn partial_path(&self) -> &Path {
        &self.0.tmp
    }

    /// Renames the file over its target and fsyncs the directory. If the rename fails, the
    /// temporary file is removed and the target is left as it was.
    pub fn commit(self) -> io::Result<()> {
        self.0.rename_into_place()
    }
}

/// A directory being filled under its temporary name ([`partial_path`]: `report.partial/` for
/// `report/`). [`AtomicDir::commit`] replaces the target with it; dropped uncommitted, it is
/// removed with everything in it.
#[derive(Debug)]
pub struct AtomicDir(Pending);

impl AtomicDir {
    /// Creates the temporary directory of `path`, empty (a leftover of an earlier attempt is
    /// removed first). Its parent must exist.
    pub fn create(path: &Path) -> io::Result<Self> {
        let tmp = partial_path(path);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        Ok(Self(Pending { tmp, path: path.to_path_buf() }))
    }

    /// The directory this one will become.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Where its files are to be written.
    pub fn partial_path(&self) -> &Path {
        &self.0.tmp
    }

    /// Fsyncs every file and directory in it, removes the target (if any) and renames this
    /// directory into its place, then fsyncs the parent. On error the temporary directory is
    /// removed (the old target may be gone by then, if the rename itself failed).
    pub fn commit(self) -> io::Result<()> {
        sync_tree(&self.0.tmp)?;
        if self.0.path.is_dir() {
            std::fs::remove_dir_all(&self.0.path)?;
        }
        self.0.rename_into_place()
    }
}

/// `sync_all` on every file under `dir`, then on the directories, innermost first.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `dir` that end in `.partial`.
    fn partials(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| is_partial(n)).collect()
    }

    #[test]
    fn partial_path_appends_the_suffix_to_the_file_name() {
        assert_eq!(partial_path(Path::new("out/a.parquet")), Path::new("out/a.parquet.partial"));
        assert_eq!(partial_path(Path::new("report")), Path::new("report.partial"));
        assert_eq!(parent_dir(Path::new("report")), Path::new("."));
    }

    #[test]
    fn write_atomic_replaces_the_target_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn missing_directory_fails_at_create() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/a.json");
        assert_eq!(write_atomic(&path, b"x").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn failing_writer_leaves_the_target_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(&[7; 100_000])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn dropped_file_is_removed_and_the_target_stays_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        f.file().unwrap();
        assert!(f.partial_path().exists());
        drop(f);
        assert!(!path.exists());
        assert!(partials(dir.path()).is_empty());
        // A staged file dropped uncommitted goes too.
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"whole").unwrap();
        drop(f.finish().unwrap());
        assert!(!path.exists());
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn failing_rename_leaves_the_target_directory_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&path, b"x").is_err());
        assert!(path.is_dir());
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
        assert!(partials(dir.path()).is_empty());
        // The same through a staged file.
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"x").unwrap();
        assert!(f.finish().unwrap().commit().is_err());
        assert!(path.is_dir());
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn streaming_and_positioned_writes_commit_together() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"abcdef").unwrap();
        f.file().unwrap().write_all_at(b"XY", 2).unwrap();
        f.write_all(b"gh").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let staged = f.finish().unwrap();
        assert_eq!(staged.path(), path);
        assert_eq!(std::fs::read(staged.partial_path()).unwrap(), b"abXYefgh");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abXYefgh");
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn path_writers_commit_or_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_atomic_at(&path, |tmp| std::fs::write(tmp, b"weights")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"weights");
        let err = write_atomic_at(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(io::Error::other("serializer failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "serializer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"weights");
        // A writer that claims success without creating the file.
        assert!(write_atomic_at(&path, |_| Ok(())).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"weights");
        assert!(partials(dir.path()).is_empty());
    }

    #[test]
    fn directories_replace_the_target_or_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("old.html"), b"old").unwrap();
        // A leftover of a killed attempt is cleared.
        std::fs::create_dir(partial_path(&path)).unwrap();
        std::fs::write(partial_path(&path).join("stale"), b"").unwrap();
        let staged = AtomicDir::create(&path).unwrap();
        assert_eq!(std::fs::read_dir(staged.partial_path()).unwrap().count(), 0);
        std::fs::create_dir(staged.partial_path().join("figures")).unwrap();
        std::fs::write(staged.partial_path().join("figures/a.svg"), b"svg").unwrap();
        drop(staged);
        assert!(path.join("old.html").exists());
        assert!(partials(dir.path()).is_empty());
        let staged = AtomicDir::create(&path).unwrap();
        std::fs::create_dir(staged.partial_path().join("figures")).unwrap();
        std::fs::write(staged.partial_path().join("figures/a.svg"), b"svg").unwrap();
        staged.commit().unwrap();
        assert!(!path.join("old.html").exists());
        assert_eq!(std::fs::read(path.join("figures/a.svg")).unwrap(), b"svg");
        assert!(partials(dir.path()).is_empty());
        // Without its parent nothing is created.
        assert!(AtomicDir::create(&dir.path().join("missing/report")).is_err());
    }
}
