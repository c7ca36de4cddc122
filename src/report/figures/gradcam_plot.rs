//! Per-class Grad-CAM profiles: the mean map (±1 standard deviation band, clipped to the maps'
//! range, [0, 1] for Grad-CAM and [−1, 1] for signed maps) over the class mean spectrum (±1
//! standard deviation), on a wavenumber axis that runs from high to low as spectroscopists plot
//! it, with the class's top bands shaded and labelled with their biochemical assignments.
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{de, label, text, DrawResult, Figure};
use crate::operators::grad_cam::MapKind;
use crate::report::load::{BandRecord, Profile};
use crate::report::style::FAMILY;

/// Top of the Grad-CAM axis: the maps end at 1, the rest is room for the band labels.
const CAM_TOP: f64 = 1.36;
/// Height of the legend strip under the chart, px.
const LEGEND_H: u32 = 30;

/// Figure size, px.
pub const SIZE: (u32, u32) = (960, 520);

/// One class's profile.
pub struct GradCamPlot<'a> {
    /// File name stem.
    pub name: String,
    /// Title.
    pub title: String,
    /// The class colour.
    pub colour: RGBColor,
    /// Mean and std of the maps.
    pub cam: &'a Profile,
    /// Which maps they are.
    pub kind: MapKind,
    /// Mean and std of the class's spectra, when known.
    pub spectrum: Option<&'a Profile>,
    /// Top bands.
    pub bands: Vec<&'a BandRecord>,
}

/// Shade of a top band where the class's mean spectrum is higher than the other classes' (or
/// where that is unknown).
const HIGHER_SHADE: RGBColor = RGBColor(255, 221, 120);
/// Shade of a top band where it is lower.
const LOWER_SHADE: RGBColor = RGBColor(150, 190, 255);

/// Short label of a band: its peak, the assignment's first words and, when known, which way
/// the class's spectrum differs there (`▲` higher, `▼` lower, with the relative difference).
fn band_label(b: &BandRecord) -> String {
    let a = b.assignment.split([';', ',', '(']).next().unwrap_or("").trim();
    let arrow = match b.direction.as_str() {
        "higher" => " ▲",
        "lower" => " ▼",
        _ => "",
    };
    let rel = if arrow.is_empty() || !b.relative.is_finite() { String::new() } else { format!(" {:+.0} %", 100.0 * b.relative) };
    if a.is_empty() || a == "unassigned" {
        format!("{:.0}{arrow}{rel}", b.peak)
    } else {
        format!("{:.0} {a}{arrow}{rel}", b.peak)
    }
}

/// `higher in CA, +18 %, 11/12 patients` (or `lower …`): how the class's mean spectrum over a
/// band compares with the other classes', and in how many patients (or cores) it does so; `–`
/// when unknown.
pub fn direction_text(b: &BandRecord, class: &str) -> String {
    if b.direction.is_empty() {
        return "–".to_string();
    }
    let rel = if b.relative.is_finite() { format!(", {:+.0} %", 100.0 * b.relative) } else { String::new() };
    let groups = match (b.groups, b.grouped_by.as_str()) {
        (0, _) | (_, "") => String::new(),
        (n, by) => format!(", {}/{n} {by}{}", b.consistent, if n == 1 { "" } else { "s" }),
    };
    format!("{} in {class}{rel}{groups}", b.direction)
}

impl Figure for GradCamPlot<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let wn = &self.cam.wavenumber;
        let (lo, hi) = wn.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            return Err("a Grad-CAM profile needs at least two wavenumbers".into());
        }
        // The x coordinate is −wavenumber, so that the axis runs from high (left) to low (right).
        let (s_lo, s_hi) = match self.spectrum {
            Some(s) => {
                let lo = s.mean.iter().zip(&s.std).map(|(m, d)| m - d).fold(f64::INFINITY, f64::min);
                let hi = s.mean.iter().zip(&s.std).map(|(m, d)| m + d).fold(f64::NEG_INFINITY, f64::max);
                // The top quarter stays free for the band labels.
                let span = (hi - lo).max(1e-9);
                (lo - 0.04 * span, hi + 0.36 * span)
            }
            None => (0.0, 1.0),
        };
        let (cam_lo, cam_name) = match self.kind {
            MapKind::Gradcam => (0.0, "Grad-CAM"),
            MapKind::Signed => (-1.0, "signed map"),
        };
        let (upper, lower) = root.split_vertically(SIZE.1 - LEGEND_H);
        let mut chart = ChartBuilder::on(&upper)
            .caption(&self.title, (FAMILY, 19))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(-hi..-lo, s_lo..s_hi)
            .map_err(de)?
            .set_secondary_coord(-hi..-lo, cam_lo..CAM_TOP);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("wavenumber (cm⁻¹)")
            .y_desc(if self.spectrum.is_some() { "mean spectrum (normalized absorbance)" } else { "" })
            .x_label_formatter(&|v| format!("{:.0}", -v))
            .x_labels(10)
            .y_labels(if self.spectrum.is_some() { 10 } else { 0 })
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()
            .map_err(de)?;
        chart
            .configure_secondary_axes()
            .y_desc(match self.kind {
                MapKind::Gradcam => "Grad-CAM (0–1)",
                MapKind::Signed => "signed map (−1–1)",
            })
            .y_label_formatter(&|v| if *v <= 1.0 + 1e-9 { format!("{v:.1}") } else { String::new() })
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()
            .map_err(de)?;
        // Top bands: shaded behind everything, labelled (rotated) inside the band at the top.
        // Warm where the class's spectrum is higher than the other classes', blue where lower.
        for b in &self.bands {
            let shade = if b.direction == "lower" { LOWER_SHADE } else { HIGHER_SHADE }.mix(0.45);
            let (a, z) = (-(b.hi.max(b.lo)) - 2.0, -(b.lo.min(b.hi)) + 2.0);
            chart.draw_secondary_series(std::iter::once(Rectangle::new([(a, cam_lo), (z, CAM_TOP)], shade.filled()))).map_err(de)?;
        }
        if let Some(s) = self.spectrum {
            let band: Vec<(f64, f64)> = s
                .wavenumber
                .iter()
                .zip(s.mean.iter().zip(&s.std))
                .map(|(w, (m, d))| (-w, m + d))
                .chain(s.wavenumber.iter().zip(s.mean.iter().zip(&s.std)).rev().map(|(w, (m, d))| (-w, m - d)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(band, RGBColor(0, 0, 0).mix(0.12).filled()))).map_err(de)?;
            chart
                .draw_series(LineSeries::new(s.wavenumber.iter().zip(&s.mean).map(|(w, m)| (-w, *m)), BLACK.stroke_width(2)))
                .map_err(de)?;
        }
        let cam = self.cam;
        let band: Vec<(f64, f64)> = cam
            .wavenumber
            .iter()
            .zip(cam.mean.iter().zip(&cam.std))
            .map(|(w, (m, d))| (-w, (m + d).min(1.0)))
            .chain(cam.wavenumber.iter().zip(cam.mean.iter().zip(&cam.std)).rev().map(|(w, (m, d))| (-w, (m - d).max(cam_lo))))
            .collect();
        let colour = self.colour;
        if self.kind == MapKind::Signed {
            // Zero: above it a region raises the class's score, below it lowers it.
            let zero = [(-hi, 0.0), (-lo, 0.0)];
            chart.draw_secondary_series(LineSeries::new(zero, RGBColor(110, 110, 110).stroke_width(1))).map_err(de)?;
        }
        chart.draw_secondary_series(std::iter::once(Polygon::new(band, colour.mix(0.25).filled()))).map_err(de)?;
        chart
            .draw_secondary_series(LineSeries::new(cam.wavenumber.iter().zip(&cam.mean).map(|(w, m)| (-w, *m)), colour.stroke_width(3)))
            .map_err(de)?;
        // Legend, under the axis title (outside the data).
        let mut entries = vec![(colour, 3, format!("{cam_name} mean ± 1 SD ({} spectra)", cam.count))];
        if let Some(s) = self.spectrum {
            entries.insert(0, (BLACK, 2, format!("mean spectrum ± 1 SD ({} spectra)", s.count)));
        }
        if self.bands.iter().any(|b| !b.direction.is_empty()) {
            entries.push((HIGHER_SHADE, 10, "top band ▲ higher".into()));
            entries.push((LOWER_SHADE, 10, "▼ lower".into()));
        } else {
            entries.push((HIGHER_SHADE, 10, "top bands (mean map > its 90th percentile)".into()));
        }
        let lt = text(13.0, BLACK, HPos::Left, VPos::Center);
        let widths: Vec<i32> = entries.iter().map(|e| lower.estimate_text_size(&e.2, &lt).map(|s| s.0 as i32).unwrap_or(200)).collect();
        let total: i32 = widths.iter().map(|w| w + 28 + 24).sum::<i32>() - 24;
        let mut x = ((SIZE.0 as i32 - total) / 2).max(4);
        let y = (LEGEND_H / 2) as i32;
        for ((c, w, name), tw) in entries.into_iter().zip(widths) {
            lower.draw(&PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(w))).map_err(de)?;
            label(&lower, &name, (x + 28, y), &lt)?;
            x += 28 + tw + 24;
        }
        // Band labels, rotated, reading upwards from just below the top of the plot.
        let area = chart.plotting_area();
        let (px, py) = area.get_pixel_range();
        let st = text(13.0, RGBColor(90, 60, 0), HPos::Right, VPos::Center).transform(FontTransform::Rotate270);
        for b in &self.bands {
            let (x, _) = chart.borrow_secondary().backend_coord(&(-b.peak, 1.0));
            let x = x.clamp(px.start + 8, px.end - 8);
            label(root, &band_label(b), (x, py.start + 6), &st)?;
        }
        Ok(())
    }
}
