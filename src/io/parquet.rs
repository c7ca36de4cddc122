//! Spectra tables in Parquet (the layout of ARCHITECTURE.md, also what `ftirflow convert` writes): a
//! streaming reader that accepts what a user builds with pyarrow alone, and a writer that makes a
//! file appear only when it is complete.
//!
//! The reader is lenient where the meaning is unambiguous: `sample` may be a dictionary or absent
//! (then the file stem is used), `x`/`y` may be any integer type (negative values are an error) or
//! absent (then `x` is the row number and `y` is 0), and `spectrum` may be a fixed-size list or a
//! list of Float32 or Float64 as long as every row has one value per wavenumber. The axis must be in
//! the schema metadata under `ftirflow:wavenumbers`. Other columns pass through unchanged.
//!
//! With a [`Window`](super::Window) the reader yields only the rows whose `x`, `y` lie inside it
//! (filtered batch by batch as the file streams, so batches may be shorter than `batch_rows`); a
//! table without `x` and `y` columns, an empty window, or a window that selects no row is a
//! [`ReadError::Window`].
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::UInt32Type;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::atomic::{self, AtomicFile};
// Kept for `crate::run::manifest` and `crate::dataflow`, which name it here.
use super::atomic::partial_path;
use super::window::TableWindow;
use super::{Format, ImageCube, ImageInfo, ReadError, ReadOptions, SpectraReader};
use crate::operators::schema::{self, image_batch, spectra_schema, SchemaError, SAMPLE, SPECTRUM, X, Y};

/// Why a Parquet file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file system refused.
    #[error("{}: cannot write: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Parquet encoder failed (a schema mismatch between batches is our bug).
    #[error("{}: parquet encoder: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The encoder error.
        source: parquet::errors::ParquetError,
    },
    /// The data do not form a spectra table.
    #[error("{}: {source}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// The schema problem.
        source: SchemaError,
    },
}

/// Uncompressed bytes a row group of an ftirflow Parquet file holds at most (about; the writer
/// buffers one row group in memory before it writes it).
pub const ROW_GROUP_BYTES: usize = 128 << 20;

/// Rows per row group for `schema`: [`ROW_GROUP_BYTES`] over the width of a row (a spectrum of
/// 1506 `f32` points: 22 k rows), between 1024 and 1 Mi rows.
pub fn row_group_rows(schema: &arrow::datatypes::Schema) -> usize {
    fn width(t: &arrow::datatypes::DataType) -> usize {
        use arrow::datatypes::DataType as D;
        match t {
            D::FixedSizeList(f, n) => width(f.data_type()) * (*n).max(0) as usize,
            D::List(f) | D::LargeList(f) => 8 * width(f.data_type()),
            t => t.primitive_width().unwrap_or(16),
        }
    }
    let row: usize = schema.fields().iter().map(|f| width(f.data_type())).sum::<usize>().max(1);
    (ROW_GROUP_BYTES / row).clamp(1024, 1 << 20)
}

/// Key-value entry of the Parquet files ftirflow writes that hold tables, not images (the truth
/// of `ftirflow synth`, the tables of `ftirflow run`); its value says what the file is. Archive
/// discovery skips files that carry it, so a run over the folder `synth` wrote, or over an
/// earlier run's outputs, does not reject them as broken images.
pub const NOT_AN_IMAGE: &str = "ftirflow:not_an_image";

/// The largest footer [`is_marked_not_an_image`] reads.
const MAX_MARKED_FOOTER: u64 = 16 << 20;

/// Whether the Parquet file at `path` carries [`NOT_AN_IMAGE`]. The footer is searched for the
/// key's bytes (which its Thrift encoding holds verbatim) rather than parsed, so that discovery
/// never runs a parser over an untrusted file; any file it cannot read is not marked.
pub fn is_marked_not_an_image(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    match super::parquet_guard::footer_bytes(&file, MAX_MARKED_FOOTER) {
        Ok(Some(bytes)) => bytes.windows(NOT_AN_IMAGE.len()).any(|w| w == NOT_AN_IMAGE.as_bytes()),
        _ => false,
    }
}

/// Writer properties used for every ftirflow Parquet file of `schema`: zstd level 3, statistics
/// on, row groups of at most [`row_group_rows`] rows (so a writer never buffers more than about
/// [`ROW_GROUP_BYTES`]).
pub fn writer_properties(schema: &arrow::datatypes::Schema, key_values: Vec<(String, String)>) -> WriterProperties {
    let kv = key_values.into_iter().map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v)).collect::<Vec<_>>();
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows(schema)))
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_key_value_metadata(if kv.is_empty() { None } else { Some(kv) })
        .build()
}

/// A Parquet file being written: batches go to an [`AtomicFile`], which is renamed to `path` by
/// [`AtomicParquetWriter::finish`]. Dropped unfinished, the partial file is removed.
pub struct AtomicParquetWriter {
    path: PathBuf,
    writer: ArrowWriter<AtomicFile>,
    rows: u64,
}

impl AtomicParquetWriter {
    /// Starts a file for `schema` with extra key-value metadata.
    pub fn create(path: &Path, schema: SchemaRef, key_values: Vec<(String, String)>) -> Result<Self, WriteError> {
        let file = AtomicFile::create(path).map_err(|source| WriteError::Io { path: partial_path(path), source })?;
        // On error the encoder drops `file`, which removes it.
        let props = writer_properties(&schema, key_values);
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| WriteError::Parquet { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), writer, rows: 0 })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        self.writer.write(batch).map_err(|source| WriteError::Parquet { path: self.path.clone(), source })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the file and renames it into place; returns the number of rows.
    pub fn finish(self) -> Result<u64, WriteError> {
        let rows = self.rows;
        self.finish_staged()?.commit()?;
        Ok(rows)
    }

    /// Closes the file durably under its temporary name; [`Staged::commit`] renames it into
    /// place (so that several files can appear together, or none when one of them fails). On
    /// error (a full disk, say) the temporary file is removed.
    pub fn finish_staged(self) -> Result<Staged, WriteError> {
        let Self { path, writer, .. } = self;
        let file = writer.into_inner().map_err(|source| WriteError::Parquet { path: path.clone(), source })?;
        let staged = file.finish().map_err(|source| WriteError::Io { path: partial_path(&path), source })?;
        Ok(Staged(staged))
    }
}

/// A complete file under its temporary name, renamed into place by [`Staged::commit`] and
/// removed when dropped uncommitted.
#[derive(Debug)]
pub struct Staged(atomic::Staged);

impl Staged {
    /// Renames the file into place.
    pub fn commit(self) -> Result<(), WriteError> {
        let path = self.0.path().to_path_buf();
        self.0.commit().map_err(|source| WriteError::Io { path, source })
    }
}

/// Writes a whole image as a spectra table (rows in image order) under `sample`.
pub fn write_cube(path: &Path, cube: &ImageCube, sample: &str) -> Result<(), WriteError> {
    cube.check().map_err(|source| WriteError::Io { path: path.to_path_buf(), source })?;
    let schema = spectra_schema(&cube.wavenumbers).map_err(|source| WriteError::Schema { path: path.to_path_buf(), source })?;
    let mut w = AtomicParquetWriter::create(path, Arc::clone(&schema), Vec::new())?;
    let n = cube.n_points();
    let rows_per_batch = super::DEFAULT_BATCH_ROWS;
    let total = cube.width as usize * cube.height as usize;
    let mut start = 0;
    while start < total {
        let end = (start + rows_per_batch).min(total);
        let xs = (start..end).map(|i| (i % cube.width as usize) as u32).collect();
        let ys = (start..end).map(|i| (i / cube.width as usize) as u32).collect();
        let values = cube.values[start * n..end * n].to_vec();
        let batch = image_batch(Arc::clone(&schema), sample, xs, ys, values)
            .map_err(|source| WriteError::Schema { path: path.to_path_buf(), source })?;
        w.write(&batch)?;
        start = end;
    }
    w.finish()?;
    Ok(())
}

/// Streams a spectra table, converting each batch to the canonical spectra schema.
pub struct ParquetSpectraReader {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
    schema: SchemaRef,
    info: ImageInfo,
    sample: String,
    rows_seen: u64,
    /// The row selection when reading through a window.
    window: Option<TableWindow>,
    failed: bool,
}

impl ParquetSpectraReader {
    /// Opens `path` and validates its schema before reading any row.
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        let mut file = File::open(path).map_err(|e| ReadError::io(path, e))?;
        let unreadable = |e: String| ReadError::format(path, format!("not a readable Parquet file: {e}"));
        super::parquet_guard::check(&mut file).map_err(unreadable)?;
        let mut pages = file.try_clone().map_err(|e| ReadError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unreadable(e.to_string()))?;
        let chunks = builder.metadata().row_groups().iter().flat_map(|rg| rg.columns().iter().map(|c| c.byte_range()));
        super::parquet_guard::check_pages(&mut pages, chunks).map_err(unreadable)?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mut input = builder.schema().as_ref().clone();
        // pyarrow writes user metadata as Parquet key-value pairs; take the axis from there too.
        if !input.metadata().contains_key(schema::WAVENUMBERS_KEY) {
            if let Some(kv) = builder.metadata().file_metadata().key_value_metadata() {
                if let Some(v) = kv.iter().find(|kv| kv.key == schema::WAVENUMBERS_KEY).and_then(|kv| kv.value.clone()) {
                    let mut md = input.metadata().clone();
                    md.insert(schema::WAVENUMBERS_KEY.to_string(), v);
                    input = input.with_metadata(md);
                }
            }
        }
        let wavenumbers = schema::wavenumbers(&input).map_err(|e| ReadError::schema(path, e))?;
        let spec = input.field_with_name(SPECTRUM).map_err(|_| ReadError::schema(path, SchemaError::MissingColumn(SPECTRUM)))?;
        check_spectrum_type(spec.data_type()).map_err(|e| ReadError::schema(path, e))?;
        if let DataType::FixedSizeList(_, n) = spec.data_type() {
            if *n as usize != wavenumbers.len() {
                return Err(ReadError::schema(path, SchemaError::AxisLength { axis: wavenumbers.len(), points: *n as usize }));
            }
        }
        for name in [X, Y] {
            if let Ok(f) = input.field_with_name(name) {
                if !f.data_type().is_integer() {
                    return Err(ReadError::schema(
                        path,
                        SchemaError::WrongType {
                            column: if name == X { X } else { Y },
                            found: f.data_type().to_string(),
                            expected: "an integer type",
                        },
                    ));
                }
            }
        }
        if let Ok(f) = input.field_with_name(SAMPLE) {
            let ok = matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                || matches!(f.data_type(), DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8));
            if !ok {
                return Err(ReadError::schema(
                    path,
                    SchemaError::WrongType { column: SAMPLE, found: f.data_type().to_string(), expected: "Utf8" },
                ));
            }
        }
        let has_xy = input.field_with_name(X).is_ok() && input.field_with_name(Y).is_ok();
        let window = TableWindow::new(path, opts.window, has_xy)?;
        let extra: Vec<Field> =
            input.fields().iter().filter(|f| ![SAMPLE, X, Y, SPECTRUM].contains(&f.name().as_str())).map(|f| f.as_ref().clone()).collect();
        let out = spectra_schema_with_extra(&wavenumbers, extra, &input).map_err(|e| ReadError::schema(path, e))?;
        let inner =
            builder.with_batch_size(opts.batch_rows).build().map_err(|e| ReadError::format(path, format!("cannot read Parquet: {e}")))?;
        let info = ImageInfo {
            format: Format::Parquet,
            width: None,
            height: None,
            n_spectra: rows,
            data_bytes: rows * wavenumbers.len() as u64 * 4,
            wavenumbers,
        };
        let sample = opts.sample.clone();
        Ok(Self { path: path.to_path_buf(), inner, schema: out, info, sample, rows_seen: 0, window, failed: false })
    }

    fn convert(&mut self, batch: RecordBatch) -> Result<RecordBatch, ReadError> {
        let path = self.path.clone();
        let rows = batch.num_rows();
        let n = self.info.wavenumbers.len();
        let sample: ArrayRef = match batch.column_by_name(SAMPLE) {
            Some(col) => {
                if col.null_count() > 0 {
                    return Err(ReadError::schema(&path, SchemaError::Nulls(SAMPLE)));
                }
                arrow::compute::cast(col, &DataType::Utf8).map_err(|e| ReadError::format(&path, e.to_string()))?
            }
            None => Arc::new(arrow::array::StringArray::from_iter_values(std::iter::repeat_n(self.sample.as_str(), rows))),
        };
        let coord = |name: &'static str, default: &dyn Fn(usize) -> u32| -> Result<ArrayRef, ReadError> {
            match batch.column_by_name(name) {
                Some(col) => {
                    if col.null_count() > 0 {
                        return Err(ReadError::schema(&path, SchemaError::Nulls(name)));
                    }
                    let c = arrow::compute::cast_with_options(
                        col,
                        &DataType::UInt32,
                        &arrow::compute::CastOptions { safe: false, ..Default::default() },
                    )
                    .map_err(|e| ReadError::format(&path, format!("column `{name}` is not a valid pixel coordinate: {e}")))?;
                    Ok(c)
                }
                None => Ok(Arc::new(UInt32Array::from_iter_values((0..rows).map(default)))),
            }
        };
        let seen = self.rows_seen as usize;
        let x = coord(X, &|i| (seen + i) as u32)?;
        let y = coord(Y, &|_| 0)?;
        let spec_col = batch.column_by_name(SPECTRUM).expect("checked at open");
        let values = spectrum_values(spec_col, n).map_err(|e| ReadError::schema(&path, e))?;
        let spectrum = schema::spectrum_array(values, n).map_err(|e| ReadError::schema(&path, e))?;
        let mut columns: Vec<ArrayRef> = vec![sample, x, y, Arc::new(spectrum)];
        for f in self.schema.fields().iter().skip(4) {
            columns.push(Arc::clone(batch.column_by_name(f.name()).expect("extra column present")));
        }
        self.rows_seen += rows as u64;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| ReadError::format(&path, e.to_string()))?;
        match &mut self.window {
            None => Ok(batch),
            Some(w) => {
                let (xs, ys) = (batch.column(1).as_primitive::<UInt32Type>(), batch.column(2).as_primitive::<UInt32Type>());
                let mask: BooleanArray = xs.values().iter().zip(ys.values().iter()).map(|(&x, &y)| Some(w.keep(x, y))).collect();
                arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| ReadError::format(&path, e.to_string()))
            }
        }
    }
}

fn spectra_schema_with_extra(wavenumbers: &[f64], extra: Vec<Field>, input: &Schema) -> Result<SchemaRef, SchemaError> {
    let base = schema::spectra_schema_with(wavenumbers, extra)?;
    // Keep the input's other metadata (e.g. provenance) beside the axis.
    let mut md = input.metadata().clone();
    md.extend(base.metadata().clone());
    Ok(Arc::new(base.as_ref().clone().with_metadata(md)))
}

fn check_spectrum_type(dt: &DataType) -> Result<(), SchemaError> {
    let item = match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        other => {
            return Err(SchemaError::WrongType { column: SPECTRUM, found: other.to_string(), expected: "a list of Float32 or Float64" })
        }
    };
    if matches!(item, DataType::Float32 | DataType::Float64) {
        Ok(())
    } else {
        Err(SchemaError::WrongType { column: SPECTRUM, found: dt.to_string(), expected: "a list of Float32 or Float64" })
    }
}

/// Flattens a list column of floats into `rows × n` f32 values, checking each row's length.
fn spectrum_values(col: &ArrayRef, n: usize) -> Result<Vec<f32>, SchemaError> {
    if col.null_count() > 0 {
        return Err(SchemaError::Nulls(SPECTRUM));
    }
    let rows = col.len();
    let check = |lengths: &mut dyn Iterator<Item = usize>| -> Result<(), SchemaError> {
        match lengths.enumerate().find(|(_, len)| *len != n) {
            Some((i, len)) => Err(SchemaError::Arrow(format!("row {i} has {len} values, the axis has {n}"))),
            None => Ok(()),
        }
    };
    let values: ArrayRef = match col.data_type() {
        DataType::FixedSizeList(_, _) => {
            let l = col.as_fixed_size_list();
            l.values().slice(l.offset() * n, rows * n)
        }
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            let o = l.value_offsets();
            check(&mut o.windows(2).map(|w| (w[1] - w[0]) as usize))?;
            l.values().slice(o[0] as usize, rows * n)
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            let o = l.value_offsets();
            check(&mut o.windows(2).map(|w| (w[1] - w[0]) as usize))?;
            l.values().slice(o[0] as usize, rows * n)
        }
        other => return Err(SchemaError::WrongType { column: SPECTRUM, found: other.to_string(), expected: "a list of floats" }),
    };
    if values.null_count() > 0 {
        return Err(SchemaError::Nulls(SPECTRUM));
    }
    match values.data_type() {
        DataType::Float32 => Ok(values.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Float64 => Ok(values.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect()),
        other => Err(SchemaError::WrongType { column: SPECTRUM, found: other.to_string(), expected: "a list of floats" }),
    }
}

impl Iterator for ParquetSpectraReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let Some(next) = self.inner.next() else {
                // The end: an error if a window selected nothing.
                let e = self.window.as_mut().and_then(|w| w.end(&self.path))?;
                self.failed = true;
                return Some(Err(e));
            };
            let item = match next {
                Ok(batch) => self.convert(batch),
                Err(e) => Err(ReadError::format(&self.path, format!("cannot decode Parquet: {e}"))),
            };
            // A window may leave nothing of a batch: go on to the next one.
            if matches!(&item, Ok(b) if b.num_rows() == 0 && self.window.is_some()) {
                continue;
            }
            self.failed = item.is_err();
            return Some(item);
        }
    }
}

impl SpectraReader for ParquetSpectraReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_hold_about_128_mb_of_spectra_and_small_rows_in_bounds() {
        let spectra = Schema::new(vec![
            Field::new("sample", DataType::Utf8, false),
            Field::new("x", DataType::UInt32, false),
            Field::new("spectrum", DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 1506), false),
        ]);
        let rows = row_group_rows(&spectra);
        assert_eq!(rows, ROW_GROUP_BYTES / (16 + 4 + 4 * 1506));
        assert!((22_000..23_000).contains(&rows), "{rows}");
        let narrow = Schema::new(vec![Field::new("x", DataType::UInt32, false)]);
        assert_eq!(row_group_rows(&narrow), 1 << 20, "capped for narrow rows");
        // A file written with the properties has row groups of that many rows.
        let schema = Arc::new(narrow);
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt32Array::from(vec![7u32; (1 << 20) + 5]))]).unwrap();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, Arc::clone(&schema), Some(writer_properties(&schema, Vec::new()))).unwrap();
        w.write(&batch).unwrap();
        let meta = w.close().unwrap();
        assert_eq!(meta.row_groups().iter().map(|g| g.num_rows()).collect::<Vec<_>>(), vec![1 << 20, 5]);
    }
}
