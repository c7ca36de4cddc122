//! The report's look: the bundled font (DejaVu Sans, so figures render the same on a machine
//! without any system font), class colours (Okabe–Ito, distinguishable with colour-vision
//! deficiencies), the neutral greys of paraffin, bare slide and excluded pixels, and the
//! perceptually uniform colour scale of chemical images.
use plotters::style::{FontStyle, RGBColor};

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/DejaVu-LICENSE`), embedded.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The font family name figures use.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font for every style plotters asks for (idempotent).
pub fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
            // The font is a valid TrueType file checked by a unit test; nothing to do otherwise.
            let _ = plotters::style::register_font(FAMILY, style, FONT);
        }
    });
}

/// Bare slide (neither tissue nor paraffin): light grey.
pub const BACKGROUND: RGBColor = RGBColor(235, 235, 235);
/// Paraffin: mid grey.
pub const PARAFFIN: RGBColor = RGBColor(178, 178, 178);
/// Tissue that was not classified (outlier, or invalid spectrum): dark grey.
pub const EXCLUDED: RGBColor = RGBColor(96, 96, 96);

/// The colour of `class`: fixed for the known CaReNet classes (AT, CA, LA, LB, HER2, TNBC), from
/// the Okabe–Ito palette by position for others.
pub fn class_colour(class: &str, classes: &[String]) -> RGBColor {
    match class {
        "AT" => RGBColor(0, 114, 178),
        "CA" => RGBColor(213, 94, 0),
        "LA" => RGBColor(230, 159, 0),
        "LB" => RGBColor(0, 158, 115),
        "HER2" => RGBColor(204, 121, 167),
        "TNBC" => RGBColor(86, 180, 233),
        _ => {
            const PALETTE: [RGBColor; 8] = [
                RGBColor(0, 114, 178),
                RGBColor(213, 94, 0),
                RGBColor(0, 158, 115),
                RGBColor(204, 121, 167),
                RGBColor(230, 159, 0),
                RGBColor(86, 180, 233),
                RGBColor(240, 228, 66),
                RGBColor(0, 0, 0),
            ];
            let i = classes.iter().position(|c| c == class).unwrap_or(0);
            PALETTE[i % PALETTE.len()]
        }
    }
}

/// Viridis at `t` in [0, 1] (clamped): perceptually uniform and monotone in lightness, so a
/// brighter pixel always means more absorbance.
pub fn viridis(t: f64) -> RGBColor {
    // Samples of matplotlib's viridis at 0, 1/8, …, 1.
    const V: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (V.len() - 1) as f64;
    let i = (x.floor() as usize).min(V.len() - 2);
    let f = x - i as f64;
    let lerp = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(lerp(V[i].0, V[i + 1].0), lerp(V[i].1, V[i + 1].1), lerp(V[i].2, V[i + 1].2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_parses_and_viridis_is_monotone_in_lightness() {
        assert!(ab_glyph_check(FONT));
        let l = |c: RGBColor| 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
        let mut prev = -1.0;
        for i in 0..=20 {
            let v = l(viridis(i as f64 / 20.0));
            assert!(v > prev, "lightness falls at {i}");
            prev = v;
        }
    }

    fn ab_glyph_check(bytes: &'static [u8]) -> bool {
        plotters::style::register_font("ftirflow-test", FontStyle::Normal, bytes).is_ok()
    }
}
