//! One spectra table written from many images: the file is started with the first image's schema,
//! every further image must share its axis and columns (or is rejected with the reason), and the
//! file appears only when complete. Shared by `convert` and `preprocess`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::parquet::{AtomicParquetWriter, WriteError};
use crate::operators::schema::wavenumbers;

/// A table being written.
pub struct SpectraTableWriter {
    path: PathBuf,
    key_values: Vec<(String, String)>,
    writer: Option<(AtomicParquetWriter, SchemaRef)>,
}

/// Why an image could not go into the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The image does not fit the table (the image is rejected, the table goes on).
    #[error("{0}")]
    Incompatible(String),
    /// The file could not be written (fatal).
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl SpectraTableWriter {
    /// A table at `path` with extra Parquet key-value metadata; nothing is created until the
    /// first image arrives.
    pub fn new(path: &Path, key_values: Vec<(String, String)>) -> Self {
        Self { path: path.to_path_buf(), key_values, writer: None }
    }

    /// Appends the batches of one image (all with the same schema).
    pub fn write_image(&mut self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<u64, TableError> {
        if self.writer.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| WriteError::Io { path: parent.to_path_buf(), source })?;
            }
            let w = AtomicParquetWriter::create(&self.path, Arc::clone(schema), self.key_values.clone())?;
            self.writer = Some((w, Arc::clone(schema)));
        }
        let (w, first) = self.writer.as_mut().expect("created above");
        if let Some(reason) = incompatibility(first, schema) {
            return Err(TableError::Incompatible(reason));
        }
        let mut rows = 0;
        for batch in batches {
            let batch = RecordBatch::try_new(Arc::clone(first), batch.columns().to_vec())
                .map_err(|e| TableError::Incompatible(format!("batch does not match the table: {e}")))?;
            w.write(&batch)?;
            rows += batch.num_rows() as u64;
        }
        Ok(rows)
    }

    /// Points per spectrum of the table (0 before the first image).
    pub fn points(&self) -> usize {
        self.writer.as_ref().and_then(|(_, s)| wavenumbers(s).ok()).map(|w| w.len()).unwrap_or(0)
    }

    /// Closes the table (renaming it into place); `false` when no image was written (no file).
    pub fn finish(self) -> Result<bool, WriteError> {
        match self.writer {
            Some((w, _)) => w.finish().map(|_| true),
            None => Ok(false),
        }
    }
}

/// Why `schema` cannot go into a table that started with `first`, if it cannot.
pub fn incompatibility(first: &SchemaRef, schema: &SchemaRef) -> Option<String> {
    let (a, b) = (wavenumbers(first).unwrap_or_default(), wavenumbers(schema).unwrap_or_default());
    if a != b {
        let range = |w: &[f64]| format!("{} points, {:.2}–{:.2} cm⁻¹", w.len(), w.first().unwrap_or(&0.0), w.last().unwrap_or(&0.0));
        return Some(format!(
            "wavenumber axis ({}) differs from the first input's ({}); write them to separate files or resample",
            range(&b),
            range(&a)
        ));
    }
    let cols = |s: &SchemaRef| s.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect::<Vec<_>>();
    if cols(first) != cols(schema) {
        return Some(format!("columns [{}] differ from the first input's [{}]", cols(schema).join(", "), cols(first).join(", ")));
    }
    None
}
