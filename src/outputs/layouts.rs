//! `OUT_DIR/layouts/<part>.json` (docs/outputs.md): what de-arraying made of each image of a run
//! — one core, a slide (its grid, its cores with their windows, and the slide at reduced
//! resolution for the report) or refused — with the image's identity and the `[tma]` section it
//! holds for. `run` reads it instead of mapping an unchanged image again; the report draws the
//! slide overviews from it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::Identity;
use super::records::GridPlace;
use crate::config::TmaConfig;

/// Directory of the layouts inside the output directory.
pub const LAYOUTS: &str = "layouts";

/// Where a core of a slide lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorePlace {
    /// The slide's sample id (the image's id in the archive).
    pub image: String,
    /// Position, row, column and box on the slide.
    pub grid: GridPlace,
    /// The pixels read for the core, `[x, y, width, height]`: the box and a margin of slide.
    pub window: [u32; 4],
}

impl CorePlace {
    /// The core's sample id: `<image>/<position>`.
    pub fn sample(&self) -> String {
        format!("{}/{}", self.image, self.grid.position)
    }

    /// The window to read.
    pub fn window(&self) -> crate::io::Window {
        let [x, y, w, h] = self.window;
        crate::io::Window::new(x, y, w, h)
    }
}

/// The grid found on a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridFit {
    /// Column and row pitch, pixels.
    pub pitch: (f64, f64),
    /// Rotation of the rows against the image x axis, degrees.
    pub rotation_deg: f64,
    /// Image position (x, y) of the centre of cell A1.
    pub origin: (f64, f64),
    /// Rows and columns from the first to the last occupied one.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// RMS distance of the cores from their cell centres, fraction of the pitch.
    pub residual: f64,
}

/// What a run makes of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Layout {
    /// The image is one core.
    Whole,
    /// A slide: its grid and its cores, sorted by (row, col).
    Slide {
        /// The grid.
        grid: GridFit,
        /// The cores.
        cores: Vec<CorePlace>,
        /// The slide at reduced resolution (the report's overview).
        map: SlideMap,
    },
    /// Rejected (`[tma] dearray = "on"` and the image is neither a slide nor one core).
    Refused(String),
}

/// A slide at reduced resolution: the de-arraying score map, block means of `scale × scale`
/// image pixels scaled to 0–255 over its 1st–99th percentile (255 where the image holds no
/// pixel, like bare slide is bright in transmitted light: 255 − score).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlideMap {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Image pixels per map pixel along each axis.
    pub scale: u32,
    /// `height × width` grey levels, row-major.
    pub values: Vec<u8>,
}

/// One image's layout as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutRecord {
    /// The image's identity when it was mapped.
    pub identity: Identity,
    /// The `[tma]` section it was mapped with.
    pub tma: TmaConfig,
    /// What it is.
    pub layout: Layout,
}

/// The layout file of the image with part name `part`.
pub fn layout_path(out: &Path, part: &str) -> PathBuf {
    out.join(LAYOUTS).join(format!("{part}.json"))
}

/// The recorded layout of an image, when its identity and the `[tma]` section are those recorded.
pub fn cached(out: &Path, part: &str, identity: &Identity, cfg: &TmaConfig) -> Option<Layout> {
    let text = std::fs::read(layout_path(out, part)).ok()?;
    let r: LayoutRecord = serde_json::from_slice(&text).ok()?;
    (&r.identity == identity && &r.tma == cfg).then_some(r.layout)
}

/// Records the layout of an image.
pub fn store(out: &Path, part: &str, record: &LayoutRecord) -> std::io::Result<()> {
    let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let path = layout_path(out, part);
    std::fs::create_dir_all(path.parent().unwrap_or(out))?;
    crate::io::atomic::write_atomic(&path, &text)
}

/// Every recorded slide of a run directory, sorted by part name: (part, grid, cores, map).
pub fn slides(out: &Path) -> Vec<(String, GridFit, Vec<CorePlace>, SlideMap)> {
    let Ok(rd) = std::fs::read_dir(out.join(LAYOUTS)) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let r: LayoutRecord = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            let part = p.file_stem()?.to_string_lossy().into_owned();
            match r.layout {
                Layout::Slide { grid, cores, map } => Some((part, grid, cores, map)),
                _ => None,
            }
        })
        .collect()
}
