//! The streaming reader of an ENVI data file (see the [module docs](super)).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::header::{data_file_for, header_candidates, header_for, is_hdr, parse_header, ByteOrder, EnviHeader, Interleave, ValueType};
use crate::io::layout::{transpose_append, transpose_ptr_append, ROW_PAD};
use crate::io::mapped::MappedFile;
use crate::io::window::clip_to_image;
use crate::io::{band_range, Format, ImageInfo, ReadError, ReadOptions, SpectraReader, Window};
use crate::operators::schema::{image_batch, spectra_schema};

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
    /// Appends to `values` (with spare capacity for at least `n` values) the `n` native-endian
    /// f32 values at `offset`, reading straight into its spare capacity; a short file is
    /// `Truncated` (and `values` keeps its length).
    fn read_into_spare(&self, values: &mut Vec<f32>, n: usize, offset: u64) -> Result<(), ReadError> {
        use std::os::fd::AsRawFd;
        if values.capacity() - values.len() < n {
            values.reserve(n);
        }
        let len = values.len();
        let total = n * std::mem::size_of::<f32>();
        let base = values.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut done = 0usize;
        while done < total {
            // SAFETY: `base + done .. base + total` lies inside the spare capacity of `values`
            // (capacity ≥ len + n values, reserved above), which nothing else references; pread writes at most
            // `total - done` bytes there and no Rust reference to the uninitialized bytes exists.
            let got =
                unsafe { libc::pread(self.file.as_raw_fd(), base.add(done).cast(), total - done, (offset + done as u64) as libc::off_t) };
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
        // SAFETY: pread initialized all `total` bytes after the first `len` values, i.e. `n` f32
        // values (any bit pattern is a valid f32), and the capacity holds `len + n`.
        unsafe { values.set_len(len + n) };
        Ok(())
    }
}

/// Appends the values of `raw` (whole values of `dt` in `order`) to `out` as `f32`.
fn decode(raw: &[u8], dt: ValueType, order: ByteOrder, out: &mut Vec<f32>) {
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
        ValueType::U8 => out.extend(raw.iter().map(|&b| f32::from(b))),
        ValueType::I16 => conv!(i16, 2),
        ValueType::U16 => conv!(u16, 2),
        ValueType::I32 => conv!(i32, 4),
        ValueType::F64 => conv!(f64, 8),
        ValueType::F32 => {
            let (chunks, _) = raw.as_chunks::<4>();
            match order {
                ByteOrder::Little => out.extend(chunks.iter().map(|c| f32::from_le_bytes(*c))),
                ByteOrder::Big => out.extend(chunks.iter().map(|c| f32::from_be_bytes(*c))),
            }
        }
    }
}

/// Streams the spectra of an ENVI image (see the [module docs](super)).
#[derive(Debug)]
pub struct EnviReader {
    header: EnviHeader,
    hdr_path: PathBuf,
    src: Source,
    schema: SchemaRef,
    info: ImageInfo,
    sample: String,
    batch_rows: usize,
    /// The pixels read: the clipped window, or the whole image.
    window: Window,
    /// Next pixel to read, as a row-major index into `window`.
    next: u64,
    /// Pixels of `window`.
    n_spectra: u64,
    /// The bands read (indices into the file's axis; see [`crate::io::band_range`]).
    bands: std::ops::Range<usize>,
    /// The runs of the current batch (reused): (first pixel as a row-major image index, count),
    /// each contiguous in the file's pixel order.
    runs: Vec<(u64, usize)>,
    /// Raw bytes of the current read (reused).
    raw: Vec<u8>,
    /// Decoded band segments (bsq) or the window's part of a line (bil), reused.
    decoded: Vec<f32>,
    /// The line held in `decoded` (bil).
    cached_line: Option<u64>,
    /// The data file mapped, for native-order f32 in bsq, bil, and bip when only some bands are
    /// read (`None` otherwise, or where the file cannot be mapped: then `pread`, as for other
    /// types).
    mapped: Option<MappedFile>,
    done: bool,
}

impl EnviReader {
    /// Opens an ENVI image; `path` is the `.hdr` or the data file. Validates the header and the
    /// data file size; reads no data yet.
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self, ReadError> {
        if opts.batch_rows == 0 {
            return Err(ReadError::format(path, "batch_rows must be at least 1"));
        }
        // The header is read before the data file is looked for: a `.hdr` that is not ENVI is
        // reported as such, not as a header without a data file.
        let (hdr_path, header, data_path) = if is_hdr(path) {
            let header = parse_header(path)?;
            (path.to_path_buf(), header, data_file_for(path)?)
        } else {
            let hdr = header_for(path).ok_or_else(|| {
                let tried: Vec<String> =
                    header_candidates(path).iter().filter_map(|c| c.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                ReadError::format(path, format!("no ENVI header found for this data file; tried {} (ignoring case)", tried.join(", ")))
            })?;
            (hdr.clone(), parse_header(&hdr)?, path.to_path_buf())
        };
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
            let (offset, len) = (header.header_offset, meta.len());
            // The data would start past the end, or the whole image fits but not after the
            // offset: the offset is wrong, not the data file.
            if offset > 0 && (len <= offset || len >= data_bytes) {
                return Err(ReadError::header(
                    &hdr_path,
                    "header offset",
                    format!(
                        "{offset} bytes before the data does not fit {}: it has {len} bytes and the image needs {data_bytes} after \
                         the offset (an offset of at most {} would fit)",
                        data_path.display(),
                        len.saturating_sub(data_bytes)
                    ),
                ));
            }
            return Err(ReadError::Truncated { path: data_path, expected, actual: len });
        }
        let window = clip_to_image(&hdr_path, opts.window, header.samples, header.lines)?;
        let n_spectra = window.n_pixels();
        let bands = band_range(&header.wavenumbers, opts.bands);
        // At most the image's data bytes, which fit u64.
        let data_bytes = if opts.window.is_some() || bands.len() < header.wavenumbers.len() {
            n_spectra * bands.len() as u64 * header.data_type.size() as u64
        } else {
            data_bytes
        };
        let wavenumbers = header.wavenumbers[bands.clone()].to_vec();
        let schema = spectra_schema(&wavenumbers).map_err(|e| ReadError::schema(&hdr_path, e))?;
        let info =
            ImageInfo { format: Format::Envi, width: Some(header.samples), height: Some(header.lines), n_spectra, wavenumbers, data_bytes };
        let mappable = header.data_type == ValueType::F32
            && header.byte_order == ByteOrder::NATIVE
            && (header.interleave != Interleave::Bip || bands.len() < header.wavenumbers.len());
        let mapped = if mappable { MappedFile::new(&file, &data_path, expected, header.header_offset, expected) } else { None };
        Ok(Self {
            header,
            hdr_path,
            src: Source { file, path: data_path, expected },
            schema,
            info,
            sample: opts.sample.clone(),
            batch_rows: opts.batch_rows,
            window,
            next: 0,
            n_spectra,
            bands,
            runs: Vec::new(),
            raw: Vec::new(),
            decoded: Vec::new(),
            cached_line: None,
            mapped,
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

    /// Fills `self.runs` with the runs of the window's pixels `k0 .. k0 + count`: one per window
    /// row, or a single one (possibly over several lines) when the window spans the image's width.
    fn plan_runs(&mut self, k0: u64, count: usize) {
        self.runs.clear();
        let samples = u64::from(self.header.samples);
        let w = self.window;
        let (ww, wx, wy) = (u64::from(w.width), u64::from(w.x), u64::from(w.y));
        if ww == samples {
            self.runs.push((wy * samples + k0, count));
            return;
        }
        let (mut k, end) = (k0, k0 + count as u64);
        while k < end {
            let (r, c) = (k / ww, k % ww);
            let len = (ww - c).min(end - k);
            self.runs.push(((wy + r) * samples + wx + c, len as usize));
            k += len;
        }
    }

    /// Reads the `count` pixels of `self.runs` into one batch.
    fn read_batch(&mut self, count: usize) -> Result<RecordBatch, ReadError> {
        let h = &self.header;
        let bands = h.bands as usize;
        let (b0, nb) = (self.bands.start, self.bands.len());
        let whole = nb == bands;
        let size = h.data_type.size();
        let (dt, order) = (h.data_type, h.byte_order);
        let samples = u64::from(h.samples);
        let offset = h.header_offset;
        let plane = h.n_pixels();
        let runs = &self.runs;
        // Every offset below is at most `expected`, which was checked to fit u64 (and usize).
        let n_vals = count * nb;
        let mut values: Vec<f32> = Vec::with_capacity(n_vals);
        match (h.interleave, self.mapped.as_mut()) {
            (Interleave::Bip, _) if dt == ValueType::F32 && order == ByteOrder::NATIVE && whole => {
                // The common instrument layout: read straight into the output values, no copy
                // and no zeroing first (that memset cost 15 % of the read). One read per run.
                for &(p, len) in runs {
                    self.src.read_into_spare(&mut values, len * bands, offset + p * (bands * size) as u64)?;
                }
            }
            (Interleave::Bip, Some(map)) => {
                // Some bands of each spectrum: the runs mapped, one copy per pixel (a read per
                // pixel cost more than reading whole spectra).
                let px = (bands * 4) as u64;
                let (first, _) = runs[0];
                let (last, last_len) = runs[runs.len() - 1];
                let lo = offset + first * px + b0 as u64 * 4;
                let hi = offset + (last + last_len as u64 - 1) * px + (b0 + nb) as u64 * 4;
                // SAFETY: pixel i's points are bytes `offset + i × px + b0 × 4 ..` `+ nb × 4`,
                // within `lo .. hi` for every pixel of the runs; they are copied into the `n_vals`
                // values of capacity, all written before `set_len`; no address is kept.
                unsafe {
                    map.read(&self.src.file, lo, hi, |base| {
                        let dst = values.as_mut_ptr().cast::<u8>();
                        let mut k = 0;
                        for &(p, len) in runs {
                            for i in p..p + len as u64 {
                                std::ptr::copy_nonoverlapping(base.add(((i - first) * px) as usize), dst.add(k * nb * 4), nb * 4);
                                k += 1;
                            }
                        }
                    })?;
                    values.set_len(n_vals);
                }
                for &(p, len) in runs {
                    map.touched(offset + p * px + b0 as u64 * 4, (len as u64 - 1) * px + nb as u64 * 4, 0, 1);
                }
            }
            (Interleave::Bip, None) => {
                for &(p, len) in runs {
                    let bytes = len * bands * size;
                    self.raw.resize(bytes, 0);
                    self.src.read_at(&mut self.raw[..bytes], offset + p * (bands * size) as u64)?;
                    for px in self.raw[..bytes].chunks_exact(bands * size) {
                        decode(&px[b0 * size..(b0 + nb) * size], dt, order, &mut values);
                    }
                }
            }
            (Interleave::Bsq, Some(map)) => {
                // The planes' segments of this batch's runs, mapped: each run is one transpose
                // straight from the page cache, no system call per band (ARCHITECTURE.md, "Readers").
                let (first, _) = runs[0];
                let (last, last_len) = runs[runs.len() - 1];
                let lo = offset + (b0 as u64 * plane + first) * 4;
                let hi = offset + ((self.bands.end - 1) as u64 * plane + last + last_len as u64) * 4;
                let stride = plane as usize;
                // SAFETY: each run reads band b (b0 ≤ b < b0 + nb) at pixels p .. p + len, bytes
                // `offset + (b × plane + i) × 4`, all within `lo .. hi`, inside the data; no
                // address is kept.
                unsafe {
                    map.read(&self.src.file, lo, hi, |base| {
                        for &(p, len) in runs {
                            let at = base.add(((p - first) * 4) as usize).cast::<f32>();
                            transpose_ptr_append(at, stride, len, nb, &mut values);
                        }
                    })?;
                }
                for &(p, len) in runs {
                    map.touched(offset + (b0 as u64 * plane + p) * 4, len as u64 * 4, plane * 4, nb);
                }
            }
            (Interleave::Bsq, None) => {
                // One contiguous segment per band plane and run, decoded band-major, then
                // transposed.
                self.decoded.clear();
                for b in self.bands.clone() {
                    for &(p, len) in runs {
                        let bytes = len * size;
                        self.raw.resize(bytes, 0);
                        let at = offset + (b as u64 * plane + p) * size as u64;
                        self.src.read_at(&mut self.raw[..bytes], at)?;
                        decode(&self.raw[..bytes], dt, order, &mut self.decoded);
                    }
                    self.decoded.resize(self.decoded.len() + ROW_PAD, 0.0);
                }
                transpose_append(&self.decoded, 0, count + ROW_PAD, count, nb, &mut values);
            }
            (Interleave::Bil, Some(map)) => {
                // The lines of this batch mapped; each line's part of a run is one transpose of
                // its band rows.
                let line_bytes = samples * (bands * 4) as u64;
                let row_bytes = samples * 4;
                let stride = samples as usize;
                // The parts of lines the runs cover: (file byte of band b0 at the part's first
                // pixel, pixels).
                let mut parts = Vec::with_capacity(runs.len());
                for &(p0, len) in runs {
                    let (mut p, end) = (p0, p0 + len as u64);
                    while p < end {
                        let (y, x0) = (p / samples, p % samples);
                        let n = (samples - x0).min(end - p);
                        parts.push((offset + y * line_bytes + b0 as u64 * row_bytes + x0 * 4, n as usize));
                        p += n;
                    }
                }
                // From the first part's first value to the last part's last band's end.
                let (lo, _) = parts[0];
                let (last, last_n) = parts[parts.len() - 1];
                let hi = last + (nb - 1) as u64 * row_bytes + last_n as u64 * 4;
                // SAFETY: a part reads band b (b0 ≤ b < b0 + nb) at bytes `at + (b − b0) ×
                // row_bytes + i × 4`, i < n, all within `lo .. hi`, inside the data; no address
                // is kept.
                unsafe {
                    map.read(&self.src.file, lo, hi, |base| {
                        for &(at, n) in &parts {
                            transpose_ptr_append(base.add((at - lo) as usize).cast::<f32>(), stride, n, nb, &mut values);
                        }
                    })?;
                }
                for &(at, n) in &parts {
                    map.touched(at, n as u64 * 4, row_bytes, nb);
                }
            }
            (Interleave::Bil, None) => {
                // The window's columns of one line, decoded band-major and cached: the whole line
                // in one read when the window spans the width, else one read per band.
                let line_bytes = samples as usize * bands * size;
                let (wx, ww) = (u64::from(self.window.x), self.window.width as usize);
                let stride = ww + ROW_PAD;
                for &(p0, len) in runs {
                    let end = p0 + len as u64;
                    let mut p = p0;
                    while p < end {
                        let y = p / samples;
                        let x0 = p % samples;
                        let x1 = samples.min(x0 + (end - p));
                        if self.cached_line != Some(y) {
                            self.cached_line = None;
                            self.decoded.clear();
                            let line_at = offset + y * line_bytes as u64;
                            if ww as u64 == samples {
                                // The read bands' rows of the line, contiguous.
                                let row_bytes = samples as usize * size;
                                let bytes = nb * row_bytes;
                                self.raw.resize(bytes, 0);
                                self.src.read_at(&mut self.raw[..bytes], line_at + (b0 * row_bytes) as u64)?;
                                for row in self.raw[..bytes].chunks_exact(row_bytes) {
                                    decode(row, dt, order, &mut self.decoded);
                                    self.decoded.resize(self.decoded.len() + ROW_PAD, 0.0);
                                }
                            } else {
                                let bytes = ww * size;
                                self.raw.resize(bytes, 0);
                                for b in self.bands.clone() {
                                    let at = line_at + (b as u64 * samples + wx) * size as u64;
                                    self.src.read_at(&mut self.raw[..bytes], at)?;
                                    decode(&self.raw[..bytes], dt, order, &mut self.decoded);
                                    self.decoded.resize(self.decoded.len() + ROW_PAD, 0.0);
                                }
                            }
                            self.cached_line = Some(y);
                        }
                        transpose_append(&self.decoded, (x0 - wx) as usize, stride, (x1 - x0) as usize, nb, &mut values);
                        p += x1 - x0;
                    }
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
        for &(p, len) in runs {
            let (mut x, mut y) = ((p % samples) as u32, (p / samples) as u32);
            for _ in 0..len {
                xs.push(x);
                ys.push(y);
                x += 1;
                if x == w {
                    x = 0;
                    y += 1;
                }
            }
        }
        image_batch(Arc::clone(&self.schema), &self.sample, xs, ys, values).map_err(|e| ReadError::schema(&self.src.path, e))
    }
}

impl Iterator for EnviReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.n_spectra {
            return None;
        }
        let remaining = self.n_spectra - self.next;
        let count = usize::try_from(remaining).map_or(self.batch_rows, |r| r.min(self.batch_rows));
        let k0 = self.next;
        self.plan_runs(k0, count);
        match self.read_batch(count) {
            Ok(batch) => {
                self.next = k0 + count as u64;
                if self.next >= self.n_spectra {
                    // Release the buffers as soon as the image is done.
                    self.raw = Vec::new();
                    self.decoded = Vec::new();
                    self.mapped = None;
                }
                Some(Ok(batch))
            }
            Err(e) => {
                self.done = true;
                self.mapped = None;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let remaining = self.n_spectra.saturating_sub(self.next);
        let batches = remaining.div_ceil(self.batch_rows as u64);
        let n = usize::try_from(batches).unwrap_or(usize::MAX);
        (0, Some(n))
    }
}

impl SpectraReader for EnviReader {
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
    use crate::io::envi::{write_cube, EnviWriteOptions};
    use crate::io::ImageCube;
    use crate::operators::axis::Band;
    use crate::operators::schema::SpectraLayout;

    fn values(reader: EnviReader) -> Vec<f32> {
        reader.flat_map(|b| SpectraLayout::values(&b.unwrap()).unwrap().to_vec()).collect()
    }

    /// Where a file cannot be mapped, the `pread` paths give what the mapped ones give.
    #[test]
    fn reads_without_a_mapping_equal_mapped_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h, n) = (37u32, 29u32, 40usize);
        let wavenumbers: Vec<f64> = (0..n).map(|i| 900.0 + 25.0 * i as f64).collect();
        let values_in = (0..w as usize * h as usize * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let cube = ImageCube { width: w, height: h, wavenumbers, values: values_in };
        for interleave in Interleave::ALL {
            let hdr = dir.path().join(format!("c_{}.hdr", interleave.name()));
            write_cube(&hdr, &cube, &EnviWriteOptions { interleave, ..Default::default() }).unwrap();
            for window in [None, Some(Window::new(3, 2, 20, 25))] {
                for bands in [None, Some(Band::new(1000.0, 1500.0))] {
                    let opts = ReadOptions { batch_rows: 64, sample: "x".into(), window, bands };
                    let mapped = EnviReader::open(&hdr, &opts).unwrap();
                    let whole_bip = interleave == Interleave::Bip && bands.is_none();
                    assert_eq!(mapped.mapped.is_some(), !whole_bip, "{interleave:?} {bands:?}");
                    let mut plain = EnviReader::open(&hdr, &opts).unwrap();
                    plain.mapped = None;
                    assert_eq!(values(mapped), values(plain), "{interleave:?} {window:?} {bands:?}");
                }
            }
        }
    }
}
