//! The literature table of mid-infrared band assignments that names Grad-CAM's top bands: the
//! versioned data file `operators/assets/band_assignments.csv` (compiled in), drawn from the
//! standard review tables of biological tissue (Movasaghi et al. 2008, Talari et al. 2017, Baker et
//! al. 2014; the file gives the full references), and how a band is matched against it.
use std::sync::OnceLock;

/// The table as compiled in.
pub const TABLE_CSV: &str = include_str!("../assets/band_assignments.csv");

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Lower end of the range, cm⁻¹.
    pub lo: f64,
    /// Upper end, cm⁻¹.
    pub hi: f64,
    /// What absorbs there.
    pub name: &'static str,
    /// The molecule class (`lipids`, `proteins`, `nucleic acids`, …).
    pub molecule_class: &'static str,
    /// The review(s) that list it, `; `-separated (`Movasaghi 2008; Baker 2014`).
    pub source: &'static str,
}

/// The rows of [`TABLE_CSV`] (parsed once; its validity is a unit test).
pub fn table() -> &'static [Assignment] {
    static TABLE: OnceLock<Vec<Assignment>> = OnceLock::new();
    TABLE.get_or_init(|| parse(TABLE_CSV).expect("the compiled-in assignment table is valid (unit test)"))
}

/// Parses the table: `#` comment lines, a header `lo,hi,assignment,molecule_class,source`, then
/// rows of five comma-separated fields with `lo < hi`.
pub fn parse(text: &'static str) -> Result<Vec<Assignment>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some((_, h)) if h.trim() == "lo,hi,assignment,molecule_class,source" => {}
        other => return Err(format!("the header must be `lo,hi,assignment,molecule_class,source`, found {other:?}")),
    }
    lines
        .map(|(i, line)| {
            let f: Vec<&'static str> = line.split(',').map(str::trim).collect();
            let [lo, hi, name, molecule_class, source] = f[..] else {
                return Err(format!("line {}: {} fields, expected 5", i + 1, f.len()));
            };
            let num = |s: &str| s.parse::<f64>().map_err(|e| format!("line {}: `{s}`: {e}", i + 1));
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) || name.is_empty() || source.is_empty() {
                return Err(format!("line {}: needs lo < hi, an assignment and a source", i + 1));
            }
            Ok(Assignment { lo, hi, name, molecule_class, source })
        })
        .collect()
}

/// How far apart a band and a row's range may lie and still match, cm⁻¹: the usual resolution of
/// the instruments (4 cm⁻¹), since neither edge is sharper than that.
pub const MATCH_TOLERANCE: f64 = 4.0;

/// What a band is assigned to: every row of the table whose range overlaps `[lo, hi]` (within
/// [`MATCH_TOLERANCE`]), nearest to the band's `peak` first (0 when the peak lies in the row's
/// range); empty when none does.
pub fn matching(lo: f64, hi: f64, peak: f64) -> Vec<&'static Assignment> {
    let distance = |a: &Assignment| if peak < a.lo { a.lo - peak } else { (peak - a.hi).max(0.0) };
    let mut hits: Vec<&Assignment> = table().iter().filter(|a| a.lo <= hi + MATCH_TOLERANCE && a.hi >= lo - MATCH_TOLERANCE).collect();
    hits.sort_by(|a, b| distance(a).total_cmp(&distance(b)).then(a.lo.total_cmp(&b.lo)));
    hits
}

/// The assignments of a band as text (`; `-joined, nearest to the peak first, or `unassigned`)
/// and their sources (each review once, in order of first mention).
pub fn describe(lo: f64, hi: f64, peak: f64) -> (String, String) {
    let hits = matching(lo, hi, peak);
    if hits.is_empty() {
        return ("unassigned".to_string(), String::new());
    }
    let names: Vec<&str> = hits.iter().map(|a| a.name).collect();
    let mut sources: Vec<&str> = Vec::new();
    for s in hits.iter().flat_map(|a| a.source.split(';').map(str::trim)) {
        if !sources.contains(&s) {
            sources.push(s);
        }
    }
    (names.join("; "), sources.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_covers_the_fingerprint_region() {
        let t = table();
        assert!(t.len() >= 20, "{} rows", t.len());
        assert!(t.iter().all(|a| (900.0..=1800.0).contains(&a.lo) && (900.0..=1800.0).contains(&a.hi)));
        let sources = ["Movasaghi 2008", "Talari 2017", "Baker 2014"];
        assert!(t.iter().all(|a| a.source.split(';').all(|s| sources.contains(&s.trim()))), "every row cites one of the three reviews");
        // The classic bands are where the reviews put them.
        for (w, word) in [
            (1740.0, "lipid esters"),
            (1650.0, "amide I"),
            (1545.0, "amide II"),
            (1240.0, "PO₂⁻ asymmetric"),
            (1080.0, "PO₂⁻ symmetric"),
            (1030.0, "glycogen"),
        ] {
            let (text, _) = describe(w - 2.0, w + 2.0, w);
            assert!(text.contains(word), "{w}: {text}");
        }
    }

    #[test]
    fn bands_list_every_overlapping_row_nearest_first_with_their_sources() {
        let (text, sources) = describe(956.0, 997.0, 992.0);
        assert!(text.starts_with("C–O stretching of ribose"), "{text}");
        assert!(text.contains("phosphorylated proteins"), "{text}");
        assert_eq!(sources, "Movasaghi 2008");
        let (text, sources) = describe(1225.0, 1245.0, 1240.0);
        assert!(text.contains("amide III"), "{text}");
        assert!(text.starts_with("PO₂⁻ asymmetric"), "equally near: the row starting lower first: {text}");
        assert_eq!(sources, "Movasaghi 2008; Baker 2014; Talari 2017");
        assert_eq!(describe(1800.0, 1850.0, 1820.0), ("unassigned".to_string(), String::new()));
        // Within the instruments' resolution of a row's edge: 1091–1093 is the symmetric phosphate band.
        assert!(describe(1091.2, 1093.1, 1092.0).0.starts_with("PO₂⁻ symmetric"));
        assert_eq!(describe(1290.0, 1300.0, 1295.0).0, "amide III (C–N stretching and N–H bending)");
        assert_eq!(describe(1308.0, 1320.0, 1314.0).0, "unassigned");
        assert_eq!(describe(1595.0, 1600.0, 1598.0).0, "unassigned");
    }

    #[test]
    fn malformed_tables_are_refused() {
        assert!(parse("lo,hi,assignment,molecule_class,source\n1700,1600,x,y,z\n").is_err());
        assert!(parse("lo,hi,assignment,molecule_class,source\n1700,1710,x,y\n").is_err());
        assert!(parse("wrong header\n").is_err());
        assert_eq!(parse("# c\nlo,hi,assignment,molecule_class,source\n1700,1710,x,y,z\n").unwrap().len(), 1);
    }
}
