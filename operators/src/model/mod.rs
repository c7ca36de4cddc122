//! CaReNet-V1 (docs/model.md) on `tch`: the architecture ([`CareNet`], [`ArchConfig`]) and batched
//! inference ([`Classifier`]): class probabilities under `no_grad`, or probabilities and 1D
//! Grad-CAM maps (docs/model.md) from one forward pass and a backward pass through the head only.
//!
//! Why the head suffices: the network ends in global average pooling `g_k = (1/L) Σ_l A_k(l)`
//! followed by dense layers, so `∂y_c/∂A_k(l) = (1/L)·∂y_c/∂g_k` for every position `l`, and
//! `α_k = mean_l ∂y_c/∂A_k(l) = (1/L)·∂y_c/∂g_k`. The convolutions run once under `no_grad` (no
//! autograd graph, no saved activations), and autograd differentiates only the dense head on the
//! pooled features — the same numbers as the usual hooks-and-full-backward Grad-CAM (tests check
//! both against each other and against finite differences).
//!
//! ```
//! use ftirflow_operators::model::{ArchConfig, Classifier};
//! let arch = ArchConfig::carenet_v1(2);
//! let grid: Vec<f64> = (0..467).map(|i| 900.0 + 900.0 * i as f64 / 466.0).collect();
//! let clf = Classifier::init(&arch, vec!["AT".into(), "CA".into()], grid, tch::Device::Cpu, 7).unwrap();
//! let spectra = vec![0.05f32; 3 * 467];
//! let (pred, cams) = clf.predict_values_with_gradcam(&spectra, 3).unwrap();
//! assert_eq!(pred.rows(), 3);
//! assert!((pred.probs(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! assert_eq!(cams.maps.len(), 3 * 467);
//! assert!(cams.maps.iter().all(|&v| (0.0..=1.0).contains(&v)));
//! ```
mod arch;
mod staging;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use arch::{cpu_has_bf16, ArchConfig, CareNet, InferenceNet, LayerRow, Precision, PAPER_PARAMETERS};

use crate::error::OpError;
use crate::grad_cam;
use crate::schema::SpectraLayout;

const OP: &str = "model";

/// Where the network runs (`[train] device` / `[run] device` in the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU (default).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU; an error when there is none.
    Cuda,
}

impl DeviceChoice {
    /// The libtorch device; `cuda` without a usable GPU is a configuration error.
    pub fn resolve(self) -> Result<Device, OpError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(OpError::config(
                OP,
                "device = \"cuda\" but libtorch sees no CUDA GPU (build with `--features cuda` and a CUDA libtorch)",
            )),
        }
    }
}

/// Sets libtorch's intra-op thread count (process-wide): one per timely worker on CPU, or the
/// configured count; 0 leaves libtorch's default (one per core).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads.min(i32::MAX as usize) as i32);
    }
}

/// Makes glibc's `malloc`, which libtorch's CPU allocator calls for every tensor, keep freed
/// tensor memory for reuse (process-wide, once; a no-op on other C libraries). By default glibc
/// serves blocks above an adaptive threshold with fresh `mmap`s and trims the heap top back to the
/// kernel, so each batch's activations (≈7 MB at batch 250, ≈30 MB at 1024) page-fault afresh:
/// profiling showed a third of prediction time in the kernel's page clearing. Here blocks up to
/// 32 MiB (glibc's maximum threshold) come from the heap and the heap is trimmed only above
/// 1 GiB free, so memory stays at its high-water mark instead (until
/// [`release_freed_tensor_memory`]; prediction 1.5–2× faster,
/// `cargo bench -p ftirflow-operators --bench model`). Called by every [`Classifier`]
/// constructor; returns whether the settings took effect.
pub fn keep_freed_tensor_memory() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: mallopt only changes glibc's allocation parameters under its own lock.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1 }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        {
            false
        }
    })
}

/// Hands the tensor memory that [`keep_freed_tensor_memory`] keeps back to the kernel
/// (glibc's `malloc_trim`; a no-op on other C libraries). Each new batch shape adds to what glibc
/// keeps, so a long run calls this between units of work: memory is reused within a unit and
/// returned between units (docs/performance.md, whole slides).
pub fn release_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel, under glibc's own locks.
    unsafe {
        libc::malloc_trim(0);
    };
}

/// Makes the calling thread — and the threads it starts afterwards, such as libtorch's intra-op
/// pool, which inherit its floating-point environment — flush denormal floats to zero (x86-64
/// MXCSR FTZ and DAZ; aarch64 FPCR FZ), as `torch.set_flush_denormal(True)` does. Denormals show
/// up in gradients late in training and slow CPU convolutions by one to two orders of magnitude;
/// flushing them changes results only below 1.2e-38. Call it before the first tensor operation.
/// Returns false on other architectures (nothing is changed).
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: reads and writes the SSE control/status register of this thread only; setting
        // FTZ (bit 15) and DAZ (bit 6) changes no memory and no other state.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags, readonly));
        }
        true
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: sets the flush-to-zero bit (24) of this thread's FPCR; no memory is touched.
        unsafe {
            let mut fpcr: u64;
            std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags));
            fpcr |= 1 << 24;
            std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack, preserves_flags));
        }
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Class probabilities of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Number of classes.
    pub classes: usize,
    /// `rows × classes` probabilities, row-major (each row sums to 1).
    pub probs: Vec<f32>,
    /// The predicted class index of each row (argmax; for two classes, class 1 when its
    /// sigmoid probability exceeds 0.5).
    pub predicted: Vec<u32>,
    /// The score Grad-CAM explains, per row: the predicted class's logit (softmax), or
    /// `+logit` for class 1 and `−logit` for class 0 (sigmoid).
    pub scores: Vec<f32>,
}

impl Predictions {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.predicted.len()
    }

    /// The probabilities of row `i`.
    pub fn probs(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }
}

/// Predictions of the same spectra in two precisions compared ([`Classifier::agreement`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Spectra compared.
    pub rows: usize,
    /// Share with the same predicted class.
    pub same_class: f64,
    /// Largest absolute difference of a class probability.
    pub max_prob_diff: f32,
    /// Among the spectra whose class changed, the largest gap between the two most probable
    /// classes in the reference precision (0 when none changed): how clear a decision the other
    /// precision overturned.
    pub changed_margin: f32,
}

/// Grad-CAM maps of a batch, on the input grid.
#[derive(Debug, Clone, PartialEq)]
pub struct CamMaps {
    /// Points per map (the input length, 467).
    pub points: usize,
    /// `rows × points` maps, row-major; each in `[0, 1]` with maximum 1 (or all zero).
    pub maps: Vec<f32>,
}

/// Raw class-activation maps `Σ_k α_k A_k` of a batch, before the ReLU, the interpolation onto
/// the input points and the scaling that make them Grad-CAM maps ([`RawCams::maps`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RawCams {
    /// Values per raw map (the last feature map's length).
    pub length: usize,
    /// Points of the maps they become (the input length).
    pub points: usize,
    /// `rows × length` values, row-major.
    pub values: Vec<f32>,
}

impl RawCams {
    /// The Grad-CAM maps ([`grad_cam::postprocess_batch`]).
    pub fn maps(&self) -> CamMaps {
        self.maps_as(grad_cam::MapKind::Gradcam)
    }

    /// The maps of either kind ([`grad_cam::postprocess_batch_as`]).
    pub fn maps_as(&self, kind: grad_cam::MapKind) -> CamMaps {
        let rows = self.values.len().checked_div(self.length).unwrap_or(0);
        CamMaps { points: self.points, maps: grad_cam::postprocess_batch_as(kind, &self.values, rows, self.length, self.points) }
    }
}

impl CamMaps {
    /// The map of row `i`.
    pub fn map(&self, i: usize) -> &[f32] {
        &self.maps[i * self.points..(i + 1) * self.points]
    }
}

/// A CaReNet-V1 network with its weights, class names and input grid, ready for batched
/// inference on one device. Build it from a model bundle (the engine's `bundle` module) or with
/// [`Classifier::init`] (fresh weights) / [`Classifier::from_parts`] (training).
#[derive(Debug)]
pub struct Classifier {
    vs: nn::VarStore,
    net: CareNet,
    classes: Vec<String>,
    grid: Vec<f64>,
    frozen: Option<InferenceNet>,
    /// Where input batches wait for their copy to a GPU (unused on the CPU).
    staging: staging::Staging,
}

impl Classifier {
    /// A network with freshly initialized weights (seeded).
    pub fn init(arch: &ArchConfig, classes: Vec<String>, grid: Vec<f64>, device: Device, seed: i64) -> Result<Self, OpError> {
        flush_denormals();
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let net = CareNet::new(&vs.root(), arch)?;
        Self::from_parts(vs, net, classes, grid)
    }

    /// Wraps a network whose variables live in `vs`.
    pub fn from_parts(vs: nn::VarStore, net: CareNet, classes: Vec<String>, grid: Vec<f64>) -> Result<Self, OpError> {
        keep_freed_tensor_memory();
        let arch = net.arch();
        if classes.len() != arch.classes {
            return Err(OpError::config(OP, format!("{} class names for a {}-class network", classes.len(), arch.classes)));
        }
        if grid.len() != arch.input_points {
            return Err(OpError::config(
                OP,
                format!("a grid of {} points for a network of {} input points", grid.len(), arch.input_points),
            ));
        }
        crate::schema::check_axis(&grid).map_err(|e| OpError::config(OP, format!("model grid: {e}")))?;
        Ok(Self { vs, net, classes, grid, frozen: None, staging: staging::Staging::default() })
    }

    /// Folds the batch norms into the convolutions once ([`CareNet::fuse`]) and keeps the result
    /// for every later prediction. Call it when the weights are final (a loaded bundle, the end of
    /// training); after changing the weights call it again. Without it each batch folds afresh
    /// (always current, a little slower).
    pub fn freeze(&mut self) {
        self.freeze_as(Precision::F32);
    }

    /// [`Classifier::freeze`] with the convolutions in `precision` ([`CareNet::fuse_as`]).
    pub fn freeze_as(&mut self, precision: Precision) {
        self.frozen = Some(self.net.fuse_as(precision));
    }

    /// The precision predictions run in (`f32` until frozen otherwise).
    pub fn precision(&self) -> Precision {
        self.frozen.as_ref().map_or(Precision::F32, InferenceNet::precision)
    }

    /// How predictions of `rows` spectra in `precision` compare with this classifier's current
    /// ones (the `[run] precision = "auto"` check): the share of identical classes and the
    /// largest probability difference. The classifier itself is left as it was.
    pub fn agreement(&self, values: &[f32], rows: usize, precision: Precision) -> Result<Agreement, OpError> {
        let base = self.predict_values(values, rows)?;
        let alt_net = self.net.fuse_as(precision);
        let x = self.input(values, rows)?;
        let alt = self.predict_from_features(&alt_net.features(&x))?;
        let same = base.predicted.iter().zip(&alt.predicted).filter(|(a, b)| a == b).count();
        let max_prob_diff = base.probs.iter().zip(&alt.probs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        // How sure f32 was of each decision the other precision changed: the gap between its two
        // most probable classes.
        let changed_margin = (0..rows)
            .filter(|&i| base.predicted[i] != alt.predicted[i])
            .map(|i| {
                let mut p = base.probs(i).to_vec();
                p.sort_by(|a, b| b.total_cmp(a));
                p[0] - p.get(1).copied().unwrap_or(0.0)
            })
            .fold(0.0f32, f32::max);
        Ok(Agreement { rows, same_class: same as f64 / rows.max(1) as f64, max_prob_diff, changed_margin })
    }

    fn features(&self, x: &Tensor) -> Tensor {
        match &self.frozen {
            Some(f) => f.features(x),
            None => self.net.inference_features(x),
        }
    }

    /// The network.
    pub fn net(&self) -> &CareNet {
        &self.net
    }

    /// The variables (weights and batch-norm statistics).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The variables, mutably (loading weights, training).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Class names, in output order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The input grid (cm⁻¹) spectra must be on.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    /// The device the network lives on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Checks that spectra on `wavenumbers` can be classified: the same grid as the model's
    /// (within 1e-6 cm⁻¹), otherwise a data error naming both grids.
    pub fn check_grid(&self, wavenumbers: &[f64]) -> Result<(), OpError> {
        let same = wavenumbers.len() == self.grid.len() && wavenumbers.iter().zip(&self.grid).all(|(a, b)| (a - b).abs() <= 1e-6);
        if same {
            return Ok(());
        }
        let describe = |g: &[f64]| match (g.first(), g.last()) {
            (Some(a), Some(b)) => format!("{} points from {a} to {b} cm⁻¹", g.len()),
            _ => "an empty grid".to_string(),
        };
        Err(OpError::data(
            OP,
            format!(
                "spectra are on {}, but the model expects {} (resample onto the model grid first)",
                describe(wavenumbers),
                describe(&self.grid)
            ),
        ))
    }

    fn input(&self, values: &[f32], rows: usize) -> Result<Tensor, OpError> {
        let n = self.grid.len();
        if values.len() != rows * n {
            return Err(OpError::data(OP, format!("{} values are not {rows} spectra of {n} points", values.len())));
        }
        if !crate::finite::all_finite(values) {
            let i = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(OpError::data(
                OP,
                format!("spectrum {} holds a non-finite value (outliers must be filtered out before classification)", i / n),
            ));
        }
        let shape = [rows as i64, n as i64];
        let x = if self.device() == Device::Cpu {
            Tensor::f_from_slice(values).and_then(|t| t.f_view(shape))
        } else {
            // Through page-locked memory and without blocking: the thread goes on launching the
            // batch's kernels instead of waiting for a staged copy from pageable memory, which
            // bounded the H200 runs (docs/performance.md, Is the GPU fed?).
            self.staging.to_device(values, shape, self.device())
        };
        x.map_err(|e| OpError::internal(OP, e.to_string()))
    }

    /// Probabilities `[rows, classes]`, predicted classes `[rows]` and the scores Grad-CAM
    /// explains `[rows]` (differentiable) from logits `[rows, outputs]`.
    fn heads(&self, logits: &Tensor) -> (Tensor, Tensor, Tensor) {
        if self.classes.len() == 2 {
            let l = logits.squeeze_dim(1);
            let p1 = l.sigmoid();
            let probs = Tensor::stack(&[p1.ones_like() - &p1, p1.shallow_clone()], 1);
            let predicted = l.gt(0.0).to_kind(Kind::Int64);
            let sign = (&predicted * 2 - 1).to_kind(l.kind());
            let scores = &l * sign;
            (probs, predicted, scores)
        } else {
            let probs = logits.softmax(1, Kind::Float);
            let predicted = logits.argmax(1, false);
            let scores = logits.gather(1, &predicted.unsqueeze(1), false).squeeze_dim(1);
            (probs, predicted, scores)
        }
    }

    /// Copies the outputs of [`Classifier::heads`] and, when given, the raw maps `[rows, length]`
    /// to the host in one transfer (on a GPU each copy waits for the device, so one per batch
    /// instead of four): the predictions and the raw maps (empty without `raw`).
    fn to_host(
        &self,
        probs: &Tensor,
        predicted: &Tensor,
        scores: &Tensor,
        raw: Option<&Tensor>,
    ) -> Result<(Predictions, Vec<f32>), OpError> {
        let k = self.classes.len();
        let rows = probs.size()[0] as usize;
        // Class indices are exact in f32 (far below 2^24).
        let mut columns = vec![
            probs.detach().to_kind(Kind::Float),
            predicted.to_kind(Kind::Float).unsqueeze(1),
            scores.detach().to_kind(Kind::Float).unsqueeze(1),
        ];
        columns.extend(raw.map(|r| r.to_kind(Kind::Float)));
        let all = Tensor::cat(&columns, 1).to_device(Device::Cpu).contiguous();
        let width = all.size()[1] as usize;
        let host: Vec<f32> = Vec::<f32>::try_from(all.flatten(0, -1)).map_err(|e| OpError::internal(OP, e.to_string()))?;
        self.staging.settled();
        let mut out = Predictions {
            classes: k,
            probs: Vec::with_capacity(rows * k),
            predicted: Vec::with_capacity(rows),
            scores: Vec::with_capacity(rows),
        };
        let mut maps = Vec::with_capacity(rows * (width - k - 2));
        for row in host.chunks_exact(width) {
            out.probs.extend_from_slice(&row[..k]);
            out.predicted.push(row[k] as u32);
            out.scores.push(row[k + 1]);
            maps.extend_from_slice(&row[k + 2..]);
        }
        Ok((out, maps))
    }

    /// Class probabilities of `rows` spectra (`values` row-major, on the model grid), under
    /// `no_grad` and in evaluation mode.
    pub fn predict_values(&self, values: &[f32], rows: usize) -> Result<Predictions, OpError> {
        if rows == 0 {
            return Ok(Predictions { classes: self.classes.len(), probs: Vec::new(), predicted: Vec::new(), scores: Vec::new() });
        }
        let x = self.input(values, rows)?;
        self.predict_from_features(&self.features(&x))
    }

    /// Pooling, the dense head and the predictions from last-stage activations `a`, under
    /// `no_grad`.
    fn predict_from_features(&self, a: &Tensor) -> Result<Predictions, OpError> {
        tch::no_grad(|| {
            let logits = self.net.head_t(&CareNet::pool(a), false);
            let (probs, predicted, scores) = self.heads(&logits);
            self.to_host(&probs, &predicted, &scores, None).map(|(p, _)| p)
        })
    }

    /// Probabilities, predicted classes, Grad-CAM scores and the raw class-activation maps
    /// `Σ_k α_k A_k` `[rows, feature length]` (before ReLU) of an input tensor `[rows, points]`
    /// on the model's device: one forward pass under `no_grad`, then one backward pass through
    /// the head only, from the pooled features.
    pub fn forward_with_raw_cam(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor), OpError> {
        let a = self.features(x);
        let length = a.size().last().copied().unwrap_or(1);
        let pooled = CareNet::pool(&a).set_requires_grad(true);
        let logits = self.net.head_t(&pooled, false);
        let (probs, predicted, scores) = self.heads(&logits);
        let grads = Tensor::f_run_backward(&[scores.sum(Kind::Float)], &[&pooled], false, false)
            .map_err(|e| OpError::internal(OP, format!("Grad-CAM backward: {e}")))?;
        let raw = tch::no_grad(|| (&grads[0] / length as f64).unsqueeze(1).bmm(&a).squeeze_dim(1));
        Ok((probs.detach(), predicted, scores.detach(), raw))
    }

    /// Class probabilities and Grad-CAM maps (docs/model.md) of `rows` spectra: one forward, one
    /// backward through the head; the maps are ReLU'd, linearly interpolated onto the input
    /// points and divided by their maximum ([`grad_cam::postprocess`]).
    pub fn predict_values_with_gradcam(&self, values: &[f32], rows: usize) -> Result<(Predictions, CamMaps), OpError> {
        let (pred, raw) = self.predict_values_with_raw_cam(values, rows)?;
        Ok((pred, raw.maps()))
    }

    /// [`Classifier::predict_values_with_gradcam`] up to the raw maps: the device's part alone,
    /// so that a thread feeding a GPU can leave the per-spectrum host work of
    /// [`RawCams::maps`] to its callers.
    pub fn predict_values_with_raw_cam(&self, values: &[f32], rows: usize) -> Result<(Predictions, RawCams), OpError> {
        let points = self.grid.len();
        if rows == 0 {
            return Ok((self.predict_values(values, 0)?, RawCams { length: 0, points, values: Vec::new() }));
        }
        let x = self.input(values, rows)?;
        let (probs, predicted, scores, raw) = self.forward_with_raw_cam(&x)?;
        let length = raw.size()[1] as usize;
        let (pred, values) = self.to_host(&probs, &predicted, &scores, Some(&raw))?;
        Ok((pred, RawCams { length, points, values }))
    }

    /// [`Classifier::predict_values`] on a spectra batch (checks the grid first).
    pub fn predict(&self, batch: &RecordBatch) -> Result<Predictions, OpError> {
        let values = self.batch_values(batch)?;
        self.predict_values(values, batch.num_rows())
    }

    /// [`Classifier::predict_values_with_gradcam`] on a spectra batch (checks the grid first).
    pub fn predict_with_gradcam(&self, batch: &RecordBatch) -> Result<(Predictions, CamMaps), OpError> {
        let values = self.batch_values(batch)?;
        self.predict_values_with_gradcam(values, batch.num_rows())
    }

    fn batch_values<'a>(&self, batch: &'a RecordBatch) -> Result<&'a [f32], OpError> {
        let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
        self.check_grid(&layout.wavenumbers)?;
        SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))
    }
}

#[cfg(test)]
mod tests;
