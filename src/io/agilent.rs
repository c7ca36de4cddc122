//! Agilent Resolutions Pro FPA images: single tiles (`.dat` + `.bsp`) and mosaics (`.dmt` header +
//! `<stem>_XXXX_YYYY.dmd` tiles), read tile by tile, never the whole mosaic at once.
//!
//! Layout (checked against the reference Python reader `agilent_format` 0.4.7, whose output on
//! `../shared/data/agilent/` the tests reproduce exactly): a tile file is little-endian f32, a
//! 255-float (1020-byte) preamble, then `points × fpa × fpa` values band-sequential, rows top to
//! bottom; `fpa = sqrt((n_floats − 255) / points)`. The header (`.bsp` for a tile, `.dmt` for a
//! mosaic) holds the point spacing (f64 at byte 2216), the start point (i32 at 2228) and the number
//! of points (i32 at 2236); `wavenumber[i] = spacing × (start + i)`. Mosaic tile `XXXX` is the tile
//! column (left to right) and `YYYY` the tile row counted from the *bottom*: tile (x, y) covers
//! image rows `(ytiles − 1 − y) × fpa ..` and columns `x × fpa ..`.
//!
//! Spectra come tile by tile (tiles from the top tile row down, left to right; each tile's pixels
//! row-major), so a mosaic's whole read is not row-major over the image. With a
//! [`Window`](super::Window) the reader opens only the tiles the window touches and yields their
//! pixels inside it in the same order, with the same `x`, `y`, as the whole read; each block of
//! rows costs one read per band spanning the window's columns of those rows (a tile row is
//! `fpa × 4` bytes, less than a page, so the span touches the same pages as the rows themselves).
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::atomic::write_atomic;
use super::layout::{transpose_append, transpose_ptr_append, ROW_PAD};
use super::mapped::MappedFile;
use super::window::clip_to_image;
use super::{band_range, Format, ImageCube, ImageInfo, ReadError, ReadOptions, SpectraReader, Window};
use crate::operators::schema::{image_batch, spectra_schema};

/// Floats before the data in every tile file.
pub const PREAMBLE_FLOATS: u64 = 255;
const OFFSET_SPACING: u64 = 2216;
const OFFSET_START: u64 = 2228;
const OFFSET_POINTS: u64 = 2236;
const HEADER_MIN_BYTES: u64 = OFFSET_POINTS + 4;
/// Largest number of points a header may claim (far beyond any instrument).
const MAX_POINTS: i64 = 1 << 20;
/// Size of the header that [`write_mosaic`] and [`write_tile`] produce.
const WRITTEN_HEADER_BYTES: usize = 4096;

/// The sibling of `path` with extension `ext`, matched case-insensitively on stem and extension
/// (instrument files mix cases, e.g. `5_mosaic_agg1024.dmt` beside `5_Mosaic_agg1024.dat`).
pub fn companion(path: &Path, ext: &str) -> Option<PathBuf> {
    let stem = path.file_stem()?.to_str()?.to_lowercase();
    let want = format!("{stem}.{}", ext.to_lowercase());
    let exact = path.with_extension(ext);
    if exact.is_file() {
        return Some(exact);
    }
    let dir = parent_dir(path);
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).map(|n| n.to_lowercase() == want).unwrap_or(false))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The spectral axis stored in a `.bsp`/`.dmt` header.
#[derive(Debug, Clone, PartialEq)]
pub struct AgilentHeader {
    /// Point spacing, cm⁻¹.
    pub spacing: f64,
    /// Index of the first point.
    pub start: i32,
    /// Number of points per spectrum.
    pub points: u32,
}

impl AgilentHeader {
    /// `spacing × (start + i)` for every point.
    pub fn wavenumbers(&self) -> Vec<f64> {
        (0..self.points).map(|i| self.spacing * (self.start as f64 + i as f64)).collect()
    }
}

/// Reads and validates the axis fields of a `.bsp` or `.dmt` header.
pub fn read_header(path: &Path) -> Result<AgilentHeader, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
    let len = file.metadata().map_err(|e| ReadError::io(path, e))?.len();
    if len < HEADER_MIN_BYTES {
        return Err(ReadError::format(
            path,
            format!(
                "the header file is truncated: an Agilent header (.bsp, .dmt) holds its axis fields in its first {HEADER_MIN_BYTES} bytes, \
                 this one has {len}"
            ),
        ));
    }
    let mut buf = [0u8; (HEADER_MIN_BYTES - OFFSET_SPACING) as usize];
    file.read_exact_at(&mut buf, OFFSET_SPACING).map_err(|e| ReadError::io(path, e))?;
    let at = |off: u64| (off - OFFSET_SPACING) as usize;
    let spacing = f64::from_le_bytes(buf[at(OFFSET_SPACING)..at(OFFSET_SPACING) + 8].try_into().expect("8 bytes"));
    let start = i32::from_le_bytes(buf[at(OFFSET_START)..at(OFFSET_START) + 4].try_into().expect("4 bytes"));
    let points = i32::from_le_bytes(buf[at(OFFSET_POINTS)..at(OFFSET_POINTS) + 4].try_into().expect("4 bytes"));
    if !(spacing.is_finite() && spacing > 0.0) {
        return Err(ReadError::header(path, "point spacing", format!("{spacing} is not a positive number")));
    }
    if start < 0 {
        return Err(ReadError::header(path, "start point", format!("{start} is negative")));
    }
    if points < 1 || points as i64 > MAX_POINTS {
        return Err(ReadError::header(path, "number of points", format!("{points} is outside 1..={MAX_POINTS}")));
    }
    Ok(AgilentHeader { spacing, start, points: points as u32 })
}

/// The FPA side of a tile file of `bytes` bytes holding spectra of `points` points.
fn fpa_size(path: &Path, bytes: u64, points: u32) -> Result<u32, ReadError> {
    let bad = |reason: String| ReadError::format(path, reason);
    if !bytes.is_multiple_of(4) {
        return Err(bad(format!("size {bytes} bytes is not a whole number of f32 values")));
    }
    let floats = bytes / 4;
    if floats <= PREAMBLE_FLOATS {
        return Err(ReadError::Truncated { path: path.to_path_buf(), expected: (PREAMBLE_FLOATS + points as u64) * 4, actual: bytes });
    }
    let data = floats - PREAMBLE_FLOATS;
    if !data.is_multiple_of(points as u64) {
        return Err(bad(format!("{data} data values do not divide into spectra of {points} points")));
    }
    let pixels = data / points as u64;
    let fpa = (pixels as f64).sqrt().round() as u64;
    if fpa * fpa != pixels || fpa == 0 {
        return Err(bad(format!("{pixels} pixels per tile is not a square focal-plane array")));
    }
    Ok(fpa as u32)
}

/// One tile file, where it sits in the image and the part of it to read.
#[derive(Debug, Clone)]
struct Tile {
    path: PathBuf,
    /// Image column of the tile's first column.
    x0: u32,
    /// Image row of the tile's first row.
    y0: u32,
    /// Tile columns to read, `cols.0 .. cols.1`.
    cols: (u32, u32),
    /// Tile rows to read, `rows.0 .. rows.1`.
    rows: (u32, u32),
}

impl Tile {
    /// The whole `fpa × fpa` tile at image column `x0`, row `y0`.
    fn whole(path: PathBuf, x0: u32, y0: u32, fpa: u32) -> Self {
        Self { path, x0, y0, cols: (0, fpa), rows: (0, fpa) }
    }

    /// Pixels to read.
    fn n_pixels(&self) -> u64 {
        u64::from(self.cols.1 - self.cols.0) * u64::from(self.rows.1 - self.rows.0)
    }
}

/// The tiles that `window` touches (in their order), each limited to its part inside the window.
fn tiles_in(tiles: Vec<Tile>, fpa: u32, window: Window) -> Vec<Tile> {
    let (wx0, wy0, wx1, wy1) = (u64::from(window.x), u64::from(window.y), window.x_end(), window.y_end());
    tiles
        .into_iter()
        .filter_map(|t| {
            let (tx0, ty0) = (u64::from(t.x0), u64::from(t.y0));
            let (tx1, ty1) = (tx0 + u64::from(fpa), ty0 + u64::from(fpa));
            let (c0, c1, r0, r1) = (wx0.max(tx0), wx1.min(tx1), wy0.max(ty0), wy1.min(ty1));
            // Local offsets are below fpa (a u32).
            (c0 < c1 && r0 < r1).then(|| Tile {
                cols: ((c0 - tx0) as u32, (c1 - tx0) as u32),
                rows: ((r0 - ty0) as u32, (r1 - ty0) as u32),
                ..t
            })
        })
        .collect()
}

/// Streams the spectra of an Agilent tile or mosaic, one tile at a time, a band-sequential block of
/// rows per read.
pub struct AgilentReader {
    schema: SchemaRef,
    info: ImageInfo,
    sample: String,
    tiles: Vec<Tile>,
    fpa: u32,
    /// Points per spectrum in the files.
    points: usize,
    /// The points read (see [`band_range`]).
    bands: std::ops::Range<usize>,
    tile: usize,
    row: u32,
    file: Option<File>,
    /// The current tile's data, mapped (`None` where tiles cannot be mapped: then `pread`).
    mapped: Option<MappedFile>,
    /// Whether to map tiles: false once one could not be mapped.
    map_files: bool,
    failed: bool,
    batch_rows: usize,
    /// Slices of the last block still to be yielded (a block is at least one tile row).
    queue: VecDeque<RecordBatch>,
}

impl AgilentReader {
    /// Opens a single tile: `path` is the `.dat` (or any file with the same stem), with its `.bsp`.
    pub fn open_tile(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        let dat = companion(path, "dat").ok_or_else(|| ReadError::format(path, "no .dat data file beside it"))?;
        let bsp = companion(path, "bsp").ok_or_else(|| ReadError::format(path, "no .bsp header beside it"))?;
        let header = read_header(&bsp)?;
        let bytes = file_len(&dat)?;
        let fpa = fpa_size(&dat, bytes, header.points)?;
        let window = clip_to_image(&dat, opts.window, fpa, fpa)?;
        let tiles = tiles_in(vec![Tile::whole(dat, 0, 0, fpa)], fpa, window);
        Self::new(Format::AgilentTile, header, tiles, fpa, fpa, fpa, opts)
    }

    /// Opens a mosaic: `path` is the `.dmt` header; the `.dmd` tiles are found beside it.
    pub fn open_mosaic(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        let dmt = if path.extension().map(|e| e.eq_ignore_ascii_case("dmt")).unwrap_or(false) {
            path.to_path_buf()
        } else {
            companion(path, "dmt").ok_or_else(|| ReadError::format(path, "no .dmt mosaic header beside it"))?
        };
        let header = read_header(&dmt)?;
        let stem = dmt.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_lowercase();
        // Every `<stem>_XXXX_YYYY.dmd` beside the header, matched case-insensitively.
        let mut found: HashMap<(u32, u32), PathBuf> = HashMap::new();
        let dir = parent_dir(&dmt);
        for entry in std::fs::read_dir(dir).map_err(|e| ReadError::io(dir, e))?.flatten() {
            let p = entry.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_lowercase) else { continue };
            let Some(rest) = name.strip_prefix(&stem).and_then(|r| r.strip_suffix(".dmd")) else { continue };
            let parts: Vec<&str> = rest.split('_').collect();
            if let ["", xs, ys] = parts[..] {
                if let (Ok(x), Ok(y)) = (xs.parse::<u32>(), ys.parse::<u32>()) {
                    if xs.len() == 4 && ys.len() == 4 {
                        found.insert((x, y), p);
                    }
                }
            }
        }
        if found.is_empty() {
            return Err(ReadError::format(&dmt, format!("no {stem}_XXXX_YYYY.dmd tiles beside the mosaic header")));
        }
        let xtiles = (0..).take_while(|x| found.contains_key(&(*x, 0))).count() as u32;
        let ytiles = (0..).take_while(|y| found.contains_key(&(0, *y))).count() as u32;
        if xtiles == 0 || ytiles == 0 {
            return Err(ReadError::format(&dmt, "tile _0000_0000.dmd is missing"));
        }
        if found.len() as u64 != xtiles as u64 * ytiles as u64 {
            let missing: Vec<String> = (0..xtiles)
                .flat_map(|x| (0..ytiles).map(move |y| (x, y)))
                .filter(|k| !found.contains_key(k))
                .map(|(x, y)| format!("{x:04}_{y:04}"))
                .take(5)
                .collect();
            let reason = if missing.is_empty() {
                format!("{} tile files do not form a {xtiles}×{ytiles} grid", found.len())
            } else {
                format!("mosaic of {xtiles}×{ytiles} tiles is missing tile(s) {}", missing.join(", "))
            };
            return Err(ReadError::format(&dmt, reason));
        }
        let first = &found[&(0, 0)];
        let first_len = file_len(first)?;
        let fpa = fpa_size(first, first_len, header.points)?;
        let (width, height) = (
            xtiles.checked_mul(fpa).ok_or_else(|| ReadError::format(&dmt, "mosaic too wide"))?,
            ytiles.checked_mul(fpa).ok_or_else(|| ReadError::format(&dmt, "mosaic too tall"))?,
        );
        let mut tiles = Vec::with_capacity(found.len());
        // Image order: top tile row first; tile row y counts from the bottom.
        for row in 0..ytiles {
            let y = ytiles - 1 - row;
            for x in 0..xtiles {
                let path = found[&(x, y)].clone();
                let len = file_len(&path)?;
                if len != first_len {
                    return Err(ReadError::Truncated { path, expected: first_len, actual: len });
                }
                tiles.push(Tile::whole(path, x * fpa, row * fpa, fpa));
            }
        }
        let window = clip_to_image(&dmt, opts.window, width, height)?;
        let tiles = tiles_in(tiles, fpa, window);
        Self::new(Format::AgilentMosaic, header, tiles, fpa, width, height, opts)
    }

    fn new(
        format: Format,
        header: AgilentHeader,
        tiles: Vec<Tile>,
        fpa: u32,
        width: u32,
        height: u32,
        opts: &ReadOptions,
    ) -> Result<Self, ReadError> {
        let axis = header.wavenumbers();
        let bands = band_range(&axis, opts.bands);
        let wavenumbers = axis[bands.clone()].to_vec();
        let schema = spectra_schema(&wavenumbers).map_err(|e| ReadError::schema(&tiles[0].path, e))?;
        let points = header.points as usize;
        let n_spectra = tiles.iter().map(Tile::n_pixels).sum::<u64>();
        let row = tiles.first().map_or(0, |t| t.rows.0);
        let info = ImageInfo {
            format,
            width: Some(width),
            height: Some(height),
            n_spectra,
            wavenumbers,
            data_bytes: n_spectra * bands.len() as u64 * 4,
        };
        Ok(Self {
            schema,
            info,
            sample: opts.sample.clone(),
            tiles,
            fpa,
            points,
            bands,
            tile: 0,
            row,
            file: None,
            mapped: None,
            map_files: true,
            failed: false,
            batch_rows: opts.batch_rows,
            queue: VecDeque::new(),
        })
    }

    fn read_block(&mut self) -> Result<Option<RecordBatch>, ReadError> {
        if self.tile >= self.tiles.len() {
            return Ok(None);
        }
        let tile = self.tiles[self.tile].clone();
        let expected = (PREAMBLE_FLOATS as usize + self.points * self.fpa as usize * self.fpa as usize) as u64 * 4;
        if self.file.is_none() {
            let file = File::open(&tile.path).map_err(|e| ReadError::io(&tile.path, e))?;
            self.mapped = if self.map_files { MappedFile::new(&file, &tile.path, expected, PREAMBLE_FLOATS * 4, expected) } else { None };
            // A file system that cannot map one tile cannot map the next: read them all.
            self.map_files = self.mapped.is_some();
            self.file = Some(file);
        }
        let file = self.file.as_ref().expect("opened above");
        let fpa = self.fpa as usize;
        let (c0, c1) = (tile.cols.0 as usize, tile.cols.1 as usize);
        let width = c1 - c0;
        // About `batch_rows` pixels per block, at least one row.
        let rows_per_block = (self.batch_rows / width).clamp(1, fpa) as u32;
        let rows = rows_per_block.min(tile.rows.1 - self.row) as usize;
        let plane = fpa * fpa;
        // Per band, the span from the block's first window pixel to its last (contiguous rows when
        // the window spans the tile's width).
        let span = (rows - 1) * fpa + width;
        let (nb, b0) = (self.bands.len(), self.bands.start);
        let count = rows * width;
        let mut values = Vec::with_capacity(count * nb);
        let at = |band: usize| (PREAMBLE_FLOATS as usize + band * plane + self.row as usize * fpa + c0) as u64 * 4;
        // The block's pixels as runs contiguous in each plane, `fpa` values apart: one run when
        // the window spans the tile's width, else one per row.
        let (runs, run) = if width == fpa { (1, count) } else { (rows, width) };
        if let Some(map) = self.mapped.as_mut() {
            // The block's span in every band plane read, mapped; each run is one transpose from
            // the page cache.
            let (lo, hi) = (at(b0), at(self.bands.end - 1) + span as u64 * 4);
            // SAFETY: run r reads band b (b0 ≤ b < b0 + nb) at `at(b) + (r × fpa + i) × 4`,
            // i < run, all within `lo .. hi`, inside the tile's data; no address is kept. Tile
            // files are little-endian f32, which is this platform's order (the crate builds only
            // for little-endian targets).
            unsafe {
                map.read(file, lo, hi, |base| {
                    for r in 0..runs {
                        transpose_ptr_append(base.cast::<f32>().add(r * fpa), plane, run, nb, &mut values);
                    }
                })?;
            }
            for r in 0..runs {
                map.touched(lo + (r * fpa * 4) as u64, run as u64 * 4, plane as u64 * 4, nb);
            }
        } else {
            // Without a mapping: one read per band of the span, decoded into a band-major block
            // (one padded span per band), then the same transpose.
            let stride = span + ROW_PAD;
            let mut raw = vec![0u8; span * 4];
            let mut planes = Vec::with_capacity(nb * stride);
            for band in self.bands.clone() {
                file.read_exact_at(&mut raw, at(band)).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        let actual = file.metadata().map(|m| m.len()).unwrap_or(0);
                        ReadError::Truncated { path: tile.path.clone(), expected, actual }
                    } else {
                        ReadError::io(&tile.path, e)
                    }
                })?;
                let (chunks, _) = raw.as_chunks::<4>();
                planes.extend(chunks.iter().map(|c| f32::from_le_bytes(*c)));
                planes.resize(planes.len() + ROW_PAD, 0.0);
            }
            for r in 0..runs {
                transpose_append(&planes, r * fpa, stride, run, nb, &mut values);
            }
        }
        let mut xs = Vec::with_capacity(count);
        let mut ys = Vec::with_capacity(count);
        for r in 0..rows as u32 {
            for c in tile.cols.0..tile.cols.1 {
                xs.push(tile.x0 + c);
                ys.push(tile.y0 + self.row + r);
            }
        }
        self.row += rows as u32;
        if self.row >= tile.rows.1 {
            self.tile += 1;
            self.row = self.tiles.get(self.tile).map_or(0, |t| t.rows.0);
            self.file = None;
            self.mapped = None;
        }
        image_batch(Arc::clone(&self.schema), &self.sample, xs, ys, values).map(Some).map_err(|e| ReadError::schema(&tile.path, e))
    }
}

impl Iterator for AgilentReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(b) = self.queue.pop_front() {
            return Some(Ok(b));
        }
        if self.failed {
            return None;
        }
        match self.read_block() {
            Ok(batch) => {
                let batch = batch?;
                let mut start = 0;
                while start < batch.num_rows() {
                    let len = self.batch_rows.min(batch.num_rows() - start);
                    self.queue.push_back(batch.slice(start, len));
                    start += len;
                }
                self.queue.pop_front().map(Ok)
            }
            Err(e) => {
                self.failed = true;
                self.mapped = None;
                Some(Err(e))
            }
        }
    }
}

impl SpectraReader for AgilentReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}

fn file_len(path: &Path) -> Result<u64, ReadError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| ReadError::io(path, e))
}

/// The Agilent header fields that reproduce `wavenumbers` (which must be ascending and of the form
/// `spacing × (start + i)`).
pub fn header_for_axis(wavenumbers: &[f64]) -> std::io::Result<AgilentHeader> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let n = wavenumbers.len();
    if n < 2 {
        return Err(invalid("an Agilent axis needs at least 2 points".into()));
    }
    let spacing = (wavenumbers[n - 1] - wavenumbers[0]) / (n - 1) as f64;
    if spacing.is_nan() || spacing <= 0.0 {
        return Err(invalid("an Agilent axis must be ascending".into()));
    }
    let start = (wavenumbers[0] / spacing).round();
    let header = AgilentHeader { spacing, start: start as i32, points: n as u32 };
    for (i, (a, b)) in header.wavenumbers().iter().zip(wavenumbers).enumerate() {
        if (a - b).abs() > 1e-6 * b.abs().max(1.0) {
            return Err(invalid(format!("axis point {i} ({b}) is not spacing × (start + i) = {a}: Agilent files cannot store this axis")));
        }
    }
    Ok(header)
}

fn header_bytes(h: &AgilentHeader) -> Vec<u8> {
    let mut buf = vec![0u8; WRITTEN_HEADER_BYTES];
    buf[OFFSET_SPACING as usize..][..8].copy_from_slice(&h.spacing.to_le_bytes());
    buf[OFFSET_START as usize..][..4].copy_from_slice(&h.start.to_le_bytes());
    buf[OFFSET_POINTS as usize..][..4].copy_from_slice(&(h.points as i32).to_le_bytes());
    buf
}

/// The tile file bytes of the `fpa × fpa` block at image column `x0`, row `y0`.
fn tile_bytes(cube: &ImageCube, x0: u32, y0: u32, fpa: u32) -> Vec<u8> {
    let n = cube.n_points();
    let mut out = Vec::with_capacity((PREAMBLE_FLOATS as usize + n * (fpa * fpa) as usize) * 4);
    out.resize(PREAMBLE_FLOATS as usize * 4, 0);
    for band in 0..n {
        for r in 0..fpa {
            for c in 0..fpa {
                out.extend_from_slice(&cube.spectrum(x0 + c, y0 + r)[band].to_le_bytes());
            }
        }
    }
    out
}

/// Writes `cube` as an Agilent mosaic: `<stem>_XXXX_YYYY.dmd` tiles of `fpa × fpa` pixels beside
/// `dmt_path`, then the `.dmt` header last (so a mosaic is discoverable only when complete).
/// Width and height must be multiples of `fpa`; the axis must be ascending and evenly spaced.
pub fn write_mosaic(dmt_path: &Path, cube: &ImageCube, fpa: u32) -> std::io::Result<()> {
    cube.check()?;
    if fpa == 0 || !cube.width.is_multiple_of(fpa) || !cube.height.is_multiple_of(fpa) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}×{} image does not split into {fpa}×{fpa} tiles", cube.width, cube.height),
        ));
    }
    let header = header_for_axis(&cube.wavenumbers)?;
    let stem = dmt_path.file_stem().and_then(|s| s.to_str()).unwrap_or("mosaic");
    let (xtiles, ytiles) = (cube.width / fpa, cube.height / fpa);
    for ty in 0..ytiles {
        for tx in 0..xtiles {
            let y0 = (ytiles - 1 - ty) * fpa;
            let tile = dmt_path.with_file_name(format!("{stem}_{tx:04}_{ty:04}.dmd"));
            write_atomic(&tile, &tile_bytes(cube, tx * fpa, y0, fpa))?;
        }
    }
    write_atomic(dmt_path, &header_bytes(&header))
}

/// Writes a square `cube` as a single Agilent tile: `dat_path` plus the `.bsp` header beside it.
pub fn write_tile(dat_path: &Path, cube: &ImageCube) -> std::io::Result<()> {
    cube.check()?;
    if cube.width != cube.height {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "an Agilent tile is square"));
    }
    let header = header_for_axis(&cube.wavenumbers)?;
    write_atomic(&dat_path.with_extension("bsp"), &header_bytes(&header))?;
    write_atomic(dat_path, &tile_bytes(cube, 0, 0, cube.width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::axis::Band;
    use crate::operators::schema::SpectraLayout;

    fn values(reader: AgilentReader) -> Vec<f32> {
        reader.flat_map(|b| SpectraLayout::values(&b.unwrap()).unwrap().to_vec()).collect()
    }

    /// Where tiles cannot be mapped, the `pread` path gives what the mapped one gives.
    #[test]
    fn reads_without_a_mapping_equal_mapped_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (side, n) = (32u32, 200usize);
        let wavenumbers: Vec<f64> = (0..n).map(|i| 1.9285 * (467 + i) as f64).collect();
        let values_in = (0..side as usize * side as usize * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let cube = ImageCube { width: side, height: side, wavenumbers, values: values_in };
        let dmt = dir.path().join("m.dmt");
        write_mosaic(&dmt, &cube, 16).unwrap();
        for window in [None, Some(Window::new(5, 9, 20, 17))] {
            for bands in [None, Some(Band::new(1000.0, 1200.0))] {
                let opts = ReadOptions { batch_rows: 40, sample: "m".into(), window, bands };
                let mapped = AgilentReader::open_mosaic(&dmt, &opts).unwrap();
                let mut plain = AgilentReader::open_mosaic(&dmt, &opts).unwrap();
                plain.map_files = false;
                let points = mapped.info().wavenumbers.len();
                assert_eq!(points < n, bands.is_some());
                let (a, b) = (values(mapped), values(plain));
                assert!(!a.is_empty());
                assert_eq!(a, b, "{window:?} {bands:?}");
            }
        }
    }
}
