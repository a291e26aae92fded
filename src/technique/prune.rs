//! Pruning of one linear layer (spec D): magnitude, Wanda and n:m.

use crate::calib::InputStats;
use crate::model::{LinearWeight, Model};
use crate::technique::recipe::PruneKnobs;

/// Prunes one layer. Not built yet.
pub fn prune_linear(
    _weight: &LinearWeight,
    _knobs: &PruneKnobs,
    _stats: Option<&InputStats>,
) -> anyhow::Result<LinearWeight> {
    anyhow::bail!("pruning is not built yet")
}

/// Fraction of all linear weights that are pruned away.
pub fn model_sparsity(_model: &Model) -> f64 {
    0.0
}
