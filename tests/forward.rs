//! The forward pass: cached decode, partial logits, batching and the differentiable kernels
//! all compute the same function.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::Tensor;
use common::{TinySpec, max_abs_diff};
use reparam::model::{Kernels, KvCache, Model, NoHook};

const TOKENS: [u32; 9] = [5, 77, 200, 3, 3, 150, 42, 255, 9];

/// Same maths in another summation order.
const REORDER_TOL: f32 = 1e-4;

fn tiny() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_hf(dir.path(), 1);
    let m = Model::load(dir.path()).unwrap();
    (dir, m)
}

fn logits(model: &Model, tokens: &[u32]) -> Tensor {
    model
        .transformer
        .forward(tokens, None, &mut NoHook, 0)
        .unwrap()
}

#[test]
fn kv_cache_decode_matches_full_forward() {
    let (_dir, m) = tiny();
    let full = logits(&m, &TOKENS);
    let mut cache = KvCache::default();
    let t = &m.transformer;
    let mut rows = vec![
        t.forward(&TOKENS[..4], Some(&mut cache), &mut NoHook, 0)
            .unwrap(),
    ];
    for &tok in &TOKENS[4..] {
        rows.push(t.forward(&[tok], Some(&mut cache), &mut NoHook, 0).unwrap());
    }
    assert_eq!(cache.len(), TOKENS.len());
    let inc = Tensor::cat(&rows, 0).unwrap();
    let diff = max_abs_diff(&full, &inc);
    assert!(diff < REORDER_TOL, "cached decode differs by {diff}");
}

#[test]
fn logits_from_skips_only_the_head() {
    let (_dir, m) = tiny();
    let full = logits(&m, &TOKENS);
    let tail = m
        .transformer
        .forward(&TOKENS, None, &mut NoHook, 5)
        .unwrap();
    let diff = max_abs_diff(&full.narrow(0, 5, TOKENS.len() - 5).unwrap(), &tail);
    assert!(diff < REORDER_TOL);
}

#[test]
fn batched_forward_equals_one_sequence_at_a_time() {
    let (_dir, m) = tiny();
    let (a, b) = (&TOKENS[..6], &TOKENS[3..]);
    let ids = Tensor::new([a, b].concat(), &candle_core::Device::Cpu)
        .unwrap()
        .reshape((2, 6))
        .unwrap();
    let both = m
        .transformer
        .forward_batch(&ids, None, &mut NoHook, 2)
        .unwrap();
    let single = Tensor::cat(
        &[
            m.transformer.forward(a, None, &mut NoHook, 2).unwrap(),
            m.transformer.forward(b, None, &mut NoHook, 2).unwrap(),
        ],
        0,
    )
    .unwrap();
    let diff = max_abs_diff(&both, &single);
    assert!(diff < REORDER_TOL, "batched forward differs by {diff}");
}

#[test]
fn autograd_kernels_compute_the_same_function() {
    let (_dir, mut m) = tiny();
    let fast = logits(&m, &TOKENS);
    m.transformer.kernels = Kernels::Autograd;
    let slow = logits(&m, &TOKENS);
    let diff = max_abs_diff(&fast, &slow);
    assert!(diff < REORDER_TOL, "autograd kernels differ by {diff}");
}

/// A model whose activations overflow fails the measurement with the reason; its NaN never
/// becomes a perplexity or a KL divergence of 0 (which once made such a run the knee of a front).
#[test]
fn non_finite_logits_fail_the_evaluation() {
    let (_dir, base) = tiny();
    let mut broken = base.clone();
    let w = &mut broken.transformer.blocks[1].ffn_down;
    let dense = w.to_dense().unwrap();
    *w = reparam::model::LinearWeight::dense((dense * f64::INFINITY).unwrap(), None);
    let tokens: Vec<u32> = (0..64).map(|i| (i * 37 % 250) as u32).collect();
    let opts = reparam::eval::PerplexityOptions {
        ctx: 16,
        chunks: Some(2),
    };
    assert!(reparam::eval::perplexity(&base, &tokens, opts, None, &mut |_, _| true).is_ok());
    for reference in [None, Some(&base)] {
        let err = reparam::eval::perplexity(&broken, &tokens, opts, reference, &mut |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-finite logit"), "{err}");
    }
    // The base measured against the broken model as its reference fails too.
    let err = reparam::eval::perplexity(&base, &tokens, opts, Some(&broken), &mut |_, _| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite logit"), "{err}");
}
