//! A rectangle of an image to read ([`Window`]), so that memory is bounded by one TMA core of a
//! slide mosaic rather than by the whole slide.
use std::fmt;
use std::path::Path;

use super::ReadError;

/// A rectangle of pixels in image coordinates: columns `x .. x + width`, rows `y .. y + height`.
///
/// Given in [`ReadOptions::window`](super::ReadOptions::window), it makes a reader yield only the
/// spectra of the pixels inside it, in the order and with the `x`, `y` values (image coordinates,
/// not relative to the window) that the whole-image read gives those pixels. Image readers clip a
/// window that reaches past the image to the image; a window entirely outside the image, or of
/// zero width or height, is a [`ReadError::Window`]. Table readers (Parquet, Orange CSV) select the
/// rows whose `x`, `y` columns fall inside it.
///
/// ```
/// use ftirflow::io::Window;
/// let w = Window::new(10, 20, 100, 100);
/// assert!(w.contains(10, 20) && !w.contains(110, 20));
/// assert_eq!(w.clip(64, 64), Some(Window::new(10, 20, 54, 44)));
/// assert_eq!(w.clip(10, 64), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

impl Window {
    /// The window of `width × height` pixels whose top-left pixel is (`x`, `y`).
    pub fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self { x, y, width, height }
    }

    /// One past the last column (as `u64`: `x + width` may exceed `u32`).
    pub fn x_end(&self) -> u64 {
        u64::from(self.x) + u64::from(self.width)
    }

    /// One past the last row.
    pub fn y_end(&self) -> u64 {
        u64::from(self.y) + u64::from(self.height)
    }

    /// Whether the window has no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Number of pixels.
    pub fn n_pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Whether pixel (`x`, `y`) lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && u64::from(x) < self.x_end() && y >= self.y && u64::from(y) < self.y_end()
    }

    /// The part of the window inside a `width × height` image, or `None` when there is none.
    pub fn clip(&self, width: u32, height: u32) -> Option<Window> {
        let x_end = self.x_end().min(u64::from(width));
        let y_end = self.y_end().min(u64::from(height));
        if self.is_empty() || u64::from(self.x) >= x_end || u64::from(self.y) >= y_end {
            return None;
        }
        // Both ends are at most `width`/`height`, so the differences fit u32.
        Some(Window::new(self.x, self.y, (x_end - u64::from(self.x)) as u32, (y_end - u64::from(self.y)) as u32))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{} at ({}, {})", self.width, self.height, self.x, self.y)
    }
}

/// The pixels of `window` (the whole image when `None`) inside the `width × height` image of
/// `path`: clipped to the image, or a [`ReadError::Window`] when nothing is left.
pub(crate) fn clip_to_image(path: &Path, window: Option<Window>, width: u32, height: u32) -> Result<Window, ReadError> {
    match window {
        None => Ok(Window::new(0, 0, width, height)),
        Some(w) => w.clip(width, height).ok_or_else(|| ReadError::Window {
            path: path.to_path_buf(),
            window: w,
            reason: if w.is_empty() {
                format!("is empty (the image is {width}×{height})")
            } else {
                format!("lies outside the {width}×{height} image")
            },
        }),
    }
}

/// The row selection of a table reader (Parquet, Orange CSV) reading through a [`Window`]: keeps
/// the rows whose `x`, `y` lie inside it, and turns a stream that selected nothing into a
/// [`ReadError::Window`] naming the extent of the table's coordinates.
#[derive(Debug)]
pub(crate) struct TableWindow {
    window: Window,
    selected: u64,
    /// Largest `x` and `y` seen.
    extent: Option<(u32, u32)>,
    ended: bool,
}

impl TableWindow {
    /// The selection for `window` given to the reader of `path` (an empty window is an error);
    /// `None` when there is no window. `has_xy` says whether the table has `x` and `y` columns.
    pub(crate) fn new(path: &Path, window: Option<Window>, has_xy: bool) -> Result<Option<Self>, ReadError> {
        let Some(w) = window else { return Ok(None) };
        let error = |reason: &str| ReadError::Window { path: path.to_path_buf(), window: w, reason: reason.to_string() };
        if w.is_empty() {
            return Err(error("is empty"));
        }
        if !has_xy {
            return Err(error("cannot select rows: the table has no pixel coordinates (x and y columns)"));
        }
        Ok(Some(Self { window: w, selected: 0, extent: None, ended: false }))
    }

    /// Whether the row at (`x`, `y`) is selected.
    pub(crate) fn keep(&mut self, x: u32, y: u32) -> bool {
        let (mx, my) = self.extent.unwrap_or((x, y));
        self.extent = Some((mx.max(x), my.max(y)));
        let keep = self.window.contains(x, y);
        self.selected += u64::from(keep);
        keep
    }

    /// At the end of the table: the error when no row was selected (once).
    pub(crate) fn end(&mut self, path: &Path) -> Option<ReadError> {
        if self.selected > 0 || std::mem::replace(&mut self.ended, true) {
            return None;
        }
        let reason = match self.extent {
            Some((x, y)) => format!("selects no row of the table (its pixels span x 0..={x}, y 0..={y})"),
            None => "selects no row: the table is empty".to_string(),
        };
        Some(ReadError::Window { path: path.to_path_buf(), window: self.window, reason })
    }
}
