//! Continual model merging (spec C): fine-tuned variants folded into the base one at a time.

use crate::model::Model;
use crate::technique::Progress;
use crate::technique::recipe::MergeStep;

/// Merges `step.models` into `base`. Not built yet.
pub fn apply_merge(
    _base: &Model,
    _step: &MergeStep,
    _progress: &mut Progress<'_>,
) -> anyhow::Result<Model> {
    anyhow::bail!("merging is not built yet")
}
