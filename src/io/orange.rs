//! Orange-style CSV spectra tables (as written by Orange-Spectroscopy, e.g.
//! `../shared/data/collagen/collagen.csv`): one spectrum per row, wavenumbers as column names.
//!
//! Orange's three-row header is understood: row 1 names, row 2 kinds (`c`ontinuous, `d`iscrete,
//! `s`tring, …), row 3 roles (`class`, `meta`, `ignore`, …); a plain one-row header works too.
//! Columns whose name is a number and whose role is empty form the spectrum (in column order, so
//! the axis may descend). The class column (role `class`, or a column named `class` in a one-row
//! header) becomes the Utf8 column `class`; `map_x`/`map_y` become `x`/`y` when present, otherwise
//! `x` is the row number and `y` is 0; every other column is kept as a Utf8 column of its own name
//! (`patient`, for instance). Empty cells, `?` and `nan` in the spectrum are read as NaN (later
//! stages flag such spectra); any other non-numeric value is an error naming row and column.
//!
//! With a [`Window`](super::Window) only the rows whose `map_x`, `map_y` lie inside it are kept
//! (the others are skipped before their spectrum is parsed); a table without both columns, an
//! empty window, or a window that selects no row is a [`ReadError::Window`].
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};

use super::window::TableWindow;
use super::{Format, ImageInfo, ReadError, ReadOptions, SpectraReader};
use crate::operators::schema::{self, spectra_schema_with};

/// Name of the output column that carries the table's class.
pub const CLASS: &str = "class";

const KINDS: &[&str] = &["c", "d", "s", "t", "continuous", "discrete", "string", "time", "text", ""];

enum Role {
    Spectral(usize),
    Class,
    X,
    Y,
    Extra(usize),
    Ignore,
}

/// Streams an Orange CSV table as spectra batches.
pub struct OrangeCsvReader {
    path: PathBuf,
    reader: csv::Reader<File>,
    schema: SchemaRef,
    info: ImageInfo,
    roles: Vec<Role>,
    n_extra: usize,
    has_class: bool,
    sample: String,
    batch_rows: usize,
    row: u64,
    /// A data record already read while detecting the header layout.
    pending: Option<csv::StringRecord>,
    /// The row selection when reading through a window, with the columns of `map_x`, `map_y`.
    window: Option<(TableWindow, usize, usize)>,
    done: bool,
}

impl OrangeCsvReader {
    /// Opens `path` and parses its header.
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(file);
        let mut records = reader.records();
        let mut next = |what: &str| -> Result<Option<csv::StringRecord>, ReadError> {
            records.next().transpose().map_err(|e| ReadError::format(path, format!("{what}: {e}")))
        };
        let names = next("header")?.ok_or_else(|| ReadError::format(path, "empty CSV file"))?;
        let second = next("second row")?;
        let three_rows = second.as_ref().map(|r| r.iter().all(|c| KINDS.contains(&c.trim().to_lowercase().as_str()))).unwrap_or(false);
        let (kinds, roles, pending) = if three_rows {
            let roles = next("third row")?.unwrap_or_default();
            (second.unwrap_or_default(), roles, None)
        } else {
            (csv::StringRecord::new(), csv::StringRecord::new(), second)
        };
        let mut wavenumbers = Vec::new();
        let mut extra_fields = Vec::new();
        let mut plan = Vec::with_capacity(names.len());
        let mut has_class = false;
        for (i, name) in names.iter().enumerate() {
            let name = name.trim();
            let kind = kinds.get(i).unwrap_or("").trim().to_lowercase();
            let role = roles.get(i).unwrap_or("").trim().to_lowercase();
            let numeric = name.parse::<f64>().ok().filter(|v| v.is_finite());
            let r = if role == "ignore" || role == "i" {
                Role::Ignore
            } else if role == "class" || (!three_rows && name.eq_ignore_ascii_case(CLASS)) {
                if has_class {
                    Role::Extra(push_extra(&mut extra_fields, name))
                } else {
                    has_class = true;
                    Role::Class
                }
            } else if name.eq_ignore_ascii_case("map_x") {
                Role::X
            } else if name.eq_ignore_ascii_case("map_y") {
                Role::Y
            } else if let (Some(w), true) = (numeric, role.is_empty() && (kind.is_empty() || kind.starts_with('c'))) {
                wavenumbers.push(w);
                Role::Spectral(wavenumbers.len() - 1)
            } else {
                Role::Extra(push_extra(&mut extra_fields, name))
            };
            plan.push(r);
        }
        if wavenumbers.is_empty() {
            return Err(ReadError::format(path, "no spectral columns: no column name is a wavenumber"));
        }
        schema::check_axis(&wavenumbers).map_err(|e| ReadError::schema(path, e))?;
        let mut fields = Vec::new();
        if has_class {
            fields.push(Field::new(CLASS, DataType::Utf8, true));
        }
        let n_extra = extra_fields.len();
        fields.extend(extra_fields);
        let schema = spectra_schema_with(&wavenumbers, fields).map_err(|e| ReadError::schema(path, e))?;
        let x_col = plan.iter().position(|r| matches!(r, Role::X));
        let y_col = plan.iter().position(|r| matches!(r, Role::Y));
        let window = match (TableWindow::new(path, opts.window, x_col.is_some() && y_col.is_some())?, x_col, y_col) {
            (Some(w), Some(x), Some(y)) => Some((w, x, y)),
            _ => None,
        };
        let info = ImageInfo {
            format: Format::OrangeCsv,
            width: None,
            height: None,
            n_spectra: 0,
            data_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            wavenumbers,
        };
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            schema,
            info,
            roles: plan,
            n_extra,
            has_class,
            sample: opts.sample.clone(),
            batch_rows: opts.batch_rows,
            row: 0,
            pending,
            window,
            done: false,
        })
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>, ReadError> {
        let n = self.info.wavenumbers.len();
        let mut values = Vec::with_capacity(self.batch_rows * n);
        let mut xs = Vec::with_capacity(self.batch_rows);
        let mut ys = Vec::with_capacity(self.batch_rows);
        let mut classes: Vec<Option<String>> = Vec::new();
        let mut extras: Vec<Vec<Option<String>>> = vec![Vec::new(); self.n_extra];
        let mut record = csv::StringRecord::new();
        let mut spectrum = vec![f32::NAN; n];
        while xs.len() < self.batch_rows {
            if let Some(r) = self.pending.take() {
                record = r;
            } else if !self.reader.read_record(&mut record).map_err(|e| ReadError::format(&self.path, e.to_string()))? {
                break;
            }
            let line = self.row + 1;
            if record.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            if record.len() > self.roles.len() {
                return Err(ReadError::format(
                    &self.path,
                    format!("data row {line} has {} fields, the header {}", record.len(), self.roles.len()),
                ));
            }
            if let Some((w, xc, yc)) = &mut self.window {
                let x = coordinate(&self.path, record.get(*xc).unwrap_or("").trim(), line)?;
                let y = coordinate(&self.path, record.get(*yc).unwrap_or("").trim(), line)?;
                if !w.keep(x, y) {
                    self.row += 1;
                    continue;
                }
            }
            spectrum.fill(f32::NAN);
            let (mut x, mut y) = (self.row as u32, 0u32);
            let mut class = None;
            for (i, role) in self.roles.iter().enumerate() {
                let cell = record.get(i).unwrap_or("").trim();
                match role {
                    Role::Spectral(j) => {
                        spectrum[*j] = parse_value(cell).ok_or_else(|| {
                            ReadError::format(&self.path, format!("data row {line}, column {}: `{cell}` is not a number", i + 1))
                        })?
                    }
                    Role::Class => class = (!cell.is_empty() && cell != "?").then(|| cell.to_string()),
                    Role::X | Role::Y => {
                        let v = coordinate(&self.path, cell, line)?;
                        if matches!(role, Role::X) {
                            x = v
                        } else {
                            y = v
                        }
                    }
                    Role::Extra(j) => extras[*j].push((!cell.is_empty()).then(|| cell.to_string())),
                    Role::Ignore => {}
                }
            }
            values.extend_from_slice(&spectrum);
            xs.push(x);
            ys.push(y);
            classes.push(class);
            self.row += 1;
        }
        if xs.is_empty() {
            // The end: an error if a window selected nothing.
            return match self.window.as_mut().and_then(|(w, _, _)| w.end(&self.path)) {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        let rows = xs.len();
        let sample: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(self.sample.as_str(), rows)));
        let base = schema::SpectraBatchBuilder::from_columns(
            schema::spectra_schema(&self.info.wavenumbers).map_err(|e| ReadError::schema(&self.path, e))?,
            sample,
            xs,
            ys,
            values,
        )
        .map_err(|e| ReadError::schema(&self.path, e))?;
        let mut columns = base.columns().to_vec();
        if self.has_class {
            columns.push(Arc::new(StringArray::from(classes)));
        }
        for e in extras {
            columns.push(Arc::new(StringArray::from(e)));
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map(Some).map_err(|e| ReadError::format(&self.path, e.to_string()))
    }
}

/// A `map_x`/`map_y` cell of data row `line` as a pixel coordinate.
fn coordinate(path: &Path, cell: &str, line: u64) -> Result<u32, ReadError> {
    cell.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0 && v.fract() == 0.0 && *v <= u32::MAX as f64)
        .map(|v| v as u32)
        .ok_or_else(|| ReadError::format(path, format!("data row {line}: map coordinate `{cell}` is not a non-negative integer")))
}

fn push_extra(fields: &mut Vec<Field>, name: &str) -> usize {
    fields.push(Field::new(name, DataType::Utf8, true));
    fields.len() - 1
}

fn parse_value(cell: &str) -> Option<f32> {
    if cell.is_empty() || cell == "?" || cell.eq_ignore_ascii_case("nan") {
        return Some(f32::NAN);
    }
    cell.parse::<f32>().ok()
}

impl Iterator for OrangeCsvReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.read_batch().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

impl SpectraReader for OrangeCsvReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}
