//! The spectral model of the synthetic archive: band tables of the tissue components and of
//! paraffin, the class and subtype effects on tissue composition, and the planted bands they imply.
//!
//! A tissue spectrum is `thickness × Σ_k w_k · component_k` with composition weights `w_k` that sum
//! to one (a logistic-normal, Dirichlet-like draw around the class mean). Every band is a
//! pseudo-Voigt line (30 % Lorentzian) whose `height` is its peak absorbance in a pure component of
//! unit thickness.

use serde::Serialize;

use super::{SynthConfig, SynthError};

/// Lorentzian fraction of the pseudo-Voigt line shape of every band.
const ETA: f64 = 0.3;

/// One absorption band of a component spectrum.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AbsorptionBand {
    /// Band centre, cm⁻¹.
    pub center: f64,
    /// Full width at half maximum, cm⁻¹.
    pub fwhm: f64,
    /// Peak absorbance of the pure component at unit thickness.
    pub height: f64,
    /// Usual assignment.
    pub name: &'static str,
}

const fn b(center: f64, fwhm: f64, height: f64, name: &'static str) -> AbsorptionBand {
    AbsorptionBand { center, fwhm, height, name }
}

impl AbsorptionBand {
    /// The band's absorbance at wavenumber `nu`.
    pub fn value(&self, nu: f64) -> f64 {
        let u = 2.0 * (nu - self.center) / self.fwhm;
        let lorentz = 1.0 / (1.0 + u * u);
        let gauss = (-std::f64::consts::LN_2 * u * u).exp();
        self.height * (ETA * lorentz + (1.0 - ETA) * gauss)
    }
}

/// Number of tissue components.
pub(crate) const N_TISSUE: usize = 7;

/// Tissue component indices.
pub(crate) const PROTEIN: usize = 0;
pub(crate) const COLLAGEN: usize = 1;
pub(crate) const LIPID: usize = 2;
pub(crate) const NUCLEIC: usize = 3;
pub(crate) const GLYCOGEN: usize = 4;
pub(crate) const RNA: usize = 5;
pub(crate) const BETA_SHEET: usize = 6;

/// Names of the tissue components, by index.
pub(crate) const COMPONENT_NAMES: [&str; N_TISSUE] = ["protein", "collagen", "lipid", "nucleic_acids", "glycogen", "rna", "beta_sheet"];

/// Mean composition of tissue before any class effect (weights sum to one).
pub(crate) const BASE_WEIGHTS: [f64; N_TISSUE] = [0.42, 0.22, 0.10, 0.08, 0.06, 0.05, 0.07];

const PROTEIN_BANDS: &[AbsorptionBand] = &[
    b(3300.0, 250.0, 0.30, "amide A (N-H stretch)"),
    b(3070.0, 80.0, 0.05, "amide B"),
    b(2960.0, 25.0, 0.10, "CH3 asymmetric stretch"),
    b(2930.0, 30.0, 0.05, "CH2 asymmetric stretch (side chains)"),
    b(2875.0, 20.0, 0.04, "CH3 symmetric stretch"),
    b(1655.0, 40.0, 1.00, "amide I (alpha-helix)"),
    b(1545.0, 40.0, 0.60, "amide II"),
    b(1450.0, 25.0, 0.12, "CH3 asymmetric bend"),
    b(1395.0, 25.0, 0.10, "CH3 symmetric bend / COO- stretch"),
    b(1300.0, 40.0, 0.05, "amide III"),
    b(1240.0, 40.0, 0.05, "amide III"),
];

const COLLAGEN_BANDS: &[AbsorptionBand] = &[
    b(3320.0, 250.0, 0.30, "amide A (collagen)"),
    b(2940.0, 30.0, 0.06, "CH stretch (collagen)"),
    b(1660.0, 45.0, 1.00, "amide I (collagen triple helix)"),
    b(1550.0, 45.0, 0.50, "amide II (collagen)"),
    b(1450.0, 25.0, 0.18, "CH2 bend (collagen)"),
    b(1338.0, 18.0, 0.12, "CH2 wagging of proline side chains (collagen)"),
    b(1282.0, 20.0, 0.13, "amide III (collagen)"),
    b(1240.0, 25.0, 0.17, "amide III (collagen)"),
    b(1205.0, 20.0, 0.10, "hydroxyproline / tyrosine (collagen)"),
    b(1080.0, 30.0, 0.10, "C-O stretch of carbohydrate moieties (collagen)"),
    b(1030.0, 30.0, 0.12, "C-O stretch of glycosylation (collagen)"),
];

const LIPID_BANDS: &[AbsorptionBand] = &[
    b(3010.0, 20.0, 0.05, "=C-H stretch (unsaturated lipids)"),
    b(2955.0, 20.0, 0.15, "CH3 asymmetric stretch (lipids)"),
    b(2920.0, 20.0, 0.80, "CH2 asymmetric stretch (lipids)"),
    b(2850.0, 15.0, 0.50, "CH2 symmetric stretch (lipids)"),
    b(1740.0, 22.0, 0.55, "ester C=O stretch (lipids)"),
    b(1465.0, 20.0, 0.18, "CH2 scissoring (lipids)"),
    b(1380.0, 15.0, 0.05, "CH3 symmetric bend (lipids)"),
    b(1170.0, 35.0, 0.22, "ester C-O-C asymmetric stretch (lipids)"),
];

const NUCLEIC_BANDS: &[AbsorptionBand] = &[
    b(3200.0, 300.0, 0.10, "N-H / O-H stretch (nucleic acids)"),
    b(1710.0, 30.0, 0.20, "base C=O stretch (nucleic acids)"),
    b(1240.0, 35.0, 0.70, "PO2- asymmetric stretch (nucleic acids)"),
    b(1085.0, 25.0, 0.80, "PO2- symmetric stretch (nucleic acids)"),
    b(1055.0, 25.0, 0.25, "C-O stretch of (deoxy)ribose"),
    b(970.0, 20.0, 0.30, "ribose-phosphate backbone (nucleic acids)"),
];

const GLYCOGEN_BANDS: &[AbsorptionBand] = &[
    b(3300.0, 300.0, 0.35, "O-H stretch (carbohydrates)"),
    b(2930.0, 40.0, 0.08, "CH stretch (carbohydrates)"),
    b(1150.0, 25.0, 0.50, "C-O stretch (glycogen)"),
    b(1080.0, 25.0, 0.55, "C-O stretch (glycogen)"),
    b(1025.0, 25.0, 1.00, "C-O stretch (glycogen)"),
];

const RNA_BANDS: &[AbsorptionBand] = &[
    b(1121.0, 20.0, 0.60, "ribose C-O stretch (RNA)"),
    b(1085.0, 25.0, 0.40, "PO2- symmetric stretch (RNA)"),
    b(1240.0, 35.0, 0.30, "PO2- asymmetric stretch (RNA)"),
    b(995.0, 18.0, 0.25, "ribose / uracil ring (RNA)"),
];

const BETA_SHEET_BANDS: &[AbsorptionBand] = &[
    b(3290.0, 200.0, 0.20, "amide A (beta-sheet proteins)"),
    b(1630.0, 22.0, 0.90, "amide I beta-sheet shoulder"),
    b(1530.0, 30.0, 0.35, "amide II (beta-sheet)"),
    b(1515.0, 10.0, 0.30, "tyrosine ring stretch"),
];

/// Paraffin wax: strong CH stretches, the CH2 scissoring doublet and a weak CH3 bend; nothing in
/// the amide I/II region.
pub(crate) const PARAFFIN_BANDS: &[AbsorptionBand] = &[
    b(2955.0, 15.0, 0.35, "CH3 asymmetric stretch (paraffin)"),
    b(2920.0, 18.0, 1.00, "CH2 asymmetric stretch (paraffin)"),
    b(2870.0, 14.0, 0.20, "CH3 symmetric stretch (paraffin)"),
    b(2850.0, 14.0, 0.65, "CH2 symmetric stretch (paraffin)"),
    b(1472.0, 7.0, 0.22, "CH2 scissoring (paraffin, doublet)"),
    b(1462.0, 9.0, 0.26, "CH2 scissoring (paraffin, doublet)"),
    b(1375.0, 8.0, 0.07, "CH3 symmetric bend (paraffin)"),
    b(1365.0, 10.0, 0.03, "CH2 wagging (paraffin)"),
];

/// The bands of tissue component `k`.
pub(crate) fn component_bands(k: usize) -> &'static [AbsorptionBand] {
    match k {
        PROTEIN => PROTEIN_BANDS,
        COLLAGEN => COLLAGEN_BANDS,
        LIPID => LIPID_BANDS,
        NUCLEIC => NUCLEIC_BANDS,
        GLYCOGEN => GLYCOGEN_BANDS,
        RNA => RNA_BANDS,
        _ => BETA_SHEET_BANDS,
    }
}

/// Sum of `bands` at `nu`.
pub(crate) fn bands_value(bands: &[AbsorptionBand], nu: f64) -> f64 {
    bands.iter().map(|b| b.value(nu)).sum()
}

/// Log-composition difference cancer minus adjacent tissue at `effect = 1` (per component): CA is
/// richer in protein and nucleic acids (and RNA), AT in collagen and lipid. CA gets `+½` of it, AT
/// `−½`.
pub(crate) const CA_MINUS_AT: [f64; N_TISSUE] = [0.25, -0.9, -0.8, 0.9, 0.0, 0.35, 0.0];

/// The molecular subtypes, in label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Subtype {
    /// Luminal A: lipid-rich (ester C=O 1740 cm⁻¹ up).
    LA,
    /// Luminal B: RNA-rich (ribose 1121 cm⁻¹, phosphate up); moves toward LA as
    /// `la_lb_overlap → 1`.
    LB,
    /// HER2-enriched: β-sheet amide I shoulder (~1630 cm⁻¹) and tyrosine (1515 cm⁻¹) up.
    HER2,
    /// Triple negative: glycogen (1025/1080/1150 cm⁻¹) up.
    TNBC,
}

impl Subtype {
    /// All subtypes in label order.
    pub const ALL: [Subtype; 4] = [Subtype::LA, Subtype::LB, Subtype::HER2, Subtype::TNBC];

    /// The label written in `labels.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Subtype::LA => "LA",
            Subtype::LB => "LB",
            Subtype::HER2 => "HER2",
            Subtype::TNBC => "TNBC",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Raw (uncentred) log-composition markers of the subtypes at `effect = 1`.
fn subtype_markers() -> [[f64; N_TISSUE]; 4] {
    let mut m = [[0.0; N_TISSUE]; 4];
    m[Subtype::LA.index()][LIPID] = 1.0;
    m[Subtype::LB.index()][RNA] = 1.0;
    m[Subtype::HER2.index()][BETA_SHEET] = 1.2;
    m[Subtype::TNBC.index()][GLYCOGEN] = 1.1;
    m
}

/// The class effects of one configuration, in log-composition units (already scaled by `effect`).
#[derive(Debug, Clone)]
pub(crate) struct Effects {
    /// Offset of adjacent tissue (and of stroma inside cancer cores).
    pub at: [f64; N_TISSUE],
    /// Offset of tumour tissue of each subtype.
    pub tumour: [[f64; N_TISSUE]; 4],
}

impl Effects {
    /// Effects for `cfg`: subtype markers are mixed (LB toward LA by `la_lb_overlap`) and then
    /// centred over the four subtypes, so the subtypes do not shift the CA-vs-AT contrast.
    pub fn new(cfg: &SynthConfig) -> Self {
        let mut m = subtype_markers();
        let o = cfg.la_lb_overlap;
        let (la, lb) = (m[Subtype::LA.index()], m[Subtype::LB.index()]);
        for k in 0..N_TISSUE {
            m[Subtype::LB.index()][k] = (1.0 - o) * lb[k] + o * la[k];
        }
        let mut at = [0.0; N_TISSUE];
        let mut tumour = [[0.0; N_TISSUE]; 4];
        for k in 0..N_TISSUE {
            let mean = m.iter().map(|r| r[k]).sum::<f64>() / 4.0;
            at[k] = -0.5 * CA_MINUS_AT[k] * cfg.effect;
            for s in 0..4 {
                tumour[s][k] = (0.5 * CA_MINUS_AT[k] + m[s][k] - mean) * cfg.effect;
            }
        }
        Effects { at, tumour }
    }

    /// Log offset of a cancer pixel of `subtype` with stroma fraction `s` (0 = pure tumour).
    pub fn cancer(&self, subtype: Subtype, s: f64, out: &mut [f64; N_TISSUE]) {
        let t = &self.tumour[subtype.index()];
        for k in 0..N_TISSUE {
            out[k] = (1.0 - s) * t[k] + s * self.at[k];
        }
    }
}

/// Composition weights (summing to one) for the log offsets `off` around [`BASE_WEIGHTS`].
pub(crate) fn composition(off: &[f64; N_TISSUE]) -> [f64; N_TISSUE] {
    let mut w = [0.0; N_TISSUE];
    let mut sum = 0.0;
    for k in 0..N_TISSUE {
        w[k] = BASE_WEIGHTS[k] * off[k].exp();
        sum += w[k];
    }
    for v in &mut w {
        *v /= sum;
    }
    w
}

/// Noise-free tissue absorbance of composition `w` at `nu` (unit thickness).
fn tissue_value(w: &[f64; N_TISSUE], nu: f64) -> f64 {
    (0..N_TISSUE).map(|k| w[k] * bands_value(component_bands(k), nu)).sum()
}

/// The amide I position used to normalize spectra when comparing classes.
pub const AMIDE_I: f64 = 1655.0;

/// A band at which the generator makes one class's spectra stronger than those of the classes it
/// is compared with (after dividing each class's mean spectrum by its amide I absorbance).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PlantedBand {
    /// Band centre, cm⁻¹.
    pub center: f64,
    /// Usual assignment of the band.
    pub name: String,
    /// The tissue component whose change puts it there.
    pub component: String,
    /// `(class − others) / others` of the amide-I-normalized noise-free mean spectra at the centre.
    pub relative_increase: f64,
    /// `class − others` of the amide-I-normalized noise-free mean spectra at the centre (amide I = 1).
    pub absolute_increase: f64,
}

/// The planted bands of one class.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ClassBands {
    /// `CA`, `AT`, `LA`, `LB`, `HER2` or `TNBC`.
    pub class: String,
    /// What the class is compared with (`AT`, `CA`, or the other three subtypes).
    pub versus: Vec<String>,
    /// Bands, ascending by centre.
    pub bands: Vec<PlantedBand>,
}

/// A band is planted when the normalized class mean exceeds the others' by at least this much
/// (amide I = 1) ...
const PLANT_ABS: f64 = 0.015;
/// ... and by at least this fraction.
const PLANT_REL: f64 = 0.15;

/// Planted bands of `class` (composition `wc`, a set of spectra averaged) against `others`.
fn planted(class: &str, versus: &[&str], wc: &[[f64; N_TISSUE]], wo: &[[f64; N_TISSUE]]) -> ClassBands {
    let mean = |ws: &[[f64; N_TISSUE]], nu: f64| ws.iter().map(|w| tissue_value(w, nu)).sum::<f64>() / ws.len() as f64;
    let (ac, ao) = (mean(wc, AMIDE_I), mean(wo, AMIDE_I));
    let mean_w = |ws: &[[f64; N_TISSUE]], k: usize| ws.iter().map(|w| w[k]).sum::<f64>() / ws.len() as f64;
    let mut bands: Vec<PlantedBand> = Vec::new();
    for (k, name) in COMPONENT_NAMES.iter().enumerate().take(N_TISSUE) {
        for band in component_bands(k) {
            let nu = band.center;
            let c = mean(wc, nu) / ac;
            let o = mean(wo, nu) / ao;
            let (abs, rel) = (c - o, (c - o) / o.max(1e-12));
            if abs < PLANT_ABS || rel < PLANT_REL {
                continue;
            }
            // The component that contributes most to the increase names the band.
            let contrib = |j: usize| bands_value(component_bands(j), nu) * (mean_w(wc, j) / ac - mean_w(wo, j) / ao);
            // A band is planted only where its own component contributes most to the increase:
            // not on the tail of a neighbouring band, and a centre shared by several components
            // is named after the one that rises most.
            let best = (0..N_TISSUE).max_by(|&i, &j| contrib(i).total_cmp(&contrib(j))).unwrap_or(k);
            if best != k || contrib(k) <= 0.0 {
                continue;
            }
            if bands.iter().any(|p| (p.center - nu).abs() < 3.0) {
                continue;
            }
            bands.push(PlantedBand {
                center: nu,
                name: band.name.to_string(),
                component: name.to_string(),
                relative_increase: rel,
                absolute_increase: abs,
            });
        }
    }
    bands.sort_by(|a, b| a.center.total_cmp(&b.center));
    ClassBands { class: class.to_string(), versus: versus.iter().map(|s| s.to_string()).collect(), bands }
}

/// The planted bands of every class (`CA`, `AT`, `LA`, `LB`, `HER2`, `TNBC`) for `cfg`: the
/// centres of the bands of the components that the class raises, where its noise-free mean tissue
/// spectrum, divided by its amide I absorbance, exceeds the compared classes' by at least 0.015 and
/// 15 %. CA is compared with AT (its cores
/// averaged over the four subtypes with their mean stroma fraction), AT with CA, and each subtype
/// with the mean of the other three (pure tumour). These are the bands a Grad-CAM should find.
pub fn planted_bands(cfg: &SynthConfig) -> Result<Vec<ClassBands>, SynthError> {
    cfg.validate()?;
    let e = Effects::new(cfg);
    let at = vec![composition(&e.at)];
    let mut off = [0.0; N_TISSUE];
    let ca: Vec<_> = Subtype::ALL
        .iter()
        .map(|&s| {
            e.cancer(s, cfg.ca_stroma, &mut off);
            composition(&off)
        })
        .collect();
    let mut out = vec![planted("CA", &["AT"], &ca, &at), planted("AT", &["CA"], &at, &ca)];
    for s in Subtype::ALL {
        e.cancer(s, 0.0, &mut off);
        let this = vec![composition(&off)];
        let others: Vec<_> = Subtype::ALL
            .iter()
            .filter(|&&o| o != s)
            .map(|&o| {
                e.cancer(o, 0.0, &mut off);
                composition(&off)
            })
            .collect();
        let names: Vec<&str> = Subtype::ALL.iter().filter(|&&o| o != s).map(|o| o.name()).collect();
        out.push(planted(s.name(), &names, &this, &others));
    }
    Ok(out)
}

/// Band tables of every component, for the record in `planted_bands.json`.
pub(crate) fn component_table() -> Vec<(&'static str, &'static [AbsorptionBand])> {
    let mut v: Vec<(&'static str, &'static [AbsorptionBand])> = (0..N_TISSUE).map(|k| (COMPONENT_NAMES[k], component_bands(k))).collect();
    v.push(("paraffin", PARAFFIN_BANDS));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(all: &'a [ClassBands], class: &str) -> &'a ClassBands {
        all.iter().find(|c| c.class == class).unwrap()
    }

    #[test]
    fn planted_bands_follow_the_designed_effects() {
        let all = planted_bands(&SynthConfig::default()).unwrap();
        let has = |class: &str, nu: f64| find(&all, class).bands.iter().any(|b| (b.center - nu).abs() < 1.0);
        for c in ["CA", "AT", "LA", "LB", "HER2", "TNBC"] {
            assert!(!find(&all, c).bands.is_empty(), "{c} has no planted band: {all:#?}");
        }
        assert!(has("CA", 1085.0) && has("CA", 970.0), "{:#?}", find(&all, "CA"));
        assert!(has("AT", 1338.0) && has("AT", 1740.0), "{:#?}", find(&all, "AT"));
        assert!(has("LA", 1740.0), "{:#?}", find(&all, "LA"));
        assert!(has("LB", 1121.0), "{:#?}", find(&all, "LB"));
        assert!(has("HER2", 1630.0) && has("HER2", 1515.0), "{:#?}", find(&all, "HER2"));
        assert!(has("TNBC", 1025.0), "{:#?}", find(&all, "TNBC"));
        // No class is planted at a band that another class of the same comparison also claims.
        let ca: Vec<f64> = find(&all, "CA").bands.iter().map(|b| b.center).collect();
        assert!(find(&all, "AT").bands.iter().all(|b| !ca.contains(&b.center)));
    }

    #[test]
    fn effect_zero_plants_nothing_and_full_overlap_merges_la_lb() {
        let cfg = SynthConfig { effect: 0.0, ..SynthConfig::default() };
        assert!(planted_bands(&cfg).unwrap().iter().all(|c| c.bands.is_empty()));
        let cfg = SynthConfig { la_lb_overlap: 1.0, ..SynthConfig::default() };
        let e = Effects::new(&cfg);
        assert_eq!(e.tumour[Subtype::LA.index()], e.tumour[Subtype::LB.index()]);
        let cfg = SynthConfig::default();
        let e = Effects::new(&cfg);
        assert_ne!(e.tumour[Subtype::LA.index()], e.tumour[Subtype::LB.index()]);
    }

    #[test]
    fn paraffin_has_nothing_in_amide_region_and_tissue_amide_i_is_realistic() {
        for nu in [1545.0, 1600.0, 1655.0, 1700.0] {
            assert!(bands_value(PARAFFIN_BANDS, nu) < 1e-3, "paraffin at {nu}");
        }
        let w = composition(&[0.0; N_TISSUE]);
        let a = tissue_value(&w, AMIDE_I);
        assert!((0.5..0.9).contains(&a), "amide I of unit-thickness tissue {a}");
        assert!(bands_value(PARAFFIN_BANDS, 1462.0) > 0.2);
    }
}
