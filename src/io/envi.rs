//! ENVI images: the text header (`.hdr`), a streaming reader of the binary data file and a writer
//! of [`ImageCube`]s.
//!
//! The reader handles the three interleaves (`bsq`, `bil`, `bip`), both byte orders, a header
//! offset and the data types 1 (`u8`), 2 (`i16`), 3 (`i32`), 4 (`f32`), 5 (`f64`) and 12 (`u16`);
//! every value is converted to `f32` (`i32` and `f64` values are rounded to the nearest `f32`).
//! The `wavelength` list is the wavenumber axis; with `wavelength units = Micrometers` or
//! `Nanometers` it is converted to cm⁻¹ (`1e4/λ`, `1e7/λ`), otherwise (`Wavenumber`, absent or
//! `Unknown`) it is taken as cm⁻¹.
//!
//! # Validation
//! [`parse_header`] checks every field before anything is allocated: the `ENVI` magic line, the
//! required fields (`samples`, `lines`, `bands`, `data type`, `interleave`, `wavelength`), their
//! ranges, a finite and strictly monotonic axis with one value per band, and that
//! `header offset + samples × lines × bands × size` fits 64 bits. [`EnviReader::open`] then
//! compares that size with the data file: a smaller file is [`ReadError::Truncated`]; a larger one
//! is accepted (as ENVI tools do) and only the bytes the header describes are read.
//!
//! NaN or infinite values *in the data* are not an error: they are passed on as they are, and the
//! quality-control stages flag such spectra.
//!
//! # Streaming
//! The reader never loads the whole file: it yields batches of at most `batch_rows` spectra in
//! row-major pixel order (row `y` = line, column `x` = sample), a batch possibly spanning several
//! lines or ending mid-line. It holds one batch of values plus, for `bil`, one decoded line:
//! `bip` is one contiguous positioned read per batch, `bil` reads whole lines and transposes them,
//! and `bsq` reads one contiguous segment per band (the batch's pixels of that band plane) and
//! scatters it. A data file that shrinks while it is read ends the stream with a
//! [`ReadError::Truncated`] item.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::atomic::{write_atomic, write_atomic_with};
use super::layout::{transpose_append, ROW_PAD};
use super::{Format, ImageCube, ImageInfo, ReadError, ReadOptions, SpectraReader};
use crate::operators::schema::{check_axis, image_batch, spectra_schema, SchemaError};

/// Largest header file accepted (ENVI headers are text of a few kB; a list of 100 000 bands is
/// still under 2 MiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Extensions tried, in this order, for the data file beside `foo.hdr` (after `foo` itself).
pub const DATA_EXTENSIONS: [&str; 6] = ["img", "dat", "raw", "bsq", "bil", "bip"];

/// ENVI data types ftirflow reads and writes (the value is the ENVI `data type` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// 8-bit unsigned integer (code 1).
    U8 = 1,
    /// 16-bit signed integer (code 2).
    I16 = 2,
    /// 32-bit signed integer (code 3).
    I32 = 3,
    /// 32-bit float (code 4).
    F32 = 4,
    /// 64-bit float (code 5).
    F64 = 5,
    /// 16-bit unsigned integer (code 12).
    U16 = 12,
}

impl DataType {
    /// Every supported data type.
    pub const ALL: [DataType; 6] =
        [DataType::U8, DataType::I16, DataType::I32, DataType::F32, DataType::F64, DataType::U16];

    /// The ENVI `data type` code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::F32 => 4,
            DataType::F64 => 8,
        }
    }

    /// The data type of an ENVI code, `None` for codes ftirflow does not read (complex types 6
    /// and 9, 64-bit integers 14 and 15, unsigned 32-bit 13, and anything else).
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|t| u64::from(t.code()) == code)
    }

    /// Short name (`u8`, `i16`, …).
    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "u8",
            DataType::I16 => "i16",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::U16 => "u16",
        }
    }

    /// True for the integer types (values written to them are rounded and saturated).
    pub fn is_integer(self) -> bool {
        !matches!(self, DataType::F32 | DataType::F64)
    }
}

/// How bands and pixels are laid out in the data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interleave {
    /// Band sequential: one whole image plane per band.
    Bsq,
    /// Band interleaved by line: for each line, one run of samples per band.
    Bil,
    /// Band interleaved by pixel: each pixel's spectrum is contiguous.
    Bip,
}

impl Interleave {
    /// Every interleave.
    pub const ALL: [Interleave; 3] = [Interleave::Bsq, Interleave::Bil, Interleave::Bip];

    /// The header spelling (`bsq`, `bil`, `bip`).
    pub fn name(self) -> &'static str {
        match self {
            Interleave::Bsq => "bsq",
            Interleave::Bil => "bil",
            Interleave::Bip => "bip",
        }
    }

    /// Parses a header value, ignoring case and surrounding spaces.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|i| i.name().eq_ignore_ascii_case(name))
    }
}

/// Byte order of multi-byte values (ENVI `byte order = 0` little endian, `1` big endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Least significant byte first (`byte order = 0`).
    Little,
    /// Most significant byte first (`byte order = 1`).
    Big,
}

impl ByteOrder {
    /// The byte order of this machine.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "little") { ByteOrder::Little } else { ByteOrder::Big };

    /// Both byte orders.
    pub const ALL: [ByteOrder; 2] = [ByteOrder::Little, ByteOrder::Big];

    /// The ENVI `byte order` code.
    pub fn code(self) -> u8 {
        match self {
            ByteOrder::Little => 0,
            ByteOrder::Big => 1,
        }
    }

    /// The byte order of an ENVI code (0 or 1).
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(ByteOrder::Little),
            1 => Some(ByteOrder::Big),
            _ => None,
        }
    }
}

/// The unit of the header's `wavelength` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WavelengthUnits {
    /// cm⁻¹ (`Wavenumber`, or no/`Unknown` unit): taken as is.
    Wavenumber,
    /// µm (`Micrometers`): converted with `1e4 / λ`.
    Micrometers,
    /// nm (`Nanometers`): converted with `1e7 / λ`.
    Nanometers,
}

impl WavelengthUnits {
    /// Parses a `wavelength units` value (case-insensitive; common spellings accepted).
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        match n.as_str() {
            "" | "unknown" | "wavenumber" | "wavenumbers" | "cm-1" | "cm^-1" | "1/cm" | "cm⁻¹" => {
                Some(WavelengthUnits::Wavenumber)
            }
            "micrometers" | "micrometer" | "microns" | "micron" | "um" | "µm" | "μm" => {
                Some(WavelengthUnits::Micrometers)
            }
            "nanometers" | "nanometer" | "nm" => Some(WavelengthUnits::Nanometers),
            _ => None,
        }
    }

    /// The header spelling.
    pub fn name(self) -> &'static str {
        match self {
            WavelengthUnits::Wavenumber => "Wavenumber",
            WavelengthUnits::Micrometers => "Micrometers",
            WavelengthUnits::Nanometers => "Nanometers",
        }
    }

    /// Converts one list value to cm⁻¹.
    pub fn to_wavenumber(self, value: f64) -> f64 {
        match self {
            WavelengthUnits::Wavenumber => value,
            WavelengthUnits::Micrometers => 1e4 / value,
            WavelengthUnits::Nanometers => 1e7 / value,
        }
    }
}

/// A parsed and validated ENVI header.
#[derive(Debug, Clone, PartialEq)]
pub struct EnviHeader {
    /// Columns (pixels per line), ≥ 1.
    pub samples: u32,
    /// Rows, ≥ 1.
    pub lines: u32,
    /// Values per spectrum, ≥ 1.
    pub bands: u32,
    /// Bytes to skip at the start of the data file.
    pub header_offset: u64,
    /// The type of the stored values.
    pub data_type: DataType,
    /// The layout of the stored values.
    pub interleave: Interleave,
    /// The byte order of the stored values.
    pub byte_order: ByteOrder,
    /// The axis in cm⁻¹, one per band in file order (converted from the `wavelength` list).
    pub wavenumbers: Vec<f64>,
    /// The unit the `wavelength` list was written in.
    pub wavelength_units: WavelengthUnits,
    /// The `description` field, if any (without braces).
    pub description: Option<String>,
    /// Every field of the header: lower-case keys with single spaces, values trimmed and without
    /// the braces of `{…}` lists (the last occurrence of a repeated key wins).
    pub fields: BTreeMap<String, String>,
}

impl EnviHeader {
    /// Number of pixels (spectra), `samples × lines`.
    pub fn n_pixels(&self) -> u64 {
        u64::from(self.samples) * u64::from(self.lines)
    }

    /// Bytes of image data (`samples × lines × bands × size`), `None` when that overflows.
    pub fn data_bytes(&self) -> Option<u64> {
        self.n_pixels().checked_mul(u64::from(self.bands))?.checked_mul(self.data_type.size() as u64)
    }

    /// The smallest data file that holds the image (`header offset + data bytes`), `None` when
    /// that overflows.
    pub fn expected_file_size(&self) -> Option<u64> {
        self.data_bytes()?.checked_add(self.header_offset)
    }

    /// The header as ENVI text (the form [`write_cube`] writes; the axis is written in cm⁻¹).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(256 + 24 * self.wavenumbers.len());
        let description = self.description.as_deref().unwrap_or("ftirflow image cube").replace(['{', '}'], "");
        let _ = writeln!(s, "ENVI");
        let _ = writeln!(s, "description = {{{description}}}");
        let _ = writeln!(s, "samples = {}", self.samples);
        let _ = writeln!(s, "lines = {}", self.lines);
        let _ = writeln!(s, "bands = {}", self.bands);
        let _ = writeln!(s, "header offset = {}", self.header_offset);
        let _ = writeln!(s, "file type = ENVI Standard");
        let _ = writeln!(s, "data type = {}", self.data_type.code());
        let _ = writeln!(s, "interleave = {}", self.interleave.name());
        let _ = writeln!(s, "byte order = {}", self.byte_order.code());
        let _ = writeln!(s, "wavelength units = Wavenumber");
        let _ = write!(s, "wavelength = {{");
        for (i, w) in self.wavenumbers.iter().enumerate() {
            let sep = if i + 1 == self.wavenumbers.len() { "" } else { "," };
            // `{}` on f64 prints the shortest text that parses back to the same value.
            let _ = write!(s, "\n {w}{sep}");
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// Reads and validates the ENVI header `hdr_path` (see the [module docs](self) for the checks).
pub fn parse_header(hdr_path: &Path) -> Result<EnviHeader, ReadError> {
    let file = File::open(hdr_path).map_err(|e| ReadError::io(hdr_path, e))?;
    let len = file.metadata().map_err(|e| ReadError::io(hdr_path, e))?.len();
    if len > MAX_HEADER_BYTES {
        return Err(ReadError::format(
            hdr_path,
            format!("header file is {len} bytes, more than the {MAX_HEADER_BYTES} bytes an ENVI header may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_HEADER_BYTES + 1).read_to_end(&mut bytes).map_err(|e| ReadError::io(hdr_path, e))?;
    if bytes.len() as u64 > MAX_HEADER_BYTES {
        return Err(ReadError::format(hdr_path, "header file grew past the largest ENVI header accepted"));
    }
    parse_header_str(hdr_path, &String::from_utf8_lossy(&bytes))
}

/// Parses and validates header `text`; `hdr_path` only names the file in errors.
pub fn parse_header_str(hdr_path: &Path, text: &str) -> Result<EnviHeader, ReadError> {
    let path = hdr_path;
    let fields = parse_fields(path, text)?;
    let get = |key: &str| fields.get(key).map(String::as_str);
    let required = |key: &str| get(key).ok_or_else(|| ReadError::header(path, key, "missing (a required ENVI field)"));

    let samples = dimension(path, "samples", required("samples")?)?;
    let lines = dimension(path, "lines", required("lines")?)?;
    let bands = dimension(path, "bands", required("bands")?)?;

    let code = integer(path, "data type", required("data type")?)?;
    let data_type = DataType::from_code(code).ok_or_else(|| {
        ReadError::header(
            path,
            "data type",
            format!(
                "unsupported data type {code}: ftirflow reads 1 (u8), 2 (i16), 3 (i32), 4 (f32), 5 (f64) and 12 (u16); \
                 complex (6, 9) and 32/64-bit unsigned/64-bit integer (13, 14, 15) data are not supported"
            ),
        )
    })?;

    let raw_interleave = required("interleave")?;
    let interleave = Interleave::from_name(raw_interleave).ok_or_else(|| {
        ReadError::header(
            path,
            "interleave",
            format!("unknown interleave `{}` (expected bsq, bil or bip)", clip(raw_interleave)),
        )
    })?;

    let byte_order = match get("byte order") {
        None => ByteOrder::Little,
        Some(raw) => {
            let code = integer(path, "byte order", raw)?;
            ByteOrder::from_code(code).ok_or_else(|| {
                ReadError::header(
                    path,
                    "byte order",
                    format!("must be 0 (little endian) or 1 (big endian), not {code}"),
                )
            })?
        }
    };

    let header_offset = match get("header offset") {
        None => 0,
        Some(raw) => integer(path, "header offset", raw)?,
    };

    let wavelength_units = match get("wavelength units") {
        None => WavelengthUnits::Wavenumber,
        Some(raw) => WavelengthUnits::from_name(raw).ok_or_else(|| {
            ReadError::header(
                path,
                "wavelength units",
                format!("unsupported unit `{}` (expected Wavenumber, Micrometers or Nanometers)", clip(raw)),
            )
        })?,
    };

    let raw_list = get("wavelength").ok_or_else(|| {
        ReadError::header(
            path,
            "wavelength",
            "missing: ftirflow needs the wavenumber axis (one `wavelength` value per band)",
        )
    })?;
    let listed = number_list(path, "wavelength", raw_list)?;
    if listed.len() != bands as usize {
        return Err(ReadError::header(
            path,
            "wavelength",
            format!("lists {} values but the header has bands = {bands}", listed.len()),
        ));
    }
    let mut wavenumbers = Vec::with_capacity(listed.len());
    for (i, &v) in listed.iter().enumerate() {
        if wavelength_units != WavelengthUnits::Wavenumber && v <= 0.0 {
            return Err(ReadError::header(
                path,
                "wavelength",
                format!("value {i} ({v}) must be positive to convert {} to cm⁻¹", wavelength_units.name()),
            ));
        }
        wavenumbers.push(wavelength_units.to_wavenumber(v));
    }
    check_axis(&wavenumbers).map_err(|e| {
        let reason = match e {
            SchemaError::InvalidAxis(m) => m,
            other => other.to_string(),
        };
        ReadError::header(path, "wavelength", reason)
    })?;

    let header = EnviHeader {
        samples,
        lines,
        bands,
        header_offset,
        data_type,
        interleave,
        byte_order,
        wavenumbers,
        wavelength_units,
        description: get("description").map(|d| d.trim().to_string()),
        fields: fields.clone(),
    };
    if header.expected_file_size().is_none() {
        return Err(ReadError::header(
            path,
            "samples/lines/bands",
            format!(
                "{samples} × {lines} × {bands} values of {} bytes plus a {header_offset}-byte offset do not fit 64 bits",
                data_type.size()
            ),
        ));
    }
    Ok(header)
}

/// The first 60 characters of `s` (for error messages about hostile values).
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Lower case, single spaces.
fn normalise_key(k: &str) -> String {
    k.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase()
}

/// Splits header text into fields; checks the magic line and closed braces.
fn parse_fields(path: &Path, text: &str) -> Result<BTreeMap<String, String>, ReadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines();
    match lines.by_ref().map(str::trim).find(|l| !l.is_empty()) {
        Some("ENVI") => {}
        other => {
            return Err(ReadError::format(
                path,
                format!("not an ENVI header: the first line must be `ENVI`, found `{}`", clip(other.unwrap_or(""))),
            ))
        }
    }
    let mut fields = BTreeMap::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.is_empty() || t.starts_with(';') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else { continue };
        let key = normalise_key(k);
        if key.is_empty() {
            continue;
        }
        let v = v.trim();
        let value = match v.strip_prefix('{') {
            None => v.to_string(),
            Some(rest) => {
                let mut body = rest.to_string();
                while !body.contains('}') {
                    match lines.next() {
                        Some(more) => {
                            body.push('\n');
                            body.push_str(more.trim());
                        }
                        None => return Err(ReadError::header(path, key, "the `{` list is never closed by `}`")),
                    }
                }
                match body.split_once('}') {
                    Some((inside, _)) => inside.trim().to_string(),
                    None => body,
                }
            }
        };
        fields.insert(key, value);
    }
    Ok(fields)
}

/// A non-negative integer field.
fn integer(path: &Path, key: &str, raw: &str) -> Result<u64, ReadError> {
    raw.trim()
        .parse::<u64>()
        .map_err(|_| ReadError::header(path, key, format!("`{}` is not a non-negative integer", clip(raw.trim()))))
}

/// An image dimension: an integer in 1..=u32::MAX.
fn dimension(path: &Path, key: &str, raw: &str) -> Result<u32, ReadError> {
    let v = integer(path, key, raw)?;
    if v == 0 {
        return Err(ReadError::header(path, key, "must be at least 1"));
    }
    u32::try_from(v).map_err(|_| ReadError::header(path, key, format!("{v} is larger than {}", u32::MAX)))
}

/// A `{a, b, c}` list of finite numbers (braces already removed; one trailing comma allowed).
fn number_list(path: &Path, key: &str, raw: &str) -> Result<Vec<f64>, ReadError> {
    let mut items: Vec<&str> = raw.split(',').map(str::trim).collect();
    if items.last() == Some(&"") {
        items.pop();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() {
            return Err(ReadError::header(path, key, format!("item {i} is empty")));
        }
        let v: f64 = item
            .parse()
            .map_err(|_| ReadError::header(path, key, format!("item {i} `{}` is not a number", clip(item))))?;
        if !v.is_finite() {
            return Err(ReadError::header(path, key, format!("item {i} `{}` is not finite", clip(item))));
        }
        out.push(v);
    }
    Ok(out)
}

/// True when `path` ends in `.hdr` (any case).
fn is_hdr(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("hdr"))
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The first of `candidates` (all in one directory) that is a file: an exact name first, then a
/// name that differs only in ASCII case (the first in sorted order when several do).
fn find_file(candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(hit) = candidates.iter().find(|c| c.is_file()) {
        return Some(hit.clone());
    }
    let first = candidates.first()?;
    let parent = first.parent().unwrap_or(Path::new(""));
    let dir = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let mut names: Vec<String> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for cand in candidates {
        let Some(want) = cand.file_name().and_then(|n| n.to_str()) else { continue };
        for name in &names {
            if name.eq_ignore_ascii_case(want) {
                let path = parent.join(name);
                if path.is_file() {
                    return Some(path);
                }
            }
        }
    }
    None
}

/// The header names tried for `data_path`: `foo.hdr` and `foo.img.hdr` for `foo.img`.
fn header_candidates(data_path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::with_capacity(4);
    for ext in ["hdr", "HDR"] {
        out.push(data_path.with_extension(ext));
        if data_path.extension().is_some() {
            out.push(with_suffix(data_path, &format!(".{ext}")));
        }
    }
    out
}

/// The ENVI header describing `data_path` (`foo.img` → `foo.hdr` or `foo.img.hdr`, `foo` →
/// `foo.hdr`; upper-case `.HDR` and names differing only in case are found too), `None` if
/// there is none. A `.hdr` path names itself (when it exists).
pub fn header_for(data_path: &Path) -> Option<PathBuf> {
    if is_hdr(data_path) {
        return data_path.is_file().then(|| data_path.to_path_buf());
    }
    find_file(&header_candidates(data_path))
}

/// The data file names tried for `hdr_path`, in order.
fn data_candidates(hdr_path: &Path) -> Vec<PathBuf> {
    let base = hdr_path.with_extension("");
    let mut out = Vec::with_capacity(1 + 2 * DATA_EXTENSIONS.len());
    out.push(base.clone());
    for ext in DATA_EXTENSIONS {
        out.push(with_suffix(&base, &format!(".{ext}")));
    }
    for ext in DATA_EXTENSIONS {
        out.push(with_suffix(&base, &format!(".{}", ext.to_ascii_uppercase())));
    }
    out
}

/// The data file beside the header `hdr_path`, found the way ENVI tools do: for `foo.hdr` the
/// first of `foo`, `foo.img`, `foo.dat`, `foo.raw`, `foo.bsq`, `foo.bil`, `foo.bip` (and the
/// upper-case extensions) that exists, for `foo.img.hdr` `foo.img`. Names that differ only in
/// ASCII case are accepted when no exact name exists (instruments write `5_Mosaic.dat` beside
/// `5_mosaic.hdr`). The error lists every name tried.
pub fn data_file_for(hdr_path: &Path) -> Result<PathBuf, ReadError> {
    let candidates = data_candidates(hdr_path);
    find_file(&candidates).ok_or_else(|| {
        let tried: Vec<String> =
            candidates.iter().filter_map(|c| c.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        ReadError::format(
            hdr_path,
            format!("no data file found beside this ENVI header; tried {} (ignoring case)", tried.join(", ")),
        )
    })
}

/// The data file and the layout facts the read loop needs.
#[derive(Debug)]
struct Source {
    file: File,
    path: PathBuf,
    /// `header offset + data bytes`.
    expected: u64,
}

impl Source {
    /// Fills `buf` from `offset`; a short file is `Truncated`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let actual = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                ReadError::Truncated { path: self.path.clone(), expected: self.expected, actual }
            } else {
                ReadError::io(&self.path, e)
            }
        })
    }
}

impl Source {
    /// Fills `values` (empty, with capacity for at least `n` values) with the `n` native-endian
    /// f32 values at `offset`, reading straight into its spare capacity; a short file is
    /// `Truncated` (and `values` stays empty).
    fn read_into_spare(&self, values: &mut Vec<f32>, n: usize, offset: u64) -> Result<(), ReadError> {
        use std::os::fd::AsRawFd;
        debug_assert!(values.is_empty() && values.capacity() >= n);
        let total = n * std::mem::size_of::<f32>();
        let base = values.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut done = 0usize;
        while done < total {
            // SAFETY: `base + done .. base + total` lies inside the spare capacity of `values`
            // (capacity ≥ n values), which nothing else references; pread writes at most
            // `total - done` bytes there and no Rust reference to the uninitialized bytes exists.
            let got = unsafe {
                libc::pread(self.file.as_raw_fd(), base.add(done).cast(), total - done, (offset + done as u64) as libc::off_t)
            };
            match got {
                0 => {
                    let actual = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                    return Err(ReadError::Truncated { path: self.path.clone(), expected: self.expected, actual });
                }
                g if g < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(ReadError::io(&self.path, e));
                    }
                }
                g => done += g as usize,
            }
        }
        // SAFETY: pread initialized all `total` bytes, i.e. `n` f32 values (any bit pattern is a
        // valid f32).
        unsafe { values.set_len(n) };
        Ok(())
    }
}

/// Appends the values of `raw` (whole values of `dt` in `order`) to `out` as `f32`.
fn decode(raw: &[u8], dt: DataType, order: ByteOrder, out: &mut Vec<f32>) {
    macro_rules! conv {
        ($t:ty, $n:literal) => {{
            let (chunks, _) = raw.as_chunks::<$n>();
            match order {
                ByteOrder::Little => out.extend(chunks.iter().map(|c| <$t>::from_le_bytes(*c) as f32)),
                ByteOrder::Big => out.extend(chunks.iter().map(|c| <$t>::from_be_bytes(*c) as f32)),
            }
        }};
    }
    match dt {
        DataType::U8 => out.extend(raw.iter().map(|&b| f32::from(b))),
        DataType::I16 => conv!(i16, 2),
        DataType::U16 => conv!(u16, 2),
        DataType::I32 => conv!(i32, 4),
        DataType::F64 => conv!(f64, 8),
        DataType::F32 => {
            let (chunks, _) = raw.as_chunks::<4>();
            match order {
                ByteOrder::Little => out.extend(chunks.iter().map(|c| f32::from_le_bytes(*c))),
                ByteOrder::Big => out.extend(chunks.iter().map(|c| f32::from_be_bytes(*c))),
            }
        }
    }
}



/// Streams the spectra of an ENVI image (see the [module docs](self)).
#[derive(Debug)]
pub struct EnviReader {
    header: EnviHeader,
    hdr_path: PathBuf,
    src: Source,
    schema: SchemaRef,
    info: ImageInfo,
    sample: String,
    batch_rows: usize,
    /// Next pixel (row-major index) to read.
    next: u64,
    n_pixels: u64,
    /// Raw bytes of the current read (reused).
    raw: Vec<u8>,
    /// Decoded band segment (bsq) or line (bil), reused.
    decoded: Vec<f32>,
    /// The line held in `decoded` (bil).
    cached_line: Option<u64>,
    done: bool,
}

impl EnviReader {
    /// Opens an ENVI image; `path` is the `.hdr` or the data file. Validates the header and the
    /// data file size; reads no data yet.
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        if opts.batch_rows == 0 {
            return Err(ReadError::format(path, "batch_rows must be at least 1"));
        }
        let (hdr_path, data_path) = if is_hdr(path) {
            (path.to_path_buf(), data_file_for(path)?)
        } else {
            let hdr = header_for(path).ok_or_else(|| {
                let tried: Vec<String> = header_candidates(path)
                    .iter()
                    .filter_map(|c| c.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                ReadError::format(
                    path,
                    format!("no ENVI header found for this data file; tried {} (ignoring case)", tried.join(", ")),
                )
            })?;
            (hdr, path.to_path_buf())
        };
        let header = parse_header(&hdr_path)?;
        let expected = header
            .expected_file_size()
            .ok_or_else(|| ReadError::header(&hdr_path, "samples/lines/bands", "image size does not fit 64 bits"))?;
        let data_bytes = header.data_bytes().unwrap_or(expected);
        if usize::try_from(expected).is_err() {
            return Err(ReadError::header(&hdr_path, "samples/lines/bands", "image is too large for this platform"));
        }
        let file = File::open(&data_path).map_err(|e| ReadError::io(&data_path, e))?;
        let meta = file.metadata().map_err(|e| ReadError::io(&data_path, e))?;
        if !meta.is_file() {
            return Err(ReadError::format(&data_path, "the ENVI data file is not a regular file"));
        }
        if meta.len() < expected {
            return Err(ReadError::Truncated { path: data_path, expected, actual: meta.len() });
        }
        let schema = spectra_schema(&header.wavenumbers).map_err(|e| ReadError::schema(&hdr_path, e))?;
        let n_pixels = header.n_pixels();
        let info = ImageInfo {
            format: Format::Envi,
            width: Some(header.samples),
            height: Some(header.lines),
            n_spectra: n_pixels,
            wavenumbers: header.wavenumbers.clone(),
            data_bytes,
        };
        Ok(Self {
            header,
            hdr_path,
            src: Source { file, path: data_path, expected },
            schema,
            info,
            sample: opts.sample.clone(),
            batch_rows: opts.batch_rows,
            next: 0,
            n_pixels,
            raw: Vec::new(),
            decoded: Vec::new(),
            cached_line: None,
            done: false,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &EnviHeader {
        &self.header
    }

    /// The header file.
    pub fn header_path(&self) -> &Path {
        &self.hdr_path
    }

    /// The data file.
    pub fn data_path(&self) -> &Path {
        &self.src.path
    }

    /// Reads `count` pixels starting at pixel `p0` (row-major) into one batch.
    fn read_batch(&mut self, p0: u64, count: usize) -> Result<RecordBatch, ReadError> {
        let h = &self.header;
        let bands = h.bands as usize;
        let size = h.data_type.size();
        let (dt, order) = (h.data_type, h.byte_order);
        let samples = u64::from(h.samples);
        let offset = h.header_offset;
        // Every offset below is at most `expected`, which was checked to fit u64 (and usize).
        let n_vals = count * bands;
        let mut values: Vec<f32> = Vec::with_capacity(n_vals);
        match h.interleave {
            Interleave::Bip if dt == DataType::F32 && order == ByteOrder::NATIVE => {
                // The common instrument layout: read straight into the output values, no copy
                // and no zeroing first (that memset cost 15 % of the read).
                let at = offset + p0 * (bands * size) as u64;
                self.src.read_into_spare(&mut values, n_vals, at)?;
            }
            Interleave::Bip => {
                let bytes = n_vals * size;
                self.raw.resize(bytes, 0);
                let at = offset + p0 * (bands * size) as u64;
                self.src.read_at(&mut self.raw[..bytes], at)?;
                decode(&self.raw[..bytes], dt, order, &mut values);
            }
            Interleave::Bsq => {
                // One contiguous segment per band plane, decoded band-major, then transposed.
                let bytes = count * size;
                self.raw.resize(bytes, 0);
                self.decoded.clear();
                for b in 0..bands {
                    let at = offset + (b as u64 * self.n_pixels + p0) * size as u64;
                    self.src.read_at(&mut self.raw[..bytes], at)?;
                    decode(&self.raw[..bytes], dt, order, &mut self.decoded);
                    self.decoded.resize(self.decoded.len() + ROW_PAD, 0.0);
                }
                transpose_append(&self.decoded, 0, count + ROW_PAD, count, bands, &mut values);
            }
            Interleave::Bil => {
                let line_vals = samples as usize * bands;
                let line_bytes = line_vals * size;
                let end = p0 + count as u64;
                let mut p = p0;
                while p < end {
                    let y = p / samples;
                    let x0 = p % samples;
                    let x1 = samples.min(x0 + (end - p));
                    if self.cached_line != Some(y) {
                        self.cached_line = None;
                        self.raw.resize(line_bytes, 0);
                        self.src.read_at(&mut self.raw[..line_bytes], offset + y * line_bytes as u64)?;
                        self.decoded.clear();
                        let row_bytes = samples as usize * size;
                        for row in self.raw[..line_bytes].chunks_exact(row_bytes) {
                            decode(row, dt, order, &mut self.decoded);
                            self.decoded.resize(self.decoded.len() + ROW_PAD, 0.0);
                        }
                        self.cached_line = Some(y);
                    }
                    let stride = samples as usize + ROW_PAD;
                    transpose_append(&self.decoded, x0 as usize, stride, (x1 - x0) as usize, bands, &mut values);
                    p += x1 - x0;
                }
            }
        }
        if values.len() != n_vals {
            // Only reachable if a read returned fewer bytes than asked, which read_exact_at rules out.
            return Err(ReadError::Truncated {
                path: self.src.path.clone(),
                expected: self.src.expected,
                actual: self.src.file.metadata().map(|m| m.len()).unwrap_or(0),
            });
        }
        let mut xs = Vec::with_capacity(count);
        let mut ys = Vec::with_capacity(count);
        let w = h.samples;
        let (mut x, mut y) = ((p0 % samples) as u32, (p0 / samples) as u32);
        for _ in 0..count {
            xs.push(x);
            ys.push(y);
            x += 1;
            if x == w {
                x = 0;
                y += 1;
            }
        }
        image_batch(self.schema.clone(), &self.sample, xs, ys, values).map_err(|e| ReadError::schema(&self.src.path, e))
    }
}

impl Iterator for EnviReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.n_pixels {
            return None;
        }
        let remaining = self.n_pixels - self.next;
        let count = usize::try_from(remaining).map_or(self.batch_rows, |r| r.min(self.batch_rows));
        let p0 = self.next;
        match self.read_batch(p0, count) {
            Ok(batch) => {
                self.next = p0 + count as u64;
                if self.next >= self.n_pixels {
                    // Release the buffers as soon as the image is done.
                    self.raw = Vec::new();
                    self.decoded = Vec::new();
                }
                Some(Ok(batch))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let remaining = self.n_pixels.saturating_sub(self.next);
        let batches = remaining.div_ceil(self.batch_rows as u64);
        let n = usize::try_from(batches).unwrap_or(usize::MAX);
        (0, Some(n))
    }
}

impl SpectraReader for EnviReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}

/// How [`write_cube`] stores the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnviWriteOptions {
    /// Layout of the data file.
    pub interleave: Interleave,
    /// Stored type; integer types round to the nearest integer and saturate (NaN becomes 0).
    pub data_type: DataType,
    /// Byte order of multi-byte values.
    pub byte_order: ByteOrder,
    /// Zero bytes written before the data (recorded as `header offset`).
    pub header_offset: u64,
}

impl Default for EnviWriteOptions {
    /// `bip`, `f32`, little endian, no offset.
    fn default() -> Self {
        Self { interleave: Interleave::Bip, data_type: DataType::F32, byte_order: ByteOrder::Little, header_offset: 0 }
    }
}

/// Appends `vals` converted to `dt` in `order` to `out` (integer types: rounded, saturated at the
/// type's bounds, NaN as 0 — what `as` does from a float).
fn encode<'a>(vals: impl Iterator<Item = &'a f32>, dt: DataType, order: ByteOrder, out: &mut Vec<u8>) {
    macro_rules! put {
        (|$v:ident| $conv:expr) => {
            match order {
                ByteOrder::Little => vals.for_each(|&$v| out.extend_from_slice(&$conv.to_le_bytes())),
                ByteOrder::Big => vals.for_each(|&$v| out.extend_from_slice(&$conv.to_be_bytes())),
            }
        };
    }
    match dt {
        DataType::U8 => vals.for_each(|&v| out.push(v.round() as u8)),
        DataType::I16 => put!(|v| (v.round() as i16)),
        DataType::U16 => put!(|v| (v.round() as u16)),
        DataType::I32 => put!(|v| (v.round() as i32)),
        DataType::F32 => put!(|v| v),
        DataType::F64 => put!(|v| f64::from(v)),
    }
}

/// Encodes `vals` and writes them to `out`, in runs of at most 8192 values through `buf`.
fn write_values<'a>(
    mut vals: impl Iterator<Item = &'a f32>,
    dt: DataType,
    order: ByteOrder,
    buf: &mut Vec<u8>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    loop {
        buf.clear();
        encode(vals.by_ref().take(8192), dt, order, buf);
        if buf.is_empty() {
            return Ok(());
        }
        out.write_all(buf)?;
    }
}

/// Writes `cube` as an ENVI image: the header `hdr_path` (with the `wavelength` list in
/// cm⁻¹ and `wavelength units = Wavenumber`) and the data file `hdr_path.with_extension("img")`,
/// whose path is returned. Both are written atomically ([`crate::io::atomic`]; the data file
/// first), so a file appears only when complete. Values are converted to
/// `opts.data_type`; integer types round and saturate (NaN becomes 0).
pub fn write_cube(hdr_path: &Path, cube: &ImageCube, opts: &EnviWriteOptions) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    cube.check()?;
    if cube.width == 0 || cube.height == 0 {
        return Err(Error::new(ErrorKind::InvalidInput, "an ENVI image needs at least one row and one column"));
    }
    check_axis(&cube.wavenumbers).map_err(|e| Error::new(ErrorKind::InvalidInput, format!("image cube axis: {e}")))?;
    let data_path = hdr_path.with_extension("img");
    if data_path == hdr_path {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the ENVI header path must not end in .img (the data file takes that name)",
        ));
    }
    let bands =
        u32::try_from(cube.n_points()).map_err(|_| Error::new(ErrorKind::InvalidInput, "too many bands for ENVI"))?;
    let header = EnviHeader {
        samples: cube.width,
        lines: cube.height,
        bands,
        header_offset: opts.header_offset,
        data_type: opts.data_type,
        interleave: opts.interleave,
        byte_order: opts.byte_order,
        wavenumbers: cube.wavenumbers.clone(),
        wavelength_units: WavelengthUnits::Wavenumber,
        description: Some("ftirflow image cube".to_string()),
        fields: BTreeMap::new(),
    };

    let (dt, order) = (opts.data_type, opts.byte_order);
    let n = cube.n_points();
    let w = cube.width as usize;
    let values = &cube.values;
    let npix = w * cube.height as usize;
    let size = dt.size() as u64;
    // `out` buffers what goes through `Write`; bsq writes at offsets into the file itself.
    write_atomic_with(&data_path, |out| {
        std::io::copy(&mut std::io::repeat(0).take(opts.header_offset), out)?;
        match opts.interleave {
            Interleave::Bip => write_values(values.iter(), dt, order, &mut Vec::with_capacity(1 << 16), out),
            Interleave::Bil => {
                // Each line transposed to band-major order: exactly the bil layout of that line.
                let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
                let mut line = Vec::with_capacity(w * n);
                for y in 0..cube.height as usize {
                    line.clear();
                    transpose_append(values, y * w * n, n, n, w, &mut line);
                    write_values(line.iter(), dt, order, &mut buf, out)?;
                }
                Ok(())
            }
            Interleave::Bsq => {
                // Blocks of pixels transposed to band-major order; each band's run is written at
                // its place in its band plane.
                const PIXELS: usize = 4096;
                let file = out.file()?;
                let mut block = Vec::with_capacity(PIXELS * n);
                let mut buf: Vec<u8> = Vec::with_capacity(PIXELS * dt.size());
                let mut p0 = 0;
                while p0 < npix {
                    let count = PIXELS.min(npix - p0);
                    block.clear();
                    transpose_append(values, p0 * n, n, n, count, &mut block);
                    for (b, run) in block.chunks_exact(count).enumerate() {
                        buf.clear();
                        encode(run.iter(), dt, order, &mut buf);
                        file.write_all_at(&buf, opts.header_offset + (b as u64 * npix as u64 + p0 as u64) * size)?;
                    }
                    p0 += count;
                }
                Ok(())
            }
        }
    })?;
    let text = header.to_text();
    if let Err(e) = write_atomic(hdr_path, text.as_bytes()) {
        // Without its header the data file is an orphan: take it away again.
        let _ = std::fs::remove_file(&data_path);
        return Err(e);
    }
    Ok(data_path)
}
