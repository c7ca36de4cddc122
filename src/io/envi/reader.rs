//! The streaming reader of an ENVI data file (see the [module docs](super)).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::header::{data_file_for, header_candidates, header_for, is_hdr, parse_header, ByteOrder, EnviHeader, Interleave, ValueType};
use crate::io::layout::{transpose_append, ROW_PAD};
use crate::io::{Format, ImageInfo, ReadError, ReadOptions, SpectraReader};
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
        // SAFETY: pread initialized all `total` bytes, i.e. `n` f32 values (any bit pattern is a
        // valid f32).
        unsafe { values.set_len(n) };
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
                let tried: Vec<String> =
                    header_candidates(path).iter().filter_map(|c| c.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                ReadError::format(path, format!("no ENVI header found for this data file; tried {} (ignoring case)", tried.join(", ")))
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
            Interleave::Bip if dt == ValueType::F32 && order == ByteOrder::NATIVE => {
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
        image_batch(Arc::clone(&self.schema), &self.sample, xs, ys, values).map_err(|e| ReadError::schema(&self.src.path, e))
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
        Arc::clone(&self.schema)
    }

    fn info(&self) -> &ImageInfo {
        &self.info
    }
}
