//! Placeholder moved from dataflow; replaced by the refactor-io branch's atomic writer at merge.
use std::path::Path;

/// Writes `bytes` to `path` through a temporary name (durably).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = crate::io::parquet::partial_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
