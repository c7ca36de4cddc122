//! The lattice of the cores: nearest-neighbour pitch and rotation, integer cell indices linked
//! from neighbour to neighbour, an affine least-squares fit of the cell centres, and the
//! assignment of every object to its cell.
use super::objects::Object;

/// The affine map from cell (col, row) to image position: `origin + col · a + row · b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Affine {
    /// Centre of cell (0, 0).
    pub origin: (f64, f64),
    /// Step from one column to the next.
    pub a: (f64, f64),
    /// Step from one row to the next.
    pub b: (f64, f64),
}

impl Affine {
    /// The nominal lattice: pitches `px`, `py`, rotated by `angle` radians, cell (0, 0) at `origin`.
    pub fn nominal(origin: (f64, f64), px: f64, py: f64, angle: f64) -> Self {
        let (s, c) = angle.sin_cos();
        Self { origin, a: (px * c, px * s), b: (-py * s, py * c) }
    }

    /// The centre of cell (col, row).
    pub fn at(&self, col: i64, row: i64) -> (f64, f64) {
        let (c, r) = (col as f64, row as f64);
        (self.origin.0 + c * self.a.0 + r * self.b.0, self.origin.1 + c * self.a.1 + r * self.b.1)
    }

    /// The nearest cell (col, row) of an image position.
    pub fn cell(&self, x: f64, y: f64) -> (i64, i64) {
        let (dx, dy) = (x - self.origin.0, y - self.origin.1);
        let det = self.a.0 * self.b.1 - self.a.1 * self.b.0;
        let c = (dx * self.b.1 - dy * self.b.0) / det;
        let r = (self.a.0 * dy - self.a.1 * dx) / det;
        (c.round() as i64, r.round() as i64)
    }

    /// Column and row pitch.
    pub fn pitch(&self) -> (f64, f64) {
        (self.a.0.hypot(self.a.1), self.b.0.hypot(self.b.1))
    }

    /// Rotation of the rows against the image x axis, in degrees (positive towards +y).
    pub fn rotation_deg(&self) -> f64 {
        self.a.1.atan2(self.a.0).to_degrees()
    }
}

/// An object's centre (x, y) and its cell (col, row).
pub(super) type Placed = (f64, f64, i64, i64);

/// The median of `v` (sorted in place; `None` when empty).
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// For each object, the vector to its nearest other object at least `min_dist` away and within
/// the cone `accept(dx, dy)`.
fn nearest(objs: &[&Object], min_dist: f64, accept: impl Fn(f64, f64) -> bool) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(objs.len());
    for (i, o) in objs.iter().enumerate() {
        let mut best: Option<(f64, (f64, f64))> = None;
        for (j, p) in objs.iter().enumerate() {
            let (dx, dy) = (p.cx - o.cx, p.cy - o.cy);
            let d = dx.hypot(dy);
            if i == j || d < min_dist || !accept(dx, dy) {
                continue;
            }
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, (dx, dy)));
            }
        }
        out.extend(best.map(|b| b.1));
    }
    out
}

/// Rotation of the nearest-neighbour vectors folded into [−45°, 45°], in degrees (their median).
pub(super) fn rotation(objs: &[&Object], min_dist: f64) -> Option<f64> {
    let mut angles: Vec<f64> = nearest(objs, min_dist, |_, _| true)
        .into_iter()
        .map(|(dx, dy)| {
            let a = dy.atan2(dx).to_degrees();
            a - 90.0 * (a / 90.0).round()
        })
        .collect();
    median(&mut angles)
}

/// Column and row pitch: the median distance to the nearest neighbour within 30° of the rotated
/// x axis, resp. y axis; an axis without neighbours (one row or one column) takes the other's.
pub(super) fn pitches(objs: &[&Object], min_dist: f64, angle_deg: f64) -> Option<(f64, f64)> {
    let (s, c) = angle_deg.to_radians().sin_cos();
    let tan30 = 30f64.to_radians().tan();
    let rot = move |dx: f64, dy: f64| (dx * c + dy * s, -dx * s + dy * c);
    let along = |horizontal: bool| {
        let mut d: Vec<f64> = nearest(objs, min_dist, |dx, dy| {
            let (u, v) = rot(dx, dy);
            if horizontal {
                v.abs() <= u.abs() * tan30
            } else {
                u.abs() <= v.abs() * tan30
            }
        })
        .into_iter()
        .map(|(dx, dy)| dx.hypot(dy))
        .collect();
        median(&mut d)
    };
    match (along(true), along(false)) {
        (Some(px), Some(py)) => Some((px, py)),
        (Some(p), None) | (None, Some(p)) => Some((p, p)),
        (None, None) => None,
    }
}

/// Integer cells (col, row) of the largest group of objects linked by neighbour steps of at most
/// two cells that fit the nominal lattice within 0.35 of a pitch on each axis (breadth-first, from
/// the first object of each group): local steps, so jitter and a slightly wrong pitch do not add
/// up across the slide. Returns (object index, col, row) with the first object at (0, 0).
pub(super) fn linked_cells(objs: &[&Object], px: f64, py: f64, angle_deg: f64) -> Vec<(usize, i64, i64)> {
    let (s, c) = angle_deg.to_radians().sin_cos();
    let n = objs.len();
    let mut edges: Vec<Vec<(usize, i64, i64)>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            let (dx, dy) = (objs[j].cx - objs[i].cx, objs[j].cy - objs[i].cy);
            let (fu, fv) = ((dx * c + dy * s) / px, (-dx * s + dy * c) / py);
            let (du, dv) = (fu.round(), fv.round());
            if du.abs() > 2.0 || dv.abs() > 2.0 || (fu - du).abs() > 0.35 || (fv - dv).abs() > 0.35 {
                continue;
            }
            edges[i].push((j, du as i64, dv as i64));
            edges[j].push((i, -du as i64, -dv as i64));
        }
    }
    let mut cell: Vec<Option<(i64, i64)>> = vec![None; n];
    let mut best: Vec<(usize, i64, i64)> = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    for start in 0..n {
        if cell[start].is_some() {
            continue;
        }
        let mut group = vec![(start, 0, 0)];
        cell[start] = Some((0, 0));
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            let Some((ci, ri)) = cell[i] else { continue };
            for &(j, du, dv) in &edges[i] {
                if cell[j].is_none() {
                    cell[j] = Some((ci + du, ri + dv));
                    group.push((j, ci + du, ri + dv));
                    queue.push_back(j);
                }
            }
        }
        if group.len() > best.len() {
            best = group;
        }
    }
    best
}

/// Least-squares affine fit of `points` (x, y, col, row) given the nominal lattice `nominal`
/// (used for an axis along which no index varies: one row, one column, or one cell).
pub(super) fn fit(points: &[Placed], nominal: Affine) -> Affine {
    let n = points.len() as f64;
    let distinct = |f: fn(&Placed) -> i64| points.iter().any(|p| f(p) != f(&points[0]));
    let (cols_vary, rows_vary) = (distinct(|p| p.2), distinct(|p| p.3));
    let mean = |f: &dyn Fn(&Placed) -> f64| points.iter().map(f).sum::<f64>() / n;
    let (mx, my, mc, mr) = (mean(&|p| p.0), mean(&|p| p.1), mean(&|p| p.2 as f64), mean(&|p| p.3 as f64));
    // Centred sums of the normal equations.
    let (mut scc, mut srr, mut scr, mut sxc, mut sxr, mut syc, mut syr) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y, c, r) in points {
        let (x, y, c, r) = (x - mx, y - my, c as f64 - mc, r as f64 - mr);
        scc += c * c;
        srr += r * r;
        scr += c * r;
        sxc += x * c;
        sxr += x * r;
        syc += y * c;
        syr += y * r;
    }
    let det = scc * srr - scr * scr;
    let (a, b) = if cols_vary && rows_vary && det > 1e-9 * scc * srr {
        let a = ((sxc * srr - sxr * scr) / det, (syc * srr - syr * scr) / det);
        let b = ((sxr * scc - sxc * scr) / det, (syr * scc - syc * scr) / det);
        (a, b)
    } else if cols_vary {
        let a = (sxc / scc, syc / scc);
        (a, (-a.1, a.0))
    } else if rows_vary {
        let b = (sxr / srr, syr / srr);
        ((b.1, -b.0), b)
    } else {
        (nominal.a, nominal.b)
    };
    Affine { origin: (mx - mc * a.0 - mr * b.0, my - mc * a.1 - mr * b.1), a, b }
}
