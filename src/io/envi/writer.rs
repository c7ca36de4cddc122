//! The ENVI writer of [`ImageCube`]s.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::header::{ByteOrder, EnviHeader, Interleave, ValueType, WavelengthUnits};
use crate::io::atomic::{write_atomic, write_atomic_with};
use crate::io::layout::transpose_append;
use crate::io::ImageCube;
use crate::operators::schema::check_axis;

/// How [`write_cube`] stores the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnviWriteOptions {
    /// Layout of the data file.
    pub interleave: Interleave,
    /// Stored type; integer types round to the nearest integer and saturate (NaN becomes 0).
    pub data_type: ValueType,
    /// Byte order of multi-byte values.
    pub byte_order: ByteOrder,
    /// Zero bytes written before the data (recorded as `header offset`).
    pub header_offset: u64,
}

impl Default for EnviWriteOptions {
    /// `bip`, `f32`, little endian, no offset.
    fn default() -> Self {
        Self { interleave: Interleave::Bip, data_type: ValueType::F32, byte_order: ByteOrder::Little, header_offset: 0 }
    }
}

/// Appends `vals` converted to `dt` in `order` to `out` (integer types: rounded, saturated at the
/// type's bounds, NaN as 0 — what `as` does from a float).
fn encode<'a>(vals: impl Iterator<Item = &'a f32>, dt: ValueType, order: ByteOrder, out: &mut Vec<u8>) {
    macro_rules! put {
        (|$v:ident| $conv:expr) => {
            match order {
                ByteOrder::Little => vals.for_each(|&$v| out.extend_from_slice(&$conv.to_le_bytes())),
                ByteOrder::Big => vals.for_each(|&$v| out.extend_from_slice(&$conv.to_be_bytes())),
            }
        };
    }
    match dt {
        ValueType::U8 => vals.for_each(|&v| out.push(v.round() as u8)),
        ValueType::I16 => put!(|v| (v.round() as i16)),
        ValueType::U16 => put!(|v| (v.round() as u16)),
        ValueType::I32 => put!(|v| (v.round() as i32)),
        ValueType::F32 => put!(|v| v),
        ValueType::F64 => put!(|v| f64::from(v)),
    }
}

/// Encodes `vals` and writes them to `out`, in runs of at most 8192 values through `buf`.
fn write_values<'a>(
    mut vals: impl Iterator<Item = &'a f32>,
    dt: ValueType,
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
        return Err(Error::new(ErrorKind::InvalidInput, "the ENVI header path must not end in .img (the data file takes that name)"));
    }
    let bands = u32::try_from(cube.n_points()).map_err(|_| Error::new(ErrorKind::InvalidInput, "too many bands for ENVI"))?;
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
