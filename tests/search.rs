//! The search on the bundled zoo model: the measurement table is complete, stored and reused
//! (a second pass measures nothing), the predictor's bytes are the compressed model's exact
//! bytes and its KLD the sum of the table's rows, and `reparam search --measure` runs points of
//! the predicted front as real stored jobs and reports how well the prediction ranked them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use reparam::model::load_spec;
use reparam::search::{
    CandidateFile, Goal, MeasureInputs, MeasureSettings, Predictor, Role, ensure_measured,
    predicted_front,
};
use reparam::technique::CalibOptions;
use reparam::technique::measure::{DENSE, EMBEDDING_LAYER, FIXED_LAYER};

const CANDIDATES: &str = r#"
embedding = [8]

[[candidate]]
rtn = { bits = 3, group = 32 }

[[candidate]]
match = "blk.*.ffn_*"
prune = { method = "wanda", ratio = 0.5 }
"#;

fn inputs(base: &reparam::model::Model) -> MeasureInputs {
    let text = reparam::calib::calibration_text(base, None).unwrap();
    let tokens = base.tokenizer.encode(&text, true).unwrap();
    let calib = CalibOptions {
        samples: 4,
        seq_len: 64,
    };
    MeasureInputs {
        eval_tokens: tokens[..128].to_vec(),
        timing_tokens: tokens[..200].to_vec(),
        calib_tokens: tokens.clone(),
        settings: MeasureSettings {
            text: "test".into(),
            tokens: 128,
            ctx: 64,
            calib_text: "test".into(),
            calib,
            seed: 0,
            threads: 1,
            code_version: "test".into(),
        },
        timing: Some(reparam::engine::EngineOptions {
            threads: 1,
            ..Default::default()
        }),
    }
}

#[test]
fn the_table_is_complete_reused_and_sums_to_exact_bytes() {
    let store = tempfile::tempdir().unwrap();
    let base = load_spec("zoo:multi").expect("zoo:multi");
    let file = CandidateFile::from_toml(CANDIDATES).unwrap();
    let inputs = inputs(&base);
    let first = ensure_measured(store.path(), &base, &file, &inputs, None, &mut |_, _, _| {
        true
    })
    .unwrap();
    let linears = base.transformer.linear_ids().count();
    let ffn = base.transformer.blocks.len() * 3;
    // dense + rtn everywhere, wanda on the FFN; embedding dense + 8 bits; the fixed row.
    assert_eq!(first.measured, 2 * linears + ffn + 2 + 1);
    assert_eq!(first.rows.len(), first.measured);
    assert_eq!(first.reused, 0);
    for r in &first.rows {
        assert!(r.kld.is_finite() && r.kld >= 0.0, "{r:?}");
        assert!(r.seconds.is_finite() && r.seconds >= 0.0, "{r:?}");
        if r.candidate == DENSE {
            assert_eq!((r.kld, r.bytes), (0.0, r.base_bytes), "{r:?}");
        } else {
            assert!(r.kld > 0.0 && r.bytes < r.base_bytes, "{r:?}");
        }
    }
    assert!(first.rows.iter().any(|r| r.layer == FIXED_LAYER));
    assert!(first.rows.iter().any(|r| r.layer == EMBEDDING_LAYER));
    let again = ensure_measured(store.path(), &base, &file, &inputs, None, &mut |_, _, _| {
        true
    })
    .unwrap();
    assert_eq!((again.measured, again.reused), (0, first.rows.len()));

    let p = Predictor::new(&again.rows, &file, &base.transformer).unwrap();
    // All dense: the base's bytes exactly, no divergence.
    let dense = p.predict(&vec![0; p.genes.len()]);
    assert_eq!(dense.bytes as usize, base.transformer.size_bytes());
    assert_eq!(dense.kld_mean, 0.0);
    assert!(dense.decode_tok_s > 0.0);
    // Every layer at RTN 3-bit, embedding 8-bit: the predicted KLD is the sum of those rows,
    // and the bytes are those of the model the recipe really makes.
    let genes: Vec<usize> = p
        .genes
        .iter()
        .map(|g| {
            g.choices
                .iter()
                .position(|c| c.key.contains("\"rtn\"") || c.key == "embedding 8b")
                .unwrap()
        })
        .collect();
    let pred = p.predict(&genes);
    let summed: f64 = again
        .rows
        .iter()
        .filter(|r| r.candidate.contains("\"rtn\"") || r.candidate == "embedding 8b")
        .map(|r| r.kld)
        .sum();
    assert!((pred.kld_mean - summed).abs() < 1e-12);
    let recipe = p.recipe(&genes, &file, 0);
    assert_eq!(recipe.embedding.as_ref().map(|e| e.bits), Some(8));
    let calib = reparam::calib::calibration_tokens(&base, None).unwrap();
    let compressed = reparam::technique::apply(
        &base,
        &recipe,
        &calib,
        inputs.settings.calib,
        &mut |_, _, _| true,
    )
    .unwrap();
    assert_eq!(
        pred.bytes as usize,
        compressed.model.transformer.size_bytes()
    );

    // The front: sorted by bytes, KLD falling, every point within the budget.
    let budget = (dense.bytes as f64 * 0.6) as u64;
    let front = predicted_front(
        &p,
        &Goal {
            max_bytes: Some(budget),
            ..Goal::default()
        },
    );
    assert!(front.len() >= 3, "{} front points", front.len());
    for w in front.windows(2) {
        assert!(w[0].predicted.bytes <= w[1].predicted.bytes);
        assert!(w[0].predicted.kld_mean > w[1].predicted.kld_mean);
    }
    assert!(front.iter().all(|f| f.predicted.bytes <= budget));
}

/// RTN 3-bit everywhere, the embedding at 8 bits, and a depth change at every block.
const DEPTH: &str = r#"
embedding = [8]
depth = "METHOD"

[[candidate]]
rtn = { bits = 3, group = 32 }
"#;

#[test]
fn depth_changes_are_measured_predicted_exactly_and_applied() {
    let store = tempfile::tempdir().unwrap();
    let base = load_spec("zoo:multi").expect("zoo:multi");
    let n = base.transformer.blocks.len();
    assert!(n >= 5, "the test needs blocks 1, 2 and n - 2 apart");
    let inputs = inputs(&base);
    let calib = reparam::calib::calibration_tokens(&base, None).unwrap();
    let is_depth = |key: &str| key == "drop" || key.starts_with("flatten");
    for (method, merged) in [("drop", 1), ("flatten", 2)] {
        let file = CandidateFile::from_toml(&DEPTH.replace("METHOD", method)).unwrap();
        let table = ensure_measured(store.path(), &base, &file, &inputs, None, &mut |_, _, _| {
            true
        })
        .unwrap();
        // A change at every block but the last; a flattened pair as it comes out and at RTN.
        let rows: Vec<_> = table
            .rows
            .iter()
            .filter(|r| r.candidate.starts_with(method))
            .collect();
        assert_eq!(rows.len(), (n - 1) * merged, "{method}");
        for r in &rows {
            assert!(r.kld.is_finite() && r.kld > 0.0, "{r:?}");
            assert!(r.seconds.is_finite() && r.seconds >= 0.0, "{r:?}");
        }
        let p = Predictor::new(&table.rows, &file, &base.transformer).unwrap();
        // Changes at blocks 1, 2 and n - 2 (a flattened 1-2 covers block 2, so the change
        // there is not taken); every other linear at RTN 3-bit, the embedding at 8 bits.
        let quantized = |key: &str| key.contains("\"rtn\"") || key == "embedding 8b";
        let genes: Vec<usize> = p
            .genes
            .iter()
            .map(|g| match g.role {
                Role::Depth(b) if [1, 2, n - 2].contains(&b) => g
                    .choices
                    .iter()
                    .position(|c| c.key == "drop" || (is_depth(&c.key) && quantized(&c.key)))
                    .unwrap(),
                Role::Depth(_) => 0,
                _ => g.choices.iter().position(|c| quantized(&c.key)).unwrap(),
            })
            .collect();
        let taken: Vec<usize> = if method == "drop" {
            vec![1, 2, n - 2]
        } else {
            vec![1, n - 2]
        };
        let recipe = p.recipe(&genes, &file, 0);
        let step = recipe.flatten.as_ref().expect("a depth step");
        let pairs: Vec<[usize; 2]> = taken.iter().map(|&b| [b, b + 1]).collect();
        assert_eq!(step.pairs, pairs, "{method}");
        // The prediction sums exactly the rows the assignment takes.
        let span = if method == "drop" { 1 } else { 2 };
        let replaced = |layer: &str| {
            taken
                .iter()
                .any(|&b| (b..b + span).any(|i| layer.starts_with(&format!("blk.{i}."))))
        };
        let summed: f64 = table
            .rows
            .iter()
            .filter(|r| {
                let depth_taken = taken.iter().any(|&b| {
                    let name = if method == "drop" {
                        format!("blk.{b}")
                    } else {
                        format!("blk.{b}-{}", b + 1)
                    };
                    r.layer == name
                });
                if is_depth(&r.candidate) {
                    depth_taken && (r.candidate == "drop" || quantized(&r.candidate))
                } else {
                    quantized(&r.candidate) && !replaced(&r.layer)
                }
            })
            .map(|r| r.kld)
            .sum();
        let pred = p.predict(&genes);
        assert!((pred.kld_mean - summed).abs() < 1e-12, "{method}");
        // The recipe (its layer rules numbered after the depth step) makes a model with the
        // predicted bytes exactly, every remaining linear quantized.
        let compressed = reparam::technique::apply(
            &base,
            &recipe,
            &calib,
            inputs.settings.calib,
            &mut |_, _, _| true,
        )
        .unwrap();
        let t = &compressed.model.transformer;
        assert_eq!(t.blocks.len(), n - taken.len(), "{method}");
        assert_eq!(pred.bytes as usize, t.size_bytes(), "{method}");
        for id in t.linear_ids() {
            assert!(
                !matches!(
                    t.linear(id),
                    Some(reparam::model::LinearWeight::Dense { .. })
                ),
                "{method}: {id} left dense"
            );
        }
    }
}

#[test]
fn search_cli_measures_points_of_the_front_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("candidates.toml");
    std::fs::write(&cands, CANDIDATES).unwrap();
    let store = dir.path().join("store");
    // Small settings: 4 calibration windows, 128 measured tokens, 2 evaluation chunks.
    let search = || {
        let out = Command::new(env!("CARGO_BIN_EXE_reparam"))
            .args(["search", "zoo:multi", "--candidates"])
            .arg(&cands)
            .arg("--store")
            .arg(&store)
            .args(["--calib-samples", "4", "--calib-len", "64"])
            .args(["--measure-tokens", "128", "--measure-ctx", "64"])
            .args(["--ctx", "64", "--chunks", "2", "--prompts", "2"])
            .args(["--threads", "1", "--measure", "3", "--json"])
            .output()
            .unwrap();
        common::ok_json(&out)
    };
    let v = search();
    let front = v["front"].as_array().unwrap();
    assert!(front.len() >= 3);
    for p in front {
        let recipe: reparam::technique::recipe::Recipe =
            serde_json::from_value(p["recipe"].clone()).unwrap();
        recipe
            .resolve(&load_spec("zoo:multi").unwrap().transformer)
            .unwrap();
    }
    let measured = v["measured"].as_array().unwrap();
    assert_eq!(measured.len(), 3);
    for m in measured {
        assert!(m["kld_mean"].as_f64().unwrap() >= 0.0);
        assert!(m["predicted_kld"].as_f64().unwrap() >= 0.0);
        assert_eq!(
            m["bytes"].as_f64().unwrap(),
            m["predicted_bytes"].as_f64().unwrap()
        );
    }
    assert!(v["spearman"].as_f64().is_some());
    // The measured runs are in the store, tagged.
    let hist = Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(["history", "--tag", "search", "--json", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let runs = common::ok_json(&hist);
    assert_eq!(runs.as_array().map_or(0, Vec::len), 3);
    // A second search measures nothing and finds its runs stored.
    let v2 = search();
    assert_eq!(v2["table"]["measured_now"], 0);
    assert!(
        v2["measured"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["cached"] == true)
    );
}
