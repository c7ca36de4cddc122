//! Band-major to pixel-major transposition, shared by the readers of band-sequential layouts
//! (ENVI bsq/bil, Agilent tiles): done in cache-friendly tiles, since a plain strided scatter of
//! ~1500-band spectra is several times slower than the read itself.

/// Values of padding after each decoded band row (bsq, bil), so that rows whose length is a power
/// of two do not all fall into the same cache sets during [`transpose_append`].
pub(crate) const ROW_PAD: usize = 16;

/// Appends `count` pixels of a band-major block to the pixel-major `out`:
/// `out[i * bands + b] = src[b * stride + first + i]` for `i < count`, `b < bands`.
///
/// Works on 16 bands at a time, walking the pixels in order in tiles of 16 × 16 values: the 16
/// source rows are read sequentially and each pixel's 16 values are written together, so both
/// sides stream through memory the way the prefetcher likes (a plain strided scatter is several
/// times slower).
pub(crate) fn transpose_append(src: &[f32], first: usize, stride: usize, count: usize, bands: usize, out: &mut Vec<f32>) {
    const T: usize = 16;
    if count == 0 || bands == 0 {
        return;
    }
    let start = out.len();
    out.resize(start + count * bands, 0.0);
    let Some(dst) = out.get_mut(start..) else { return };
    let mut b0 = 0;
    while b0 < bands {
        let nb = T.min(bands - b0);
        let mut rows: [&[f32]; T] = [&[]; T];
        for (k, row) in rows.iter_mut().enumerate().take(nb) {
            let at = (b0 + k) * stride + first;
            *row = src.get(at..at + count).unwrap_or(&[]);
        }
        let mut i0 = 0;
        if nb == T {
            // Whole 16 × 16 tiles through a local array (fixed sizes: no bounds checks inside).
            let mut tile = [[0f32; T]; T];
            while i0 + T <= count {
                for (t, row) in tile.iter_mut().zip(&rows) {
                    if let Some(seg) = row.get(i0..i0 + T) {
                        t.copy_from_slice(seg);
                    }
                }
                for (j, px) in dst.chunks_exact_mut(bands).skip(i0).take(T).enumerate() {
                    let Some(slots) = px.get_mut(b0..b0 + T) else { break };
                    for (slot, t) in slots.iter_mut().zip(&tile) {
                        *slot = t.get(j).copied().unwrap_or_default();
                    }
                }
                i0 += T;
            }
        }
        // The rest: the last pixels, or a pass of fewer than 16 bands.
        for i in i0..count {
            let at = i * bands + b0;
            let Some(slots) = dst.get_mut(at..at + nb) else { break };
            for (slot, row) in slots.iter_mut().zip(&rows) {
                if let Some(v) = row.get(i) {
                    *slot = *v;
                }
            }
        }
        b0 += nb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_append_equals_the_naive_transpose() {
        for (count, bands, first, pad) in
            [(1, 1, 0, 0), (15, 17, 3, 16), (64, 16, 0, 0), (100, 1504, 7, 16), (129, 31, 0, 5), (16, 48, 2, 0)]
        {
            let stride = first + count + pad;
            let src: Vec<f32> = (0..bands * stride).map(|v| v as f32 * 0.5 - 3.0).collect();
            let mut out = vec![-1.0f32; 3];
            transpose_append(&src, first, stride, count, bands, &mut out);
            let mut naive = vec![-1.0f32; 3];
            for i in 0..count {
                for b in 0..bands {
                    naive.push(src[b * stride + first + i]);
                }
            }
            assert_eq!(out, naive, "count {count}, bands {bands}, first {first}, pad {pad}");
        }
    }
}
