//! The preprocessing plan (docs/configuration.md): the chain of operator kernels that a configuration
//! calls for — segment → outlier checks → truncate + EMSC → residual outliers → resample →
//! normalize — and the EMSC state (reference and paraffin interferents) that the chain needs,
//! fitted on training data or loaded from a saved state file.
use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Keep, PreprocessConfig, Step};
use crate::operators::axis::Band;
use crate::operators::emsc::{self, EmscCorrector, ParaffinMode};
use crate::operators::fused::{FusedKernel, FusedSteps};
use crate::operators::outliers::{AmideCheckKernel, ResidualOutlierKernel, OUTLIER};
use crate::operators::resample::TruncateKernel;
use crate::operators::segment::{SegmentKernel, PARAFFIN, TISSUE};
use crate::operators::{run_chain, Kernel, OpError, SpectraLayout};

/// Most paraffin spectra kept for fitting the paraffin components.
pub const MAX_PARAFFIN_CANDIDATES: usize = 20_000;

/// What EMSC needs besides its parameters: the axis it corrects on, the reference spectrum and
/// the paraffin interferents (empty in `mask` mode). Saved as JSON (`--save-emsc-state`) and
/// stored in model bundles, so that nightly runs correct exactly as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmscState {
    /// The axis (cm⁻¹) of the EMSC range.
    pub wavenumbers: Vec<f64>,
    /// The reference spectrum (mean tissue spectrum of the fitting data).
    pub reference: Vec<f64>,
    /// Paraffin interferents (principal components of pure paraffin spectra).
    pub interferents: Vec<Vec<f64>>,
    /// Where the state came from (free text).
    pub source: String,
    /// Spectra the reference was averaged over.
    pub reference_spectra: u64,
}

impl EmscState {
    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: format!("EMSC state {}", path.display()), source })?;
        serde_json::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: format!("not an EMSC state file: {e}") })
    }

    /// Writes a state file atomically ([`crate::io::atomic::write_atomic`]).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::io::atomic::write_atomic(path, &serde_json::to_vec_pretty(self).expect("state serializes"))
    }
}

/// One kernel of the preprocessing chain (see [`PreprocessPlan::chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStep {
    /// Tissue/paraffin masks (with the amide/non-finite check when the outlier step runs).
    Segment,
    /// The fused per-spectrum steps: check, truncate, EMSC, resample, normalize.
    PerSpectrum,
    /// The per-image EMSC residual outlier check.
    ResidualOutliers,
}

impl ChainStep {
    /// The name of the step's kernel (its stage in rejects).
    pub fn name(self) -> &'static str {
        match self {
            ChainStep::Segment => "segment",
            ChainStep::PerSpectrum => "preprocess",
            ChainStep::ResidualOutliers => "outliers",
        }
    }
}

/// The kernels of one configuration, built once (EMSC factored once) and cloned per image.
#[derive(Debug, Clone)]
pub struct PreprocessPlan {
    cfg: PreprocessConfig,
    corrector: Option<Arc<EmscCorrector>>,
    tissue_only: bool,
}

impl PreprocessPlan {
    /// The plan for `cfg`; `state` is required when the chain runs EMSC.
    pub fn new(cfg: &PreprocessConfig, state: Option<&EmscState>) -> Result<Self, OpError> {
        let corrector = if cfg.runs(Step::Emsc) {
            let state = state.ok_or_else(|| OpError::config("emsc", "EMSC needs a reference: fit one or pass an EMSC state"))?;
            Some(Arc::new(cfg.emsc.check(&state.wavenumbers, &state.reference, &state.interferents)?))
        } else {
            None
        };
        Ok(Self { cfg: cfg.clone(), corrector, tissue_only: false })
    }

    /// The same plan, but correcting, resampling and normalizing only tissue spectra (the others
    /// get NaN spectra and residuals; see [`FusedSteps::tissue_only`]): what classification needs.
    /// Only [`PreprocessPlan::kernels`] (the fused chain) honours it.
    pub fn tissue_only(mut self) -> Self {
        self.tissue_only = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// The part of the axis the chain needs from a reader ([`crate::io::ReadOptions::bands`]):
    /// when EMSC runs, spectra are truncated to `emsc_range` and every step before it looks only
    /// at its own bands (the K-means bands, the amide band), so the span of those bands is all it
    /// reads; `None` (whole spectra) when EMSC does not run.
    pub fn read_band(&self) -> Option<Band> {
        let c = &self.cfg;
        self.corrector.as_ref()?;
        let mut bands = vec![c.emsc_range];
        if c.runs(Step::Segment) {
            bands.extend([c.segment.tissue_band, c.segment.paraffin_band]);
        }
        if c.runs(Step::Outliers) {
            bands.push(c.outliers.amide_band);
        }
        let lo = bands.iter().map(|b| b.lo).fold(f64::INFINITY, f64::min);
        let hi = bands.iter().map(|b| b.hi).fold(f64::NEG_INFINITY, f64::max);
        Some(Band::new(lo, hi))
    }

    /// Fresh kernels for the chain, in order: segmentation (whole image; it also runs the
    /// amide/non-finite check in the same pass over the image), the fused per-spectrum steps
    /// (the check when nothing segments → truncate → EMSC → resample → normalize, see
    /// [`FusedKernel`]) and the per-image EMSC residual outlier check.
    pub fn kernels(&self) -> Result<Vec<Box<dyn Kernel>>, OpError> {
        self.chain().into_iter().map(|step| self.kernel(step)).collect()
    }

    /// The steps of [`PreprocessPlan::kernels`], without building them (the dataflow builds each
    /// step's kernel per image with [`PreprocessPlan::kernel`]).
    pub fn chain(&self) -> Vec<ChainStep> {
        let c = &self.cfg;
        let mut steps = Vec::new();
        if c.runs(Step::Segment) {
            steps.push(ChainStep::Segment);
        }
        steps.push(ChainStep::PerSpectrum);
        if self.corrector.is_some() && c.runs(Step::Outliers) {
            steps.push(ChainStep::ResidualOutliers);
        }
        steps
    }

    /// A fresh kernel for one step of [`PreprocessPlan::chain`].
    pub fn kernel(&self, step: ChainStep) -> Result<Box<dyn Kernel>, OpError> {
        Ok(match step {
            ChainStep::Segment => match self.segment_kernel()? {
                Some(segment) => Box::new(segment),
                None => return Err(OpError::config("segment", "segmentation is not configured")),
            },
            ChainStep::PerSpectrum => {
                let mut steps = self.per_spectrum_steps()?;
                if self.cfg.runs(Step::Segment) {
                    steps.check = None; // the segment kernel checks (it does whenever the outlier step runs)
                }
                Box::new(FusedKernel::new(steps)?)
            }
            ChainStep::ResidualOutliers => Box::new(ResidualOutlierKernel::new(&self.cfg.outliers)?),
        })
    }
    /// The segmentation kernel, with the amide/non-finite check in its pass when the outlier step
    /// runs (`None` when segmentation is off).
    pub fn segment_kernel(&self) -> Result<Option<SegmentKernel>, OpError> {
        segment_kernel(&self.cfg)
    }

    /// The per-spectrum steps this configuration runs (what [`FusedKernel`] fuses).
    pub fn per_spectrum_steps(&self) -> Result<FusedSteps, OpError> {
        let c = &self.cfg;
        Ok(FusedSteps {
            check: if c.runs(Step::Outliers) { Some(amide_check(c)?) } else { None },
            truncate: self.corrector.as_ref().map(|_| c.emsc_range),
            emsc: self.corrector.clone(),
            resample: if c.runs(Step::Resample) { Some(c.resample.grid()?) } else { None },
            normalize: c.runs(Step::Normalize).then(|| c.normalize.clone()),
            tissue_only: self.tissue_only,
        })
    }

    /// The same chain with every step as its own kernel (what [`PreprocessPlan::kernels`] must
    /// equal; for tests and per-step benchmarks).
    pub fn sequential_kernels(&self) -> Result<Vec<Box<dyn Kernel>>, OpError> {
        let c = &self.cfg;
        let mut k = Vec::new();
        if c.runs(Step::Segment) {
            k.push(Box::new(c.segment.check()?.kernel()) as Box<dyn Kernel>);
        }
        k.extend(FusedKernel::sequential(&self.per_spectrum_steps()?)?);
        if self.corrector.is_some() && c.runs(Step::Outliers) {
            k.push(Box::new(ResidualOutlierKernel::new(&c.outliers)?));
        }
        Ok(k)
    }

    /// `e`, and for an axis that misses a configured band, which keys set the band and what
    /// changing them means (see [`axis_hint`]).
    pub fn explain(&self, e: OpError) -> OpError {
        axis_hint(&self.cfg, e)
    }

    /// Runs the whole chain over the batches of one image and applies `keep`.
    pub fn run_image(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, OpError> {
        let mut current = run_chain(&mut self.kernels()?, batches).map_err(|e| self.explain(e))?;
        if self.cfg.keep == Keep::Tissue {
            current = current.iter().map(|b| filter_bool(b, TISSUE)).collect::<Result<_, _>>()?;
        }
        Ok(current)
    }
}

/// A data error of the EMSC cut (`truncate`) or the resampling (`resample`) — the image's axis
/// does not cover `[preprocess] emsc_range` or the model grid — with the keys that set those
/// bands and what changing them means; other errors as they are.
fn axis_hint(c: &PreprocessConfig, e: OpError) -> OpError {
    match e {
        OpError::Data { operator: operator @ ("truncate" | "resample"), reason } => {
            let g = &c.resample;
            OpError::Data {
                operator,
                reason: format!(
                    "{reason}. The bands come from the preprocessing configuration: `[preprocess] emsc_range` ({}) and \
                     the model grid `[preprocess.resample] start`–`end` ({}–{} cm⁻¹). For data that do not reach them, \
                     set both inside the data's axis and train the model on that grid; a model is applied only to \
                     data that cover its grid",
                    c.emsc_range, g.start, g.end
                ),
            }
        }
        e => e,
    }
}

/// The kernels that run on raw spectra before EMSC (masks and amide/non-finite checks), shared by
/// the chain and the EMSC fitter so both see the same tissue.
fn mask_kernels(c: &PreprocessConfig) -> Result<Vec<Box<dyn Kernel>>, OpError> {
    let mut k: Vec<Box<dyn Kernel>> = Vec::new();
    match segment_kernel(c)? {
        Some(segment) => k.push(Box::new(segment)),
        None if c.runs(Step::Outliers) => k.push(Box::new(amide_check(c)?)),
        None => {}
    }
    Ok(k)
}

/// The segmentation kernel, with the amide/non-finite check in its pass when the outlier step
/// runs (`None` when segmentation is off).
fn segment_kernel(c: &PreprocessConfig) -> Result<Option<SegmentKernel>, OpError> {
    if !c.runs(Step::Segment) {
        return Ok(None);
    }
    let kernel = c.segment.check()?.kernel();
    Ok(Some(if c.runs(Step::Outliers) { kernel.with_check(amide_check(c)?) } else { kernel }))
}

/// The amide I / non-finite check: over the EMSC range when EMSC runs (the only part of the
/// spectrum the chain then uses), else over the whole spectrum.
fn amide_check(c: &PreprocessConfig) -> Result<AmideCheckKernel, OpError> {
    let k = AmideCheckKernel::new(c.outliers.clone())?;
    Ok(if c.runs(Step::Emsc) { k.checking(c.emsc_range) } else { k })
}

/// Rows of `batch` where the Boolean column `name` is true (all rows when there is no such column).
pub fn filter_bool(batch: &RecordBatch, name: &str) -> Result<RecordBatch, OpError> {
    match batch.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned()) {
        Some(mask) => arrow::compute::filter_record_batch(batch, &mask).map_err(|e| OpError::internal("filter", e.to_string())),
        None => Ok(batch.clone()),
    }
}

/// Fits the EMSC state on images (pass one of `preprocess` and `train`): the mean of the tissue
/// spectra that pass the outlier checks, on the EMSC range, and in `interferents` mode the
/// components of the pure paraffin spectra among the paraffin-cluster pixels.
pub struct EmscFitter {
    cfg: PreprocessConfig,
    axis: Option<Vec<f64>>,
    sum: Vec<f64>,
    count: u64,
    paraffin: Vec<f32>,
    paraffin_rows: usize,
    per_image_paraffin: usize,
}

impl EmscFitter {
    /// A fitter for `cfg`, expecting about `images` images (to spread the paraffin sample).
    pub fn new(cfg: &PreprocessConfig, images: usize) -> Result<Self, OpError> {
        if cfg.emsc.paraffin == ParaffinMode::Interferents && !cfg.runs(Step::Segment) {
            return Err(OpError::config(
                "emsc",
                "paraffin = \"interferents\" needs the segment step to find paraffin pixels (or an EMSC state)",
            ));
        }
        Ok(Self {
            cfg: cfg.clone(),
            axis: None,
            sum: Vec::new(),
            count: 0,
            paraffin: Vec::new(),
            paraffin_rows: 0,
            per_image_paraffin: MAX_PARAFFIN_CANDIDATES.div_ceil(images.max(1)),
        })
    }

    /// Adds one image (its raw batches).
    pub fn add_image(&mut self, batches: Vec<RecordBatch>) -> Result<(), OpError> {
        let c = &self.cfg;
        let mut kernels = mask_kernels(c)?;
        kernels.push(Box::new(TruncateKernel::new(c.emsc_range)?));
        let current = run_chain(&mut kernels, batches).map_err(|e| axis_hint(c, e))?;
        let want_paraffin = c.emsc.paraffin == ParaffinMode::Interferents;
        let mut paraffin_taken = 0;
        for b in &current {
            let layout = SpectraLayout::of(&b.schema()).map_err(|e| OpError::schema("emsc", e))?;
            match &self.axis {
                None => {
                    self.sum = vec![0.0; layout.n_points()];
                    self.axis = Some(layout.wavenumbers.clone());
                }
                Some(a) if *a != layout.wavenumbers => {
                    return Err(OpError::data("emsc", "the image's axis differs from the other images' on the EMSC range"));
                }
                Some(_) => {}
            }
            let n = layout.n_points();
            let values = SpectraLayout::values(b).map_err(|e| OpError::schema("emsc", e))?;
            let col = |name: &str| b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned());
            let (tissue, paraffin, outlier) = (col(TISSUE), col(PARAFFIN), col(OUTLIER));
            for (i, s) in values.chunks_exact(n).enumerate() {
                let is = |m: &Option<arrow::array::BooleanArray>, default: bool| m.as_ref().map(|m| m.value(i)).unwrap_or(default);
                if is(&tissue, true) && !is(&outlier, false) && crate::operators::finite::all_finite(s) {
                    for (acc, &v) in self.sum.iter_mut().zip(s) {
                        *acc += v as f64;
                    }
                    self.count += 1;
                }
                if want_paraffin
                    && is(&paraffin, false)
                    && paraffin_taken < self.per_image_paraffin
                    && crate::operators::finite::all_finite(s)
                {
                    self.paraffin.extend_from_slice(s);
                    self.paraffin_rows += 1;
                    paraffin_taken += 1;
                }
            }
        }
        Ok(())
    }

    /// The fitted state.
    pub fn finish(self, source: &str) -> Result<EmscState, OpError> {
        let axis = self.axis.ok_or_else(|| OpError::data("emsc", "no image to fit the EMSC reference on"))?;
        if self.count == 0 {
            return Err(OpError::data("emsc", "no tissue spectrum passed the checks: cannot fit an EMSC reference"));
        }
        let reference: Vec<f64> = self.sum.iter().map(|s| s / self.count as f64).collect();
        let interferents = if self.cfg.emsc.paraffin == ParaffinMode::Interferents {
            emsc::pure_paraffin_components(
                &self.paraffin,
                self.paraffin_rows,
                &axis,
                self.cfg.emsc.interferent_components as usize,
                self.cfg.emsc.pure_paraffin_amide_ratio,
            )?
        } else {
            Vec::new()
        };
        Ok(EmscState { wavenumbers: axis, reference, interferents, source: source.to_string(), reference_spectra: self.count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chain_step_builds_the_kernel_it_names() {
        let cfg = PreprocessConfig::default();
        let band = cfg.emsc_range;
        let wavenumbers: Vec<f64> = (0..=400).map(|i| band.lo + (band.hi - band.lo) * i as f64 / 400.0).collect();
        let reference: Vec<f64> = wavenumbers.iter().map(|w| 1.0 + (w / 100.0).sin().abs()).collect();
        let state = EmscState { wavenumbers, reference, interferents: Vec::new(), source: "test".into(), reference_spectra: 1 };
        let plan = PreprocessPlan::new(&cfg, Some(&state)).unwrap();
        let chain = plan.chain();
        assert_eq!(chain, [ChainStep::Segment, ChainStep::PerSpectrum, ChainStep::ResidualOutliers]);
        for step in chain {
            assert_eq!(plan.kernel(step).unwrap().name(), step.name());
        }
        let names: Vec<&str> = plan.kernels().unwrap().iter().map(|k| k.name()).collect();
        assert_eq!(names, ["segment", "preprocess", "outliers"]);
    }
}
