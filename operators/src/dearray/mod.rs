//! De-arraying of a tissue microarray slide: a score map of the whole slide (higher = tissue or
//! paraffin, low = bare slide) → the cores on their grid, each named by its position (`B3`).
//!
//! # Method
//!
//! 1. **Objects.** Pixels scoring above the threshold ([`DearrayParams::threshold`], or Otsu's
//!    threshold of the finite scores when it is not given) are object pixels; NaN is background.
//!    Without a given threshold, the two score populations Otsu parts must be separated by at
//!    least [`DearrayParams::min_separation`], or the map is taken for bare slide. Objects are the
//!    connected components with 8-connectivity (two raster passes and a union-find).
//! 2. **Fragments.** The typical object area is the area-weighted median (the area of the object
//!    holding the median object pixel). Objects smaller than
//!    [`DearrayParams::min_object_fraction`] of it are fragments: they take no part in the fit.
//! 3. **One core.** One object that is not a fragment, or several whose union fits in one core
//!    (its box no larger than 1.25 diameters), is [`Dearray::Single`]: a single core stays one
//!    core.
//! 4. **Rotation and pitch.** For every object, the nearest other object at least ¾ of a core
//!    diameter away (closer ones are pieces of the same core); the first guess of the rotation is
//!    the median of these vectors' angles folded into ±45° (and clamped to the limit), the column
//!    (row) pitch the median distance to the nearest neighbour within 30° of the rotated x (y)
//!    axis; a grid of one row or one column takes the pitch of its one axis for both.
//!    [`DearrayParams::pitch`] replaces the estimate. More than 20 000 non-fragment objects are
//!    refused (not a slide of cores; the searches are quadratic).
//! 5. **Cells.** Objects whose offset is within 0.35 pitch of a step of at most two cells on each
//!    axis are linked, and integer cells spread from neighbour to neighbour (breadth-first), so
//!    jitter does not add up across the slide; the largest linked group fixes an affine lattice
//!    (least squares: origin, column step, row step). Every object is then assigned to its
//!    nearest cell and the lattice refitted on all non-fragment objects, until the cells no longer
//!    change (at most four rounds).
//! 6. **Checks.** The fitted rotation must be within [`DearrayParams::max_rotation_deg`], the
//!    root-mean-square distance of the objects from their cell centres within
//!    [`DearrayParams::max_residual`] of the pitch, and the non-fragment objects that share a
//!    cell must fit in 2 core diameters (at most a pitch): the pieces of a torn core, with the gaps
//!    between them (on a 20 px core they span up to 1.6 estimated diameters); otherwise
//!    the objects are not on a grid. The core diameter is [`DearrayParams::diameter`] or that of
//!    a disc of the typical area.
//! 7. **Cores.** All objects of a cell, fragments included, form its core, when the cell holds a
//!    non-fragment object or its objects together reach the fragment limit (a core torn into
//!    small pieces); fragments alone in a cell are dropped. Rows and columns are counted from the
//!    topmost and leftmost occupied cell: missing cores inside the grid keep every other position
//!    right, but an empty first row or column is not seen. A grid whose objects all land in one
//!    cell is [`Dearray::Single`] after all.
//!
//! Everything is deterministic: objects in raster order, medians of sorted values, links in
//! object order. The map is read three times (extremes, histogram, labels) and a label map of one `u32` per pixel is the only
//! per-pixel allocation; the neighbour searches are quadratic in the number of non-fragment
//! objects (hundreds).
//!
//! # Outcomes for bad input
//!
//! | input | outcome |
//! |---|---|
//! | all background, all NaN, one score population | `OpError::Data`: `no objects found: the image is bare slide (…)` |
//! | objects with no lattice | `OpError::Data`: `objects are not on a grid: …` |
//! | one object (or one torn core) | [`Dearray::Single`] |
//! | one row or one column of cores | [`Dearray::Grid`] with `rows = 1` (or `cols = 1`) |
//!
//! See [`Dearrayer`] for an example.
mod lattice;
mod objects;
mod params;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use ndarray::ArrayView2;

use crate::error::OpError;
use lattice::{fit, linked_cells, pitches, rotation, Affine};
use objects::{objects, otsu, NoContrast, Object};
pub use params::{DearrayParams, Dearrayer};

const OP: &str = "dearray";

/// How the error of a map without objects begins (see [`is_bare_slide`]).
pub const BARE_SLIDE: &str = "no objects found: the image is bare slide";

/// Whether `e` is the de-arrayer's error for a map without objects (all background, all NaN, or
/// one score population): an image that is no slide at all, rather than objects off a grid.
pub fn is_bare_slide(e: &OpError) -> bool {
    matches!(e, OpError::Data { operator, reason } if *operator == OP && reason.starts_with(BARE_SLIDE))
}

/// Most non-fragment objects of a slide (the neighbour searches are quadratic in their number).
const MAX_OBJECTS: usize = 20_000;

/// An inclusive-exclusive pixel box `(x0, y0, x1, y1)` in the score map's coordinates.
pub type BBox = (usize, usize, usize, usize);

/// The outcome of de-arraying one slide.
#[derive(Debug, Clone, PartialEq)]
pub enum Dearray {
    /// One core (one object, or one dominant object and its pieces): the image is one core.
    Single(SingleCore),
    /// Cores on a grid.
    Grid(Grid),
}

/// The one core of a slide that holds no grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleCore {
    /// Box covering all its pieces.
    pub bbox: BBox,
    /// Object pixels.
    pub area: usize,
    /// Objects merged into it.
    pub pieces: usize,
}

/// The grid of cores on a slide.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Distance between neighbouring columns and between neighbouring rows, in pixels.
    pub pitch: (f64, f64),
    /// Rotation of the rows against the image x axis in degrees, positive from +x towards +y
    /// (clockwise as the image is displayed).
    pub rotation_deg: f64,
    /// Image position (x, y) of the centre of cell A1 (row 0, column 0), which may be empty.
    pub origin: (f64, f64),
    /// Rows, from the topmost to the bottommost occupied one.
    pub rows: usize,
    /// Columns, from the leftmost to the rightmost occupied one.
    pub cols: usize,
    /// Root-mean-square distance of the non-fragment objects from their cell centres, as a
    /// fraction of the smaller pitch.
    pub residual: f64,
    /// The cores, sorted by (row, col); missing cores have no entry.
    pub cores: Vec<GridCore>,
}

/// One core of a grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCore {
    /// Row, 0-based from the top.
    pub row: usize,
    /// Column, 0-based from the left.
    pub col: usize,
    /// Position name ([`position_name`]): `B3` is row 1, column 2.
    pub position: String,
    /// Box covering all its pieces.
    pub bbox: BBox,
    /// Object pixels.
    pub area: usize,
    /// Objects merged into it (more than one for a torn core).
    pub pieces: usize,
}

/// The name of a grid position: rows lettered `A`, `B`, … `Z`, `AA`, `AB`, … from the top,
/// columns numbered from 1 at the left, no zero padding.
///
/// ```
/// use ftirflow_operators::dearray::position_name;
/// assert_eq!(position_name(1, 2), "B3");
/// assert_eq!(position_name(25, 0), "Z1");
/// assert_eq!(position_name(26, 9), "AA10");
/// assert_eq!(position_name(27, 0), "AB1");
/// assert_eq!(position_name(26 + 26 * 26, 0), "AAA1");
/// ```
pub fn position_name(row: usize, col: usize) -> String {
    let mut letters = Vec::new();
    let mut n = row + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("{}{}", String::from_utf8_lossy(&letters), col + 1)
}

/// The objects that fall in one cell: the non-fragments, and all.
#[derive(Default)]
struct Cell<'a> {
    big: Vec<&'a Object>,
    all: Vec<&'a Object>,
}

/// The union of boxes (`None` for none).
fn union(boxes: impl IntoIterator<Item = BBox>) -> Option<BBox> {
    boxes.into_iter().reduce(|a, b| (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3)))
}

fn not_on_grid(reason: impl std::fmt::Display) -> OpError {
    OpError::data(OP, format!("objects are not on a grid: {reason}"))
}

impl Dearrayer {
    /// De-arrays one slide's score map (rows = image y, columns = image x; see the
    /// [module](self) for the method and the outcomes of bad input).
    pub fn dearray(&self, map: ArrayView2<'_, f32>) -> Result<Dearray, OpError> {
        let p = &self.params;
        let bare = |why: String| OpError::data(OP, format!("{BARE_SLIDE} ({why})"));
        let threshold = match p.threshold {
            Some(t) => t,
            None => otsu(map, p.min_separation).map_err(|e| match e {
                NoContrast::NoData => bare("no finite score".into()),
                NoContrast::OnePopulation(s) => {
                    bare(format!("the scores form one population: separation {s:.2} below min_separation {}", p.min_separation))
                }
            })?,
        };
        let objs = objects(map, threshold);
        if objs.is_empty() {
            return Err(bare(format!("no pixel scores above the threshold {threshold}")));
        }
        // The area-weighted median: the area of the object holding the median object pixel.
        let typical = {
            let mut areas: Vec<usize> = objs.iter().map(|o| o.area).collect();
            areas.sort_unstable();
            let half = areas.iter().sum::<usize>().div_ceil(2);
            let mut sum = 0;
            areas.into_iter().find(|a| {
                sum += a;
                sum >= half
            })
        }
        .unwrap_or(0) as f64;
        let min_area = p.min_object_fraction * typical;
        let big: Vec<&Object> = objs.iter().filter(|o| o.area as f64 >= min_area).collect();
        let diameter = p.diameter.unwrap_or(2.0 * (typical / std::f64::consts::PI).sqrt());
        let big_area: usize = big.iter().map(|o| o.area).sum();
        let big_box = union(big.iter().map(|o| o.bbox)).unwrap_or_default();
        let one_core_size = 1.25 * p.diameter.unwrap_or(2.0 * (big_area as f64 / std::f64::consts::PI).sqrt());
        if big.len() == 1 || (big_box.2 - big_box.0).max(big_box.3 - big_box.1) as f64 <= one_core_size {
            return Ok(Dearray::Single(single(&objs, big_box)));
        }
        if big.len() > MAX_OBJECTS {
            return Err(not_on_grid(format!("{} objects, more than the {MAX_OBJECTS} cores a slide may hold", big.len())));
        }
        let close = 0.75 * diameter;
        // A first guess within the limit (a few jittered neighbours may give a larger median);
        // the fitted lattice's rotation is what is checked.
        let angle = rotation(&big, close)
            .ok_or_else(|| not_on_grid("no two objects are farther apart than one core's pieces"))?
            .clamp(-p.max_rotation_deg, p.max_rotation_deg);
        let (px, py) = match p.pitch {
            Some(pitch) => (pitch, pitch),
            None => pitches(&big, close, angle).ok_or_else(|| not_on_grid("no nearest neighbours along the grid's axes"))?,
        };
        let linked = linked_cells(&big, px, py, angle);
        let nominal = Affine::nominal((big[linked[0].0].cx, big[linked[0].0].cy), px, py, angle.to_radians());
        let mut lattice = fit(&linked.iter().map(|&(i, c, r)| (big[i].cx, big[i].cy, c, r)).collect::<Vec<_>>(), nominal);
        let mut cells: Vec<(i64, i64)> = Vec::new();
        for _ in 0..4 {
            let next: Vec<(i64, i64)> = big.iter().map(|o| lattice.cell(o.cx, o.cy)).collect();
            if next == cells {
                break;
            }
            cells = next;
            let points: Vec<_> = big.iter().zip(&cells).map(|(o, &(c, r))| (o.cx, o.cy, c, r)).collect();
            lattice = fit(&points, lattice);
        }
        let rotation_deg = lattice.rotation_deg();
        if rotation_deg.abs() > p.max_rotation_deg || !rotation_deg.is_finite() {
            return Err(not_on_grid(format!(
                "the fitted lattice is rotated by {rotation_deg:.1}°, more than max_rotation_deg ({}°)",
                p.max_rotation_deg
            )));
        }
        let pitch = lattice.pitch();
        if pitch.0.is_nan() || pitch.1.is_nan() || pitch.0.min(pitch.1) < 1.0 {
            return Err(not_on_grid(format!("the fitted pitch ({:.2}, {:.2}) px is below one pixel", pitch.0, pitch.1)));
        }
        let residual = {
            let sq: f64 = big
                .iter()
                .map(|o| {
                    let (c, r) = lattice.cell(o.cx, o.cy);
                    let (x, y) = lattice.at(c, r);
                    (o.cx - x).powi(2) + (o.cy - y).powi(2)
                })
                .sum();
            (sq / big.len() as f64).sqrt() / pitch.0.min(pitch.1)
        };
        if residual.is_nan() || residual > p.max_residual {
            return Err(not_on_grid(format!(
                "they lie {residual:.2} pitches from their fitted cell centres (root mean square), more than max_residual ({})",
                p.max_residual
            )));
        }
        // Every object to its cell: (big objects, all objects).
        let mut by_cell: BTreeMap<(i64, i64), Cell<'_>> = BTreeMap::new();
        for o in &objs {
            let (c, r) = lattice.cell(o.cx, o.cy);
            let cell = by_cell.entry((r, c)).or_default();
            cell.all.push(o);
            if o.area as f64 >= min_area {
                cell.big.push(o);
            }
        }
        by_cell.retain(|_, cell| !cell.big.is_empty() || cell.all.iter().map(|o| o.area).sum::<usize>() as f64 >= min_area);
        let (r0, c0) = by_cell.keys().fold((i64::MAX, i64::MAX), |m, &(r, c)| (m.0.min(r), m.1.min(c)));
        let (r1, c1) = by_cell.keys().fold((i64::MIN, i64::MIN), |m, &(r, c)| (m.0.max(r), m.1.max(c)));
        let mut cores = Vec::with_capacity(by_cell.len());
        for (&(r, c), Cell { big, all }) in &by_cell {
            let (row, col) = ((r - r0) as usize, (c - c0) as usize);
            let b = union(big.iter().map(|o| o.bbox)).unwrap_or_default();
            if big.len() > 1 {
                // Pieces of one torn core and the gaps between them fit in twice its diameter
                // (the estimate is that of a disc of the typical area) and never reach a neighbour.
                let (wx, wy) = ((2.0 * diameter).min(pitch.0), (2.0 * diameter).min(pitch.1));
                if (b.2 - b.0) as f64 > wx || (b.3 - b.1) as f64 > wy {
                    let centres: Vec<String> = big.iter().map(|o| format!("({:.0}, {:.0})", o.cx, o.cy)).collect();
                    return Err(not_on_grid(format!(
                        "cell {} is claimed by objects centred at {}, which do not fit in one core",
                        position_name(row, col),
                        centres.join(", ")
                    )));
                }
            }
            cores.push(GridCore {
                row,
                col,
                position: position_name(row, col),
                bbox: union(all.iter().map(|o| o.bbox)).unwrap_or_default(),
                area: all.iter().map(|o| o.area).sum(),
                pieces: all.len(),
            });
        }
        if cores.len() == 1 {
            let c = &cores[0];
            return Ok(Dearray::Single(SingleCore { bbox: c.bbox, area: c.area, pieces: c.pieces }));
        }
        Ok(Dearray::Grid(Grid {
            pitch,
            rotation_deg,
            origin: lattice.at(c0, r0),
            rows: (r1 - r0 + 1) as usize,
            cols: (c1 - c0 + 1) as usize,
            residual,
            cores,
        }))
    }
}

/// The single core: the objects whose centre lies in `core` grown by a quarter of its size on
/// each side (so that far specks of dust stay out).
fn single(objs: &[Object], core: BBox) -> SingleCore {
    let (gx, gy) = ((core.2 - core.0) as f64 / 4.0, (core.3 - core.1) as f64 / 4.0);
    let inside: Vec<&Object> = objs
        .iter()
        .filter(|o| o.cx >= core.0 as f64 - gx && o.cx < core.2 as f64 + gx && o.cy >= core.1 as f64 - gy && o.cy < core.3 as f64 + gy)
        .collect();
    SingleCore {
        bbox: union(inside.iter().map(|o| o.bbox)).unwrap_or(core),
        area: inside.iter().map(|o| o.area).sum(),
        pieces: inside.len(),
    }
}

/// [`DearrayParams::check`] then [`Dearrayer::dearray`].
pub fn dearray_slide(params: &DearrayParams, map: ArrayView2<'_, f32>) -> Result<Dearray, OpError> {
    params.check()?.dearray(map)
}
