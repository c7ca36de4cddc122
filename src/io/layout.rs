//! Band-major to pixel-major transposition, shared by the readers of band-sequential layouts
//! (ENVI bsq/bil, Agilent tiles) and the ENVI writer: 16 × 16 tiles transposed in AVX-512
//! registers where the CPU has them (else through a small local array), walked so that both sides
//! stream through memory — a plain strided scatter of ~1500-band spectra is several times slower
//! than the read itself.

/// Values of padding after each decoded band row (bsq, bil), so that rows whose length is a power
/// of two do not all fall into the same cache sets during [`transpose_append`].
pub(crate) const ROW_PAD: usize = 16;

/// Pixels transposed per pass over the bands: the pass's output (at most 1024 spectra of ~1500
/// values, 6 MB) stays in the cache while each band row is read as one stream (measured on a
/// 128 × 128 × 1504 image: 1024 beat 64 and 256 by 1.4–1.6×, and whole batches of 4096 by 1.9×).
const CHUNK: usize = 1024;

/// Appends `count` pixels of a band-major block to the pixel-major `out`:
/// `out[i * bands + b] = src[b * stride + first + i]` for `i < count`, `b < bands`.
///
/// # Panics
/// If `src` does not hold the block (`(bands − 1) × stride + first + count` values): a caller's
/// bug, never a property of the input.
pub(crate) fn transpose_append(src: &[f32], first: usize, stride: usize, count: usize, bands: usize, out: &mut Vec<f32>) {
    if count == 0 || bands == 0 {
        return;
    }
    assert!((bands - 1) * stride + first + count <= src.len(), "transpose_append: the block lies outside its source");
    // SAFETY: every value read, `src[b * stride + first + i]` for b < bands and i < count, lies
    // inside `src` (asserted above).
    unsafe { transpose_ptr_append(src.as_ptr().add(first), stride, count, bands, out) }
}

/// [`transpose_append`] from a raw, possibly unaligned source (a mapped file): appends
/// `out[i * bands + b] = *src.add(b * stride + i)` for `i < count`, `b < bands`, without zeroing
/// the output first.
///
/// # Safety
/// `src.add(b * stride + i)` must be readable as an `f32` (alignment not required) for every
/// `b < bands`, `i < count`.
pub(crate) unsafe fn transpose_ptr_append(src: *const f32, stride: usize, count: usize, bands: usize, out: &mut Vec<f32>) {
    let n = count * bands;
    out.reserve(n);
    let start = out.len();
    // SAFETY: `out` has room for `n` more values (reserved above); the kernels write each of them
    // exactly once (`dst[i * bands + b]`, i < count, b < bands) before `set_len` exposes them, and
    // read only what the caller vouches for.
    unsafe {
        let dst = out.as_mut_ptr().add(start);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            avx512::transpose(src, stride, count, bands, dst);
            out.set_len(start + n);
            return;
        }
        portable(src, stride, count, bands, dst);
        out.set_len(start + n);
    }
}

/// The kernel without SIMD: 16 × 16 tiles through a local array, 16 band rows read in step.
///
/// # Safety
/// As [`transpose_ptr_append`], and `dst.add(i * bands + b)` writable for `i < count`, `b < bands`.
unsafe fn portable(src: *const f32, stride: usize, count: usize, bands: usize, dst: *mut f32) {
    const T: usize = 16;
    let mut c0 = 0;
    while c0 < count {
        let c1 = count.min(c0 + CHUNK);
        let mut b0 = 0;
        while b0 < bands {
            let nb = T.min(bands - b0);
            let mut i0 = c0;
            while i0 < c1 {
                let ni = T.min(c1 - i0);
                let mut tile = [[0f32; T]; T];
                for (k, row) in tile.iter_mut().enumerate().take(nb) {
                    let from = src.add((b0 + k) * stride + i0);
                    for (j, v) in row.iter_mut().enumerate().take(ni) {
                        *v = from.add(j).read_unaligned();
                    }
                }
                for j in 0..ni {
                    let to = dst.add((i0 + j) * bands + b0);
                    for (k, row) in tile.iter().enumerate().take(nb) {
                        to.add(k).write(row[j]);
                    }
                }
                i0 += ni;
            }
            b0 += nb;
        }
        c0 = c1;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The 16 × 16 transpose in registers: `r[k]` holds band k of 16 pixels; the result's `[j]`
    /// holds pixel j's 16 bands.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved, then quadruples: u[4g + m], 128-bit lane L, holds pixel
        // 4L + m at bands 4g .. 4g + 4.
        let t: [__m512; 16] =
            std::array::from_fn(|k| if k % 2 == 0 { _mm512_unpacklo_ps(r[k], r[k + 1]) } else { _mm512_unpackhi_ps(r[k - 1], r[k]) });
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = _mm512_shuffle_ps::<0x44>(a0, b0);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a0, b0);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(a1, b1);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(a1, b1);
        }
        // Lanes gathered across the four quadruples: pixel 4L + m = lane L of u[m], u[4 + m],
        // u[8 + m], u[12 + m].
        let mut out = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let even_lo = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
            let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[m], u[4 + m]);
            let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
            let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + m], u[12 + m]);
            out[m] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
            out[8 + m] = _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi);
            out[4 + m] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
            out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi);
        }
        out
    }

    /// One tile: `rows` (≤ 16) band rows of `cols` (≤ 16) pixels at `src` (row stride `stride`)
    /// to `cols` pixel rows of `rows` values at `dst` (row stride `dstride`). Masked loads and
    /// stores touch nothing outside the tile; a whole tile goes without masks.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile(src: *const f32, stride: usize, rows: usize, cols: usize, dst: *mut f32, dstride: usize) {
        if rows == 16 && cols == 16 {
            let out = transpose16(std::array::from_fn(|k| _mm512_loadu_ps(src.add(k * stride))));
            for (j, v) in out.into_iter().enumerate() {
                _mm512_storeu_ps(dst.add(j * dstride), v);
            }
            return;
        }
        let col_mask: __mmask16 = if cols == 16 { 0xFFFF } else { (1u16 << cols) - 1 };
        let row_mask: __mmask16 = if rows == 16 { 0xFFFF } else { (1u16 << rows) - 1 };
        let out = transpose16(std::array::from_fn(|k| {
            if k < rows {
                _mm512_maskz_loadu_ps(col_mask, src.add(k * stride))
            } else {
                _mm512_setzero_ps()
            }
        }));
        for (j, v) in out.into_iter().enumerate().take(cols) {
            _mm512_mask_storeu_ps(dst.add(j * dstride), row_mask, v);
        }
    }

    /// [`super::portable`] with the tiles transposed in registers.
    ///
    /// # Safety
    /// As [`super::portable`], and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(src: *const f32, stride: usize, count: usize, bands: usize, dst: *mut f32) {
        let mut c0 = 0;
        while c0 < count {
            let c1 = count.min(c0 + super::CHUNK);
            let mut b0 = 0;
            while b0 < bands {
                let rows = 16.min(bands - b0);
                let mut i0 = c0;
                while i0 < c1 {
                    let cols = 16.min(c1 - i0);
                    tile(src.add(b0 * stride + i0), stride, rows, cols, dst.add(i0 * bands + b0), bands);
                    i0 += cols;
                }
                b0 += rows;
            }
            c0 = c1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(src: &[f32], first: usize, stride: usize, count: usize, bands: usize) -> Vec<f32> {
        let mut out = vec![-1.0f32; 3];
        for i in 0..count {
            for b in 0..bands {
                out.push(src[b * stride + first + i]);
            }
        }
        out
    }

    const SHAPES: [(usize, usize, usize, usize); 9] = [
        (1, 1, 0, 0),
        (15, 17, 3, 16),
        (64, 16, 0, 0),
        (100, 1504, 7, 16),
        (129, 31, 0, 5),
        (16, 48, 2, 0),
        (1030, 469, 1, 3),
        (2100, 20, 0, 0),
        (17, 1, 5, 0),
    ];

    #[test]
    fn transpose_append_equals_the_naive_transpose() {
        for (count, bands, first, pad) in SHAPES {
            let stride = first + count + pad;
            let src: Vec<f32> = (0..bands * stride).map(|v| v as f32 * 0.5 - 3.0).collect();
            let mut out = vec![-1.0f32; 3];
            transpose_append(&src, first, stride, count, bands, &mut out);
            assert_eq!(out, naive(&src, first, stride, count, bands), "count {count}, bands {bands}, first {first}, pad {pad}");
        }
    }

    /// Both kernels (the portable one is what a CPU without AVX-512 runs) from an unaligned
    /// source, as a mapped file with an odd header offset gives.
    #[test]
    fn kernels_from_an_unaligned_source_equal_the_naive_transpose() {
        for (count, bands, first, pad) in SHAPES {
            let stride = first + count + pad;
            let src: Vec<f32> = (0..bands * stride).map(|v| v as f32 * 0.25 + 1.0).collect();
            let mut bytes = vec![0u8; 1];
            bytes.extend(src.iter().flat_map(|v| v.to_ne_bytes()));
            let mut out = vec![-1.0f32; 3];
            out.reserve(count * bands);
            // SAFETY: the source block lies inside `bytes` (one byte in), the destination inside
            // the reserved capacity; `set_len` follows the full write.
            unsafe {
                let at = bytes.as_ptr().add(1).cast::<f32>().add(first);
                portable(at, stride, count, bands, out.as_mut_ptr().add(3));
                out.set_len(3 + count * bands);
            }
            let want = naive(&src, first, stride, count, bands);
            assert_eq!(out, want, "portable: count {count}, bands {bands}, first {first}, pad {pad}");
            let mut out = vec![-1.0f32; 3];
            // SAFETY: the source block lies inside `bytes`, one byte in.
            unsafe { transpose_ptr_append(bytes.as_ptr().add(1).cast::<f32>().add(first), stride, count, bands, &mut out) };
            assert_eq!(out, want, "dispatched: count {count}, bands {bands}, first {first}, pad {pad}");
        }
    }
}
