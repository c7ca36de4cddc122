//! Pure numerical kernels of ftirflow on Arrow record batches: the spectra schema and, one module
//! per operator, the preprocessing, model and Grad-CAM kernels. No timely dependency: the engine
//! wraps these kernels in dataflow operators (ARCHITECTURE.md).
#![warn(missing_docs)]

pub mod assignments;
pub mod axis;
pub mod dearray;
pub mod emsc;
pub mod error;
pub mod finite;
pub mod fused;
pub mod grad_cam;
pub mod kernel;
pub mod kmeans;
pub mod lanes;
pub mod model;
pub mod normalize;
pub mod outliers;
pub mod prefetch;
pub mod resample;
pub mod schema;
pub mod segment;

pub use dearray::{dearray_slide, position_name, Dearray, DearrayParams, Dearrayer, Grid, GridCore, SingleCore};
pub use emsc::{EmscCorrector, EmscFit, EmscKernel, EmscParams, ParaffinMode};
pub use error::OpError;
pub use grad_cam::{CamAggregator, CamSummary, TopBand};
pub use kernel::{run_chain, run_image, Kernel};
pub use kmeans::{KMeans, KMeansModel, KMeansParams};
pub use model::{ArchConfig, CareNet, Classifier, DeviceChoice};
pub use schema::{SchemaError, SpectraBatchBuilder, SpectraLayout};
pub use segment::{
    segment_image, Boundary, Clusters, ImagePart, Masks, PixelClass, SegmentKernel, SegmentParams, SegmentSummary, Segmenter, StepSummary,
};
