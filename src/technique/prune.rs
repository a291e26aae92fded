//! Pruning of one linear layer (`docs/techniques.md`, "Pruning"): magnitude (whole matrix), Wanda
//! (`|W|·‖X_j‖` per output row) and n:m (per group of `m` inputs of a row), then the layer's
//! inference form: compressed n:m, CSR below the measured break-even density, dense-with-zeros
//! above it. Also the model's measured sparsity and the OWL per-block ratio allocation.
//!
//! Everything here works on one dense matrix; the pipeline (`technique::apply`) supplies the
//! calibration column norms, gathered sequentially through the already-pruned blocks.

use std::sync::Arc;

use rayon::prelude::*;

use crate::calib::InputStats;
use crate::model::bitmask::BitmaskMatrix;
use crate::model::nm::NmPacked;
use crate::model::sparse::CsrMatrix;
use crate::model::{LinearId, LinearWeight, Model};
use crate::technique::recipe::{NmScore, PruneKnobs, PruneMethod, SparseForm};

/// Orders candidates for removal: lower score first, ties by lower index, so masks are
/// deterministic and exact counts hold even with many equal values (`docs/techniques.md`,
/// Pruning §9).
fn by_score(scores: &[f32]) -> impl Fn(&usize, &usize) -> std::cmp::Ordering + '_ {
    move |&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b))
}

/// How many of `len` entries a `ratio` zeroes: `floor(len·ratio)`.
fn zeroed_of(len: usize, ratio: f64) -> usize {
    ((len as f64 * ratio).floor() as usize).min(len)
}

/// Weights an unstructured rule leaves of a `rows × cols` matrix: magnitude zeroes over the
/// whole matrix, Wanda row by row (zeros already in the weights are not counted).
pub fn kept_after(knobs: &PruneKnobs, rows: usize, cols: usize) -> usize {
    let zeroed = match knobs.method {
        PruneMethod::Wanda => rows * zeroed_of(cols, knobs.ratio),
        _ => zeroed_of(rows * cols, knobs.ratio),
    };
    rows * cols - zeroed
}

/// Whether an n:m rule's result is stored compressed (4-bit positions hold `m ≤ 16`).
pub fn stores_as_nm(knobs: &PruneKnobs) -> bool {
    knobs.method == PruneMethod::Nm && knobs.m <= 16
}

/// How an unstructured-pruned matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseStorage {
    Bitmask,
    Csr,
    Dense,
}

impl SparseStorage {
    /// Bytes of a `rows × cols` f32 matrix keeping `kept` values in this storage.
    pub fn bytes(self, rows: usize, cols: usize, kept: usize) -> usize {
        match self {
            Self::Bitmask => BitmaskMatrix::size_for(rows, cols, kept),
            Self::Csr => CsrMatrix::size_for(rows, kept),
            Self::Dense => rows * cols * 4,
        }
    }
}

/// The storage of a pruned `rows × cols` matrix keeping `kept` values: the forced one, or for
/// `auto` the smallest (each kernel reads only its stored bytes, so smallest is also fastest
/// at batch 1).
pub fn sparse_storage(form: SparseForm, rows: usize, cols: usize, kept: usize) -> SparseStorage {
    match form {
        SparseForm::Bitmask => SparseStorage::Bitmask,
        SparseForm::Csr => SparseStorage::Csr,
        SparseForm::Dense => SparseStorage::Dense,
        SparseForm::Auto => [
            SparseStorage::Bitmask,
            SparseStorage::Csr,
            SparseStorage::Dense,
        ]
        .into_iter()
        .min_by_key(|s| s.bytes(rows, cols, kept))
        .unwrap_or(SparseStorage::Dense),
    }
}

/// Zeroes the `floor(len·ratio)` lowest-scoring entries of `w` (scores aligned with `w`).
fn zero_lowest(w: &mut [f32], scores: &[f32], ratio: f64) {
    let k = zeroed_of(w.len(), ratio);
    if k == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..w.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_score(scores));
    }
    for &i in &order[..k] {
        w[i] = 0.0;
    }
}

/// Prunes the row-major `rows × cols` matrix `w` in place as `knobs` say. `col_norms` (‖X_j‖
/// over the calibration tokens) is needed by Wanda and by n:m with Wanda scores.
pub fn prune_weights(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    knobs: &PruneKnobs,
    col_norms: Option<&[f64]>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        w.len() == rows * cols,
        "weight has {} values, expected {rows}×{cols}",
        w.len()
    );
    let wanda_scores = || -> anyhow::Result<Vec<f32>> {
        let Some(norms) = col_norms else {
            anyhow::bail!("Wanda scores need calibration column norms of this layer's input");
        };
        anyhow::ensure!(
            norms.len() == cols,
            "calibration statistics have {} columns, the layer has {cols}",
            norms.len()
        );
        Ok(w.iter()
            .enumerate()
            .map(|(i, v)| v.abs() * norms[i % cols] as f32)
            .collect())
    };
    match knobs.method {
        PruneMethod::Magnitude => {
            let scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            zero_lowest(w, &scores, knobs.ratio);
        }
        PruneMethod::Wanda => {
            let scores = wanda_scores()?;
            w.par_chunks_mut(cols)
                .zip(scores.par_chunks(cols))
                .for_each(|(row, s)| zero_lowest(row, s, knobs.ratio));
        }
        PruneMethod::Nm => {
            let (n, m) = (knobs.n, knobs.m);
            anyhow::ensure!(
                n > 0 && n < m && cols.is_multiple_of(m),
                "n:m = {n}:{m} needs 0 < n < m and the input width ({cols}) a multiple of m"
            );
            let scores = match knobs.score {
                NmScore::Wanda => wanda_scores()?,
                NmScore::Magnitude => w.iter().map(|v| v.abs()).collect(),
            };
            w.par_chunks_mut(m)
                .zip(scores.par_chunks(m))
                .for_each(|(group, s)| {
                    let mut order: Vec<usize> = (0..m).collect();
                    order.sort_by(by_score(s));
                    for &j in &order[..m - n] {
                        group[j] = 0.0;
                    }
                });
        }
    }
    Ok(())
}

/// The stored form of a pruned matrix: compressed n:m when the pattern fits 4-bit positions,
/// else the storage [`sparse_storage`] picks.
pub fn inference_form(
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    bias: Option<candle_core::Tensor>,
    knobs: &PruneKnobs,
) -> anyhow::Result<LinearWeight> {
    if stores_as_nm(knobs) {
        let packed = NmPacked::from_dense(&w, rows, cols, knobs.n, knobs.m)?;
        return Ok(LinearWeight::Nm {
            packed: Arc::new(packed),
            bias,
        });
    }
    let nnz = w.iter().filter(|v| **v != 0.0).count();
    match sparse_storage(knobs.form, rows, cols, nnz) {
        SparseStorage::Bitmask => {
            if let Ok(mask) = BitmaskMatrix::from_dense(&w, rows, cols) {
                return Ok(LinearWeight::Bitmask {
                    mask: Arc::new(mask),
                    bias,
                });
            }
        }
        SparseStorage::Csr => {
            if let Ok(csr) = CsrMatrix::from_dense(&w, rows, cols) {
                return Ok(LinearWeight::Csr {
                    csr: Arc::new(csr),
                    bias,
                });
            }
        }
        SparseStorage::Dense => {}
    }
    Ok(LinearWeight::dense(
        candle_core::Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu)?,
        bias,
    ))
}

/// Prunes one layer and returns it in its inference form. A ratio of 0 (unstructured) returns
/// the layer unchanged.
pub fn prune_linear(
    weight: &LinearWeight,
    knobs: &PruneKnobs,
    stats: Option<&InputStats>,
) -> anyhow::Result<LinearWeight> {
    if knobs.method != PruneMethod::Nm && knobs.ratio == 0.0 {
        return Ok(weight.clone());
    }
    let (rows, cols) = weight.shape();
    let mut w = weight.to_dense()?.flatten_all()?.to_vec1::<f32>()?;
    let norms = stats.map(InputStats::col_norms);
    prune_weights(&mut w, rows, cols, knobs, norms.as_deref())?;
    inference_form(w, rows, cols, weight.bias().cloned(), knobs)
}

/// Fraction (0–1) of all block-linear weights that were pruned: exact zeros in the stored form of
/// the layers `pruned` names (zeros that quantization happens to produce elsewhere do not count).
pub fn model_sparsity(model: &Model, pruned: impl Fn(LinearId) -> bool) -> f64 {
    let t = &model.transformer;
    let (mut zeros, mut total) = (0usize, 0usize);
    for id in t.linear_ids() {
        let Some(w) = t.linear(id) else { continue };
        total += w.weight_count();
        if !pruned(id) {
            // A quantization grid's zero codes are not pruned weights.
            continue;
        }
        zeros += match w {
            LinearWeight::Csr { csr, .. } => w.weight_count() - csr.nnz(),
            LinearWeight::Bitmask { mask, .. } => w.weight_count() - mask.nnz(),
            other => other
                .to_dense()
                .and_then(|d| d.flatten_all()?.to_vec1::<f32>())
                .map_or(0, |v| v.iter().filter(|x| **x == 0.0).count()),
        };
    }
    if total == 0 {
        return 0.0;
    }
    zeros as f64 / total as f64
}

/// OWL's outlier ratio of one block: the fraction of its Wanda scores above `m ×` their mean.
pub fn outlier_ratio(scores: &[f32], m: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let mean = scores.iter().map(|s| f64::from(*s)).sum::<f64>() / scores.len() as f64;
    let above = scores.iter().filter(|s| f64::from(**s) > m * mean).count();
    above as f64 / scores.len() as f64
}

/// OWL per-block sparsities from outlier ratios: scaled to `[0, 2λ]`, shifted so the mean is
/// `target`, so blocks with more outliers are pruned less; the ratios span exactly 2λ around
/// `target` and are clamped to `0..=0.95`. Equal ratios (or λ = 0) give the
/// uniform allocation.
pub fn owl_ratios(outliers: &[f64], target: f64, lambda: f64) -> Vec<f64> {
    let (lo, hi) = outliers
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if outliers.is_empty() || hi - lo <= 0.0 || lambda == 0.0 {
        return vec![target; outliers.len()];
    }
    let scaled: Vec<f64> = outliers
        .iter()
        .map(|d| (d - lo) / (hi - lo) * 2.0 * lambda)
        .collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    scaled
        .iter()
        .map(|d| (1.0 - (d - mean + (1.0 - target))).clamp(0.0, 0.95))
        .collect()
}

/// OWL's two hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct OwlOptions {
    /// Half-spread λ of the per-block ratios around the target (OWL's `Lamda`, 0.08).
    pub lambda: f64,
    /// Outlier threshold: scores above `m ×` the block's mean score (OWL's `Hyper_m`, 5).
    pub m: f64,
}

impl Default for OwlOptions {
    fn default() -> Self {
        Self {
            lambda: 0.08,
            m: 5.0,
        }
    }
}

/// One block's allocation, for the user to see.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockRatio {
    pub block: usize,
    /// Fraction of the block's Wanda scores above `m ×` their mean (0 when uniform).
    pub outlier_ratio: f64,
    pub ratio: f64,
}

/// A pruning recipe at a global `target` sparsity with `method`: uniform (one rule for every
/// linear), or OWL (one rule per block, ratios from the blocks' outlier ratios, which are
/// measured on the dense model with calibration windows run block by block). All blocks of a
/// Llama model have the same size, so the parameter-weighted mean ratio is the target.
pub fn allocate_prune_recipe(
    base: &Model,
    calib_tokens: &[u32],
    calib: crate::technique::CalibOptions,
    target: f64,
    method: PruneMethod,
    owl: Option<OwlOptions>,
    progress: &mut crate::technique::Progress<'_>,
) -> anyhow::Result<(crate::technique::recipe::Recipe, Vec<BlockRatio>)> {
    use crate::calib::{StatsCollector, calibration_ids, stats_source};
    use crate::model::{LinearId, LinearKind};
    use crate::technique::recipe::{LayerRule, Recipe};

    anyhow::ensure!(
        (0.0..=0.95).contains(&target),
        "--prune {target} is outside 0..=0.95"
    );
    anyhow::ensure!(
        method != PruneMethod::Nm,
        "n:m patterns have a fixed ratio; allocate magnitude or wanda"
    );
    let knobs = |ratio| PruneKnobs {
        ratio,
        method,
        n: 2,
        m: 4,
        score: NmScore::Wanda,
        form: SparseForm::Auto,
    };
    let rule = |blocks: Option<String>, ratio| LayerRule {
        pattern: "blk.*.*".into(),
        blocks,
        shiftadd: None,
        rtn: None,
        prune: Some(knobs(ratio)),
        rps: None,
        f16: false,
    };
    let t = &base.transformer;
    let n_blocks = t.blocks.len();
    let (layers, table) = match owl {
        None => (
            vec![rule(None, target)],
            (0..n_blocks)
                .map(|block| BlockRatio {
                    block,
                    outlier_ratio: 0.0,
                    ratio: target,
                })
                .collect(),
        ),
        Some(o) => {
            let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, 0)?;
            let mut h = t.embed(&ids)?;
            let mut outliers = Vec::with_capacity(n_blocks);
            for block in 0..n_blocks {
                if !progress("outlier ratios", block, n_blocks) {
                    anyhow::bail!("cancelled");
                }
                let sources: Vec<LinearId> = LinearKind::ALL
                    .into_iter()
                    .map(|k| LinearId::new(block, stats_source(k)))
                    .collect();
                let mut stats = StatsCollector::new(Some(sources), false);
                h = t.run_block(block, &h, calib.samples, calib.seq_len, &mut stats)?;
                let mut scores = Vec::new();
                for kind in LinearKind::ALL {
                    let id = LinearId::new(block, kind);
                    let (Some(w), Some(s)) = (
                        t.linear(id),
                        stats.stats.get(&LinearId::new(block, stats_source(kind))),
                    ) else {
                        anyhow::bail!("{id}: no calibration statistics");
                    };
                    let norms = s.col_norms();
                    let cols = norms.len();
                    let w = w.to_dense()?.flatten_all()?.to_vec1::<f32>()?;
                    scores.extend(
                        w.iter()
                            .enumerate()
                            .map(|(i, v)| v.abs() * norms[i % cols] as f32),
                    );
                }
                outliers.push(outlier_ratio(&scores, o.m));
            }
            let ratios = owl_ratios(&outliers, target, o.lambda);
            let layers = ratios
                .iter()
                .enumerate()
                .map(|(b, r)| rule(Some(b.to_string()), *r))
                .collect();
            let table = outliers
                .iter()
                .zip(&ratios)
                .enumerate()
                .map(|(block, (d, r))| BlockRatio {
                    block,
                    outlier_ratio: *d,
                    ratio: *r,
                })
                .collect();
            (layers, table)
        }
    };
    progress("done", n_blocks, n_blocks);
    Ok((
        Recipe {
            model: Some(base.id.clone()),
            seed: 0,
            merge: None,
            flatten: None,
            embedding: None,
            layers,
        },
        table,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(method: PruneMethod, ratio: f64) -> PruneKnobs {
        PruneKnobs {
            ratio,
            method,
            n: 2,
            m: 4,
            score: NmScore::Wanda,
            form: SparseForm::Auto,
        }
    }

    /// Distinct magnitudes (no ties), mixed signs.
    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let v = ((i * 7919) % (rows * cols)) as f32 + 1.0;
                if i % 3 == 0 { -v } else { v }
            })
            .collect()
    }

    fn zeros(w: &[f32]) -> usize {
        w.iter().filter(|v| **v == 0.0).count()
    }

    #[test]
    fn ratio_zero_is_identity_for_every_method() {
        let (rows, cols) = (8, 16);
        let norms = vec![1.0; cols];
        for method in [PruneMethod::Magnitude, PruneMethod::Wanda] {
            let mut w = matrix(rows, cols);
            prune_weights(&mut w, rows, cols, &knobs(method, 0.0), Some(&norms)).unwrap();
            assert_eq!(w, matrix(rows, cols));
        }
    }

    #[test]
    fn magnitude_prunes_exactly_the_smallest() {
        let (rows, cols) = (12, 20);
        for ratio in [0.1, 0.5, 0.73, 0.95] {
            let mut w = matrix(rows, cols);
            prune_weights(
                &mut w,
                rows,
                cols,
                &knobs(PruneMethod::Magnitude, ratio),
                None,
            )
            .unwrap();
            assert_eq!(zeros(&w), (240.0 * ratio).floor() as usize);
            let orig = matrix(rows, cols);
            let kept_min = w
                .iter()
                .filter(|v| **v != 0.0)
                .map(|v| v.abs())
                .fold(f32::INFINITY, f32::min);
            let pruned_max = orig
                .iter()
                .zip(&w)
                .filter(|(_, p)| **p == 0.0)
                .map(|(o, _)| o.abs())
                .fold(0.0, f32::max);
            assert!(kept_min >= pruned_max, "ratio {ratio}");
        }
    }

    #[test]
    fn magnitude_counts_are_exact_under_ties() {
        let mut w = vec![1.0f32; 100];
        prune_weights(&mut w, 10, 10, &knobs(PruneMethod::Magnitude, 0.37), None).unwrap();
        assert_eq!(zeros(&w), 37);
    }

    #[test]
    fn wanda_prunes_each_row_and_equals_row_magnitude_with_equal_norms() {
        let (rows, cols) = (9, 24);
        let k = knobs(PruneMethod::Wanda, 0.5);
        let mut w = matrix(rows, cols);
        prune_weights(&mut w, rows, cols, &k, Some(&vec![2.5; cols])).unwrap();
        for row in w.chunks(cols) {
            assert_eq!(zeros(row), 12);
        }
        // Per-row magnitude pruning by hand.
        let mut want = matrix(rows, cols);
        for row in want.chunks_mut(cols) {
            let scores: Vec<f32> = row.iter().map(|v| v.abs()).collect();
            zero_lowest(row, &scores, 0.5);
        }
        assert_eq!(w, want);
        assert!(prune_weights(&mut matrix(rows, cols), rows, cols, &k, None).is_err());
    }

    #[test]
    fn wanda_mask_is_invariant_to_function_preserving_rescale() {
        let (rows, cols) = (6, 16);
        let k = knobs(PruneMethod::Wanda, 0.5);
        let norms: Vec<f64> = (0..cols).map(|j| 0.5 + (j * 5 % 7) as f64).collect();
        let mut a = matrix(rows, cols);
        prune_weights(&mut a, rows, cols, &k, Some(&norms)).unwrap();
        // W[:, j] / s_j with X[:, j] · s_j (powers of two: exact), and all of X scaled by 3.
        let s: Vec<f32> = (0..cols).map(|j| 2f32.powi(j as i32 % 5 - 2)).collect();
        let mut b: Vec<f32> = matrix(rows, cols)
            .iter()
            .enumerate()
            .map(|(i, v)| v / s[i % cols])
            .collect();
        let scaled: Vec<f64> = norms
            .iter()
            .zip(&s)
            .map(|(n, s)| 3.0 * n * f64::from(*s))
            .collect();
        prune_weights(&mut b, rows, cols, &k, Some(&scaled)).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(*x == 0.0, *y == 0.0);
        }
    }

    #[test]
    fn nm_keeps_n_of_every_m() {
        let (rows, cols) = (5, 32);
        for (n, m) in [(2, 4), (4, 8)] {
            let k = PruneKnobs {
                method: PruneMethod::Nm,
                n,
                m,
                score: NmScore::Magnitude,
                ..knobs(PruneMethod::Nm, 0.0)
            };
            let mut w = matrix(rows, cols);
            prune_weights(&mut w, rows, cols, &k, None).unwrap();
            for g in w.chunks(m) {
                assert_eq!(zeros(g), m - n);
            }
            let form = inference_form(w.clone(), rows, cols, None, &k).unwrap();
            assert_eq!(form.form(), "nm");
            let back = form.to_dense().unwrap().flatten_all().unwrap();
            assert_eq!(back.to_vec1::<f32>().unwrap(), w);
        }
        let k = knobs(PruneMethod::Nm, 0.0);
        assert!(prune_weights(&mut matrix(2, 10), 2, 10, &k, Some(&[1.0; 10])).is_err());
    }

    #[test]
    fn form_follows_density() {
        let (rows, cols) = (16, 32);
        for (ratio, forced, form) in [
            (0.5, SparseForm::Auto, "bitmask"),
            (0.99, SparseForm::Auto, "csr"),
            (0.3, SparseForm::Csr, "csr"),
            (0.9, SparseForm::Bitmask, "bitmask"),
            (0.9, SparseForm::Dense, "dense"),
        ] {
            let k = PruneKnobs {
                form: forced,
                ..knobs(PruneMethod::Magnitude, ratio)
            };
            let mut w = matrix(rows, cols);
            prune_weights(&mut w, rows, cols, &k, None).unwrap();
            let lw = inference_form(w.clone(), rows, cols, None, &k).unwrap();
            assert_eq!(lw.form(), form, "ratio {ratio}");
            let back = lw.to_dense().unwrap().flatten_all().unwrap();
            assert_eq!(back.to_vec1::<f32>().unwrap(), w);
        }
    }

    #[test]
    fn owl_ratios_keep_the_mean_and_the_band() {
        let d = [0.01, 0.03, 0.02, 0.08, 0.05];
        let r = owl_ratios(&d, 0.5, 0.08);
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        assert!((mean - 0.5).abs() < 1e-12);
        // The spread is exactly 2λ (OWL's usual "[s − λ, s + λ]" holds only when the scaled
        // ratios' mean is λ; in general the band is shifted by the mean).
        let (lo, hi) = (
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(0.0, f64::max),
        );
        assert!((hi - lo - 0.16).abs() < 1e-12, "{r:?}");
        // More outliers, never more sparsity.
        for i in 0..d.len() {
            for j in 0..d.len() {
                if d[i] > d[j] {
                    assert!(r[i] <= r[j]);
                }
            }
        }
        assert_eq!(owl_ratios(&d, 0.5, 0.0), vec![0.5; 5]);
        assert_eq!(owl_ratios(&[0.1; 3], 0.5, 0.08), vec![0.5; 3]);
        assert!((outlier_ratio(&[1.0, 1.0, 1.0, 10.0], 2.0) - 0.25).abs() < 1e-12);
    }
}
