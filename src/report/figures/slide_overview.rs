//! A whole TMA slide at reduced resolution (its de-arraying map: tissue and paraffin dark, bare
//! slide white), each core outlined in the colour of its majority class and labelled by its grid
//! position, and each empty position of the grid marked with a grey ×.
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{de, label, text, DrawResult, Figure};
use crate::outputs::layouts::{CorePlace, GridFit, SlideMap};
use crate::report::style::{class_colour, EXCLUDED};

/// Space above the map (title), px.
const TOP: u32 = 56;
/// Margin left and right of the map, px.
const SIDE: u32 = 24;
/// Height of the legend under the map, px.
const LEGEND: u32 = 56;
/// Grey of empty positions.
const EMPTY: RGBColor = RGBColor(150, 150, 150);

/// One slide's overview.
pub struct SlideOverview<'a> {
    /// The slide's sample id.
    pub image: &'a str,
    /// Its grid.
    pub grid: &'a GridFit,
    /// Its cores.
    pub cores: &'a [CorePlace],
    /// The reduced map.
    pub map: &'a SlideMap,
    /// Each core's majority class, by position (`None`: not classified).
    pub majority: &'a dyn Fn(&str) -> Option<String>,
    /// Type classes (colour order).
    pub types: &'a [String],
}

impl SlideOverview<'_> {
    /// Figure pixels per map pixel.
    pub fn zoom(&self) -> u32 {
        (720 / self.map.width.max(self.map.height).max(1)).clamp(1, 8)
    }

    /// Figure position of image pixel (`x`, `y`).
    fn at(&self, x: f64, y: f64) -> (i32, i32) {
        let k = f64::from(self.zoom()) / f64::from(self.map.scale.max(1));
        ((f64::from(SIDE) + x * k).round() as i32, (f64::from(TOP) + y * k).round() as i32)
    }

    /// The grid positions that hold no core, with their centres in image pixels.
    pub fn empty_positions(&self) -> Vec<(String, (f64, f64))> {
        let g = self.grid;
        let (s, c) = g.rotation_deg.to_radians().sin_cos();
        let mut out = Vec::new();
        for row in 0..g.rows {
            for col in 0..g.cols {
                if self.cores.iter().any(|k| k.grid.row as usize == row && k.grid.col as usize == col) {
                    continue;
                }
                let (dx, dy) = (col as f64 * g.pitch.0, row as f64 * g.pitch.1);
                let centre = (g.origin.0 + dx * c - dy * s, g.origin.1 + dx * s + dy * c);
                out.push((crate::operators::dearray::position_name(row, col), centre));
            }
        }
        out
    }
}

impl Figure for SlideOverview<'_> {
    fn name(&self) -> String {
        format!("slide_{}", super::safe_name(self.image))
    }

    fn size(&self) -> (u32, u32) {
        let z = self.zoom();
        ((self.map.width * z + 2 * SIDE).max(480), TOP + self.map.height * z + LEGEND)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let g = self.grid;
        let title = format!(
            "Slide {}: {} cores on a {} × {} grid (pitch {:.0} px, rotation {:.1}°)",
            self.image,
            self.cores.len(),
            g.rows,
            g.cols,
            g.pitch.0,
            g.rotation_deg
        );
        label(root, &title, (SIDE as i32, 10), &text(17.0, BLACK, HPos::Left, VPos::Top))?;
        let z = self.zoom();
        let (w, h) = (self.map.width * z, self.map.height * z);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        for py in 0..h {
            for px in 0..w {
                let v = self.map.values.get(((py / z) * self.map.width + px / z) as usize).copied().unwrap_or(255);
                let o = ((py * w + px) * 3) as usize;
                buf[o..o + 3].copy_from_slice(&[v, v, v]);
            }
        }
        let el = BitMapElement::with_owned_buffer((SIDE as i32, TOP as i32), (w, h), buf).ok_or("raster buffer too small")?;
        root.draw(&el).map_err(de)?;
        root.draw(&Rectangle::new([(SIDE as i32 - 1, TOP as i32 - 1), ((SIDE + w) as i32, (TOP + h) as i32)], BLACK.stroke_width(1)))
            .map_err(de)?;
        let small = text(12.0, BLACK, HPos::Left, VPos::Bottom);
        for core in self.cores {
            let [x0, y0, x1, y1] = core.grid.bbox;
            let (a, b) = (self.at(f64::from(x0), f64::from(y0)), self.at(f64::from(x1), f64::from(y1)));
            let colour = (self.majority)(&core.grid.position).map_or(EXCLUDED, |m| class_colour(&m, self.types));
            root.draw(&Rectangle::new([a, b], colour.stroke_width(3))).map_err(de)?;
            label(root, &core.grid.position, (a.0, a.1 - 2), &small)?;
        }
        let grey = text(12.0, EMPTY, HPos::Center, VPos::Center);
        for (name, (x, y)) in self.empty_positions() {
            let c = self.at(x, y);
            root.draw(&Cross::new(c, 6, EMPTY.stroke_width(2))).map_err(de)?;
            label(root, &name, (c.0, c.1 + 14), &grey)?;
        }
        // Legend: one swatch per class, then "not classified" and "empty position".
        let y = (TOP + h + 28) as i32;
        let mut x = SIDE as i32;
        let lt = text(13.0, BLACK, HPos::Left, VPos::Center);
        let mut entries: Vec<(RGBColor, String)> =
            self.types.iter().map(|c| (class_colour(c, self.types), format!("majority {c}"))).collect();
        entries.push((EXCLUDED, "not classified".into()));
        for (colour, name) in entries {
            root.draw(&Rectangle::new([(x, y - 7), (x + 16, y + 7)], colour.stroke_width(3))).map_err(de)?;
            label(root, &name, (x + 22, y), &lt)?;
            x += 30 + 8 * name.chars().count() as i32;
        }
        root.draw(&Cross::new((x + 8, y), 6, EMPTY.stroke_width(2))).map_err(de)?;
        label(root, "empty position", (x + 22, y), &lt)
    }
}
