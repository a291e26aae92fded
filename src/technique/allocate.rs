//! Mixed-bit allocation: which layers get more bits under an average-bits budget.
//!
//! Each layer has a sensitivity score (ShiftAddLLM's ‖IS‖_F·std(IS)², see
//! `docs/techniques.md`, Shift-add §5) and an expected error at each bit width; we choose one width
//! per layer to minimise the summed expected error with the parameter-weighted average bits at
//! or under the budget. That is a multiple-choice knapsack, solved exactly by dynamic
//! programming over the budget (not the paper's code's 80/20 quantile split, which is kept as
//! [`quantile_allocation`] for comparison).

/// Relative BCQ error (‖w − ŵ‖²/‖w‖²) by bits on Gaussian groups of 128, from the measurements
/// in `docs/techniques.md` (Shift-add properties 3 and 9): the shape of the error-versus-bits
/// curve.
pub fn relative_error(bits: usize) -> f64 {
    match bits {
        0 | 1 => 0.39,
        2 => 0.116,
        3 => 0.040,
        4 => 0.012,
        5 => 4.2e-3,
        6 => 2.3e-3,
        7 => 1.4e-3,
        _ => 9.8e-4,
    }
}

/// One layer to allocate: its weight count and sensitivity.
#[derive(Debug, Clone)]
pub struct LayerItem {
    pub params: usize,
    pub score: f64,
}

/// Largest DP capacity (budget units); beyond it the unit is coarsened, rounding every layer's
/// cost up, so the budget is never exceeded.
const MAX_CAPACITY: usize = 50_000;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Bits per layer minimising Σ score·relative_error(bits) subject to
/// Σ bits·params ≤ avg_bits·Σ params, bits from `choices`.
pub fn knapsack_allocation(
    layers: &[LayerItem],
    choices: &[usize],
    avg_bits: f64,
) -> anyhow::Result<Vec<usize>> {
    let mut choices = choices.to_vec();
    choices.sort_unstable();
    choices.dedup();
    let (Some(&min_bits), false) = (choices.first(), layers.is_empty()) else {
        anyhow::bail!("nothing to allocate");
    };
    let total: usize = layers.iter().map(|l| l.params).sum();
    let extra_budget = (avg_bits - min_bits as f64) * total as f64;
    anyhow::ensure!(
        extra_budget >= -1e-9,
        "an average of {avg_bits} bits is below the smallest choice ({min_bits})"
    );
    let mut unit = layers.iter().fold(0, |g, l| gcd(g, l.params)).max(1);
    while extra_budget / unit as f64 > MAX_CAPACITY as f64 {
        unit *= 2;
    }
    let capacity = (extra_budget / unit as f64).floor() as usize;
    let cost = |l: &LayerItem, b: usize| ((b - min_bits) * l.params).div_ceil(unit);
    // best[c] = least error using at most c units; choice[i][c] = bits index for layer i.
    let mut best = vec![0.0f64; capacity + 1];
    let mut choice = vec![vec![0u8; capacity + 1]; layers.len()];
    for (i, l) in layers.iter().enumerate() {
        let mut next = vec![f64::INFINITY; capacity + 1];
        for c in 0..=capacity {
            for (j, &b) in choices.iter().enumerate() {
                let w = cost(l, b);
                if w > c {
                    continue;
                }
                let v = best[c - w] + l.score * relative_error(b);
                if v < next[c] {
                    next[c] = v;
                    choice[i][c] = j as u8;
                }
            }
        }
        best = next;
    }
    let mut c = capacity;
    let mut bits = vec![min_bits; layers.len()];
    for i in (0..layers.len()).rev() {
        let b = choices[choice[i][c] as usize];
        bits[i] = b;
        c -= cost(&layers[i], b);
    }
    Ok(bits)
}

/// The released ShiftAddLLM code's heuristic: sort layers by score; the lowest `low_fraction`
/// of layers get the smallest choice, the rest the next one.
pub fn quantile_allocation(
    layers: &[LayerItem],
    low: usize,
    high: usize,
    low_fraction: f64,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by(|&a, &b| layers[a].score.total_cmp(&layers[b].score));
    let n_low = (low_fraction * layers.len() as f64).round() as usize;
    let mut bits = vec![high; layers.len()];
    for &i in order.iter().take(n_low) {
        bits[i] = low;
    }
    bits
}

/// Parameter-weighted average bits of an allocation.
pub fn average_bits(layers: &[LayerItem], bits: &[usize]) -> f64 {
    let total: usize = layers.iter().map(|l| l.params).sum();
    let weighted: usize = layers.iter().zip(bits).map(|(l, b)| l.params * b).sum();
    weighted as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<LayerItem> {
        // SmolLM2-like sizes with varied sensitivities.
        let sizes = [
            331_776, 110_592, 110_592, 331_776, 884_736, 884_736, 884_736,
        ];
        (0..5)
            .flat_map(|b| {
                sizes.iter().enumerate().map(move |(i, &p)| LayerItem {
                    params: p,
                    score: ((b * 7 + i) as f64 * 0.37).sin().abs() * 10.0 + 0.1,
                })
            })
            .collect()
    }

    #[test]
    fn budget_holds_and_choices_are_allowed() {
        let l = layers();
        for budget in [2.0, 2.2, 2.5, 3.0, 3.7, 4.0] {
            let bits = knapsack_allocation(&l, &[2, 3, 4], budget).unwrap();
            assert!(average_bits(&l, &bits) <= budget + 1e-9, "budget {budget}");
            assert!(bits.iter().all(|b| [2, 3, 4].contains(b)));
        }
        assert!(knapsack_allocation(&l, &[2, 3, 4], 1.5).is_err());
    }

    #[test]
    fn dp_is_no_worse_than_the_quantile_heuristic() {
        let l = layers();
        let heuristic = quantile_allocation(&l, 2, 3, 0.8);
        let budget = average_bits(&l, &heuristic);
        let dp = knapsack_allocation(&l, &[2, 3], budget).unwrap();
        let total = |bits: &[usize]| -> f64 {
            l.iter()
                .zip(bits)
                .map(|(x, &b)| x.score * relative_error(b))
                .sum()
        };
        assert!(total(&dp) <= total(&heuristic) + 1e-12);
        assert!(average_bits(&l, &dp) <= budget + 1e-9);
    }

    #[test]
    fn dp_matches_brute_force_on_small_cases() {
        let l: Vec<LayerItem> = layers().into_iter().take(6).collect();
        let choices = [2, 3, 4];
        let budget = 2.9;
        let dp = knapsack_allocation(&l, &choices, budget).unwrap();
        let total = |bits: &[usize]| -> f64 {
            l.iter()
                .zip(bits)
                .map(|(x, &b)| x.score * relative_error(b))
                .sum()
        };
        let mut best = f64::INFINITY;
        for code in 0..3usize.pow(6) {
            let bits: Vec<usize> = (0..6).map(|i| choices[code / 3usize.pow(i) % 3]).collect();
            if average_bits(&l, &bits) <= budget + 1e-12 {
                best = best.min(total(&bits));
            }
        }
        assert!(
            (total(&dp) - best).abs() < 1e-9,
            "dp {} vs brute force {best}",
            total(&dp)
        );
    }

    #[test]
    fn higher_score_never_gets_fewer_bits_in_the_quantile_split() {
        let l = layers();
        let bits = quantile_allocation(&l, 2, 3, 0.8);
        for a in 0..l.len() {
            for b in 0..l.len() {
                if l[a].score > l[b].score {
                    assert!(bits[a] >= bits[b]);
                }
            }
        }
    }
}

/// One layer's allocation, for the user to see.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerAllocation {
    pub layer: String,
    pub params: usize,
    pub score: f64,
    pub bits: usize,
}

/// Scores every linear of `base` on calibration windows (unquantized model, block by block)
/// and allocates `choices` bits under `avg_bits` (parameter-weighted). Returns a recipe with
/// one exact-name rule per layer, using `template`'s other knobs, and the per-layer table.
pub fn allocate_recipe(
    base: &crate::model::Model,
    calib_tokens: &[u32],
    calib: crate::technique::CalibOptions,
    choices: &[usize],
    avg_bits: f64,
    template: &crate::technique::recipe::ShiftAddKnobs,
    progress: &mut crate::technique::Progress<'_>,
) -> anyhow::Result<(crate::technique::recipe::Recipe, Vec<LayerAllocation>)> {
    use crate::calib::{StatsCollector, calibration_ids, stats_source};
    use crate::model::{LinearId, LinearKind};
    use crate::technique::recipe::{LayerRule, Recipe, ShiftAddKnobs};

    let t = &base.transformer;
    let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, 0)?;
    let mut h = t.embed(&ids)?;
    let mut table = Vec::new();
    for block in 0..t.blocks.len() {
        if !progress("scoring layers", block, t.blocks.len()) {
            anyhow::bail!("cancelled");
        }
        let sources: Vec<LinearId> = LinearKind::ALL
            .into_iter()
            .map(|k| LinearId::new(block, stats_source(k)))
            .collect();
        let mut stats = StatsCollector::new(Some(sources), true);
        h = t.run_block(block, &h, calib.samples, calib.seq_len, &mut stats)?;
        for kind in LinearKind::ALL {
            let id = LinearId::new(block, kind);
            let Some(layer) = t.linear(id) else { continue };
            let Some(s) = stats.stats.get(&LinearId::new(block, stats_source(kind))) else {
                anyhow::bail!("{id}: no calibration statistics");
            };
            let score = super::shiftadd::sensitivity(layer, s)?;
            table.push(LayerAllocation {
                layer: id.to_string(),
                params: layer.weight_count(),
                score,
                bits: 0,
            });
        }
    }
    let items: Vec<LayerItem> = table
        .iter()
        .map(|l| LayerItem {
            params: l.params,
            score: l.score,
        })
        .collect();
    let bits = knapsack_allocation(&items, choices, avg_bits)?;
    let mut layers = Vec::with_capacity(table.len());
    for (row, b) in table.iter_mut().zip(bits) {
        row.bits = b;
        layers.push(LayerRule {
            pattern: row.layer.clone(),
            blocks: None,
            shiftadd: Some(ShiftAddKnobs {
                bits: b,
                ..template.clone()
            }),
            rtn: None,
            prune: None,
            rps: None,
            f16: false,
        });
    }
    progress("done", t.blocks.len(), t.blocks.len());
    let recipe = Recipe {
        model: Some(base.id.clone()),
        seed: 0,
        merge: None,
        flatten: None,
        embedding: None,
        layers,
    };
    Ok((recipe, table))
}
