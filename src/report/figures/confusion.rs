//! Confusion matrices: rows are the true class, columns the predicted class; each cell shows its
//! count and the share of its row, and is shaded by that share (so a rare class's errors are as
//! visible as a common class's), on a white-to-blue scale from 0 to 100 %.
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{de, label, text, DrawResult, Figure};

/// Cell side, px.
pub const CELL: u32 = 96;
const LEFT: u32 = 150;
const TOP: u32 = 104;

/// One confusion matrix.
pub struct ConfusionPlot {
    /// File name stem.
    pub name: String,
    /// Title.
    pub title: String,
    /// Class names.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

/// White (0) to dark blue (1).
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

impl Figure for ConfusionPlot {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> (u32, u32) {
        let n = self.classes.len() as u32;
        // Wide enough for the title (about 9 px per character at 17 px).
        let title = 24 + 9 * self.title.chars().count() as u32;
        ((LEFT + n * CELL + 40).max(title).max(420), TOP + n * CELL + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let n = self.classes.len();
        label(root, &self.title, (12, 10), &text(17.0, BLACK, HPos::Left, VPos::Top))?;
        let (l, t, c) = (LEFT as i32, TOP as i32, CELL as i32);
        label(root, "predicted class →", (l + n as i32 * c / 2, t - 40), &text(14.0, BLACK, HPos::Center, VPos::Bottom))?;
        label(
            root,
            "true class →",
            (l - 84, t + n as i32 * c / 2),
            &text(14.0, BLACK, HPos::Center, VPos::Center).transform(FontTransform::Rotate90),
        )?;
        for (j, name) in self.classes.iter().enumerate() {
            label(root, name, (l + j as i32 * c + c / 2, t - 8), &text(14.0, BLACK, HPos::Center, VPos::Bottom))?;
            label(root, name, (l - 10, t + j as i32 * c + c / 2), &text(14.0, BLACK, HPos::Right, VPos::Center))?;
        }
        for (i, row) in self.counts.iter().enumerate().take(n) {
            let total: u64 = row.iter().sum();
            for (j, &v) in row.iter().enumerate().take(n) {
                let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
                let (x, y) = (l + j as i32 * c, t + i as i32 * c);
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], blues(share).filled())).map_err(de)?;
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], RGBColor(160, 160, 160).stroke_width(1))).map_err(de)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                label(root, &v.to_string(), (x + c / 2, y + c / 2 - 10), &text(18.0, ink, HPos::Center, VPos::Center))?;
                let pct = if total > 0 { format!("{:.0} %", 100.0 * share) } else { "–".into() };
                label(root, &pct, (x + c / 2, y + c / 2 + 14), &text(13.0, ink, HPos::Center, VPos::Center))?;
            }
        }
        root.draw(&Rectangle::new([(l, t), (l + n as i32 * c, t + n as i32 * c)], BLACK.stroke_width(1))).map_err(de)?;
        label(
            root,
            "cells: count and share of the true class's row",
            (l, t + n as i32 * c + 12),
            &text(12.0, RGBColor(80, 80, 80), HPos::Left, VPos::Top),
        )?;
        Ok(())
    }
}
