//! Randomized parameter sharing of one linear layer (spec A).

use crate::calib::InputStats;
use crate::model::{LinearWeight, Model};
use crate::technique::recipe::RpsKnobs;

/// Shares one layer's weights in a hashed array. Not built yet.
pub fn share_linear(
    _weight: &LinearWeight,
    _knobs: &RpsKnobs,
    _stats: Option<&InputStats>,
    _seed: u64,
) -> anyhow::Result<LinearWeight> {
    anyhow::bail!("RPS sharing is not built yet")
}

/// Weights per stored value over the shared layers (1 when none are shared).
pub fn model_rps_ratio(_model: &Model) -> f64 {
    1.0
}
