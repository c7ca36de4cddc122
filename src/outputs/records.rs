//! The summary records of a run (see `ARCHITECTURE.md`, Invariants): what each image contributes
//! besides its prediction rows — its core row, its exact Grad-CAM sums per (scope, class,
//! wavenumber), or its reject — as records with integer differences, which the dataflow adds up as
//! a differential collection.
//!
//! Every difference is an integer (counts, and Grad-CAM and probability sums in fixed point), so
//! the totals — and every number in the tables — are the same for any number of workers or
//! processes and any order in which images finish. An image's records are also saved beside its
//! prediction part (`parts/<part>.json`), so that a nightly run that reuses the image feeds the
//! same records again instead of recomputing them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::operators::grad_cam::CamStats;
use crate::reject::Reject;

/// The difference carried by a record: (count, Σ, Σ²) — integers.
pub type Diff = (i64, i128, i128);

/// A per-core row (counts and exact probability sums; fractions and means are derived).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CoreRow {
    /// Sample id.
    pub sample: String,
    /// The image's entry file, relative to the archive.
    pub path: String,
    /// The image's sample id: the slide's for a core of a slide, else the sample itself.
    pub image: String,
    /// Where the core lies on its slide, for a core of a slide.
    pub grid: Option<GridPlace>,
    /// Spectra.
    pub spectra: u64,
    /// Tissue spectra.
    pub tissue: u64,
    /// Paraffin spectra.
    pub paraffin: u64,
    /// Outliers.
    pub outliers: u64,
    /// Spectra per type class.
    pub type_counts: Vec<u64>,
    /// Σ probability per type class (2⁻³² units).
    pub type_prob_sums: Vec<i64>,
    /// Majority type class.
    pub majority: Option<String>,
    /// Spectra per subtype class (empty when the subtype model did not run).
    pub subtype_counts: Vec<u64>,
    /// Σ probability per subtype class (2⁻³² units).
    pub subtype_prob_sums: Vec<i64>,
    /// Majority subtype class.
    pub subtype_majority: Option<String>,
    /// Truth type label.
    pub truth_type: Option<String>,
    /// Truth subtype label.
    pub truth_subtype: Option<String>,
    /// The patient, from labels.csv (absent in parts of earlier versions).
    #[serde(default)]
    pub patient: Option<String>,
}

/// Where a core lies on its slide (`cores.parquet`: `position`, `row`, `col`, `bbox_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GridPlace {
    /// Grid position (`B3`: row B, column 3).
    pub position: String,
    /// Row, 0-based from the top.
    pub row: u32,
    /// Column, 0-based from the left.
    pub col: u32,
    /// Box covering the core's pixels, `[x0, y0, x1, y1)` in image pixels.
    pub bbox: [u32; 4],
}

/// A keyed summary record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    /// One core (difference `(1, 0, 0)`; boxed: it is ten times the size of the others).
    Core(Box<CoreRow>),
    /// Grad-CAM sums at one point of the model grid: difference (maps, Σ v, Σ v²) with v in units
    /// of 2⁻⁴⁰. `scope` is `predicted`, `true`, `spectrum` or `spectrum_true` (per class over
    /// all cores), or a per-core scope ([`per_core`]).
    Cam {
        /// `predicted`, `true`, `spectrum`, `spectrum_true`, or `<per-core scope>:<sample>`.
        scope: String,
        /// Class name.
        class: String,
        /// Index on the model grid.
        point: u32,
    },
    /// A rejected input (difference `(1, 0, 0)`).
    Reject(Reject),
}

impl Record {
    /// Whether the record is added up across images (per-class Grad-CAM, core rows, rejects);
    /// per-core Grad-CAM records are not: they stay in the image's part.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Record::Cam { scope, .. } if per_core(scope).is_some())
    }
}

/// The scope of the per-class mean spectra in the Grad-CAM sums (`gradcam.parquet`): the
/// classified spectra by predicted class.
pub const SPECTRUM_SCOPE: &str = "spectrum";
/// The same by true class (runs with truth labels).
pub const SPECTRUM_TRUE_SCOPE: &str = "spectrum_true";

/// The per-core twin of [`SPECTRUM_SCOPE`]: one core's mean spectra per predicted class.
pub const CORE_SPECTRUM_SCOPE: &str = "core_spectrum";
/// The per-core twin of [`SPECTRUM_TRUE_SCOPE`].
pub const CORE_SPECTRUM_TRUE_SCOPE: &str = "core_spectrum_true";

/// The per-core scopes of the records, each `<scope>:<sample>` and kept in the image's part:
/// `core` (the core's maps per predicted class, `gradcam.parquet` scope `core`), and
/// [`CORE_SPECTRUM_SCOPE`] / [`CORE_SPECTRUM_TRUE_SCOPE`] (its mean spectra per predicted / true
/// class, which the bands' consistency across patients or cores is read from).
pub const PER_CORE_SCOPES: [&str; 3] = ["core", CORE_SPECTRUM_SCOPE, CORE_SPECTRUM_TRUE_SCOPE];

/// By which class a spectrum scope (over all cores or per core) groups its spectra: `predicted`
/// or `true`, the scope of the bands read from it; `None` for a scope of maps.
pub fn spectrum_side(scope: &str) -> Option<&'static str> {
    match scope {
        SPECTRUM_SCOPE | CORE_SPECTRUM_SCOPE => Some("predicted"),
        SPECTRUM_TRUE_SCOPE | CORE_SPECTRUM_TRUE_SCOPE => Some("true"),
        _ => None,
    }
}

/// The (per-core scope, sample) of a record scope, when it is per core.
pub fn per_core(scope: &str) -> Option<(&str, &str)> {
    let (kind, sample) = scope.split_once(':')?;
    PER_CORE_SCOPES.contains(&kind).then_some((kind, sample))
}

/// Exact Grad-CAM sums of one image, by (scope, class).
#[derive(Debug, Clone, Default)]
pub struct ImageCams {
    /// (scope, class) → sums; scope is `predicted`, `true` or `core`, or `spectrum` /
    /// `spectrum_true` (the sums of the classified spectra themselves per predicted / true class,
    /// not of maps).
    pub stats: BTreeMap<(&'static str, String), CamStats>,
}

/// What an image contributed, besides its prediction rows: its core row (counts, exact
/// probability sums, majorities and truth; `path` is filled in by the part writer) and its exact
/// Grad-CAM sums.
#[derive(Debug, Clone, Default)]
pub struct ImageSummary {
    /// The core row.
    pub row: CoreRow,
    /// Grad-CAM sums.
    pub cams: ImageCams,
}

/// The records of one classified image: its core row completed with the image's `path`, the
/// `image` it lies in and its `grid` place, and its Grad-CAM sums.
pub fn image_records(path: &str, image: &str, grid: Option<&GridPlace>, s: &ImageSummary) -> Vec<(Record, Diff)> {
    let sample = s.row.sample.as_str();
    let row = CoreRow { path: path.to_string(), image: image.to_string(), grid: grid.cloned(), ..s.row.clone() };
    let mut out = vec![(Record::Core(Box::new(row)), (1, 0, 0))];
    for (key, st) in &s.cams.stats {
        // The image's mean spectra are added up over all cores and also kept per core.
        let scopes = match key.0 {
            "core" => vec![format!("core:{sample}")],
            SPECTRUM_SCOPE => vec![SPECTRUM_SCOPE.to_string(), format!("{CORE_SPECTRUM_SCOPE}:{sample}")],
            SPECTRUM_TRUE_SCOPE => vec![SPECTRUM_TRUE_SCOPE.to_string(), format!("{CORE_SPECTRUM_TRUE_SCOPE}:{sample}")],
            other => vec![other.to_string()],
        };
        let (sum, sq) = st.sums();
        for scope in scopes {
            for (p, (&a, &b)) in sum.iter().zip(sq).enumerate() {
                out.push((Record::Cam { scope: scope.clone(), class: key.1.clone(), point: p as u32 }, (st.count() as i64, a, b)));
            }
        }
    }
    out
}
