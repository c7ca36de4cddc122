//! The report's figures: each is drawn once through `plotters`' generic backend interface and
//! written twice, as PNG (for the page) and SVG (for print and papers), at the same size.
pub mod chemical_image;
pub mod class_map;
pub mod confusion;
pub mod gradcam_plot;
pub mod slide_overview;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::FAMILY;
use super::ReportError;

/// The error of a drawing call, as text.
pub type DrawResult = Result<(), String>;

/// Turns a backend error into text.
pub fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A figure: a file name stem, a size in pixels, and a drawing on any backend.
pub trait Figure {
    /// File name without extension (safe characters only).
    fn name(&self) -> String;
    /// Width and height, pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

/// Writes `dir/figures/<name>.png` and `.svg`; returns `figures/<name>` (relative to `dir`).
pub fn render<F: Figure>(fig: &F, dir: &Path) -> Result<String, ReportError> {
    let name = fig.name();
    let size = fig.size();
    let draw_err = |reason: String| ReportError::Draw { figure: name.clone(), reason };
    let png = dir.join("figures").join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(de(e)))?;
        fig.draw(&root).map_err(draw_err)?;
        root.present().map_err(|e| match std::fs::metadata(png.parent().unwrap_or(dir)) {
            Err(io) => ReportError::write(&png, io),
            Ok(_) => draw_err(de(e)),
        })?;
    }
    let svg = dir.join("figures").join(format!("{name}.svg"));
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(de(e)))?;
        fig.draw(&root).map_err(draw_err)?;
        root.present().map_err(|e| draw_err(de(e)))?;
    }
    std::fs::write(&svg, text).map_err(|e| ReportError::write(&svg, e))?;
    Ok(format!("figures/{name}"))
}

/// A text style of `size` px in `colour`, anchored at (`h`, `v`).
pub fn text(size: f64, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle { font: (FAMILY, size).into_font(), color: colour.to_backend_color(), pos: Pos::new(h, v) }
}

/// Draws `s` at `(x, y)`.
pub fn label<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, s: &str, at: (i32, i32), style: &TextStyle) -> DrawResult {
    root.draw(&Text::new(s.to_string(), at, style.clone())).map_err(de)
}

/// A file-name-safe stem for a sample id or class name.
pub fn safe_name(s: &str) -> String {
    crate::outputs::part_name(s)
}

/// Formats a value with 3 significant digits.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// Tick positions 0, step, 2·step, … ≤ `n` with a "nice" step giving about 4–6 ticks.
pub fn ticks(n: u32) -> Vec<u32> {
    let target = (n as f64 / 5.0).max(1.0);
    let mag = 10f64.powf(target.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= target).unwrap_or(10.0 * mag).max(1.0) as u32;
    (0..=n).step_by(step as usize).collect()
}
