//! The de-arraying parameters ([`DearrayParams`]) and their check, which builds the [`Dearrayer`].
use serde::{Deserialize, Serialize};

use super::OP;
use crate::error::OpError;

/// Parameters of the de-arraying of a slide's score map; missing keys take their defaults,
/// unknown keys are rejected. [`DearrayParams::check`] validates them into a [`Dearrayer`].
///
/// ```
/// use ftirflow_operators::dearray::DearrayParams;
/// let p: DearrayParams = serde_json::from_str(r#"{"pitch": 120.0, "max_rotation_deg": 3.0}"#).unwrap();
/// assert_eq!((p.pitch, p.diameter, p.max_rotation_deg), (Some(120.0), None, 3.0));
/// assert!(p.check().is_ok());
/// let bad = DearrayParams { min_object_fraction: 1.5, ..DearrayParams::default() };
/// assert!(bad.check().unwrap_err().to_string().contains("min_object_fraction"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DearrayParams {
    /// Distance between neighbouring cores in pixels of the score map, the same along rows and
    /// columns (default: estimated from the nearest-neighbour distances; finite and positive
    /// when given).
    pub pitch: Option<f64>,
    /// Core diameter in pixels (default: estimated from the area of a typical object; finite,
    /// positive and below `pitch` when given). Pieces of one core closer than ¾ of it are not
    /// taken for neighbours when the pitch is estimated; a slide whose objects fit in 1.25 of it
    /// is one core.
    pub diameter: Option<f64>,
    /// Score above which a pixel belongs to an object (default: automatic, Otsu's threshold of
    /// the finite scores, with the contrast check of `min_separation`; finite when given).
    pub threshold: Option<f32>,
    /// Largest rotation of the grid against the image axes, in degrees (default 5, in
    /// `[0, 45)`); a larger one is an error (the objects are not taken for a grid).
    pub max_rotation_deg: f64,
    /// Objects smaller than this fraction of the typical object area are fragments (default
    /// 0.25, in `(0, 1)`): they do not take part in the lattice fit and join the core of the cell
    /// they fall in. The typical area is the area-weighted median, the area of the object that
    /// holds the median object pixel, so that specks of dust do not pull it down.
    pub min_object_fraction: f64,
    /// Largest root-mean-square distance of the objects from their fitted cell centres, as a
    /// fraction of the pitch (default 0.25, in `(0, 0.5]`); above it the objects are not on a
    /// grid. Jitter of ±15 % of the pitch gives about 0.12, objects placed at random about 0.4.
    pub max_residual: f64,
    /// Least separation `(m_high − m_low) / (σ_high + σ_low)` of the two score populations that
    /// Otsu's threshold parts (default 2.5, finite and ≥ 0; only without `threshold`): below it
    /// the map has one population and is taken for bare slide. Splitting one Gaussian population
    /// gives about 1.3; tissue against slide 5 and more.
    pub min_separation: f64,
}

impl Default for DearrayParams {
    fn default() -> Self {
        Self {
            pitch: None,
            diameter: None,
            threshold: None,
            max_rotation_deg: 5.0,
            min_object_fraction: 0.25,
            max_residual: 0.25,
            min_separation: 2.5,
        }
    }
}

/// Checked de-arraying parameters ([`DearrayParams::check`]); [`Dearrayer::dearray`] runs it.
///
/// ```
/// use ftirflow_operators::dearray::{Dearray, DearrayParams};
/// use ndarray::Array2;
/// // Two rows of three discs (radius 8, pitch 30 px), the middle one of the top row missing.
/// let mut map = Array2::<f32>::zeros((60, 90));
/// for (row, col) in [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)] {
///     let (cx, cy) = (15.0 + 30.0 * col as f32, 15.0 + 30.0 * row as f32);
///     for ((y, x), v) in map.indexed_iter_mut() {
///         if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= 64.0 {
///             *v = 1.0;
///         }
///     }
/// }
/// let Dearray::Grid(grid) = DearrayParams::default().check().unwrap().dearray(map.view()).unwrap() else {
///     panic!("a grid")
/// };
/// assert_eq!((grid.rows, grid.cols), (2, 3));
/// let names: Vec<&str> = grid.cores.iter().map(|c| c.position.as_str()).collect();
/// assert_eq!(names, ["A1", "A3", "B1", "B2", "B3"]);
/// assert!((grid.pitch.0 - 30.0).abs() < 0.5 && grid.rotation_deg.abs() < 0.5);
/// assert_eq!(grid.cores[1].bbox, (67, 7, 84, 24));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Dearrayer {
    pub(super) params: DearrayParams,
}

impl DearrayParams {
    /// Validates every field (the error names the first problem) and returns the dearrayer.
    pub fn check(&self) -> Result<Dearrayer, OpError> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => Err(OpError::config(OP, format!("{name} must be finite and > 0 pixels (got {v})"))),
            _ => Ok(()),
        };
        positive("pitch", self.pitch)?;
        positive("diameter", self.diameter)?;
        if let (Some(p), Some(d)) = (self.pitch, self.diameter) {
            if d >= p {
                return Err(OpError::config(OP, format!("diameter ({d} px) must be below pitch ({p} px): cores do not overlap")));
            }
        }
        if let Some(t) = self.threshold {
            if !t.is_finite() {
                return Err(OpError::config(OP, format!("threshold must be finite (got {t})")));
            }
        }
        if !(0.0..45.0).contains(&self.max_rotation_deg) {
            return Err(OpError::config(OP, format!("max_rotation_deg must be in [0, 45) degrees (got {})", self.max_rotation_deg)));
        }
        if !(self.min_object_fraction > 0.0 && self.min_object_fraction < 1.0) {
            return Err(OpError::config(OP, format!("min_object_fraction must be in (0, 1) (got {})", self.min_object_fraction)));
        }
        if !(self.max_residual > 0.0 && self.max_residual <= 0.5) {
            return Err(OpError::config(OP, format!("max_residual must be in (0, 0.5] of the pitch (got {})", self.max_residual)));
        }
        if !(self.min_separation.is_finite() && self.min_separation >= 0.0) {
            return Err(OpError::config(OP, format!("min_separation must be finite and ≥ 0 (got {})", self.min_separation)));
        }
        Ok(Dearrayer { params: self.clone() })
    }
}

impl Dearrayer {
    /// The parameters.
    pub fn params(&self) -> &DearrayParams {
        &self.params
    }
}
