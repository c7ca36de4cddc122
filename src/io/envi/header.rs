//! The ENVI header: the value types, interleaves, byte orders and units it names, its parser and
//! validator, and the lookup of a header's data file (and a data file's header).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::io::ReadError;
use crate::operators::schema::{check_axis, SchemaError};

/// Largest header file accepted (ENVI headers are text of a few kB; a list of 100 000 bands is
/// still under 2 MiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Extensions tried, in this order, for the data file beside `foo.hdr` (after `foo` itself).
pub const DATA_EXTENSIONS: [&str; 6] = ["img", "dat", "raw", "bsq", "bil", "bip"];

/// ENVI data types ftirflow reads and writes (the value is the ENVI `data type` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
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

impl ValueType {
    /// Every supported data type.
    pub const ALL: [ValueType; 6] = [ValueType::U8, ValueType::I16, ValueType::I32, ValueType::F32, ValueType::F64, ValueType::U16];

    /// The ENVI `data type` code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            ValueType::U8 => 1,
            ValueType::I16 | ValueType::U16 => 2,
            ValueType::I32 | ValueType::F32 => 4,
            ValueType::F64 => 8,
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
            ValueType::U8 => "u8",
            ValueType::I16 => "i16",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
            ValueType::U16 => "u16",
        }
    }

    /// True for the integer types (values written to them are rounded and saturated).
    pub fn is_integer(self) -> bool {
        !matches!(self, ValueType::F32 | ValueType::F64)
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
            "" | "unknown" | "wavenumber" | "wavenumbers" | "cm-1" | "cm^-1" | "1/cm" | "cm⁻¹" => Some(WavelengthUnits::Wavenumber),
            "micrometers" | "micrometer" | "microns" | "micron" | "um" | "µm" | "μm" => Some(WavelengthUnits::Micrometers),
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
    pub data_type: ValueType,
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

    /// The header as ENVI text (the form [`write_cube`](super::write_cube) writes; the axis is written in cm⁻¹).
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

/// Reads and validates the ENVI header `hdr_path` (see the [module docs](super) for the checks).
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
    let data_type = ValueType::from_code(code).ok_or_else(|| {
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
        ReadError::header(path, "interleave", format!("unknown interleave `{}` (expected bsq, bil or bip)", clip(raw_interleave)))
    })?;

    let byte_order = match get("byte order") {
        None => ByteOrder::Little,
        Some(raw) => {
            let code = integer(path, "byte order", raw)?;
            ByteOrder::from_code(code)
                .ok_or_else(|| ReadError::header(path, "byte order", format!("must be 0 (little endian) or 1 (big endian), not {code}")))?
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
        ReadError::header(path, "wavelength", "missing: ftirflow needs the wavenumber axis (one `wavelength` value per band)")
    })?;
    let listed = number_list(path, "wavelength", raw_list)?;
    if listed.len() != bands as usize {
        return Err(ReadError::header(path, "wavelength", format!("lists {} values but the header has bands = {bands}", listed.len())));
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
                // Only the line just added is searched for the `}` (searching the whole body
                // each time made a list of one value per line quadratic).
                let mut closed = rest.contains('}');
                while !closed {
                    match lines.next() {
                        Some(more) => {
                            let more = more.trim();
                            closed = more.contains('}');
                            body.push('\n');
                            body.push_str(more);
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
    raw.trim().parse::<u64>().map_err(|_| ReadError::header(path, key, format!("`{}` is not a non-negative integer", clip(raw.trim()))))
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
        let v: f64 = item.parse().map_err(|_| ReadError::header(path, key, format!("item {i} `{}` is not a number", clip(item))))?;
        if !v.is_finite() {
            return Err(ReadError::header(path, key, format!("item {i} `{}` is not finite", clip(item))));
        }
        out.push(v);
    }
    Ok(out)
}

/// True when `path` ends in `.hdr` (any case).
pub(super) fn is_hdr(path: &Path) -> bool {
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
pub(super) fn header_candidates(data_path: &Path) -> Vec<PathBuf> {
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
        let tried: Vec<String> = candidates.iter().filter_map(|c| c.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        ReadError::format(hdr_path, format!("no data file found beside this ENVI header; tried {} (ignoring case)", tried.join(", ")))
    })
}
