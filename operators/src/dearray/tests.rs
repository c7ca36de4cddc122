//! Tests of the de-arraying: seeded synthetic slide maps (discs on a rotated, jittered lattice
//! with missing and torn cores, dust and noise), the bad inputs, position names and parameters.
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{dearray_slide, is_bare_slide, position_name, BBox, Dearray, DearrayParams, Grid};
use crate::error::OpError;

/// A synthetic slide: rows × cols discs of radius `radius` with pitch `pitch` (columns) and
/// `pitch_y` (rows), rotated by `rotation_deg`, jittered by up to ±`jitter` of the pitch on each
/// axis; `missing` cores removed (never A1 nor the last core), `torn` cores cut into two or three
/// pieces by bands, `dust` specks of 2 × 2 pixels, uniform noise of ±`noise` on the scores
/// (tissue 1, slide 0.1) and a NaN border of 3 columns.
#[derive(Debug, Clone)]
struct Spec {
    rows: usize,
    cols: usize,
    pitch: f64,
    pitch_y: f64,
    radius: f64,
    rotation_deg: f64,
    jitter: f64,
    missing: usize,
    torn: usize,
    dust: usize,
    noise: f32,
    seed: u64,
}

impl Spec {
    fn new(rows: usize, cols: usize, seed: u64) -> Self {
        Self {
            rows,
            cols,
            pitch: 40.0,
            pitch_y: 40.0,
            radius: 13.0,
            rotation_deg: 0.0,
            jitter: 0.0,
            missing: 0,
            torn: 0,
            dust: 0,
            noise: 0.05,
            seed,
        }
    }
}

/// A core as drawn: its lattice cell, how many cuts, and the box of its drawn pixels.
#[derive(Debug)]
struct Truth {
    row: usize,
    col: usize,
    cuts: usize,
    bbox: BBox,
}

fn slide(s: &Spec) -> (Array2<f32>, Vec<Truth>) {
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let (sin, cos) = s.rotation_deg.to_radians().sin_cos();
    let mut cells: Vec<(usize, usize)> = (0..s.rows).flat_map(|r| (0..s.cols).map(move |c| (r, c))).collect();
    for _ in 0..s.missing {
        let i = rng.random_range(1..cells.len() - 1);
        cells.remove(i);
    }
    let mut centres: Vec<(usize, usize, f64, f64)> = cells
        .iter()
        .map(|&(r, c)| {
            let (x, y) = (c as f64 * s.pitch, r as f64 * s.pitch_y);
            let j = s.jitter * s.pitch;
            let (jx, jy) = if j > 0.0 { (rng.random_range(-j..j), rng.random_range(-j..j)) } else { (0.0, 0.0) };
            (r, c, x * cos - y * sin + jx, x * sin + y * cos + jy)
        })
        .collect();
    let margin = s.pitch;
    let (minx, miny) = centres.iter().fold((f64::MAX, f64::MAX), |m, c| (m.0.min(c.2), m.1.min(c.3)));
    for c in &mut centres {
        c.2 += margin - minx;
        c.3 += margin - miny;
    }
    let (maxx, maxy) = centres.iter().fold((0f64, 0f64), |m, c| (m.0.max(c.2), m.1.max(c.3)));
    let (w, h) = ((maxx + margin) as usize, (maxy + margin) as usize);
    let mut map = Array2::<f32>::zeros((h, w));
    for v in map.iter_mut() {
        *v = 0.1 + rng.random_range(-s.noise..=s.noise);
    }
    let mut torn: Vec<usize> = Vec::new();
    while torn.len() < s.torn.min(centres.len()) {
        let i = rng.random_range(0..centres.len());
        if !torn.contains(&i) {
            torn.push(i);
        }
    }
    let mut truth = Vec::new();
    for (i, &(row, col, cx, cy)) in centres.iter().enumerate() {
        // Cuts: bands of width 3 px along a random direction, one through the middle part or two.
        let cuts = if torn.contains(&i) { rng.random_range(1..=2usize) } else { 0 };
        let phi = rng.random_range(0.0..std::f64::consts::PI);
        let (nx, ny) = (phi.cos(), phi.sin());
        let offsets: Vec<f64> = match cuts {
            0 => vec![],
            1 => vec![rng.random_range(-0.3..0.3) * s.radius],
            _ => vec![-0.4 * s.radius, 0.4 * s.radius],
        };
        let mut bbox = (usize::MAX, usize::MAX, 0, 0);
        let r = s.radius;
        for y in (cy - r).floor() as usize..=(cy + r).ceil() as usize {
            for x in (cx - r).floor() as usize..=(cx + r).ceil() as usize {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                if dx * dx + dy * dy > r * r || offsets.iter().any(|o| (dx * nx + dy * ny - o).abs() < 1.5) {
                    continue;
                }
                map[[y, x]] = 1.0 + rng.random_range(-s.noise..=s.noise);
                bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x + 1), bbox.3.max(y + 1));
            }
        }
        truth.push(Truth { row, col, cuts, bbox });
    }
    for _ in 0..s.dust {
        let (x, y) = (rng.random_range(3..w - 2), rng.random_range(0..h - 2));
        for (yy, xx) in [(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)] {
            map[[yy, xx]] = 1.0;
        }
    }
    for y in 0..h {
        for x in 0..3 {
            map[[y, x]] = f32::NAN;
        }
    }
    (map, truth)
}

fn grid(map: &Array2<f32>, params: &DearrayParams) -> Grid {
    match dearray_slide(params, map.view()) {
        Ok(Dearray::Grid(g)) => g,
        other => panic!("expected a grid, got {other:?}"),
    }
}

/// Every drawn core found at its cell and name, none extra, its box holding the drawn disc.
fn assert_found(spec: &Spec, map: &Array2<f32>, truth: &[Truth], g: &Grid) {
    assert_eq!((g.rows, g.cols), (spec.rows, spec.cols), "{spec:?}");
    assert_eq!(g.cores.len(), truth.len(), "{spec:?}: {:?}", g.cores);
    for t in truth {
        let core = g.cores.iter().find(|c| (c.row, c.col) == (t.row, t.col)).unwrap_or_else(|| panic!("{spec:?}: {t:?} not found"));
        assert_eq!(core.position, position_name(t.row, t.col));
        let b = core.bbox;
        assert!(b.0 <= t.bbox.0 && b.1 <= t.bbox.1 && b.2 >= t.bbox.2 && b.3 >= t.bbox.3, "{spec:?}: {t:?} in {core:?}");
        assert!(b.2 <= map.ncols() && b.3 <= map.nrows());
        if t.cuts > 0 {
            assert!(core.pieces >= 2, "{spec:?}: torn {t:?} as {core:?}");
        }
    }
    let mut sorted = g.cores.clone();
    sorted.sort_by_key(|c| (c.row, c.col));
    assert_eq!(sorted, g.cores);
}

/// How many seeds a sweep runs: `default`, or `DEARRAY_SEEDS` (for a longer sweep by hand).
fn seeds(default: u64) -> u64 {
    std::env::var("DEARRAY_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The grid of the slide drawn by `spec`, checked by [`assert_found`].
fn found(spec: &Spec, params: &DearrayParams) -> Grid {
    let (map, truth) = slide(spec);
    let g = grid(&map, params);
    assert_found(spec, &map, &truth, &g);
    g
}

#[test]
fn dearray_finds_every_core_of_jittered_rotated_torn_grids() {
    for seed in 0..seeds(8) {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        let spec = Spec {
            rotation_deg: rng.random_range(-3.0..=3.0),
            jitter: 0.15,
            missing: 6,
            torn: 6,
            dust: 4,
            noise: 0.08,
            ..Spec::new(8, 10, seed)
        };
        let g = found(&spec, &DearrayParams::default());
        assert!((g.rotation_deg - spec.rotation_deg).abs() < 1.0, "{spec:?}: {}", g.rotation_deg);
        assert!((g.pitch.0 - 40.0).abs() < 2.0 && (g.pitch.1 - 40.0).abs() < 2.0, "{:?}", g.pitch);
        assert!(g.residual < 0.2, "{}", g.residual);
    }
}

#[test]
fn dearray_exact_rotations_up_to_three_degrees() {
    for (seed, rotation_deg) in [(1, 3.0), (2, -3.0), (3, 2.0), (4, 0.5)] {
        let spec = Spec { rotation_deg, jitter: 0.1, missing: 3, torn: 3, ..Spec::new(12, 16, seed) };
        let g = found(&spec, &DearrayParams::default());
        assert!((g.rotation_deg - rotation_deg).abs() < 0.3, "{rotation_deg} found as {}", g.rotation_deg);
    }
}

#[test]
fn dearray_rectangular_grid_and_pitch_override() {
    let spec = Spec { pitch_y: 56.0, jitter: 0.1, missing: 4, torn: 2, ..Spec::new(6, 9, 7) };
    let g = found(&spec, &DearrayParams::default());
    assert!((g.pitch.0 - 40.0).abs() < 1.5 && (g.pitch.1 - 56.0).abs() < 1.5, "{:?}", g.pitch);
    let square = Spec { jitter: 0.1, missing: 4, ..Spec::new(6, 9, 8) };
    found(&square, &DearrayParams { pitch: Some(40.0), diameter: Some(26.0), ..DearrayParams::default() });
}

#[test]
fn dearray_origin_is_the_centre_of_a1() {
    let spec = Spec::new(3, 4, 9);
    let (map, truth) = slide(&spec);
    let g = grid(&map, &DearrayParams::default());
    let a1 = &truth[0].bbox;
    let centre = ((a1.0 + a1.2 - 1) as f64 / 2.0, (a1.1 + a1.3 - 1) as f64 / 2.0);
    assert!((g.origin.0 - centre.0).abs() < 1.0 && (g.origin.1 - centre.1).abs() < 1.0, "{:?} vs {centre:?}", g.origin);
}

#[test]
fn dearray_more_than_26_rows_are_lettered_aa_ab() {
    let spec = Spec { pitch: 24.0, pitch_y: 24.0, radius: 8.0, missing: 5, ..Spec::new(29, 2, 5) };
    let g = found(&spec, &DearrayParams::default());
    let names: Vec<&str> = g.cores.iter().map(|c| c.position.as_str()).collect();
    assert!(names.contains(&"AC2") && names.contains(&"A1"), "{names:?}");
    assert!(g.cores.iter().any(|c| c.position.starts_with("AA") || c.position.starts_with("AB")));
}

#[test]
fn dearray_one_row_and_one_column_are_grids() {
    let spec = Spec { jitter: 0.1, missing: 2, torn: 1, ..Spec::new(1, 8, 11) };
    let g = found(&spec, &DearrayParams::default());
    assert!((g.pitch.0 - 40.0).abs() < 1.5 && g.pitch.0 == g.pitch.1, "{:?}", g.pitch);
    assert_eq!(g.cores.last().unwrap().position, "A8");
    let spec = Spec { jitter: 0.1, missing: 1, ..Spec::new(6, 1, 12) };
    let g = found(&spec, &DearrayParams::default());
    assert_eq!(g.cores.last().unwrap().position, "F1");
}

#[test]
fn dearray_single_core_stays_one_core() {
    // One disc, with dust away from it.
    let (map, truth) = slide(&Spec { dust: 3, ..Spec::new(1, 1, 13) });
    let Ok(Dearray::Single(core)) = dearray_slide(&DearrayParams::default(), map.view()) else { panic!("a single core") };
    let t = truth[0].bbox;
    assert!(core.bbox.0 <= t.0 && core.bbox.1 <= t.1 && core.bbox.2 >= t.2 && core.bbox.3 >= t.3, "{core:?}");
    // A torn single core: its pieces are one core.
    for seed in 0..4 {
        let (map, _) = slide(&Spec { torn: 1, ..Spec::new(1, 1, 20 + seed) });
        let Ok(Dearray::Single(core)) = dearray_slide(&DearrayParams::default(), map.view()) else { panic!("a single core") };
        assert!(core.pieces >= 2, "{core:?}");
    }
    // One large object among specks.
    let mut map = Array2::<f32>::zeros((200, 200));
    for ((y, x), v) in map.indexed_iter_mut() {
        if (x as f32 - 100.0).powi(2) + (y as f32 - 90.0).powi(2) < 60.0 * 60.0 || (x % 50 == 3 && y % 60 == 1) {
            *v = 1.0;
        }
    }
    let Ok(Dearray::Single(core)) = dearray_slide(&DearrayParams::default(), map.view()) else { panic!("a single core") };
    assert_eq!((core.bbox.0, core.bbox.1), (41, 31));
}

fn data_error(map: &Array2<f32>, params: &DearrayParams) -> String {
    match dearray_slide(params, map.view()) {
        Err(e @ OpError::Data { .. }) => e.to_string(),
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn dearray_bare_slide_is_a_data_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let noisy = Array2::from_shape_fn((120, 150), |_| 0.1 + rng.random_range(-0.05f32..0.05));
    let flat = Array2::<f32>::from_elem((50, 60), 0.2);
    let nan = Array2::<f32>::from_elem((50, 60), f32::NAN);
    for map in [&noisy, &flat, &nan] {
        let e = data_error(map, &DearrayParams::default());
        assert!(e.starts_with("dearray: no objects found: the image is bare slide"), "{e}");
        let err = dearray_slide(&DearrayParams::default(), map.view()).unwrap_err();
        assert!(is_bare_slide(&err), "{err}");
    }
    assert!(!is_bare_slide(&OpError::data("dearray", "objects are not on a grid: …")), "only the map without objects");
    let above = DearrayParams { threshold: Some(0.5), ..DearrayParams::default() };
    assert!(data_error(&noisy, &above).contains("bare slide"));
    let empty = Array2::<f32>::zeros((0, 0));
    assert!(data_error(&empty, &DearrayParams::default()).contains("bare slide"));
}

#[test]
fn dearray_random_objects_are_not_a_grid() {
    for seed in 0..seeds(6) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut map = Array2::<f32>::zeros((400, 400));
        let mut placed: Vec<(f32, f32)> = Vec::new();
        while placed.len() < 40 {
            let (cx, cy) = (rng.random_range(20.0..380.0f32), rng.random_range(20.0..380.0f32));
            if placed.iter().all(|p| (p.0 - cx).hypot(p.1 - cy) > 30.0) {
                placed.push((cx, cy));
            }
        }
        for ((y, x), v) in map.indexed_iter_mut() {
            if placed.iter().any(|p| (p.0 - x as f32).hypot(p.1 - y as f32) <= 10.0) {
                *v = 1.0;
            }
        }
        let e = data_error(&map, &DearrayParams::default());
        assert!(e.starts_with("dearray: objects are not on a grid: "), "{e}");
    }
}

#[test]
fn dearray_grid_rotated_beyond_the_limit_is_refused_unless_allowed() {
    let spec = Spec { rotation_deg: 10.0, ..Spec::new(5, 6, 14) };
    let e = data_error(&slide(&spec).0, &DearrayParams::default());
    assert!(e.contains("not on a grid") && e.contains("max_rotation_deg"), "{e}");
    found(&spec, &DearrayParams { max_rotation_deg: 15.0, ..DearrayParams::default() });
}

#[test]
fn dearray_position_names() {
    let cases = [((0, 0), "A1"), ((1, 2), "B3"), ((25, 11), "Z12"), ((26, 0), "AA1"), ((27, 4), "AB5"), ((51, 0), "AZ1"), ((52, 0), "BA1")];
    for ((row, col), name) in cases {
        assert_eq!(position_name(row, col), name);
    }
    assert_eq!(position_name(701, 0), "ZZ1");
    assert_eq!(position_name(702, 0), "AAA1");
}

#[test]
fn dearray_params_are_checked_naming_the_field() {
    let d = DearrayParams::default;
    let cases = [
        (DearrayParams { pitch: Some(0.0), ..d() }, "pitch"),
        (DearrayParams { pitch: Some(f64::NAN), ..d() }, "pitch"),
        (DearrayParams { diameter: Some(-3.0), ..d() }, "diameter"),
        (DearrayParams { pitch: Some(30.0), diameter: Some(30.0), ..d() }, "diameter"),
        (DearrayParams { threshold: Some(f32::INFINITY), ..d() }, "threshold"),
        (DearrayParams { max_rotation_deg: 45.0, ..d() }, "max_rotation_deg"),
        (DearrayParams { max_rotation_deg: -1.0, ..d() }, "max_rotation_deg"),
        (DearrayParams { min_object_fraction: 0.0, ..d() }, "min_object_fraction"),
        (DearrayParams { max_residual: 0.6, ..d() }, "max_residual"),
        (DearrayParams { min_separation: f64::NAN, ..d() }, "min_separation"),
    ];
    for (p, field) in cases {
        let e = p.check().unwrap_err();
        assert!(e.is_config() && e.to_string().starts_with("invalid dearray configuration: ") && e.to_string().contains(field), "{e}");
    }
    assert!(d().check().is_ok());
    assert!(serde_json::from_str::<DearrayParams>(r#"{"pitchh": 3}"#).is_err());
}

#[test]
fn dearray_large_tight_grid() {
    // 20 × 24 cores, 1.5 diameters apart (so that ±15 % jitter never makes two touch), 3°:
    // about 1000 × 850 pixels.
    for seed in 0..seeds(2) {
        let spec = Spec {
            pitch: 36.0,
            pitch_y: 36.0,
            radius: 12.0,
            rotation_deg: if seed % 2 == 0 { 3.0 } else { -3.0 },
            jitter: 0.15,
            missing: 30,
            torn: 20,
            dust: 20,
            noise: 0.1,
            ..Spec::new(20, 24, 40 + seed)
        };
        found(&spec, &DearrayParams::default());
    }
}

#[test]
fn dearray_two_objects_claiming_one_cell_are_not_a_grid() {
    // An extra disc 0.47 pitch right of B2, between B2 and B3: it claims B2's cell too, and the
    // two span 50 px, more than two diameters (48 px) that the pieces of a torn core may span.
    let spec = Spec { pitch: 60.0, pitch_y: 60.0, radius: 12.0, ..Spec::new(3, 5, 15) };
    let (mut map, truth) = slide(&spec);
    let b2 = truth.iter().find(|t| (t.row, t.col) == (1, 1)).unwrap().bbox;
    let (cx, cy) = ((b2.0 + b2.2 - 1) as f32 / 2.0 + 28.0, (b2.1 + b2.3 - 1) as f32 / 2.0);
    for ((y, x), v) in map.indexed_iter_mut() {
        if (x as f32 - cx).hypot(y as f32 - cy) <= 10.0 {
            *v = 1.0;
        }
    }
    let e = data_error(&map, &DearrayParams::default());
    assert!(e.starts_with("dearray: objects are not on a grid: cell B2 is claimed by objects centred at"), "{e}");
}

#[test]
fn dearray_coarse_map_of_small_discs() {
    // A strongly reduced map: discs of radius 4.5 px, 14 px apart.
    for seed in 0..seeds(4) {
        let (pitch, radius) = (14.0, 4.5);
        let spec = Spec { pitch, pitch_y: pitch, radius, rotation_deg: 2.0, jitter: 0.1, missing: 8, ..Spec::new(10, 12, 60 + seed) };
        found(&spec, &DearrayParams::default());
    }
}
