//! Whole TMA slides: a grid of cores (the generator's cores, as discs on bare glass) in one large
//! image per slide, with missing positions, jittered and torn cores and a slightly rotated grid,
//! and the truth a de-arrayer is checked against.
//!
//! Every pixel of a slide is a pure function of the configuration: a core pixel draws from its
//! core's pixel stream positioned at that pixel, a glass pixel from its slide's glass stream
//! positioned at that pixel. So a slide is generated block by block (rows for ENVI, 128×128 tiles
//! for Agilent), each block split over threads, holding only the block and the geometry of the
//! cores it crosses, and the bytes depend neither on the block size nor on the thread count.

use std::collections::HashMap;
use std::f64::consts::{PI, TAU};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use parquet::arrow::ArrowWriter;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::core::{self, CoreDraw, CoreSpec, Model, BACKGROUND};
use super::{truth, SampleLabel, SynthConfig, SynthError, SynthFormat, SynthSummary};
use crate::io::atomic::AtomicFile;
use crate::io::envi::{ByteOrder, EnviHeader, Interleave, ValueType, WavelengthUnits};
use crate::io::ImageCube;

/// Side of the Agilent FPA tiles of a slide (as the instrument writes them).
pub const SLIDE_TILE: u32 = 128;
/// Largest slide side accepted, pixels.
pub const MAX_SLIDE_SIDE: u32 = 1 << 20;
/// Bytes of spectra an ENVI row block holds when [`SlideConfig::block_rows`] is 0.
const BLOCK_BYTES: u64 = 64 << 20;

/// RNG streams: a slide's layout, a slide's glass pixels, a core's pixels on a slide.
const LAYOUT_STREAM: u64 = 4 << 40;
const GLASS_STREAM: u64 = 3 << 40;
const CORE_PIXEL_STREAM: u64 = 2 << 40;
/// log₂ of the 32-bit words of a pixel stream reserved for one pixel (far more than a spectrum of
/// [`super::MAX_POINTS`] points draws).
const PIXEL_WORDS: u32 = 17;

/// Whole-slide settings: `rows × cols` grid positions per slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlideConfig {
    /// Grid rows (lettered A, B, … from the top; default 5), 1–702.
    pub rows: u32,
    /// Grid columns (numbered 1, 2, … from the left; default 4), 1–999.
    pub cols: u32,
    /// Number of slides (default 1), 1–99; cores fill them in order.
    pub slides: u32,
    /// Fraction of the positions of each slide left empty (default 0.1), 0–0.9; which ones is seeded.
    pub missing: f64,
    /// Fraction of the placed cores torn into 2–3 pieces with a gap (default 0.1), 0–1.
    pub torn: f64,
    /// Largest random offset of a core from its grid position, as a fraction of the pitch (default
    /// 0.05), 0–0.2.
    pub jitter: f64,
    /// Grid pitch as a multiple of the core image side (default 1.4), 1.1–4, and at least what keeps
    /// torn neighbours apart (≈ 1.38 for 24 px cores, 1.17 for 64 px).
    pub pitch: f64,
    /// Rotation of the whole grid, degrees, −45–45 (default: seeded per slide within ±3°).
    pub rotation: Option<f64>,
    /// Rows per ENVI block written (0, the default: as many as fit in 64 MiB of spectra). Memory
    /// holds one block, never the slide; the bytes do not depend on it.
    pub block_rows: u32,
}

impl Default for SlideConfig {
    fn default() -> Self {
        SlideConfig { rows: 5, cols: 4, slides: 1, missing: 0.1, torn: 0.1, jitter: 0.05, pitch: 1.4, rotation: None, block_rows: 0 }
    }
}

impl SlideConfig {
    /// Positions left empty on each slide: `round(missing × rows × cols)`.
    pub fn missing_per_slide(&self) -> usize {
        (self.missing * f64::from(self.rows * self.cols)).round() as usize
    }

    /// Positions holding a core on every slide together (before cores run out).
    pub fn present_positions(&self) -> usize {
        self.slides as usize * (self.rows as usize * self.cols as usize - self.missing_per_slide())
    }

    /// The patients that fill every present position (two cores each, the last one's AT core left
    /// out when the count is odd).
    pub fn patients_needed(&self) -> u32 {
        self.present_positions().div_ceil(2).max(1) as u32
    }

    pub(crate) fn problems(&self, cfg: &SynthConfig, out: &mut Vec<String>) {
        if !(1..=702).contains(&self.rows) || !(1..=999).contains(&self.cols) {
            out.push(format!("a slide grid needs 1–702 rows and 1–999 columns (got {}x{})", self.rows, self.cols));
            return;
        }
        if !(1..=99).contains(&self.slides) {
            out.push(format!("slides must be between 1 and 99 (got {})", self.slides));
        }
        if cfg.format == SynthFormat::Parquet {
            out.push("whole slides are written as envi or agilent, not parquet".into());
        }
        let knobs = [
            ("missing", self.missing, 0.0, 0.9),
            ("torn", self.torn, 0.0, 1.0),
            ("jitter", self.jitter, 0.0, 0.2),
            ("pitch", self.pitch, 1.1, 4.0),
        ];
        let mut ok = true;
        for (name, v, lo, hi) in knobs {
            if !v.is_finite() || !(lo..=hi).contains(&v) {
                out.push(format!("slide {name} must be between {lo} and {hi} (got {v})"));
                ok = false;
            }
        }
        if let Some(r) = self.rotation {
            if !r.is_finite() || r.abs() > 45.0 {
                out.push(format!("slide rotation must be between -45 and 45 degrees (got {r})"));
            }
        }
        if ok && self.slides >= 1 {
            let present = self.present_positions();
            if present == 0 {
                out.push("every position is missing: lower the missing fraction".into());
            } else if cfg.n_cores() > present + 1 {
                out.push(format!(
                    "{} cores do not fit in the {present} present positions of {} slide(s) of {}x{}: use more slides or positions, or fewer cores",
                    cfg.n_cores(),
                    self.slides,
                    self.rows,
                    self.cols
                ));
            }
            let size = f64::from(cfg.size);
            let least = (size + 2.0 * max_shift(size) + 1.0) / size;
            if self.pitch < least {
                out.push(format!(
                    "slide pitch must be at least {least:.3} for cores of {} px, so that torn cores cannot touch (got {})",
                    cfg.size, self.pitch
                ));
            }
            let side = f64::from(cfg.size) * self.pitch * f64::from(self.rows.max(self.cols) + 2);
            if side > f64::from(MAX_SLIDE_SIDE) {
                out.push(format!("a slide would be more than {MAX_SLIDE_SIDE} pixels wide or high"));
            }
        }
    }
}

/// Gap a tear opens in a core of side `size`: each piece moves at least half of it off each cut.
fn tear_gap(size: f64) -> f64 {
    (0.08 * size).max(4.0)
}

/// The longest shift of a torn piece (sectors of at least 100°, rounded away from zero).
fn max_shift(size: f64) -> f64 {
    0.5 * tear_gap(size) / 50f64.to_radians().sin() + std::f64::consts::SQRT_2
}

/// The name of grid row `r` (0-based): `A`…`Z`, then `AA`, `AB`, ….
pub fn row_name(r: u32) -> String {
    let mut n = r + 1;
    let mut s = Vec::new();
    while n > 0 {
        n -= 1;
        s.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The name of the position in grid row `r`, column `c` (0-based), e.g. `B3`.
pub fn position_name(r: u32, c: u32) -> String {
    format!("{}{}", row_name(r), c + 1)
}

/// One piece of a placed core: the source pixels whose centre lies in the angular sector
/// `[a0, a0 + span)` around (`qx`, `qy`) (core pixels), shifted by (`dx`, `dy`) slide pixels.
#[derive(Debug, Clone, Serialize)]
struct Piece {
    #[serde(skip)]
    qx: f64,
    #[serde(skip)]
    qy: f64,
    #[serde(skip)]
    a0: f64,
    #[serde(skip)]
    span: f64,
    dx: i64,
    dy: i64,
}

impl Piece {
    fn whole() -> Self {
        Piece { qx: 0.0, qy: 0.0, a0: 0.0, span: TAU, dx: 0, dy: 0 }
    }

    fn holds(&self, sx: usize, sy: usize) -> bool {
        if self.span >= TAU {
            return true;
        }
        let a = (sy as f64 + 0.5 - self.qy).atan2(sx as f64 + 0.5 - self.qx);
        (a - self.a0).rem_euclid(TAU) < self.span
    }
}

/// A core on a slide.
#[derive(Debug, Clone)]
struct Placed {
    /// Index of the core (archive order, as in [`super::labels`]).
    core: usize,
    /// Slide pixel of the core image's top-left corner.
    ox: i64,
    oy: i64,
    pieces: Vec<Piece>,
    /// Slide pixels the core image and its shifted pieces can cover: `[x0, x1) × [y0, y1)`.
    foot: [i64; 4],
}

impl Placed {
    /// The core pixel shown at slide pixel (`x`, `y`), if any of its tissue or paraffin is there.
    fn source(&self, draw: &CoreDraw<'_>, x: i64, y: i64) -> Option<(usize, usize)> {
        let s = draw.size() as i64;
        for p in &self.pieces {
            let (sx, sy) = (x - self.ox - p.dx, y - self.oy - p.dy);
            if (0..s).contains(&sx) && (0..s).contains(&sy) {
                let (sx, sy) = (sx as usize, sy as usize);
                if draw.mask[sy * s as usize + sx] != BACKGROUND && p.holds(sx, sy) {
                    return Some((sx, sy));
                }
            }
        }
        None
    }
}

/// One grid position of a slide.
#[derive(Debug, Clone)]
struct Position {
    row: u32,
    col: u32,
    /// The grid point (before jitter), slide pixels.
    nominal: (f64, f64),
    placed: Option<Placed>,
}

/// The geometry of one slide.
#[derive(Debug, Clone)]
struct Slide {
    name: String,
    width: u32,
    height: u32,
    rotation: f64,
    pitch: f64,
    /// Grid point of `A1`.
    origin: (f64, f64),
    glass: [f64; 3],
    positions: Vec<Position>,
}

/// Slide names: `S` and the number, zero-padded to the width of the slide count.
fn slide_name(s: u32, slides: u32) -> String {
    let width = slides.to_string().len();
    format!("S{s:0width$}")
}

/// The layout of every slide and the cores they hold (`labels` in archive order).
fn layout(cfg: &SynthConfig, sc: &SlideConfig, n_cores: usize) -> Result<Vec<Slide>, SynthError> {
    let size = f64::from(cfg.size);
    let pitch = size * sc.pitch;
    let (rows, cols) = (sc.rows as usize, sc.cols as usize);
    let n_pos = rows * cols;
    let missing = sc.missing_per_slide();
    // Tear gap: each piece moves away from the cut by at least half of it.
    let gap = tear_gap(size);
    let reach = 0.5 * size + max_shift(size) + 1.0;
    let mut next_core = 0;
    let mut slides = Vec::with_capacity(sc.slides as usize);
    for s in 0..sc.slides {
        let mut rng = core::rng_for(cfg.seed, LAYOUT_STREAM + u64::from(s));
        let rotation = match sc.rotation {
            Some(r) => r,
            None => rng.random_range(-3.0..=3.0),
        };
        let glass = [0.003 * normal(&mut rng), 0.004 * normal(&mut rng), 0.003 * normal(&mut rng)];
        let mut order: Vec<usize> = (0..n_pos).collect();
        order.shuffle(&mut rng);
        let mut absent = vec![false; n_pos];
        for &i in &order[..missing] {
            absent[i] = true;
        }
        let (sin, cos) = rotation.to_radians().sin_cos();
        // Grid points about the grid centre, rotated, then jittered.
        let mut centres = Vec::with_capacity(n_pos);
        for i in 0..n_pos {
            let (r, c) = (i / cols, i % cols);
            let u = (c as f64 - 0.5 * (cols as f64 - 1.0)) * pitch;
            let v = (r as f64 - 0.5 * (rows as f64 - 1.0)) * pitch;
            let nominal = (u * cos - v * sin, u * sin + v * cos);
            let j = sc.jitter * pitch;
            let (jx, jy) = if j > 0.0 { (rng.random_range(-j..=j), rng.random_range(-j..=j)) } else { (0.0, 0.0) };
            centres.push((nominal, (nominal.0 + jx, nominal.1 + jy)));
        }
        let margin = (0.5 * (pitch - size)).max(2.0);
        let lo_x = centres.iter().map(|c| c.1 .0).fold(f64::INFINITY, f64::min) - reach - margin;
        let lo_y = centres.iter().map(|c| c.1 .1).fold(f64::INFINITY, f64::min) - reach - margin;
        let hi_x = centres.iter().map(|c| c.1 .0).fold(f64::NEG_INFINITY, f64::max) + reach + margin;
        let hi_y = centres.iter().map(|c| c.1 .1).fold(f64::NEG_INFINITY, f64::max) + reach + margin;
        let (shift_x, shift_y) = (-lo_x.floor(), -lo_y.floor());
        let mut width = (hi_x + shift_x).ceil() as u32;
        let mut height = (hi_y + shift_y).ceil() as u32;
        if cfg.format == SynthFormat::Agilent {
            width = width.next_multiple_of(SLIDE_TILE);
            height = height.next_multiple_of(SLIDE_TILE);
        }
        if width > MAX_SLIDE_SIDE || height > MAX_SLIDE_SIDE {
            return Err(SynthError::Config(format!("slide of {width}×{height} pixels is larger than {MAX_SLIDE_SIDE} a side")));
        }
        // Which present positions get a core, and which of those are torn.
        let present: Vec<usize> = (0..n_pos).filter(|&i| !absent[i]).collect();
        let mut filled = Vec::new();
        for &i in &present {
            if next_core < n_cores {
                filled.push((i, next_core));
                next_core += 1;
            }
        }
        let n_torn = (sc.torn * filled.len() as f64).round() as usize;
        let mut torn_order: Vec<usize> = (0..filled.len()).collect();
        torn_order.shuffle(&mut rng);
        let mut torn = vec![false; filled.len()];
        for &k in &torn_order[..n_torn] {
            torn[k] = true;
        }
        let pieces: Vec<Vec<Piece>> = torn.iter().map(|&t| if t { tear(&mut rng, size, gap) } else { vec![Piece::whole()] }).collect();
        // A core and its pieces reach at most `radius` from its centre; a jittered core that could
        // touch a neighbour goes back to its grid point (grid points are far enough apart).
        let radius: Vec<f64> =
            pieces.iter().map(|p| 0.5 * size + p.iter().map(|q| (q.dx as f64).hypot(q.dy as f64)).fold(0.0, f64::max)).collect();
        let slot: HashMap<usize, usize> = filled.iter().enumerate().map(|(k, &(i, _))| (i, k)).collect();
        let mut at: Vec<(f64, f64)> = filled.iter().map(|&(i, _)| centres[i].1).collect();
        let mut jittered = vec![true; filled.len()];
        while let Some((k, other)) = (0..filled.len()).find_map(|k| {
            let (r, c) = ((filled[k].0 / cols) as i64, (filled[k].0 % cols) as i64);
            let near = (r - 1..=r + 1).flat_map(|rr| (c - 1..=c + 1).map(move |cc| (rr, cc)));
            near.filter(|&(rr, cc)| rr >= 0 && cc >= 0 && (rr as usize) < rows && (cc as usize) < cols)
                .filter_map(|(rr, cc)| slot.get(&(rr as usize * cols + cc as usize)).copied())
                .find(|&o| o != k && (at[k].0 - at[o].0).hypot(at[k].1 - at[o].1) < radius[k] + radius[o] + 1.0)
                .map(|o| (k, o))
        }) {
            if !jittered[k] && !jittered[other] {
                break; // grid points never touch (the pitch is checked); not reached
            }
            let move_k = if jittered[k] { k } else { other };
            at[move_k] = centres[filled[move_k].0].0;
            jittered[move_k] = false;
        }
        let mut placed: HashMap<usize, Placed> = HashMap::new();
        for (k, (&(i, core_index), pieces)) in filled.iter().zip(pieces).enumerate() {
            let centre = at[k];
            let ox = (centre.0 + shift_x - 0.5 * size).round() as i64;
            let oy = (centre.1 + shift_y - 0.5 * size).round() as i64;
            let s = cfg.size as i64;
            let foot = [
                ox + pieces.iter().map(|p| p.dx).min().unwrap_or(0),
                oy + pieces.iter().map(|p| p.dy).min().unwrap_or(0),
                ox + s + pieces.iter().map(|p| p.dx).max().unwrap_or(0),
                oy + s + pieces.iter().map(|p| p.dy).max().unwrap_or(0),
            ];
            placed.insert(i, Placed { core: core_index, ox, oy, pieces, foot });
        }
        let positions = (0..n_pos)
            .map(|i| Position {
                row: (i / cols) as u32,
                col: (i % cols) as u32,
                nominal: (centres[i].0 .0 + shift_x, centres[i].0 .1 + shift_y),
                placed: placed.remove(&i),
            })
            .collect();
        let origin = {
            let (u, v) = (-0.5 * (cols as f64 - 1.0) * pitch, -0.5 * (rows as f64 - 1.0) * pitch);
            (u * cos - v * sin + shift_x, u * sin + v * cos + shift_y)
        };
        slides.push(Slide { name: slide_name(s + 1, sc.slides), width, height, rotation, pitch, origin, glass, positions });
    }
    Ok(slides)
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(rand_distr::StandardNormal)
}

/// The 2 or 3 pieces of a torn core of side `size`: angular sectors around a point near the
/// centre, each shifted outward along its bisector so that it moves at least `gap / 2` away from
/// each of its cuts (sectors of at most 180° shifted along their bisector cannot overlap).
fn tear(rng: &mut ChaCha8Rng, size: f64, gap: f64) -> Vec<Piece> {
    let qx = 0.5 * size + rng.random_range(-0.08..0.08) * size;
    let qy = 0.5 * size + rng.random_range(-0.08..0.08) * size;
    let a0 = rng.random_range(0.0..TAU);
    let spans: Vec<f64> = if rng.random_bool(0.5) {
        vec![PI, PI]
    } else {
        let s1 = rng.random_range(110.0..130.0f64).to_radians();
        let s2 = rng.random_range(110.0..130.0f64).to_radians();
        vec![s1, s2, TAU - s1 - s2]
    };
    let mut start = a0;
    spans
        .into_iter()
        .map(|span| {
            let mid = start + 0.5 * span;
            let m = 0.5 * gap / (0.5 * span).sin();
            // Rounded away from zero: the shift along every direction of the bisector's quadrant
            // only grows.
            let away = |v: f64| if v >= 0.0 { v.ceil() } else { v.floor() } as i64;
            let p = Piece { qx, qy, a0: start.rem_euclid(TAU), span, dx: away(m * mid.cos()), dy: away(m * mid.sin()) };
            start += span;
            p
        })
        .collect()
}

/// Truth of one placed core: pixels (slide x, y, mask, paraffin fraction, thickness) of its
/// tissue and paraffin, and their bounding box.
struct PlacedTruth {
    bbox: [u32; 4],
    tissue: usize,
    paraffin: usize,
}

fn placed_truth(draw: &CoreDraw<'_>, p: &Placed) -> PlacedTruth {
    let s = draw.size();
    let mut bbox = [u32::MAX, u32::MAX, 0, 0];
    let (mut tissue, mut paraffin) = (0, 0);
    for sy in 0..s {
        for sx in 0..s {
            let m = draw.mask[sy * s + sx];
            if m == BACKGROUND {
                continue;
            }
            for piece in &p.pieces {
                if piece.holds(sx, sy) {
                    let (x, y) = ((p.ox + piece.dx + sx as i64) as u32, (p.oy + piece.dy + sy as i64) as u32);
                    bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x + 1), bbox[3].max(y + 1)];
                    if m == core::TISSUE {
                        tissue += 1;
                    } else {
                        paraffin += 1;
                    }
                    break;
                }
            }
        }
    }
    PlacedTruth { bbox, tissue, paraffin }
}

/// Draws the block of slide pixels `[x0, x0 + w) × [y0, y0 + h)` into `values` (row-major,
/// `n` values per pixel), split over `threads`.
#[allow(clippy::too_many_arguments)]
fn draw_block(
    model: &Model,
    seed: u64,
    slide_index: u32,
    slide: &Slide,
    active: &[(&Placed, Arc<CoreDraw<'_>>)],
    (x0, y0, w, h): (u32, u32, u32, u32),
    values: &mut [f32],
    threads: usize,
) {
    let n = model.n_points();
    let n_px = w as usize * h as usize;
    let chunk = n_px.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (k, part) in values.chunks_mut(chunk * n).enumerate() {
            s.spawn(move || {
                let mut bits = Vec::new();
                let glass_stream = GLASS_STREAM + u64::from(slide_index);
                for (j, out) in part.chunks_exact_mut(n).enumerate() {
                    let p = k * chunk + j;
                    let (x, y) = (x0 + (p % w as usize) as u32, y0 + (p / w as usize) as u32);
                    let hit = active.iter().find_map(|(pl, d)| {
                        let (xi, yi) = (i64::from(x), i64::from(y));
                        if xi < pl.foot[0] || xi >= pl.foot[2] || yi < pl.foot[1] || yi >= pl.foot[3] {
                            return None;
                        }
                        pl.source(d, xi, yi).map(|src| (pl, d, src))
                    });
                    match hit {
                        Some((pl, d, (sx, sy))) => {
                            let mut rng = core::rng_for(seed, CORE_PIXEL_STREAM + pl.core as u64);
                            rng.set_word_pos(((sy * d.size() + sx) as u128) << PIXEL_WORDS);
                            d.pixel(sx, sy, &mut rng, &mut bits, out);
                        }
                        None => {
                            let mut rng = core::rng_for(seed, glass_stream);
                            rng.set_word_pos(((u128::from(y) << 24) + u128::from(x)) << PIXEL_WORDS);
                            model.glass(slide.glass, &mut rng, &mut bits, out);
                        }
                    }
                }
            });
        }
    });
}

/// The cores of `slide` whose footprint crosses rows `[y0, y1)`, with their geometry: taken from
/// `cache` (the cores of the previous block) or drawn; `cache` then holds exactly these.
fn active_cores<'s, 'm>(
    model: &'m Model,
    specs: &[CoreSpec],
    slide: &'s Slide,
    cache: &mut HashMap<usize, Arc<CoreDraw<'m>>>,
    (y0, y1): (u32, u32),
) -> Vec<(&'s Placed, Arc<CoreDraw<'m>>)> {
    let mut keep = HashMap::new();
    let mut out = Vec::new();
    for pl in slide.positions.iter().filter_map(|p| p.placed.as_ref()) {
        if pl.foot[3] <= i64::from(y0) || pl.foot[1] >= i64::from(y1) {
            continue;
        }
        let d = cache.remove(&pl.core).unwrap_or_else(|| Arc::new(core_draw(model, specs, pl.core)));
        keep.insert(pl.core, Arc::clone(&d));
        out.push((pl, d));
    }
    *cache = keep;
    out
}

fn core_draw<'m>(model: &'m Model, specs: &[CoreSpec], index: usize) -> CoreDraw<'m> {
    let spec = &specs[index];
    CoreDraw::new(model, spec, &mut core::rng_for(model.seed(), core::core_stream(spec.index)))
}

/// Writes slide `slide` as ENVI (`images/<name>.img` by row blocks, then the `.hdr`).
fn write_envi(
    images: &Path,
    model: &Model,
    specs: &[CoreSpec],
    (slide_index, slide): (u32, &Slide),
    block_rows: u32,
    threads: usize,
    tick: &mut dyn FnMut(),
) -> Result<u64, SynthError> {
    let n = model.n_points();
    let row_bytes = u64::from(slide.width) * n as u64 * 4;
    let rows = if block_rows > 0 { block_rows } else { (BLOCK_BYTES / row_bytes.max(1)).clamp(1, u64::from(slide.height)) as u32 };
    let data_path = images.join(format!("{}.img", slide.name));
    let hdr_path = images.join(format!("{}.hdr", slide.name));
    let mut file = AtomicFile::create(&data_path).map_err(truth::io_err(&data_path))?;
    let mut values = Vec::new();
    let mut bytes = Vec::new();
    let mut cache = HashMap::new();
    let mut y0 = 0;
    while y0 < slide.height {
        let h = rows.min(slide.height - y0);
        let active = active_cores(model, specs, slide, &mut cache, (y0, y0 + h));
        values.resize(slide.width as usize * h as usize * n, 0.0f32);
        draw_block(model, model.seed(), slide_index, slide, &active, (0, y0, slide.width, h), &mut values, threads);
        bytes.clear();
        bytes.reserve(values.len() * 4);
        for v in &values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        file.write_all(&bytes).map_err(truth::io_err(&data_path))?;
        y0 += h;
        tick();
    }
    file.finish().map_err(truth::io_err(&data_path))?.commit().map_err(truth::io_err(&data_path))?;
    let header = EnviHeader {
        samples: slide.width,
        lines: slide.height,
        bands: n as u32,
        header_offset: 0,
        data_type: ValueType::F32,
        interleave: Interleave::Bip,
        byte_order: ByteOrder::Little,
        wavenumbers: model.axis.clone(),
        wavelength_units: WavelengthUnits::Wavenumber,
        description: Some(format!("ftirflow synthetic TMA slide {}", slide.name)),
        fields: Default::default(),
    };
    let hb = truth::write_atomic(&hdr_path, header.to_text().as_bytes())?;
    Ok(u64::from(slide.width) * u64::from(slide.height) * n as u64 * 4 + hb)
}

/// Writes slide `slide` as an Agilent mosaic: `images/<name>_XXXX_YYYY.dmd` tiles of 128×128
/// pixels (`YYYY` counted from the bottom, as the instrument does), one tile at a time through
/// [`crate::io::agilent::write_tile`], then the `.dmt` header.
fn write_agilent(
    images: &Path,
    model: &Model,
    specs: &[CoreSpec],
    (slide_index, slide): (u32, &Slide),
    threads: usize,
    tick: &mut dyn FnMut(),
) -> Result<u64, SynthError> {
    let n = model.n_points();
    let t = SLIDE_TILE;
    let (xtiles, ytiles) = (slide.width / t, slide.height / t);
    let tmp = images.join(format!(".tmp-{}", slide.name));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(truth::io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(truth::io_err(&tmp))?;
    let dat = tmp.join("tile.dat");
    let mut cube = ImageCube { width: t, height: t, wavenumbers: model.axis.clone(), values: vec![0.0; (t * t) as usize * n] };
    let mut cache = HashMap::new();
    let mut bytes = 0;
    for row in 0..ytiles {
        let y0 = row * t;
        let active = active_cores(model, specs, slide, &mut cache, (y0, y0 + t));
        for tx in 0..xtiles {
            let x0 = tx * t;
            let here: Vec<_> = active
                .iter()
                .filter(|(pl, _)| pl.foot[0] < i64::from(x0 + t) && pl.foot[2] > i64::from(x0))
                .map(|(pl, d)| (*pl, Arc::clone(d)))
                .collect();
            draw_block(model, model.seed(), slide_index, slide, &here, (x0, y0, t, t), &mut cube.values, threads);
            crate::io::agilent::write_tile(&dat, &cube).map_err(truth::io_err(&dat))?;
            let dest = images.join(format!("{}_{tx:04}_{:04}.dmd", slide.name, ytiles - 1 - row));
            bytes += fs::metadata(&dat).map_err(truth::io_err(&dat))?.len();
            fs::rename(&dat, &dest).map_err(truth::io_err(&dest))?;
        }
        tick();
    }
    let bsp = dat.with_extension("bsp");
    let dmt = images.join(format!("{}.dmt", slide.name));
    bytes += fs::metadata(&bsp).map_err(truth::io_err(&bsp))?.len();
    fs::rename(&bsp, &dmt).map_err(truth::io_err(&dmt))?;
    fs::remove_dir(&tmp).map_err(truth::io_err(&tmp))?;
    crate::io::atomic::sync_dir(images).map_err(truth::io_err(images))?;
    Ok(bytes)
}

/// Blocks (progress units) of one slide.
fn blocks_of(slide: &Slide, sc: &SlideConfig, format: SynthFormat, n_points: usize) -> usize {
    match format {
        SynthFormat::Agilent => (slide.height / SLIDE_TILE) as usize,
        _ => {
            let row_bytes = u64::from(slide.width) * n_points as u64 * 4;
            let rows =
                if sc.block_rows > 0 { sc.block_rows } else { (BLOCK_BYTES / row_bytes.max(1)).clamp(1, u64::from(slide.height)) as u32 };
            slide.height.div_ceil(rows) as usize
        }
    }
}

/// Generates the slides of `cfg` (whose `slide` is set) under `out`, already prepared.
pub(crate) fn generate(
    cfg: &SynthConfig,
    sc: &SlideConfig,
    out: &Path,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    start: Instant,
) -> Result<SynthSummary, SynthError> {
    let images = out.join("images");
    let truth_dir = out.join("truth");
    for d in [&images, &truth_dir] {
        fs::create_dir_all(d).map_err(truth::io_err(d))?;
    }
    let model = Model::new(cfg);
    let all_labels = super::labels(cfg)?;
    let planted = super::planted_bands(cfg)?;
    let specs = super::core_specs(cfg, &all_labels);
    let n_cores = all_labels.len().min(sc.present_positions());
    let slides = layout(cfg, sc, n_cores)?;
    let n = model.n_points();
    let total: usize = slides.iter().map(|s| blocks_of(s, sc, cfg.format, n)).sum();
    tracing::info!(slides = slides.len(), cores = n_cores, points = n, threads, format = cfg.format.name(), out = %out.display(), "generating synthetic slides");
    progress(0, total);
    let mut done = 0;
    let mut image_bytes = 0;
    for (s, slide) in slides.iter().enumerate() {
        let mut tick = || {
            done += 1;
            progress(done, total);
        };
        image_bytes += match cfg.format {
            SynthFormat::Agilent => write_agilent(&images, &model, &specs, (s as u32, slide), threads, &mut tick)?,
            _ => write_envi(&images, &model, &specs, (s as u32, slide), sc.block_rows, threads, &mut tick)?,
        };
    }

    // Truth: labels, per-slide JSON, masks.
    let mut labels = Vec::new();
    let mut bytes = image_bytes;
    let mut slide_records = Vec::new();
    let mut mask_cores: Vec<(String, &Slide, &Placed)> = Vec::new();
    for slide in &slides {
        let mut positions = Vec::new();
        for pos in &slide.positions {
            let name = position_name(pos.row, pos.col);
            let sample = format!("{}/{name}", slide.name);
            let mut rec = serde_json::json!({
                "position": name,
                "row": pos.row,
                "col": pos.col,
                "sample": sample,
                "present": pos.placed.is_some(),
                "nominal_centre": [pos.nominal.0, pos.nominal.1],
            });
            if let Some(pl) = &pos.placed {
                let draw = core_draw(&model, &specs, pl.core);
                let t = placed_truth(&draw, pl);
                let l = &all_labels[pl.core];
                let half = 0.5 * f64::from(cfg.size);
                rec["core"] = l.sample.clone().into();
                rec["patient"] = l.patient.clone().into();
                rec["type"] = l.type_name().into();
                rec["subtype"] = l.subtype.map(|s| s.name()).into();
                rec["centre"] = serde_json::json!([pl.ox as f64 + half, pl.oy as f64 + half]);
                rec["bbox"] = serde_json::json!(t.bbox);
                rec["torn"] = (pl.pieces.len() > 1).into();
                rec["pieces"] = serde_json::json!(pl.pieces);
                rec["tissue_pixels"] = t.tissue.into();
                rec["paraffin_pixels"] = t.paraffin.into();
                labels.push(SampleLabel { sample: sample.clone(), ..l.clone() });
                mask_cores.push((sample, slide, pl));
            }
            positions.push(rec);
        }
        let (sin, cos) = slide.rotation.to_radians().sin_cos();
        let image = format!("images/{}.{}", slide.name, cfg.format.extension());
        let record = serde_json::json!({
            "slide": slide.name,
            "image": image,
            "format": cfg.format.name(),
            "width": slide.width,
            "height": slide.height,
            "grid": {
                "rows": sc.rows,
                "cols": sc.cols,
                "pitch": slide.pitch,
                "rotation_deg": slide.rotation,
                "origin": [slide.origin.0, slide.origin.1],
                "col_step": [slide.pitch * cos, slide.pitch * sin],
                "row_step": [-slide.pitch * sin, slide.pitch * cos],
                "core_size": cfg.size,
                "jitter": sc.jitter * slide.pitch,
            },
            "positions": positions,
        });
        let path = truth_dir.join(format!("slide_{}.json", slide.name));
        bytes += truth::write_atomic(&path, &super::json_bytes(&record)?)?;
        slide_records.push(serde_json::json!({
            "slide": slide.name,
            "image": image,
            "truth": format!("truth/slide_{}.json", slide.name),
            "width": slide.width,
            "height": slide.height,
            "cores": slide.positions.iter().filter(|p| p.placed.is_some()).count(),
        }));
    }
    bytes += write_slide_masks(&truth_dir.join("masks.parquet"), &model, &specs, &mask_cores)?;
    bytes += truth::write_atomic(&truth_dir.join("planted_bands.json"), &super::json_bytes(&super::planted_json(cfg, &planted))?)?;
    bytes += truth::write_atomic(&out.join("labels.csv"), truth::labels_csv(&labels).as_bytes())?;
    let spectra: u64 = slides.iter().map(|s| u64::from(s.width) * u64::from(s.height)).sum();
    let record = serde_json::json!({
        "generator": "ftirflow synth",
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg,
        "summary": {
            "slides": slides.len(),
            "cores": labels.len(),
            "spectra": spectra,
            "points": n,
            "wavenumber_first": model.axis[0],
            "wavenumber_last": model.axis[n - 1],
            "wavenumber_step": cfg.wn_step,
            "agilent_fpa": (cfg.format == SynthFormat::Agilent).then_some(SLIDE_TILE),
            "bytes_before_this_file": bytes,
        },
        "slides": slide_records,
        "files": {
            "labels": "labels.csv",
            "masks": "truth/masks.parquet",
            "planted_bands": "truth/planted_bands.json",
        },
    });
    let record = super::json_bytes(&record)?;
    bytes += record.len() as u64;
    truth::write_atomic(&out.join("synth.json"), &record)?;
    Ok(SynthSummary { cores: labels.len(), spectra, points: n, bytes, image_bytes, seconds: start.elapsed().as_secs_f64(), threads })
}

/// `truth/masks.parquet` of slides: per placed core, one row per slide pixel of its bounding box
/// (row-major), `sample` = `<slide>/<position>`, `x`, `y` in slide pixels.
fn write_slide_masks(path: &Path, model: &Model, specs: &[CoreSpec], cores: &[(String, &Slide, &Placed)]) -> Result<u64, SynthError> {
    let werr = |e: parquet::errors::ParquetError| SynthError::Write { path: path.to_path_buf(), reason: e.to_string() };
    let schema = truth::masks_schema();
    let marker = vec![(crate::io::parquet::NOT_AN_IMAGE.to_string(), "the ground-truth masks of ftirflow synth".to_string())];
    let props = crate::io::parquet::writer_properties(&schema, marker);
    let file = AtomicFile::create(path).map_err(truth::io_err(path))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(werr)?;
    for (sample, _, pl) in cores {
        let draw = core_draw(model, specs, pl.core);
        let t = placed_truth(&draw, pl);
        let [x0, y0, x1, y1] = t.bbox;
        let (mut xs, mut ys, mut mask, mut frac, mut thick) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for y in y0..y1 {
            for x in x0..x1 {
                let (m, f, th) = match pl.source(&draw, i64::from(x), i64::from(y)) {
                    Some((sx, sy)) => {
                        let (m, f, th, _) = draw.truth_at(sx, sy);
                        (m, f, th as f32)
                    }
                    None => (BACKGROUND, 0.0, 0.0),
                };
                xs.push(x);
                ys.push(y);
                mask.push(truth::mask_name(m));
                frac.push(f);
                thick.push(th);
            }
        }
        let rows = xs.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(sample.as_str(), rows))),
            Arc::new(UInt32Array::from(xs)),
            Arc::new(UInt32Array::from(ys)),
            Arc::new(StringArray::from_iter_values(mask)),
            Arc::new(Float32Array::from(frac)),
            Arc::new(Float32Array::from(thick)),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| SynthError::Internal(format!("masks batch for {sample}: {e}")))?;
        writer.write(&batch).map_err(werr)?;
    }
    let staged = writer.into_inner().map_err(werr)?.finish().map_err(truth::io_err(path))?;
    let bytes = fs::metadata(staged.partial_path()).map_err(truth::io_err(path))?.len();
    staged.commit().map_err(truth::io_err(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_names() {
        assert_eq!(position_name(0, 0), "A1");
        assert_eq!(position_name(1, 2), "B3");
        assert_eq!(row_name(25), "Z");
        assert_eq!(row_name(26), "AA");
        assert_eq!(row_name(27), "AB");
    }

    #[test]
    fn torn_pieces_move_apart_and_cover_the_core_once() {
        let mut rng = core::rng_for(1, 9);
        for _ in 0..50 {
            let pieces = tear(&mut rng, 24.0, 4.0);
            assert!((2..=3).contains(&pieces.len()));
            for y in 0..24 {
                for x in 0..24 {
                    assert_eq!(pieces.iter().filter(|p| p.holds(x, y)).count(), 1, "pixel ({x}, {y})");
                }
            }
            assert!(pieces.iter().all(|p| p.dx != 0 || p.dy != 0));
        }
    }
}
