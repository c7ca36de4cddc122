//! Readers and writers of spectral images: ENVI, Agilent FPA tiles and mosaics, spectra Parquet
//! tables and Orange-style CSV tables, plus archive discovery. Every reader validates its header
//! against the file size before it allocates and streams record batches of a bounded size in the
//! spectra schema of [`crate::operators::schema`].
mod bands;
mod error;
mod layout;
mod mapped;

pub mod agilent;
pub mod archive;
pub mod atomic;
pub mod envi;
pub mod inspect;
pub mod orange;
pub mod parquet;
pub mod parquet_guard;
pub mod table;
mod window;

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use archive::{discover, ImageEntry};
pub use bands::band_range;
pub use error::ReadError;
pub use window::Window;

/// Default number of spectra per record batch.
pub const DEFAULT_BATCH_ROWS: usize = 1024;

/// Image file formats ftirflow reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ENVI header (`.hdr`) + binary data file.
    Envi,
    /// Agilent single FPA tile (`.dat` + `.bsp`).
    AgilentTile,
    /// Agilent mosaic (`.dmt` + `.dmd` tiles).
    AgilentMosaic,
    /// Spectra table in Parquet (the layout in ARCHITECTURE.md).
    Parquet,
    /// Orange-style CSV table (wavenumbers as column names).
    OrangeCsv,
}

impl Format {
    /// Short lowercase name, as shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Format::Envi => "envi",
            Format::AgilentTile => "agilent-tile",
            Format::AgilentMosaic => "agilent-mosaic",
            Format::Parquet => "parquet",
            Format::OrangeCsv => "orange-csv",
        }
    }

    /// The format of a file named `path`, from its extension (and, for `.dat`, its companions:
    /// a `.dat` with an ENVI `.hdr` beside it is read as ENVI, with a `.bsp` as an Agilent tile).
    pub fn detect(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "hdr" => Some(Format::Envi),
            "dmt" => Some(Format::AgilentMosaic),
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::OrangeCsv),
            "dat" => {
                if agilent::companion(path, "bsp").is_some() {
                    Some(Format::AgilentTile)
                } else if envi::header_for(path).is_some() {
                    Some(Format::Envi)
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

/// Options shared by all readers.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// At most this many spectra per record batch (≥ 1).
    pub batch_rows: usize,
    /// The `sample` id written for images that do not carry their own (all but Parquet tables
    /// with a `sample` column).
    pub sample: String,
    /// Read only the pixels inside this rectangle (image coordinates); `None` reads the whole
    /// image. See [`Window`] for clipping, order and errors.
    pub window: Option<Window>,
    /// Read only the points of the axis inside this range, plus the nearest point outside it on
    /// each side ([`band_range`]); `None` reads whole spectra. Image readers skip the other bytes;
    /// table readers cut their spectra.
    pub bands: Option<crate::operators::axis::Band>,
}

impl ReadOptions {
    /// Options with the default batch size for `sample`, reading the whole image.
    pub fn new(sample: impl Into<String>) -> Self {
        Self { batch_rows: DEFAULT_BATCH_ROWS, sample: sample.into(), window: None, bands: None }
    }

    /// The same options reading only `window`.
    pub fn with_window(self, window: Window) -> Self {
        Self { window: Some(window), ..self }
    }

    /// The same options reading only the points of `band` (see [`ReadOptions::bands`]).
    pub fn with_bands(self, band: Option<crate::operators::axis::Band>) -> Self {
        Self { bands: band, ..self }
    }
}

/// What a reader knows about an image once its header is validated, before any spectrum is read.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// The file format.
    pub format: Format,
    /// Image width in pixels (columns), when the file is an image.
    pub width: Option<u32>,
    /// Image height in pixels (rows), when the file is an image.
    pub height: Option<u32>,
    /// Number of spectra the reader will yield (for an image read through a [`Window`], the
    /// pixels of the clipped window; for a table read through one, the table's rows, an upper
    /// bound; 0 when unknown).
    pub n_spectra: u64,
    /// The wavenumber axis, cm⁻¹, in file order.
    pub wavenumbers: Vec<f64>,
    /// Bytes of spectral data the reader will read (for an image read through a [`Window`], those
    /// of the window's pixels).
    pub data_bytes: u64,
}

/// A reader of one input file: its schema is fixed before the first batch, and it yields record
/// batches of at most `batch_rows` spectra. An `Err` item ends the stream (the file is rejected).
pub trait SpectraReader: Iterator<Item = Result<RecordBatch, ReadError>> + Send {
    /// The output schema (spectra schema, possibly with extra columns such as `class`).
    fn schema(&self) -> SchemaRef;
    /// Header facts.
    fn info(&self) -> &ImageInfo;
}

/// Opens `path` with the reader its format calls for.
pub fn open(path: &Path, opts: &ReadOptions) -> Result<Box<dyn SpectraReader>, ReadError> {
    if path.is_dir() {
        return Err(ReadError::format(
            path,
            "is a directory, not an image file: name one image in it (a .hdr, .dat, .dmt, .parquet or .csv file); \
             convert, preprocess, train and run also take whole directories",
        ));
    }
    let format = Format::detect(path)
        .ok_or_else(|| ReadError::format(path, "unrecognised file type (expected .hdr, .dat+.bsp, .dmt, .parquet or .csv)"))?;
    open_as(path, format, opts)
}

/// Opens `path` as `format`.
pub fn open_as(path: &Path, format: Format, opts: &ReadOptions) -> Result<Box<dyn SpectraReader>, ReadError> {
    if opts.batch_rows == 0 {
        return Err(ReadError::format(path, "batch_rows must be at least 1"));
    }
    Ok(match format {
        Format::Envi => Box::new(envi::EnviReader::open(path, opts)?),
        Format::AgilentTile => Box::new(agilent::AgilentReader::open_tile(path, opts)?),
        Format::AgilentMosaic => Box::new(agilent::AgilentReader::open_mosaic(path, opts)?),
        Format::Parquet => bands::CutReader::wrap(path, Box::new(parquet::ParquetSpectraReader::open(path, opts)?), opts.bands)?,
        Format::OrangeCsv => bands::CutReader::wrap(path, Box::new(orange::OrangeCsvReader::open(path, opts)?), opts.bands)?,
    })
}

/// Reads the whole file into memory-sized batches (a convenience for tests and small files).
pub fn read_all(path: &Path, opts: &ReadOptions) -> Result<Vec<RecordBatch>, ReadError> {
    open(path, opts)?.collect()
}

/// A whole image in memory: `height × width` pixels in row-major order (row `y`, column `x`), each
/// pixel's spectrum contiguous (band-interleaved-by-pixel). Used by the writers and the
/// synthetic archive generator.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCube {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// The axis, cm⁻¹, one per value in each spectrum.
    pub wavenumbers: Vec<f64>,
    /// `height × width × wavenumbers.len()` values.
    pub values: Vec<f32>,
}

impl ImageCube {
    /// Number of points per spectrum.
    pub fn n_points(&self) -> usize {
        self.wavenumbers.len()
    }

    /// The spectrum of pixel (`x`, `y`).
    pub fn spectrum(&self, x: u32, y: u32) -> &[f32] {
        let n = self.n_points();
        let i = (y as usize * self.width as usize + x as usize) * n;
        &self.values[i..i + n]
    }

    /// Checks that the value count matches the dimensions.
    pub fn check(&self) -> std::io::Result<()> {
        let expected = self.width as usize * self.height as usize * self.n_points();
        if self.values.len() != expected || self.n_points() == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("image cube holds {} values, {}×{}×{} expected", self.values.len(), self.height, self.width, self.n_points()),
            ));
        }
        Ok(())
    }
}
