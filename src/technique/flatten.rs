//! Layer flattening (FlattenGPT, spec B) and the block-dropping baseline.

use crate::model::Model;
use crate::technique::recipe::FlattenStep;
use crate::technique::{CalibOptions, Progress};

/// Removes blocks from `model` as `step` says; returns how many. Not built yet.
pub fn apply_flatten(
    _model: &mut Model,
    _step: &FlattenStep,
    _calib_tokens: &[u32],
    _calib: CalibOptions,
    _seed: u64,
    _progress: &mut Progress<'_>,
) -> anyhow::Result<usize> {
    anyhow::bail!("flattening is not built yet")
}
