//! One synthetic TMA core: its geometry (irregular tissue, paraffin ring, bare slide, holes,
//! paraffin-infiltrated patches, thin edges), its composition fields and the per-pixel physics
//! (thickness, polynomial and scattering baselines, noise), drawn from the core's own RNG.

use std::f64::consts::{PI, TAU};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::model::{bands_value, component_bands, Effects, Subtype, BASE_WEIGHTS, N_TISSUE, PARAFFIN_BANDS};
use super::SynthConfig;
use crate::io::ImageCube;

/// Ground-truth mask value: bare slide.
pub(crate) const BACKGROUND: u8 = 0;
/// Ground-truth mask value: paraffin (including paraffin-filled holes in the tissue).
pub(crate) const PARAFFIN: u8 = 1;
/// Ground-truth mask value: tissue (including paraffin-infiltrated tissue).
pub(crate) const TISSUE: u8 = 2;

/// RNG stream of the archive-level draws (subtype assignment).
pub(crate) const ARCHIVE_STREAM: u64 = 0;

/// A ChaCha8 generator for (`seed`, `stream`): every core and every patient has its own stream, so
/// results do not depend on the order in which threads take them.
pub(crate) fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// RNG stream of core `index`.
pub(crate) fn core_stream(index: usize) -> u64 {
    1 + index as u64
}

/// RNG stream of patient `patient` (1-based).
pub(crate) fn patient_stream(patient: u32) -> u64 {
    (1u64 << 40) + u64::from(patient)
}

#[inline]
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// Everything that is the same for every core of an archive: the axis and the component spectra
/// evaluated on it, the baseline shapes and the noise profile.
pub(crate) struct Model {
    pub axis: Vec<f64>,
    comps: Vec<Vec<f32>>,
    paraffin: Vec<f32>,
    x1: Vec<f32>,
    x2: Vec<f32>,
    scatter: Vec<f32>,
    noise_sd: Vec<f32>,
    normal_table: Vec<f32>,
    pub effects: Effects,
    cfg: SynthConfig,
}

impl Model {
    /// Precomputes the spectra of `cfg` (which must be valid).
    pub fn new(cfg: &SynthConfig) -> Self {
        let axis = cfg.wavenumbers();
        let f = |g: &dyn Fn(f64) -> f64| axis.iter().map(|&nu| g(nu) as f32).collect::<Vec<f32>>();
        let comps = (0..N_TISSUE).map(|k| f(&|nu| bands_value(component_bands(k), nu))).collect();
        let (lo, hi) = (axis[0], axis[axis.len() - 1]);
        let (mid, half) = (0.5 * (lo + hi), (0.5 * (hi - lo)).max(1e-9));
        Model {
            comps,
            paraffin: f(&|nu| bands_value(PARAFFIN_BANDS, nu)),
            x1: f(&|nu| (nu - mid) / half),
            x2: f(&|nu| ((nu - mid) / half).powi(2)),
            // Broad scattering baseline rising with wavenumber (not a polynomial of order 2).
            scatter: f(&|nu| 1.0 / (1.0 + (-(nu - 2500.0) / 600.0).exp())),
            // Louder at the detector cut-off near 900 cm⁻¹ and slightly at the high end.
            noise_sd: f(&|nu| cfg.noise * (1.0 + 2.0 * (-(nu - lo) / 60.0).exp() + (-(hi - nu) / 150.0).exp())),
            normal_table: normal_table(),
            effects: Effects::new(cfg),
            cfg: cfg.clone(),
            axis,
        }
    }

    /// Points per spectrum.
    pub fn n_points(&self) -> usize {
        self.axis.len()
    }

    /// The seed of every draw.
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }
}

/// Bits of randomness per noise value.
const NOISE_BITS: u32 = 16;

/// The standard normal quantiles at the midpoints of the 2¹⁶ equal-probability bins, rescaled to
/// unit variance: indexing it with 16 random bits draws noise that is Gaussian to within the bin
/// width (tails cut at ±4.3 σ), several times faster than a ziggurat on ChaCha8 (≈ 1.5–3 ns vs
/// ≈ 10 ns per value, measured), and the noise is most of the generator's work.
fn normal_table() -> Vec<f32> {
    let n = 1usize << NOISE_BITS;
    let q: Vec<f64> = (0..n).map(|i| inverse_normal_cdf((i as f64 + 0.5) / n as f64)).collect();
    let sd = (q.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    q.into_iter().map(|v| (v / sd) as f32).collect()
}

/// Φ⁻¹(p) by Acklam's rational approximation (relative error < 1.2e-9), for 0 < p < 1.
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] =
        [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383_577_518_672_69e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] =
        [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    const P_LOW: f64 = 0.02425;
    if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inverse_normal_cdf(1.0 - p)
    }
}

/// What one core is: its place in the archive and its patient's biology.
#[derive(Debug, Clone)]
pub(crate) struct CoreSpec {
    /// Core index (0-based, archive order).
    pub index: usize,
    /// Sample name, e.g. `P01_CA`.
    pub sample: String,
    /// `None` for adjacent tissue, the patient's subtype for a cancer core.
    pub cancer: Option<Subtype>,
    /// The patient's log-composition offsets (shared by its two cores).
    pub patient_offset: [f64; N_TISSUE],
}

/// Per-pixel ground truth of one core (row-major).
#[derive(Debug, Clone, Default)]
pub(crate) struct CoreTruth {
    /// [`BACKGROUND`], [`PARAFFIN`] or [`TISSUE`].
    pub mask: Vec<u8>,
    /// Paraffin mixed into the pixel: `f ∈ [0.08, 0.58]` for infiltrated tissue, 0 for other
    /// tissue and bare slide, 1 for paraffin except within a pixel of the tissue edge, where a
    /// smear of tissue leaves `0.65–1`.
    pub paraffin_fraction: Vec<f32>,
    /// Multiplicative thickness of tissue or paraffin (0 for bare slide).
    pub thickness: Vec<f32>,
}

/// A smooth random field of unit variance: a sum of plane waves with random wavelength, direction
/// and phase.
struct Field {
    waves: [(f64, f64, f64); 4],
}

impl Field {
    fn new(rng: &mut ChaCha8Rng, size: f64, lambda: (f64, f64)) -> Self {
        let mut waves = [(0.0, 0.0, 0.0); 4];
        for w in &mut waves {
            let l = size * rng.random_range(lambda.0..lambda.1);
            let dir = rng.random_range(0.0..TAU);
            let k = TAU / l;
            *w = (k * dir.cos(), k * dir.sin(), rng.random_range(0.0..TAU));
        }
        Field { waves }
    }

    #[inline]
    fn at(&self, x: f64, y: f64) -> f64 {
        std::f64::consts::FRAC_1_SQRT_2 * self.waves.iter().map(|&(kx, ky, p)| (kx * x + ky * y + p).cos()).sum::<f64>()
    }
}

struct Hole {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    cos: f64,
    sin: f64,
    paraffin: bool,
}

impl Hole {
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (u, v) = (dx * self.cos + dy * self.sin, -dx * self.sin + dy * self.cos);
        (u / self.a).powi(2) + (v / self.b).powi(2) <= 1.0
    }
}

/// Irregular core outline: tissue disk and paraffin disk whose radii vary with angle through a few
/// low harmonics, plus holes.
struct Geometry {
    cx: f64,
    cy: f64,
    rt: f64,
    ht: [(f64, f64); 4],
    rp: f64,
    hp: [(f64, f64); 2],
    gap: f64,
    rmax: f64,
    holes: Vec<Hole>,
}

impl Geometry {
    fn new(rng: &mut ChaCha8Rng, size: f64) -> Self {
        let jitter = 0.02 * size;
        let cx = 0.5 * size + rng.random_range(-jitter..=jitter);
        let cy = 0.5 * size + rng.random_range(-jitter..=jitter);
        let rt = size * rng.random_range(0.30..0.37);
        let mut ht = [(0.0, 0.0); 4];
        for h in &mut ht {
            *h = (rng.random_range(0.0..0.06), rng.random_range(0.0..TAU));
        }
        let rp = size * rng.random_range(0.45..0.49);
        let mut hp = [(0.0, 0.0); 2];
        for h in &mut hp {
            *h = (rng.random_range(0.0..0.03), rng.random_range(0.0..TAU));
        }
        let n_holes = match rng.random_range(0.0..1.0) {
            u if u < 0.3 => 0,
            u if u < 0.75 => 1,
            _ => 2,
        };
        let holes = (0..n_holes)
            .map(|_| {
                let r = rt * 0.5 * rng.random::<f64>().sqrt();
                let phi = rng.random_range(0.0..TAU);
                let ang = rng.random_range(0.0..PI);
                Hole {
                    cx: cx + r * phi.cos(),
                    cy: cy + r * phi.sin(),
                    a: size * rng.random_range(0.03..0.07),
                    b: size * rng.random_range(0.02..0.05),
                    cos: ang.cos(),
                    sin: ang.sin(),
                    paraffin: rng.random_range(0.0..1.0) < 0.7,
                }
            })
            .collect();
        Geometry { cx, cy, rt, ht, rp, hp, gap: (0.04 * size).max(1.0), rmax: 0.5 * size - 0.5, holes }
    }

    fn tissue_radius(&self, theta: f64) -> f64 {
        let mut f = 1.0;
        for (i, &(a, p)) in self.ht.iter().enumerate() {
            f += a * ((i as f64 + 2.0) * theta + p).cos();
        }
        self.rt * f
    }

    fn paraffin_radius(&self, theta: f64, tissue: f64) -> f64 {
        let mut f = 1.0;
        for (i, &(a, p)) in self.hp.iter().enumerate() {
            f += a * ((i as f64 + 2.0) * theta + p).cos();
        }
        (self.rp * f).min(self.rmax).max(tissue + self.gap)
    }

    /// Mask of the pixel centred at (`x`, `y`) and its signed radial depth inside the tissue edge
    /// (px; negative outside it, −∞ in holes).
    fn classify(&self, x: f64, y: f64) -> (u8, f64) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let r = dx.hypot(dy);
        let theta = dy.atan2(dx);
        let rt = self.tissue_radius(theta);
        if r <= rt {
            for h in &self.holes {
                if h.contains(x, y) {
                    return (if h.paraffin { PARAFFIN } else { BACKGROUND }, f64::NEG_INFINITY);
                }
            }
            return (TISSUE, rt - r);
        }
        if r <= self.paraffin_radius(theta, rt) {
            (PARAFFIN, rt - r)
        } else {
            (BACKGROUND, rt - r)
        }
    }
}

/// Draws the composition of tissue pixels.
struct Composer<'a> {
    effects: &'a Effects,
    cancer: Option<Subtype>,
    fields: &'a [Field],
    stroma_field: &'a Field,
    stroma_theta: f64,
    core_offset: [f64; N_TISSUE],
    pixel_var: f64,
}

impl Composer<'_> {
    /// Composition weights (summing to one) of the tissue at (`x`, `y`): class (with stroma inside
    /// cancer cores), patient and core offsets, a smooth field and an independent draw per
    /// component.
    fn draw(&self, rng: &mut ChaCha8Rng, x: f64, y: f64) -> [f64; N_TISSUE] {
        let mut off = [0.0; N_TISSUE];
        match self.cancer {
            Some(sub) => {
                let s = ((self.stroma_field.at(x, y) - self.stroma_theta) / 0.6 + 0.5).clamp(0.0, 1.0);
                self.effects.cancer(sub, s, &mut off);
            }
            None => off = self.effects.at,
        }
        let mut w = [0.0; N_TISSUE];
        let mut sum = 0.0;
        for k in 0..N_TISSUE {
            let z = normal(rng);
            let l = off[k] + self.core_offset[k] + self.pixel_var * (0.75 * self.fields[k].at(x, y) + 0.66 * z);
            w[k] = BASE_WEIGHTS[k] * l.exp();
            sum += w[k];
        }
        for v in &mut w {
            *v /= sum;
        }
        w
    }
}

/// The value above which exactly `round(frac × n)` of `values` lie (±∞ at the ends).
fn upper_threshold(mut values: Vec<f64>, frac: f64) -> f64 {
    let n = values.len();
    let m = (frac * n as f64).round() as usize;
    if m == 0 {
        return f64::INFINITY;
    }
    if m >= n {
        return f64::NEG_INFINITY;
    }
    let (_, v, _) = values.select_nth_unstable_by(m, |a, b| b.total_cmp(a));
    *v
}

fn smoothstep(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

#[inline]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// Paraffin pixels whose centre lies within this many pixels outside the tissue edge hold a smear
/// of tissue ...
const SMEAR_WIDTH: f64 = 1.0;
/// ... of at most this share (falling linearly to 0 at `SMEAR_WIDTH`).
const SMEAR_MAX: f64 = 0.35;

/// A core after its core-level draws and its geometry pass: everything needed to draw any of its
/// pixels, in any order, from an RNG the caller positions.
pub(crate) struct CoreDraw<'m> {
    model: &'m Model,
    size: usize,
    cancer: Option<Subtype>,
    comp_fields: Vec<Field>,
    thick_field: Field,
    par_field: Field,
    stroma_field: Field,
    infil_field: Field,
    t_core: f64,
    t_par_core: f64,
    core_offset: [f64; N_TISSUE],
    c0_core: f64,
    c1_core: f64,
    c2_core: f64,
    /// Mask per pixel (row-major).
    pub mask: Vec<u8>,
    depth: Vec<f32>,
    infil_theta: f64,
    stroma_theta: f64,
    edge_w: f64,
}

impl<'m> CoreDraw<'m> {
    /// The core-level draws of `spec` from `rng` (in a fixed order) and the masks.
    pub fn new(model: &'m Model, spec: &CoreSpec, rng: &mut ChaCha8Rng) -> Self {
        let cfg = &model.cfg;
        let size = cfg.size as usize;
        let sz = size as f64;
        let n_px = size * size;
        let geo = Geometry::new(rng, sz);
        let comp_fields: Vec<Field> = (0..N_TISSUE).map(|_| Field::new(rng, sz, (0.15, 0.5))).collect();
        let thick_field = Field::new(rng, sz, (0.3, 0.8));
        let par_field = Field::new(rng, sz, (0.3, 0.8));
        let stroma_field = Field::new(rng, sz, (0.12, 0.35));
        let infil_field = Field::new(rng, sz, (0.08, 0.25));
        let t_core = rng.random_range(0.7..1.0);
        let t_par_core = rng.random_range(0.7..1.0);
        let mut core_offset = [0.0; N_TISSUE];
        for (k, v) in core_offset.iter_mut().enumerate() {
            *v = spec.patient_offset[k] + 0.5 * cfg.patient_var * normal(rng);
        }
        let c0_core = 0.003 * normal(rng);
        let c1_core = 0.004 * normal(rng);
        let c2_core = 0.003 * normal(rng);

        // Masks, edge depth, and the fields that are thresholded by quantile.
        let mut mask = vec![BACKGROUND; n_px];
        let mut depth = vec![0.0f32; n_px];
        let (mut infil, mut stroma) = (Vec::new(), Vec::new());
        for y in 0..size {
            for x in 0..size {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let (m, d) = geo.classify(px, py);
                let p = y * size + x;
                mask[p] = m;
                depth[p] = d as f32;
                if m == TISSUE {
                    infil.push(infil_field.at(px, py));
                    stroma.push(stroma_field.at(px, py));
                }
            }
        }
        let infil_theta = upper_threshold(infil, cfg.paraffin_infiltration);
        let stroma_theta = upper_threshold(stroma, if spec.cancer.is_some() { cfg.ca_stroma } else { 1.0 });
        CoreDraw {
            model,
            size,
            cancer: spec.cancer,
            comp_fields,
            thick_field,
            par_field,
            stroma_field,
            infil_field,
            t_core,
            t_par_core,
            core_offset,
            c0_core,
            c1_core,
            c2_core,
            mask,
            depth,
            infil_theta,
            stroma_theta,
            edge_w: (0.07 * sz).max(1.5),
        }
    }

    /// Side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Truth of pixel (`x`, `y`) (no random draws): mask, paraffin fraction, thickness, and the
    /// paraffin share of a tissue pixel or the tissue share smeared into a paraffin pixel.
    pub fn truth_at(&self, x: usize, y: usize) -> (u8, f32, f64, f64) {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let p = y * self.size + x;
        match self.mask[p] {
            TISSUE => {
                let edge = 0.45 + 0.55 * smoothstep(f64::from(self.depth[p]) / self.edge_w);
                let t = (self.t_core * (0.12 * self.thick_field.at(px, py)).exp() * edge).clamp(0.35, 1.25);
                let fi = self.infil_field.at(px, py);
                let f = if fi > self.infil_theta { 0.08 + 0.5 * ((fi - self.infil_theta) / 0.8).min(1.0) } else { 0.0 };
                (TISSUE, f as f32, t, f)
            }
            PARAFFIN => {
                let t = (self.t_par_core * (0.1 * self.par_field.at(px, py)).exp()).clamp(0.4, 1.3);
                // Just outside the tissue edge, a smear of tissue (up to SMEAR_MAX) in the
                // paraffin: such pixels are not pure paraffin.
                let out_by = -f64::from(self.depth[p]);
                let share = if out_by < SMEAR_WIDTH { SMEAR_MAX * (1.0 - out_by / SMEAR_WIDTH) } else { 0.0 };
                (PARAFFIN, (1.0 - share) as f32, t, share)
            }
            m => (m, 0.0, 0.0, 0.0),
        }
    }

    /// Draws the spectrum of pixel (`x`, `y`) into `out` from `rng` (`bits` is scratch); returns
    /// its paraffin fraction and thickness.
    pub fn pixel(&self, x: usize, y: usize, rng: &mut ChaCha8Rng, bits: &mut Vec<u64>, out: &mut [f32]) -> (f32, f32) {
        let model = self.model;
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let composer = Composer {
            effects: &model.effects,
            cancer: self.cancer,
            fields: &self.comp_fields,
            stroma_field: &self.stroma_field,
            stroma_theta: self.stroma_theta,
            core_offset: self.core_offset,
            pixel_var: model.cfg.pixel_var,
        };
        let (mask, frac, thick, f) = self.truth_at(x, y);
        let mut coef = [0.0f64; N_TISSUE];
        // (paraffin coefficient, (scatter mean, scatter sd, scale))
        let (par, scatter) = match mask {
            TISSUE => {
                let t = thick;
                coef = composer.draw(rng, px, py);
                for c in &mut coef {
                    *c *= t * (1.0 - f);
                }
                (t * f, (0.05, 0.03, t))
            }
            PARAFFIN => {
                let (t, share) = (thick, f);
                if share > 0.0 {
                    coef = composer.draw(rng, px, py);
                    for c in &mut coef {
                        *c *= t * share;
                    }
                }
                (t * (1.0 - share), (0.015, 0.01, t))
            }
            _ => (0.0, (0.002, 0.002, 1.0)),
        };
        let c0 = (self.c0_core + 0.004 * normal(rng)) as f32;
        let c1 = (self.c1_core + 0.003 * normal(rng)) as f32;
        let c2 = (self.c2_core + 0.002 * normal(rng)) as f32;
        let sc = (scatter.2 * (scatter.0 + scatter.1 * normal(rng)).max(0.0)) as f32;
        model.baseline(c0, c1, c2, sc, out);
        for (&c, comp) in coef.iter().zip(&model.comps).take(N_TISSUE) {
            if c != 0.0 {
                axpy(out, c as f32, comp);
            }
        }
        if par != 0.0 {
            axpy(out, par as f32, &model.paraffin);
        }
        model.add_noise(rng, bits, out);
        (frac, thick as f32)
    }
}

impl Model {
    /// Writes the baseline `c0 + c1·x + c2·x² + sc·scatter` into `out`.
    pub(crate) fn baseline(&self, c0: f32, c1: f32, c2: f32, sc: f32, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = c0 + c1 * self.x1[i] + c2 * self.x2[i] + sc * self.scatter[i];
        }
    }

    /// Adds the detector noise to `out` (nothing when the configured noise is 0); `bits` is scratch.
    pub(crate) fn add_noise(&self, rng: &mut ChaCha8Rng, bits: &mut Vec<u64>, out: &mut [f32]) {
        if self.cfg.noise > 0.0 {
            bits.resize(out.len().div_ceil(4), 0);
            rng.fill(&mut bits[..]);
            let table = &self.normal_table;
            for (i, (o, &s)) in out.iter_mut().zip(&self.noise_sd).enumerate() {
                let k = (bits[i / 4] >> ((i % 4) as u32 * NOISE_BITS)) as usize & ((1 << NOISE_BITS) - 1);
                *o += s * table[k];
            }
        }
    }

    /// A bare-slide (glass) spectrum: the slide's baseline `c` plus a per-pixel offset, a faint
    /// scattering baseline and noise, drawn from `rng` (the same draws as a core's bare slide).
    pub(crate) fn glass(&self, c: [f64; 3], rng: &mut ChaCha8Rng, bits: &mut Vec<u64>, out: &mut [f32]) {
        let c0 = (c[0] + 0.004 * normal(rng)) as f32;
        let c1 = (c[1] + 0.003 * normal(rng)) as f32;
        let c2 = (c[2] + 0.002 * normal(rng)) as f32;
        let sc = (0.002 + 0.002 * normal(rng)).max(0.0) as f32;
        self.baseline(c0, c1, c2, sc, out);
        self.add_noise(rng, bits, out);
    }
}

/// Draws core `spec` into `cube` (whose buffer is reused) and returns its ground truth.
pub(crate) fn synth_core(model: &Model, spec: &CoreSpec, cube: &mut ImageCube) -> CoreTruth {
    let cfg = &model.cfg;
    let size = cfg.size as usize;
    let n = model.n_points();
    let n_px = size * size;
    let mut rng = rng_for(cfg.seed, core_stream(spec.index));
    let draw = CoreDraw::new(model, spec, &mut rng);
    let mut truth = CoreTruth { mask: draw.mask.clone(), paraffin_fraction: vec![0.0; n_px], thickness: vec![0.0; n_px] };
    let mut bits = vec![0u64; n.div_ceil(4)];
    cube.width = cfg.size;
    cube.height = cfg.size;
    if cube.wavenumbers != model.axis {
        cube.wavenumbers = model.axis.clone();
    }
    cube.values.resize(n_px * n, 0.0);
    for y in 0..size {
        for x in 0..size {
            let p = y * size + x;
            let (f, t) = draw.pixel(x, y, &mut rng, &mut bits, &mut cube.values[p * n..(p + 1) * n]);
            truth.paraffin_fraction[p] = f;
            truth.thickness[p] = t;
        }
    }
    truth
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cancer: Option<Subtype>) -> CoreSpec {
        CoreSpec { index: 3, sample: "P02_AT".into(), cancer, patient_offset: [0.0; N_TISSUE] }
    }

    #[test]
    fn core_is_deterministic_and_has_three_regions() {
        let cfg = SynthConfig { size: 24, ..SynthConfig::default() };
        let model = Model::new(&cfg);
        let mut a = ImageCube { width: 0, height: 0, wavenumbers: vec![], values: vec![] };
        let mut b = a.clone();
        let ta = synth_core(&model, &spec(Some(Subtype::HER2)), &mut a);
        let tb = synth_core(&model, &spec(Some(Subtype::HER2)), &mut b);
        assert_eq!(a, b);
        assert_eq!(ta.mask, tb.mask);
        a.check().unwrap();
        for m in [BACKGROUND, PARAFFIN, TISSUE] {
            assert!(ta.mask.contains(&m), "mask value {m} missing");
        }
        // Same stream, other class: same geometry, other spectra.
        let tc = synth_core(&model, &spec(None), &mut b);
        assert_eq!(ta.mask, tc.mask);
        assert_ne!(a.values, b.values);
    }

    #[test]
    fn infiltration_fraction_is_as_configured() {
        let cfg = SynthConfig { size: 48, paraffin_infiltration: 0.3, ..SynthConfig::default() };
        let model = Model::new(&cfg);
        let mut cube = ImageCube { width: 0, height: 0, wavenumbers: vec![], values: vec![] };
        let t = synth_core(&model, &spec(None), &mut cube);
        let tissue: Vec<usize> = (0..t.mask.len()).filter(|&i| t.mask[i] == TISSUE).collect();
        let infiltrated = tissue.iter().filter(|&&i| t.paraffin_fraction[i] > 0.0).count();
        let frac = infiltrated as f64 / tissue.len() as f64;
        assert!((frac - 0.3).abs() < 0.01, "infiltrated fraction {frac}");
        assert!(tissue.iter().all(|&i| (0.35..=1.25).contains(&t.thickness[i])));
    }

    #[test]
    fn noise_table_is_standard_normal() {
        let t = normal_table();
        let n = t.len() as f64;
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = t.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "mean {mean} var {var}");
        let within = |k: f32| t.iter().filter(|&&v| v.abs() < k).count() as f64 / n;
        assert!((within(1.0) - 0.682_689).abs() < 1e-3 && (within(2.0) - 0.954_500).abs() < 1e-3);
        assert!((inverse_normal_cdf(0.975) - 1.959_964).abs() < 1e-5);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn threshold_selects_exactly() {
        let v: Vec<f64> = (0..100).map(|i| ((i * 37) % 100) as f64).collect();
        let th = upper_threshold(v.clone(), 0.15);
        assert_eq!(v.iter().filter(|&&x| x > th).count(), 15);
        assert_eq!(upper_threshold(v.clone(), 0.0), f64::INFINITY);
        assert_eq!(upper_threshold(v, 1.0), f64::NEG_INFINITY);
    }
}
