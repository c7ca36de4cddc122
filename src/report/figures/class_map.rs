//! Per-core class maps: the predicted class of every classified tissue pixel (and, for cancer
//! cores with a subtype model, the predicted subtype), paraffin and bare slide in neutral greys,
//! beside the amide I peak absorbance image, so a pathologist can hold it against the H&E.
//!
//! Each image pixel is drawn as an exact `scale × scale` square at a position [`layout`] gives,
//! so tests can check the figure's pixels against the predictions.
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{de, label, sig3, text, ticks, DrawResult, Figure};
use crate::report::load::{CorePixels, PixelClass};
use crate::report::style::{class_colour, viridis, BACKGROUND, EXCLUDED, PARAFFIN};

/// Space above the panels (title and panel titles), px.
pub const TOP: u32 = 64;
/// Space left of the first panel (y tick labels), px.
pub const LEFT: u32 = 44;
/// Space between panels (the next panel's y tick labels), px.
pub const GAP: u32 = 56;
/// Space right of the chemical image (its colour bar and labels), px.
pub const RIGHT: u32 = 130;
/// Height of one legend line, px.
pub const LEGEND_LINE: u32 = 20;

/// Where the panels of a class-map figure lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLayout {
    /// Figure pixels per image pixel.
    pub scale: u32,
    /// Panel width and height, px.
    pub panel: (u32, u32),
    /// Top-left corner of each panel, px (type map, [subtype map], chemical image).
    pub origins: Vec<(i32, i32)>,
    /// Figure width and height, px.
    pub size: (u32, u32),
}

/// The layout for an image of `width × height` pixels with `panels` panels and `legend_lines`
/// legend lines under the class maps.
pub fn layout(width: u32, height: u32, panels: usize, legend_lines: usize) -> MapLayout {
    let side = width.max(height).max(1);
    let scale = (320 / side).clamp(1, 16);
    let panel = (width.max(1) * scale, height.max(1) * scale);
    let origins = (0..panels).map(|i| ((LEFT + i as u32 * (panel.0 + GAP)) as i32, TOP as i32)).collect();
    let w = LEFT + panels as u32 * panel.0 + (panels as u32 - 1) * GAP + RIGHT;
    let h = TOP + panel.1 + 34 + legend_lines as u32 * LEGEND_LINE + 8;
    MapLayout { scale, panel, origins, size: (w.max(420), h) }
}

/// The colour a class-map pixel is drawn in (white where the part has no spectrum).
pub fn pixel_colour(p: Option<PixelClass>, classes: &[String]) -> RGBColor {
    match p {
        None => WHITE,
        Some(PixelClass::Background) => BACKGROUND,
        Some(PixelClass::Paraffin) => PARAFFIN,
        Some(PixelClass::Excluded) => EXCLUDED,
        Some(PixelClass::Class(k)) => classes.get(k as usize).map_or(EXCLUDED, |c| class_colour(c, classes)),
    }
}

/// One core's class map(s) and chemical image.
pub struct ClassMap<'a> {
    /// The pixels.
    pub core: &'a CorePixels,
    /// Type classes (map order).
    pub types: &'a [String],
    /// Subtype classes.
    pub subtypes: &'a [String],
    /// Title line (sample, majority, truth).
    pub title: String,
}

/// One panel of a class map: its title, each pixel's class, the class names.
type Panel<'a> = (&'static str, &'a [Option<PixelClass>], &'a [String]);

impl ClassMap<'_> {
    fn maps(&self) -> Vec<Panel<'_>> {
        let mut v = vec![("Predicted class", self.core.types.as_slice(), self.types)];
        if let Some(s) = &self.core.subtypes {
            v.push(("Predicted subtype", s.as_slice(), self.subtypes));
        }
        v
    }

    fn legend(map: &[Option<PixelClass>], classes: &[String]) -> Vec<(RGBColor, String)> {
        let mut counts = vec![0u64; classes.len()];
        let (mut bg, mut par, mut exc) = (0u64, 0u64, 0u64);
        for p in map.iter().flatten() {
            match p {
                PixelClass::Background => bg += 1,
                PixelClass::Paraffin => par += 1,
                PixelClass::Excluded => exc += 1,
                PixelClass::Class(k) => {
                    if let Some(c) = counts.get_mut(*k as usize) {
                        *c += 1
                    }
                }
            }
        }
        let mut out: Vec<(RGBColor, String)> =
            classes.iter().zip(&counts).map(|(c, n)| (class_colour(c, classes), format!("{c} ({n} px)"))).collect();
        out.push((EXCLUDED, format!("tissue, not classified ({exc} px)")));
        out.push((PARAFFIN, format!("paraffin ({par} px)")));
        out.push((BACKGROUND, format!("bare slide ({bg} px)")));
        out
    }

    /// The layout of this figure.
    pub fn layout(&self) -> MapLayout {
        let maps = self.maps();
        let lines = maps.iter().map(|(_, m, c)| Self::legend(m, c).len()).max().unwrap_or(0);
        layout(self.core.width, self.core.height, maps.len() + self.core.has_amide_i as usize, lines)
    }
}

/// 1st and 99th percentiles of the finite values (the chemical image's colour range).
pub fn robust_range(values: &[f32]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.01), at(0.99));
    Some(if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) })
}

fn raster(w: u32, h: u32, scale: u32, colour: impl Fn(usize) -> RGBColor) -> Vec<u8> {
    let (pw, ph) = ((w * scale) as usize, (h * scale) as usize);
    let mut buf = vec![255u8; pw * ph * 3];
    for py in 0..ph {
        for px in 0..pw {
            let i = (py / scale as usize) * w as usize + px / scale as usize;
            let c = colour(i);
            let o = (py * pw + px) * 3;
            buf[o..o + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }
    buf
}

fn frame_and_ticks<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, o: (i32, i32), w: u32, h: u32, scale: u32) -> DrawResult {
    let (pw, ph) = ((w * scale) as i32, (h * scale) as i32);
    root.draw(&Rectangle::new([(o.0 - 1, o.1 - 1), (o.0 + pw, o.1 + ph)], BLACK.stroke_width(1))).map_err(de)?;
    let st = text(12.0, BLACK, HPos::Center, VPos::Top);
    for t in ticks(w) {
        let x = o.0 + (t * scale) as i32;
        root.draw(&PathElement::new(vec![(x, o.1 + ph), (x, o.1 + ph + 4)], BLACK)).map_err(de)?;
        label(root, &t.to_string(), (x, o.1 + ph + 6), &st)?;
    }
    let st = text(12.0, BLACK, HPos::Right, VPos::Center);
    for t in ticks(h) {
        let y = o.1 + (t * scale) as i32;
        root.draw(&PathElement::new(vec![(o.0 - 5, y), (o.0 - 1, y)], BLACK)).map_err(de)?;
        label(root, &t.to_string(), (o.0 - 7, y), &st)?;
    }
    Ok(())
}

impl Figure for ClassMap<'_> {
    fn name(&self) -> String {
        format!("class_map_{}", super::safe_name(&self.core.sample))
    }

    fn size(&self) -> (u32, u32) {
        self.layout().size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let l = self.layout();
        let (w, h, s) = (self.core.width, self.core.height, l.scale);
        label(root, &self.title, (LEFT as i32, 8), &text(17.0, BLACK, HPos::Left, VPos::Top))?;
        let sub = text(14.0, BLACK, HPos::Left, VPos::Bottom);
        let maps = self.maps();
        for (k, (title, map, classes)) in maps.iter().enumerate() {
            let o = l.origins[k];
            label(root, title, (o.0, o.1 - 8), &sub)?;
            let buf = raster(w, h, s, |i| pixel_colour(map[i], classes));
            let el = BitMapElement::with_owned_buffer(o, l.panel, buf).ok_or("raster buffer too small")?;
            root.draw(&el).map_err(de)?;
            frame_and_ticks(root, o, w, h, s)?;
            let lt = text(13.0, BLACK, HPos::Left, VPos::Center);
            for (j, (c, name)) in Self::legend(map, classes).iter().enumerate() {
                let y = o.1 + l.panel.1 as i32 + 34 + (j as u32 * LEGEND_LINE) as i32;
                root.draw(&Rectangle::new([(o.0, y - 6), (o.0 + 14, y + 7)], c.filled())).map_err(de)?;
                root.draw(&Rectangle::new([(o.0, y - 6), (o.0 + 14, y + 7)], BLACK.stroke_width(1))).map_err(de)?;
                label(root, name, (o.0 + 20, y), &lt)?;
            }
        }
        if self.core.has_amide_i {
            let o = l.origins[maps.len()];
            label(root, "Amide I peak absorbance (1600–1700 cm⁻¹)", (o.0, o.1 - 8), &sub)?;
            let range = robust_range(&self.core.amide_i);
            let (lo, hi) = range.unwrap_or((0.0, 1.0));
            let buf = raster(w, h, s, |i| {
                let v = self.core.amide_i[i];
                if v.is_finite() {
                    viridis((v as f64 - lo) / (hi - lo))
                } else {
                    WHITE
                }
            });
            let el = BitMapElement::with_owned_buffer(o, l.panel, buf).ok_or("raster buffer too small")?;
            root.draw(&el).map_err(de)?;
            frame_and_ticks(root, o, w, h, s)?;
            // Colour bar: bottom = low, top = high; the range is the 1st–99th percentile, values
            // outside it are drawn in the end colours (labelled ≤ / ≥).
            let bx = o.0 + l.panel.0 as i32 + 14;
            let bh = l.panel.1 as i32;
            for i in 0..bh {
                let t = 1.0 - i as f64 / (bh - 1).max(1) as f64;
                root.draw(&Rectangle::new([(bx, o.1 + i), (bx + 16, o.1 + i + 1)], viridis(t).filled())).map_err(de)?;
            }
            root.draw(&Rectangle::new([(bx - 1, o.1 - 1), (bx + 16, o.1 + bh)], BLACK.stroke_width(1))).map_err(de)?;
            let bt = text(12.0, BLACK, HPos::Left, VPos::Center);
            if range.is_some() {
                for (frac, v, prefix) in [(0.0, hi, "≥ "), (0.5, (lo + hi) / 2.0, ""), (1.0, lo, "≤ ")] {
                    let y = o.1 + (frac * (bh - 1) as f64) as i32;
                    root.draw(&PathElement::new(vec![(bx + 16, y), (bx + 20, y)], BLACK)).map_err(de)?;
                    label(root, &format!("{prefix}{}", sig3(v)), (bx + 22, y), &bt)?;
                }
            }
            label(
                root,
                "colour range: 1st–99th percentile",
                (o.0, o.1 + l.panel.1 as i32 + 34),
                &text(12.0, RGBColor(80, 80, 80), HPos::Left, VPos::Center),
            )?;
            label(
                root,
                "x, y: pixel",
                (o.0, o.1 + l.panel.1 as i32 + 34 + LEGEND_LINE as i32),
                &text(12.0, RGBColor(80, 80, 80), HPos::Left, VPos::Center),
            )?;
        }
        Ok(())
    }
}
