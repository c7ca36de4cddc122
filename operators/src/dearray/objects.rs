//! The objects of a score map: the threshold (given, or Otsu's with a contrast check), connected
//! components with 8-connectivity (two raster passes and a union-find, no recursion) and each
//! object's area, centroid and bounding box.
use ndarray::ArrayView2;

/// Bins of the score histogram of Otsu's threshold.
const BINS: usize = 1024;

/// One connected component of the object map.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Object {
    /// Pixels.
    pub area: usize,
    /// Centroid (x, y), pixel centres at integer coordinates.
    pub cx: f64,
    /// See `cx`.
    pub cy: f64,
    /// Inclusive-exclusive box (x0, y0, x1, y1).
    pub bbox: (usize, usize, usize, usize),
}

/// Why no threshold could be set: the map has no finite score, or one score population.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum NoContrast {
    /// No finite score at all.
    NoData,
    /// Otsu's two populations are not separated enough (the separation found).
    OnePopulation(f64),
}

/// Otsu's threshold of the finite scores on a 1024-bin histogram between their extremes, with the
/// separation `(m_high − m_low) / (σ_high + σ_low)` of the two populations it parts; pixels
/// strictly above the returned value are objects.
pub(super) fn otsu(map: ArrayView2<'_, f32>, min_separation: f64) -> Result<f32, NoContrast> {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in map.iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return Err(NoContrast::NoData);
    }
    if lo == hi {
        return Err(NoContrast::OnePopulation(0.0));
    }
    let width = (f64::from(hi) - f64::from(lo)) / BINS as f64;
    let bin = |v: f32| (((f64::from(v) - f64::from(lo)) / width) as usize).min(BINS - 1);
    // Count, sum and sum of squares per bin, for exact class means and deviations.
    let mut hist = vec![(0u64, 0.0f64, 0.0f64); BINS];
    for &v in map.iter().filter(|v| v.is_finite()) {
        let h = &mut hist[bin(v)];
        h.0 += 1;
        h.1 += f64::from(v);
        h.2 += f64::from(v) * f64::from(v);
    }
    let (n, s, _) = hist.iter().fold((0u64, 0.0, 0.0), |a, h| (a.0 + h.0, a.1 + h.1, a.2 + h.2));
    // Split after bin k (low = bins 0..=k): maximise the between-class variance n0 n1 (m0 − m1)².
    let (mut n0, mut s0, mut best, mut best_k) = (0u64, 0.0f64, -1.0f64, 0usize);
    for (k, h) in hist.iter().enumerate().take(BINS - 1) {
        n0 += h.0;
        s0 += h.1;
        let n1 = n - n0;
        if n0 == 0 || n1 == 0 {
            continue;
        }
        let (m0, m1) = (s0 / n0 as f64, (s - s0) / n1 as f64);
        let between = n0 as f64 * n1 as f64 * (m1 - m0) * (m1 - m0);
        if between > best {
            (best, best_k) = (between, k);
        }
    }
    let stats = |bins: &[(u64, f64, f64)]| {
        let (c, s, q) = bins.iter().fold((0u64, 0.0, 0.0), |a, h| (a.0 + h.0, a.1 + h.1, a.2 + h.2));
        let m = s / c as f64;
        (m, (q / c as f64 - m * m).max(0.0).sqrt())
    };
    let ((m0, sd0), (m1, sd1)) = (stats(&hist[..=best_k]), stats(&hist[best_k + 1..]));
    let separation = if sd0 + sd1 > 0.0 { (m1 - m0) / (sd0 + sd1) } else { f64::INFINITY };
    if separation < min_separation {
        return Err(NoContrast::OnePopulation(separation));
    }
    Ok((f64::from(lo) + (best_k + 1) as f64 * width) as f32)
}

/// The root of `i`, halving the path on the way (iterative).
fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let up = parent[parent[i as usize] as usize];
        parent[i as usize] = up;
        i = up;
    }
    i
}

/// The connected components (8-connectivity) of the pixels scoring above `threshold` (NaN is
/// background), in the raster order of their first pixel.
pub(super) fn objects(map: ArrayView2<'_, f32>, threshold: f32) -> Vec<Object> {
    let (h, w) = map.dim();
    // Provisional labels (1-based; 0 = background), unions recorded in `parent`.
    let mut labels = vec![0u32; h * w];
    let mut parent: Vec<u32> = vec![0];
    for y in 0..h {
        for x in 0..w {
            let v = map[[y, x]];
            if v.is_nan() || v <= threshold {
                continue;
            }
            let mut label = 0u32;
            let neighbour = |yy: usize, xx: usize, label: &mut u32, parent: &mut Vec<u32>| {
                let l = labels[yy * w + xx];
                if l == 0 {
                    return;
                }
                if *label == 0 {
                    *label = l;
                } else {
                    let (a, b) = (find(parent, *label), find(parent, l));
                    if a != b {
                        parent[a.max(b) as usize] = a.min(b);
                    }
                }
            };
            if x > 0 {
                neighbour(y, x - 1, &mut label, &mut parent);
            }
            if y > 0 {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    neighbour(y - 1, xx, &mut label, &mut parent);
                }
            }
            if label == 0 {
                label = parent.len() as u32;
                parent.push(label);
            }
            labels[y * w + x] = label;
        }
    }
    // Final labels in the raster order of each component's first pixel, with the statistics.
    let mut final_of = vec![u32::MAX; parent.len()];
    // Sums of x and y in `cx`, `cy` until the end.
    let mut objs: Vec<Object> = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            if l == 0 {
                continue;
            }
            let root = find(&mut parent, l) as usize;
            if final_of[root] == u32::MAX {
                final_of[root] = objs.len() as u32;
                objs.push(Object { area: 0, cx: 0.0, cy: 0.0, bbox: (x, y, x + 1, y + 1) });
            }
            let o = &mut objs[final_of[root] as usize];
            o.area += 1;
            o.cx += x as f64;
            o.cy += y as f64;
            o.bbox = (o.bbox.0.min(x), o.bbox.1, o.bbox.2.max(x + 1), y + 1);
        }
    }
    for o in &mut objs {
        o.cx /= o.area as f64;
        o.cy /= o.area as f64;
    }
    objs
}
