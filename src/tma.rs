//! Whole TMA slides in a run (ARCHITECTURE.md, Whole slides): the cheap pass that maps an image
//! (mean absorbance over 1400–1700 cm⁻¹ per pixel), its de-arraying into named cores
//! (`operators::dearray`), the window through which each core is read, and the cache of the
//! outcome per image (`OUT_DIR/layouts/<part>.json`), so that a nightly rerun does not read an
//! unchanged slide again.
//!
//! What `[tma] dearray` makes of each image:
//!
//! | outcome of the pass | `auto` (default) | `on` | `off` |
//! |---|---|---|---|
//! | cores on a grid (one row or column included) | its cores, `<image>/<position>` (whole below `min_cores`) | its cores | whole |
//! | one core (one object, or one torn core) | whole | whole | whole |
//! | objects that are not on a grid | whole, with a warning | rejected | whole |
//! | bare slide, or no 1400–1700 cm⁻¹ band | whole | rejected | whole |
//! | a table (Parquet, CSV), or an unreadable file | whole | whole | whole |
//!
//! "Whole" is what a run always did: the image is one core, with its own sample id. An unreadable
//! file runs whole so that reading it rejects it with the reader's own reason.
use arrow::array::{AsArray, UInt32Array};
use ndarray::{Array2, ArrayView2};

use crate::config::{DearrayMode, TmaConfig};
use crate::io::archive::ImageEntry;
use crate::io::{Format, ReadOptions};
use crate::operators::dearray::{dearray_slide, BBox, Dearray, Grid};
use crate::operators::schema::{SpectraLayout, X, Y};
use crate::outputs::layouts::{CorePlace, GridFit, Layout, SlideMap};
use crate::outputs::records::GridPlace;

/// The band the de-arraying map averages, cm⁻¹: tissue's amide I and II bands and paraffin's CH₂
/// bending band lie in it, bare slide absorbs nothing there.
pub const SCORE_BAND: (f64, f64) = (1400.0, 1700.0);

/// A decided layout and whether it may be cached (not after a failed read, which may pass later).
pub struct Decision {
    /// The layout.
    pub layout: Layout,
    /// Whether it depends only on the image's content and the configuration.
    pub lasting: bool,
}

/// What the pass makes of `entry` under `cfg`, reading it with batches of `batch_rows` spectra.
pub fn decide(entry: &ImageEntry, cfg: &TmaConfig, batch_rows: usize, stripes: usize) -> Decision {
    let lasting = |layout| Decision { layout, lasting: true };
    if cfg.dearray == DearrayMode::Off || matches!(entry.format, Format::Parquet | Format::OrangeCsv) {
        return lasting(Layout::Whole);
    }
    let not_slide = |reason: String| match cfg.dearray {
        DearrayMode::On => Layout::Refused(reason),
        _ => Layout::Whole,
    };
    let map = match score_map(entry, batch_rows, stripes) {
        Ok(Some(map)) => map,
        Ok(None) => {
            let (lo, hi) = SCORE_BAND;
            return lasting(not_slide(format!("the axis does not cover {lo}–{hi} cm⁻¹, which de-arraying maps")));
        }
        Err(_) => return Decision { layout: Layout::Whole, lasting: false },
    };
    let params = cfg.params();
    match dearray_slide(&params, map.view()) {
        Ok(Dearray::Single(_)) => lasting(Layout::Whole),
        Ok(Dearray::Grid(grid)) if cfg.dearray == DearrayMode::Auto && grid.cores.len() < cfg.min_cores => {
            tracing::info!(
                "{}: {} objects on a grid, fewer than [tma] min_cores ({}): taken for one core (pieces of a torn core look like this)",
                entry.path.display(),
                grid.cores.len(),
                cfg.min_cores
            );
            lasting(Layout::Whole)
        }
        Ok(Dearray::Grid(grid)) => lasting(slide_layout(&entry.sample, &grid, cfg.margin, map.view())),
        Err(e) => {
            let reason = format!("not a slide: {e}");
            if cfg.dearray == DearrayMode::Auto {
                // A pre-cut core filled with paraffin maps as one population: not worth a warning.
                if crate::operators::dearray::is_bare_slide(&e) {
                    tracing::debug!("{}: {reason}; it is processed as one core", entry.path.display());
                } else {
                    tracing::warn!("{}: {reason}; it is processed as one core", entry.path.display());
                }
            }
            lasting(not_slide(reason))
        }
    }
}

/// [`decide`] for every entry of `entries`, on `threads` threads (entries are taken in order
/// as threads free up, and when there are fewer entries than threads each is read in stripes by
/// several; the result is in `entries`' order and does not depend on `threads`).
pub fn decide_all(entries: &[&ImageEntry], cfg: &TmaConfig, batch_rows: usize, threads: usize) -> Vec<Decision> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stripes = (threads / entries.len().max(1)).max(1);
    let slots: Vec<std::sync::Mutex<Option<Decision>>> = entries.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, entries.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(entry) = entries.get(i) else { break };
                let d = decide(entry, cfg, batch_rows, stripes);
                if let Layout::Slide { grid, cores, .. } = &d.layout {
                    tracing::info!(
                        "{}: a slide of {} cores on a {}×{} grid (pitch {:.1} px, rotation {:.2}°)",
                        entry.sample,
                        cores.len(),
                        grid.rows,
                        grid.cols,
                        grid.pitch.0,
                        grid.rotation_deg
                    );
                }
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(d);
                }
            });
        }
    });
    slots.into_iter().map(|m| m.into_inner().ok().flatten().unwrap_or(Decision { layout: Layout::Whole, lasting: false })).collect()
}

/// The score map of an image: mean absorbance over [`SCORE_BAND`] per pixel (`[y, x]`), NaN
/// for pixels the file does not hold. `None` when the axis has no point in the band or the file
/// is not an image. `stripes` threads read horizontal stripes of the image in parallel (as
/// windows, aligned to the 128-pixel rows of mosaic tiles when the image is tall enough); the map
/// does not depend on their number.
pub fn score_map(entry: &ImageEntry, batch_rows: usize, stripes: usize) -> Result<Option<Array2<f32>>, crate::io::ReadError> {
    let (lo, hi) = SCORE_BAND;
    // Only the band's points are read (about a tenth of an instrument's spectrum).
    let opts =
        ReadOptions { batch_rows, sample: entry.sample.clone(), window: None, bands: Some(crate::operators::axis::Band::new(lo, hi)) };
    let reader = crate::io::open_as(&entry.path, entry.format, &opts)?;
    let info = reader.info().clone();
    let (Some(w), Some(h)) = (info.width, info.height) else { return Ok(None) };
    let band: Vec<usize> = info.wavenumbers.iter().enumerate().filter(|(_, v)| (lo..=hi).contains(*v)).map(|(i, _)| i).collect();
    if band.is_empty() {
        return Ok(None);
    }
    let mut map = Array2::<f32>::from_elem((h as usize, w as usize), f32::NAN);
    let stripes = stripes.clamp(1, h as usize);
    if stripes == 1 {
        fill(entry, reader, &band, map.view_mut(), 0)?;
        return Ok(Some(map));
    }
    drop(reader);
    let align = if h as usize >= 128 * stripes { 128 } else { 1 };
    let rows = (h as usize).div_ceil(stripes).div_ceil(align) * align;
    let results: Vec<Result<(), crate::io::ReadError>> = std::thread::scope(|s| {
        let handles: Vec<_> = map
            .axis_chunks_iter_mut(ndarray::Axis(0), rows)
            .enumerate()
            .map(|(i, chunk)| {
                let (band, opts) = (&band, &opts);
                s.spawn(move || {
                    let y0 = i * rows;
                    let window = crate::io::Window::new(0, y0 as u32, w, chunk.nrows() as u32);
                    let reader = crate::io::open_as(&entry.path, entry.format, &opts.clone().with_window(window))?;
                    fill(entry, reader, band, chunk, y0)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err(crate::io::ReadError::format(&entry.path, "a reading thread failed"))))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(Some(map))
}

/// Writes the mean over `band` of every spectrum `reader` yields into `map`, whose first row is
/// image row `y0`.
fn fill(
    entry: &ImageEntry,
    reader: Box<dyn crate::io::SpectraReader>,
    band: &[usize],
    mut map: ndarray::ArrayViewMut2<f32>,
    y0: usize,
) -> Result<(), crate::io::ReadError> {
    for batch in reader {
        let b = batch?;
        let bad = |e: crate::operators::schema::SchemaError| crate::io::ReadError::format(&entry.path, e.to_string());
        let n = SpectraLayout::of(&b.schema()).map_err(bad)?.wavenumbers.len();
        let values = SpectraLayout::values(&b).map_err(bad)?;
        let (Some(xs), Some(ys)) = (b.column_by_name(X), b.column_by_name(Y)) else { continue };
        let (xs, ys): (&UInt32Array, &UInt32Array) = (xs.as_primitive(), ys.as_primitive());
        for r in 0..b.num_rows() {
            let s = &values[r * n..(r + 1) * n];
            let (x, y) = (xs.value(r) as usize, (ys.value(r) as usize).wrapping_sub(y0));
            if let Some(v) = map.get_mut((y, x)) {
                *v = band.iter().map(|&i| s[i]).sum::<f32>() / band.len() as f32;
            }
        }
    }
    Ok(())
}

/// The cores of `grid` on the image whose score map is `map`, each with a window of its box grown
/// by `margin` pixels, less where another core's box is closer, so that no two windows share a
/// pixel; and the map at reduced resolution.
pub fn slide_layout(image: &str, grid: &Grid, margin: u32, map: ArrayView2<f32>) -> Layout {
    let (height, width) = map.dim();
    let boxes: Vec<BBox> = grid.cores.iter().map(|c| c.bbox).collect();
    let cores = grid
        .cores
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let m = boxes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| (gap(&c.bbox, b).saturating_sub(1) / 2) as u32)
                .fold(margin, u32::min) as usize;
            let (x0, y0, x1, y1) = c.bbox;
            let (wx0, wy0) = (x0.saturating_sub(m), y0.saturating_sub(m));
            let (wx1, wy1) = ((x1 + m).min(width), (y1 + m).min(height));
            let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
            CorePlace {
                image: image.to_string(),
                grid: GridPlace { position: c.position.clone(), row: u(c.row), col: u(c.col), bbox: [u(x0), u(y0), u(x1), u(y1)] },
                window: [u(wx0), u(wy0), u(wx1 - wx0), u(wy1 - wy0)],
            }
        })
        .collect();
    let fit = GridFit {
        pitch: grid.pitch,
        rotation_deg: grid.rotation_deg,
        origin: grid.origin,
        rows: grid.rows,
        cols: grid.cols,
        residual: grid.residual,
    };
    Layout::Slide { grid: fit, cores, map: thumbnail(map) }
}

/// Longest side of a slide's reduced map, pixels.
pub const THUMBNAIL_SIDE: usize = 384;

/// The score map at reduced resolution ([`SlideMap`]).
pub fn thumbnail(map: ArrayView2<f32>) -> SlideMap {
    let (h, w) = map.dim();
    let scale = w.max(h).div_ceil(THUMBNAIL_SIDE).max(1);
    let (tw, th) = (w.div_ceil(scale), h.div_ceil(scale));
    let mut means = vec![f32::NAN; tw * th];
    for ty in 0..th {
        for tx in 0..tw {
            let (mut sum, mut n) = (0f64, 0u32);
            for y in ty * scale..((ty + 1) * scale).min(h) {
                for x in tx * scale..((tx + 1) * scale).min(w) {
                    let v = map[(y, x)];
                    if v.is_finite() {
                        sum += f64::from(v);
                        n += 1;
                    }
                }
            }
            if n > 0 {
                means[ty * tw + tx] = (sum / f64::from(n)) as f32;
            }
        }
    }
    let mut finite: Vec<f32> = means.iter().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    let at = |q: f64| finite.get(((finite.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(0.0);
    let (lo, hi) = (at(0.01), at(0.99));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let values =
        means.iter().map(|&v| if v.is_finite() { 255 - (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8 } else { 255 }).collect();
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    SlideMap { width: u(tw), height: u(th), scale: u(scale), values }
}

/// Pixels between two boxes along the axis that separates them most (0 when they touch or
/// overlap).
fn gap(a: &BBox, b: &BBox) -> usize {
    let gx = b.0.saturating_sub(a.2).max(a.0.saturating_sub(b.2));
    let gy = b.1.saturating_sub(a.3).max(a.1.saturating_sub(b.3));
    gx.max(gy)
}

/// The canonical form of a grid position as labels may write it: letters then a number, any
/// case, zeros before the number allowed (`b03` → `B3`). `None` for anything else.
pub fn canonical_position(text: &str) -> Option<String> {
    let digits_at = text.find(|c: char| c.is_ascii_digit())?;
    let (letters, digits) = text.split_at(digits_at);
    if letters.is_empty() || !letters.chars().all(|c| c.is_ascii_alphabetic()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let number = digits.trim_start_matches('0');
    if number.is_empty() || number.len() > 9 {
        return None;
    }
    Some(format!("{}{number}", letters.to_ascii_uppercase()))
}

/// A sample id with its last component put in canonical position form when it is one
/// (`slides/S1/b03` → `slides/S1/B3`); other ids unchanged.
pub fn canonical_sample(sample: &str) -> String {
    match sample.rsplit_once('/') {
        Some((image, tail)) => match canonical_position(tail) {
            Some(p) => format!("{image}/{p}"),
            None => sample.to_string(),
        },
        None => sample.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reduced_map_averages_blocks() {
        // 800 × 10 pixels: scale 3 (⌈800 / 384⌉), 267 × 4 map pixels; NaN pixels are left out.
        let mut map = Array2::<f32>::from_shape_fn((10, 800), |(_, x)| if x < 400 { 0.0 } else { 1.0 });
        map[(0, 0)] = f32::NAN;
        let t = thumbnail(map.view());
        assert_eq!((t.width, t.height, t.scale), (267, 4, 3));
        assert_eq!(t.values[0], 255, "bare slide is bright");
        assert_eq!(t.values[266], 0, "the highest score is dark");
        let nan = Array2::<f32>::from_elem((2, 2), f32::NAN);
        assert_eq!(thumbnail(nan.view()).values, vec![255; 4], "no pixel: white");
    }

    #[test]
    fn positions_are_canonical_whatever_the_case_and_padding() {
        for (text, want) in [("B3", Some("B3")), ("b03", Some("B3")), ("aa012", Some("AA12")), ("B0", None), ("3B", None), ("B", None)] {
            assert_eq!(canonical_position(text).as_deref(), want, "{text}");
        }
        assert_eq!(canonical_sample("slides/S1/b03"), "slides/S1/B3");
        assert_eq!(canonical_sample("core_07"), "core_07");
        assert_eq!(canonical_sample("p1/core7"), "p1/CORE7", "a last component in position form is canonical");
    }

    #[test]
    fn windows_never_share_a_pixel() {
        use crate::operators::dearray::GridCore;
        let core = |col: usize, x0: usize| GridCore {
            row: 0,
            col,
            position: format!("A{}", col + 1),
            bbox: (x0, 10, x0 + 20, 30),
            area: 300,
            pieces: 1,
        };
        // Gaps of 3 and 20 pixels: the close pair gets a margin of 1, the far core the full 4.
        let grid = Grid {
            pitch: (23.0, 23.0),
            rotation_deg: 0.0,
            origin: (20.0, 20.0),
            rows: 1,
            cols: 3,
            residual: 0.0,
            cores: vec![core(0, 2), core(1, 25), core(2, 65)],
        };
        let map = Array2::<f32>::zeros((40, 100));
        let Layout::Slide { cores, map, .. } = slide_layout("S1", &grid, 4, map.view()) else { panic!("a grid is a slide") };
        assert_eq!((map.width, map.height, map.scale), (100, 40, 1));
        assert_eq!(cores[0].window, [1, 9, 22, 22], "clipped at the image edge on the left, margin 1 towards A2");
        assert_eq!(cores[1].window, [24, 9, 22, 22]);
        assert_eq!(cores[2].window, [61, 6, 28, 28]);
        for (a, b) in [(0, 1), (1, 2), (0, 2)] {
            let (wa, wb) = (cores[a].window(), cores[b].window());
            assert!(wa.x_end() <= u64::from(wb.x) || wb.x_end() <= u64::from(wa.x), "{a} and {b} overlap");
        }
        assert_eq!(cores[1].sample(), "S1/A2");
    }
}
