//! A quick chemical image (`ftirflow inspect --png`): one value per pixel on the viridis scale
//! with a labelled colour bar (1st–99th percentile), pixel axes, and the band in the title.
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::class_map::robust_range;
use super::{de, label, sig3, text, ticks, DrawResult, Figure};
use crate::report::style::viridis;

const TOP: u32 = 44;
const LEFT: u32 = 56;
const RIGHT: u32 = 120;
const BOTTOM: u32 = 44;

/// A chemical image figure.
pub struct ChemicalImageFigure<'a> {
    /// Title.
    pub title: String,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Row-major values (NaN: no spectrum, drawn white).
    pub values: &'a [f32],
}

impl ChemicalImageFigure<'_> {
    /// Figure pixels per image pixel (images are shown at least ~400 px wide, at most 1:1 for
    /// images larger than that).
    pub fn scale(&self) -> u32 {
        (400 / self.width.max(self.height).max(1)).clamp(1, 16)
    }
}

impl Figure for ChemicalImageFigure<'_> {
    fn name(&self) -> String {
        "chemical_image".into()
    }

    fn size(&self) -> (u32, u32) {
        let s = self.scale();
        ((LEFT + self.width * s + RIGHT).max(480), TOP + self.height * s + BOTTOM)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let s = self.scale();
        let (pw, ph) = (self.width * s, self.height * s);
        label(root, &self.title, (LEFT as i32, 10), &text(15.0, BLACK, HPos::Left, VPos::Top))?;
        let range = robust_range(self.values);
        let (lo, hi) = range.unwrap_or((0.0, 1.0));
        let mut buf = vec![255u8; (pw * ph * 3) as usize];
        for py in 0..ph as usize {
            for px in 0..pw as usize {
                let v = self.values[(py / s as usize) * self.width as usize + px / s as usize];
                let c = if v.is_finite() { viridis((v as f64 - lo) / (hi - lo)) } else { WHITE };
                let o = (py * pw as usize + px) * 3;
                buf[o..o + 3].copy_from_slice(&[c.0, c.1, c.2]);
            }
        }
        let o = (LEFT as i32, TOP as i32);
        root.draw(&BitMapElement::with_owned_buffer(o, (pw, ph), buf).ok_or("raster buffer too small")?).map_err(de)?;
        root.draw(&Rectangle::new([(o.0 - 1, o.1 - 1), (o.0 + pw as i32, o.1 + ph as i32)], BLACK.stroke_width(1))).map_err(de)?;
        for t in ticks(self.width) {
            let x = o.0 + (t * s) as i32;
            root.draw(&PathElement::new(vec![(x, o.1 + ph as i32), (x, o.1 + ph as i32 + 4)], BLACK)).map_err(de)?;
            label(root, &t.to_string(), (x, o.1 + ph as i32 + 6), &text(12.0, BLACK, HPos::Center, VPos::Top))?;
        }
        for t in ticks(self.height) {
            let y = o.1 + (t * s) as i32;
            root.draw(&PathElement::new(vec![(o.0 - 5, y), (o.0 - 1, y)], BLACK)).map_err(de)?;
            label(root, &t.to_string(), (o.0 - 7, y), &text(12.0, BLACK, HPos::Right, VPos::Center))?;
        }
        label(root, "x (pixel)", (o.0 + pw as i32 / 2, o.1 + ph as i32 + 24), &text(12.0, BLACK, HPos::Center, VPos::Top))?;
        label(
            root,
            "y (pixel)",
            (12, o.1 + ph as i32 / 2),
            &text(12.0, BLACK, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
        )?;
        let bx = o.0 + pw as i32 + 14;
        let bh = ph as i32;
        for i in 0..bh {
            let t = 1.0 - i as f64 / (bh - 1).max(1) as f64;
            root.draw(&Rectangle::new([(bx, o.1 + i), (bx + 16, o.1 + i + 1)], viridis(t).filled())).map_err(de)?;
        }
        root.draw(&Rectangle::new([(bx - 1, o.1 - 1), (bx + 16, o.1 + bh)], BLACK.stroke_width(1))).map_err(de)?;
        if range.is_some() {
            for (frac, v, prefix) in [(0.0, hi, "≥ "), (0.5, (lo + hi) / 2.0, ""), (1.0, lo, "≤ ")] {
                let y = o.1 + (frac * (bh - 1) as f64) as i32;
                root.draw(&PathElement::new(vec![(bx + 16, y), (bx + 20, y)], BLACK)).map_err(de)?;
                label(root, &format!("{prefix}{}", sig3(v)), (bx + 22, y), &text(12.0, BLACK, HPos::Left, VPos::Center))?;
            }
        }
        Ok(())
    }
}

/// Writes the figure as a PNG at `path` (any file name).
pub fn write_png(fig: &ChemicalImageFigure, path: &std::path::Path) -> Result<(), crate::report::ReportError> {
    crate::report::style::register_fonts();
    let root = BitMapBackend::new(path, fig.size()).into_drawing_area();
    let err = |reason: String| crate::report::ReportError::Draw { figure: path.display().to_string(), reason };
    root.fill(&WHITE).map_err(|e| err(de(e)))?;
    fig.draw(&root).map_err(err)?;
    root.present().map_err(|e| err(de(e)))?;
    Ok(())
}
