//! The CaReNet-V1 architecture (docs/model.md) as `tch::nn` modules: a convolutional stem, residual
//! stages of 1D convolutions with batch norm, ReLU and max pooling, global average pooling and a
//! dense head with dropout; He-normal initialization and zero ("same") padding.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use crate::error::OpError;

const OP: &str = "model";

/// The parameter count of CaReNet-V1 reported by the paper; the default architecture lands within
/// ±5 % of it (a test asserts this).
pub const PAPER_PARAMETERS: usize = 277_236;

/// The widths and sizes of a CaReNet-V1 network. Stored in the model bundle's manifest; the
/// default is the published model (single 467-point spectra).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// Points per input spectrum (467: 900–1800 cm⁻¹).
    pub input_points: usize,
    /// Channels of the stem convolution.
    pub stem_channels: i64,
    /// Kernel size of the stem convolution (odd).
    pub stem_kernel: i64,
    /// Output channels of each residual stage, in order; the last stage's activations are the
    /// Grad-CAM feature maps.
    pub stages: Vec<i64>,
    /// How many of the stages are followed by a 2× max pooling (the stem always is). The
    /// remaining stages keep the resolution, so that Grad-CAM maps stay sharp.
    pub pooled_stages: usize,
    /// Kernel size of the stage convolutions (odd).
    pub kernel: i64,
    /// Widths of the dense layers between global average pooling and the head.
    pub dense: Vec<i64>,
    /// Dropout probability after each dense layer (training only).
    pub dropout: f64,
    /// Number of classes: 2 gives one logit with a sigmoid (the second class is the positive
    /// one), more give one logit per class with a softmax.
    pub classes: usize,
}

impl ArchConfig {
    /// The published model for `classes` classes (2 for `type`, 4 for `subtype`).
    pub fn carenet_v1(classes: usize) -> Self {
        Self {
            input_points: 467,
            stem_channels: 16,
            stem_kernel: 7,
            stages: vec![32, 64, 128],
            pooled_stages: 2,
            kernel: 3,
            dense: vec![512, 192],
            dropout: 0.5,
            classes,
        }
    }

    /// Outputs of the head: 1 for two classes (sigmoid), else one per class (softmax).
    pub fn outputs(&self) -> i64 {
        if self.classes == 2 {
            1
        } else {
            self.classes as i64
        }
    }

    /// Checks the sizes.
    pub fn check(&self) -> Result<(), OpError> {
        let bad = |r: String| Err(OpError::config(OP, r));
        if self.classes < 2 {
            return bad(format!("a classifier needs at least 2 classes, got {}", self.classes));
        }
        if self.stages.is_empty() {
            return bad("at least one residual stage is needed".into());
        }
        if self.pooled_stages > self.stages.len() {
            return bad(format!("pooled_stages {} exceeds the {} stages", self.pooled_stages, self.stages.len()));
        }
        if self.stem_channels < 1 || self.stages.iter().chain(&self.dense).any(|&w| w < 1) {
            return bad("every width must be at least 1".into());
        }
        for (name, k) in [("stem_kernel", self.stem_kernel), ("kernel", self.kernel)] {
            if k < 1 || k % 2 == 0 {
                return bad(format!("{name} must be odd and positive (\"same\" padding), got {k}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.feature_length() < 1 {
            return bad(format!("{} input points are too few for {} poolings", self.input_points, self.pooled_stages + 1));
        }
        Ok(())
    }

    /// Length of the last stage's feature maps (the Grad-CAM resolution).
    pub fn feature_length(&self) -> usize {
        (0..=self.pooled_stages).fold(self.input_points, |l, _| l / 2)
    }

    /// Channels of the last stage (the Grad-CAM feature maps).
    pub fn feature_channels(&self) -> i64 {
        *self.stages.last().unwrap_or(&self.stem_channels)
    }

    /// The layer table: one row per layer with its output shape and trainable parameters, in
    /// forward order (docs/model.md prints it).
    pub fn layer_table(&self) -> Vec<LayerRow> {
        let mut rows = Vec::new();
        let mut len = self.input_points;
        let mut ch = self.stem_channels;
        let bn = |c: i64| 2 * c as usize;
        rows.push(LayerRow::new("input", "spectrum", 1, len, 0));
        rows.push(LayerRow::new(
            "stem",
            &format!("conv1d k{} same, BN, ReLU", self.stem_kernel),
            ch,
            len,
            (self.stem_kernel * ch) as usize + bn(ch),
        ));
        len /= 2;
        rows.push(LayerRow::new("stem", "max pool 2", ch, len, 0));
        for (i, &out) in self.stages.iter().enumerate() {
            let k = self.kernel;
            let mut p = (ch * out * k) as usize + bn(out) + (out * out * k) as usize + bn(out);
            let mut what = format!("residual block: conv1d k{k} BN ReLU, conv1d k{k} BN");
            if ch != out {
                p += (ch * out) as usize + bn(out);
                what.push_str(", 1×1 conv BN shortcut");
            }
            what.push_str(", add, ReLU");
            rows.push(LayerRow::new(&format!("stage {}", i + 1), &what, out, len, p));
            if i < self.pooled_stages {
                len /= 2;
                rows.push(LayerRow::new(&format!("stage {}", i + 1), "max pool 2", out, len, 0));
            }
            ch = out;
        }
        rows.push(LayerRow::new("gap", "global average pooling", ch, 1, 0));
        let mut width = ch;
        for (i, &d) in self.dense.iter().enumerate() {
            rows.push(LayerRow::new(
                &format!("dense {}", i + 1),
                &format!("linear, ReLU, dropout {}", self.dropout),
                d,
                1,
                (width * d + d) as usize,
            ));
            width = d;
        }
        let out = self.outputs();
        let act = if self.classes == 2 { "sigmoid" } else { "softmax" };
        rows.push(LayerRow::new("head", &format!("linear → {act}"), out, 1, (width * out + out) as usize));
        rows
    }

    /// Trainable parameters (the sum of the layer table).
    pub fn parameters(&self) -> usize {
        self.layer_table().iter().map(|r| r.parameters).sum()
    }
}

/// One row of [`ArchConfig::layer_table`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRow {
    /// Block name (`stem`, `stage 2`, `head`, …).
    pub block: String,
    /// What the layer does.
    pub layer: String,
    /// Output channels.
    pub channels: i64,
    /// Output length.
    pub length: usize,
    /// Trainable parameters of the layer.
    pub parameters: usize,
}

impl LayerRow {
    fn new(block: &str, layer: &str, channels: i64, length: usize, parameters: usize) -> Self {
        Self { block: block.into(), layer: layer.into(), channels, length, parameters }
    }
}

fn he_conv(vs: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv1D {
    let cfg = nn::ConvConfig { padding: k / 2, bias: false, ws_init: nn::init::DEFAULT_KAIMING_NORMAL, ..Default::default() };
    nn::conv1d(vs, cin, cout, k, cfg)
}

fn he_linear(vs: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    let cfg = nn::LinearConfig { ws_init: nn::init::DEFAULT_KAIMING_NORMAL, bs_init: Some(nn::Init::Const(0.0)), bias: true };
    nn::linear(vs, cin, cout, cfg)
}

/// How batch norm behaves in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BnMode {
    /// Batch statistics; running statistics updated with momentum 0.1.
    Train,
    /// Running statistics.
    Eval,
    /// Batch statistics, folded into the running statistics with this momentum (precise BN).
    Calibrate(f64),
}

/// Batch normalization over channels of `[batch, channels, length]` (variables `weight`, `bias`,
/// `running_mean`, `running_var`, as `tch::nn::batch_norm1d` names them).
#[derive(Debug)]
struct Bn {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl Bn {
    fn forward(&self, x: &Tensor, mode: BnMode) -> Tensor {
        let (train, momentum) = match mode {
            BnMode::Train => (true, 0.1),
            BnMode::Eval => (false, 0.1),
            BnMode::Calibrate(m) => (true, m),
        };
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            momentum,
            1e-5,
            true,
        )
    }
}

/// A convolution with a batch norm (in evaluation mode) folded into its weights and bias; on the
/// CPU also prepacked for oneDNN ([`InferenceNet::features`]).
#[derive(Debug)]
struct FusedConv {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
    /// The weight as a oneDNN 2-D convolution weight `[out, in, 1, k]` in oneDNN's blocked
    /// layout, and the bias, both oneDNN tensors (CPU only).
    packed: Option<(Tensor, Tensor)>,
}

impl FusedConv {
    /// `bn(conv(x)) = conv'(x)` with `w' = w·γ/√(σ²+ε)` per output channel and
    /// `b' = β − μ·γ/√(σ²+ε)`.
    fn new(conv: &nn::Conv1D, bn: &Bn) -> Self {
        let scale = &bn.weight / (&bn.running_var + 1e-5).sqrt();
        let weight = &conv.ws * scale.view([-1, 1, 1]);
        let bias = &bn.bias - &bn.running_mean * &scale;
        let k = conv.ws.size().last().copied().unwrap_or(1);
        Self { weight, bias, padding: k / 2, packed: None }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv1d(&self.weight, Some(&self.bias), [1], [self.padding], [1], 1)
    }

    /// The convolution of a oneDNN tensor `[batch, in, 1, length]` (see [`FusedConv::packed`]).
    fn forward_onednn(&self, x: &Tensor) -> Tensor {
        let (w, b) = self.packed.as_ref().expect("packed for oneDNN");
        x.mkldnn_convolution(w, Some(b), [0, self.padding], [1, 1], [1, 1], 1)
    }

    /// The weights in `precision` (for `f32`, the network's own kind: tests run whole networks in
    /// f64), prepacked for oneDNN when they live on the CPU in f32 or bf16.
    fn into_precision(self, precision: Precision) -> Self {
        let (weight, bias) = match precision {
            Precision::F32 => (self.weight, self.bias),
            Precision::Bf16 => (self.weight.to_kind(Kind::BFloat16), self.bias.to_kind(Kind::BFloat16)),
        };
        let onednn = weight.device() == tch::Device::Cpu && matches!(weight.kind(), Kind::Float | Kind::BFloat16);
        let packed = onednn.then(|| {
            let w = weight.unsqueeze(2).to_mkldnn().mkldnn_reorder_conv2d_weight([0, self.padding], [1, 1], [1, 1], 1, None::<&[i64]>);
            (w, bias.to_mkldnn())
        });
        Self { weight, bias, padding: self.padding, packed }
    }
}

fn bn(vs: nn::Path, c: i64) -> Bn {
    Bn {
        weight: vs.var("weight", &[c], nn::Init::Const(1.0)),
        bias: vs.var("bias", &[c], nn::Init::Const(0.0)),
        running_mean: vs.zeros_no_train("running_mean", &[c]),
        running_var: vs.ones_no_train("running_var", &[c]),
    }
}

/// One residual block: two convolutions with batch norm, a 1×1 projection shortcut when the
/// width changes, the sum and a ReLU.
#[derive(Debug)]
struct Residual {
    conv1: nn::Conv1D,
    bn1: Bn,
    conv2: nn::Conv1D,
    bn2: Bn,
    shortcut: Option<(nn::Conv1D, Bn)>,
}

impl Residual {
    fn new(vs: nn::Path, cin: i64, cout: i64, k: i64) -> Self {
        let shortcut = (cin != cout).then(|| (he_conv(&vs / "proj", cin, cout, 1), bn(&vs / "proj_bn", cout)));
        Self {
            conv1: he_conv(&vs / "conv1", cin, cout, k),
            bn1: bn(&vs / "bn1", cout),
            conv2: he_conv(&vs / "conv2", cout, cout, k),
            bn2: bn(&vs / "bn2", cout),
            shortcut,
        }
    }

    fn forward(&self, x: &Tensor, mode: BnMode) -> Tensor {
        let h = self.bn1.forward(&x.apply(&self.conv1), mode).relu();
        let h = self.bn2.forward(&h.apply(&self.conv2), mode);
        let s = match &self.shortcut {
            Some((c, b)) => b.forward(&x.apply(c), mode),
            None => x.shallow_clone(),
        };
        (h + s).relu()
    }
}

/// The number format the convolutions of an [`InferenceNet`] compute in (`[run] precision`,
/// docs/model.md). Training is always `f32`; the dense head always runs in `f32`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single precision (default).
    #[default]
    F32,
    /// bfloat16 weights and activations (f32 range, 8-bit mantissa): the CPU's AVX-512 BF16 or
    /// AMX units through oneDNN, about twice the convolution throughput of `f32`.
    Bf16,
}

impl Precision {
    /// The setting's name in the configuration and `run.json` (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The libtorch element kind.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Whether this CPU has bfloat16 arithmetic units (AVX-512 BF16 or AMX-BF16, as
/// `/proc/cpuinfo` names them): where [`Precision::Bf16`] is fast. False where the system does
/// not say.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|flags| flags.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
    })
}

/// The convolutional stages of a [`CareNet`] with batch norm folded in, for inference
/// ([`CareNet::fuse`]).
#[derive(Debug)]
pub struct InferenceNet {
    stem: FusedConv,
    stages: Vec<(FusedConv, FusedConv, Option<FusedConv>)>,
    pooled: usize,
    precision: Precision,
}

impl InferenceNet {
    /// The number format of the convolutions.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The last stage's activations `[batch, channels, length]` (f32) for input `[batch, points]`;
    /// computed in [`InferenceNet::precision`].
    pub fn features(&self, x: &Tensor) -> Tensor {
        if self.stem.packed.is_some() {
            return self.features_onednn(x);
        }
        tch::no_grad(|| {
            let x = if x.dim() == 2 { x.unsqueeze(1) } else { x.shallow_clone() };
            let stem_kind = self.stem.weight.kind();
            let x = if x.kind() == stem_kind { x } else { x.to_kind(stem_kind) };
            let mut h = self.stem.forward(&x).relu_().max_pool1d(2, 2, 0, 1, false);
            let kind = self.stages.first().map_or(stem_kind, |s| s.0.weight.kind());
            if kind != stem_kind {
                h = h.to_kind(kind);
            }
            for (i, (c1, c2, shortcut)) in self.stages.iter().enumerate() {
                let a = c1.forward(&h).relu_();
                let mut a = c2.forward(&a);
                let s = match shortcut {
                    Some(c) => c.forward(&h),
                    None => h.shallow_clone(),
                };
                let _ = a.g_add_(&s);
                h = a.relu_();
                if i < self.pooled {
                    h = h.max_pool1d(2, 2, 0, 1, false);
                }
            }
            if h.kind() == Kind::BFloat16 {
                h.to_kind(Kind::Float)
            } else {
                h
            }
        })
    }

    /// [`InferenceNet::features`] on the CPU: the whole stack in oneDNN's own tensor layout, as
    /// 2-D convolutions of height 1 on prepacked weights, so that no layer reorders its weights
    /// or converts its activations (the plain path spent a third of its bf16 time on such
    /// copies, and bf16 pooling and ReLU on plain tensors are slower than f32's). The same numbers
    /// as the plain path in f32 (tested), 1.5–4× faster.
    fn features_onednn(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = if x.dim() == 3 { x.squeeze_dim(1) } else { x.shallow_clone() };
            let (rows, points) = (x.size()[0], x.size()[1]);
            let stem_kind = self.stem.weight.kind();
            let x = if x.kind() == stem_kind { x } else { x.to_kind(stem_kind) };
            let pool = |h: Tensor| h.max_pool2d([1, 2], [1, 2], [0, 0], [1, 1], false);
            let mut h = pool(self.stem.forward_onednn(&x.contiguous().view([rows, 1, 1, points]).to_mkldnn()).relu_());
            let kind = self.stages.first().map_or(stem_kind, |s| s.0.weight.kind());
            if kind != stem_kind {
                h = h.to_dense(kind, false).to_mkldnn();
            }
            for (i, (c1, c2, shortcut)) in self.stages.iter().enumerate() {
                let a = c2.forward_onednn(&c1.forward_onednn(&h).relu_());
                let s = match shortcut {
                    Some(c) => c.forward_onednn(&h),
                    None => h.shallow_clone(),
                };
                h = (a + s).relu_();
                if i < self.pooled {
                    h = pool(h);
                }
            }
            h.to_dense(None, false).to_kind(Kind::Float).squeeze_dim(2)
        })
    }
}

/// CaReNet-V1: `features` (stem and residual stages) → global average pooling → `head` (dense
/// layers with dropout and the output layer). The split is what makes Grad-CAM cheap: with global
/// average pooling before the head, `∂y_c/∂A_k(l) = (1/L)·∂y_c/∂GAP_k`, so the class weights α
/// need a backward pass through the head only.
#[derive(Debug)]
pub struct CareNet {
    arch: ArchConfig,
    stem: nn::Conv1D,
    stem_bn: Bn,
    stages: Vec<Residual>,
    dense: Vec<nn::Linear>,
    out: nn::Linear,
}

impl CareNet {
    /// Creates the variables of `arch` under `vs` (He-normal weights, zero biases, batch norm at
    /// identity). Seed libtorch first (`tch::manual_seed`) for a reproducible initialization.
    pub fn new(vs: &nn::Path, arch: &ArchConfig) -> Result<Self, OpError> {
        arch.check()?;
        let stem = he_conv(vs / "stem", 1, arch.stem_channels, arch.stem_kernel);
        let stem_bn = bn(vs / "stem_bn", arch.stem_channels);
        let mut ch = arch.stem_channels;
        let mut stages = Vec::new();
        for (i, &w) in arch.stages.iter().enumerate() {
            stages.push(Residual::new(vs / format!("stage{}", i + 1), ch, w, arch.kernel));
            ch = w;
        }
        let mut dense = Vec::new();
        for (i, &d) in arch.dense.iter().enumerate() {
            dense.push(he_linear(vs / format!("dense{}", i + 1), ch, d));
            ch = d;
        }
        let out = he_linear(vs / "head", ch, arch.outputs());
        Ok(Self { arch: arch.clone(), stem, stem_bn, stages, dense, out })
    }

    /// The architecture.
    pub fn arch(&self) -> &ArchConfig {
        &self.arch
    }

    /// The activations `A` of the last convolutional stage, `[batch, channels, length]`, for
    /// input `[batch, points]` or `[batch, 1, points]`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.features(x, if train { BnMode::Train } else { BnMode::Eval })
    }

    fn features(&self, x: &Tensor, mode: BnMode) -> Tensor {
        let x = if x.dim() == 2 { x.unsqueeze(1) } else { x.shallow_clone() };
        let mut h = self.stem_bn.forward(&x.apply(&self.stem), mode).relu().max_pool1d(2, 2, 0, 1, false);
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward(&h, mode);
            if i < self.arch.pooled_stages {
                h = h.max_pool1d(2, 2, 0, 1, false);
            }
        }
        h
    }

    /// The activations `A` of the last convolutional stage in evaluation mode, computed with each
    /// batch norm folded into the convolution before it ([`CareNet::fuse`] then
    /// [`InferenceNet::features`]). No gradients: inference only.
    pub fn inference_features(&self, x: &Tensor) -> Tensor {
        self.fuse().features(x)
    }

    /// The convolutional part for inference: every batch norm (evaluation mode) folded into the
    /// convolution before it — fewer passes over memory than [`CareNet::features_t`]`(x, false)`,
    /// the same function up to float rounding. A snapshot: fuse again after the weights change.
    pub fn fuse(&self) -> InferenceNet {
        self.fuse_as(Precision::F32)
    }

    /// [`CareNet::fuse`] with the folded weights stored, and the convolutions computed, in
    /// `precision` (the folding itself is done in f32).
    pub fn fuse_as(&self, precision: Precision) -> InferenceNet {
        let fused = |conv: &nn::Conv1D, bn: &Bn| FusedConv::new(conv, bn).into_precision(precision);
        tch::no_grad(|| InferenceNet {
            // The stem stays in f32 whatever the precision: it sees the raw input, whose rounding
            // to bf16 was the largest single source of difference from f32 (half the logit
            // error on the demo models), and it is a sliver of the work (1 input channel).
            stem: FusedConv::new(&self.stem, &self.stem_bn).into_precision(Precision::F32),
            stages: self
                .stages
                .iter()
                .map(|st| (fused(&st.conv1, &st.bn1), fused(&st.conv2, &st.bn2), st.shortcut.as_ref().map(|(c, b)| fused(c, b))))
                .collect(),
            pooled: self.arch.pooled_stages,
            precision,
        })
    }

    /// The head on pooled features `[batch, channels]`: the logits `[batch, outputs]`.
    pub fn head_t(&self, pooled: &Tensor, train: bool) -> Tensor {
        let mut h = pooled.shallow_clone();
        for d in &self.dense {
            h = h.apply(d).relu().dropout(self.arch.dropout, train);
        }
        self.out.forward(&h)
    }

    /// "Precise BN" (Wu & Johnson, 2021): replaces the batch-norm running statistics, an
    /// exponential average over the last training steps while the weights were still moving, by
    /// the average of the batch statistics of the final weights over `batches` (training inputs
    /// `[batch, points]`). Run once after training, before evaluation; no gradients.
    pub fn precise_bn<I: IntoIterator<Item = Tensor>>(&self, batches: I) {
        tch::no_grad(|| {
            for (i, x) in batches.into_iter().enumerate() {
                // Momentum 1/(i+1): the running statistics become the mean of the batch statistics.
                let _ = self.features(&x, BnMode::Calibrate(1.0 / (i + 1) as f64));
            }
        });
    }

    /// Global average pooling of feature maps `[batch, channels, length]`.
    pub fn pool(features: &Tensor) -> Tensor {
        features.mean_dim(2, false, features.kind())
    }
}

impl ModuleT for CareNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head_t(&Self::pool(&self.features_t(x, train)), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_has_the_papers_parameter_count() {
        for classes in [2, 4] {
            let arch = ArchConfig::carenet_v1(classes);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _net = CareNet::new(&vs.root(), &arch).unwrap();
            let counted: usize = vs.trainable_variables().iter().map(|t| t.numel()).sum();
            assert_eq!(counted, arch.parameters(), "layer table and variables agree");
            let dev = (counted as f64 - PAPER_PARAMETERS as f64).abs() / PAPER_PARAMETERS as f64;
            assert!(dev <= 0.05, "{counted} parameters is {:.1} % off {PAPER_PARAMETERS}", dev * 100.0);
        }
        assert_eq!(ArchConfig::carenet_v1(2).parameters(), 273_745);
    }

    #[test]
    fn shapes_and_same_padding() {
        let arch = ArchConfig::carenet_v1(4);
        assert_eq!(arch.feature_length(), 58);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = CareNet::new(&vs.root(), &arch).unwrap();
        let x = Tensor::randn([3, 467], (tch::Kind::Float, tch::Device::Cpu));
        let a = net.features_t(&x, false);
        assert_eq!(a.size(), vec![3, 128, 58]);
        assert_eq!(net.forward_t(&x, false).size(), vec![3, 4]);
        let table = arch.layer_table();
        assert_eq!(table.last().unwrap().channels, 4);
        assert!(table.iter().any(|r| r.block == "stage 3" && r.length == 58));
    }

    #[test]
    fn bad_architectures_are_refused() {
        let mut a = ArchConfig::carenet_v1(2);
        a.kernel = 4;
        assert!(a.check().unwrap_err().to_string().contains("odd"));
        let mut a = ArchConfig::carenet_v1(1);
        assert!(a.check().is_err());
        a.classes = 3;
        a.input_points = 4;
        assert!(a.check().unwrap_err().to_string().contains("too few"));
    }

    #[test]
    fn he_normal_initialization() {
        tch::manual_seed(1);
        let arch = ArchConfig::carenet_v1(2);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _net = CareNet::new(&vs.root(), &arch).unwrap();
        let w = vs.variables()["stage3.conv2.weight"].shallow_clone();
        let std = w.std(true).double_value(&[]);
        let expected = (2.0f64 / (128.0 * 3.0)).sqrt();
        assert!((std / expected - 1.0).abs() < 0.05, "std {std} vs He {expected}");
        let b = vs.variables()["head.bias"].shallow_clone();
        assert_eq!(b.abs().sum(tch::Kind::Double).double_value(&[]), 0.0);
    }
}
