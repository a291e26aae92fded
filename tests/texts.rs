//! The bundled texts keep calibration and evaluation apart: the calibration mixture shares no
//! word 12-gram with any domain of the held-out suite; on SmolLM2, every domain fills the
//! standard evaluation (ctx 512 × 16 chunks), `reparam eval --suite` reports each domain and
//! their token-weighted combination, and a run calibrated on an evaluated text is warned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use reparam::eval::suite::{HELD_OUT, shared_ngram_fraction, suite_domains};
use reparam::model::Model;

const CALIB_MIX: &str = include_str!("../assets/text/calib-mix.txt");

#[test]
fn the_calibration_mixture_shares_no_document_with_the_suite() {
    let domains = suite_domains(HELD_OUT).unwrap();
    assert_eq!(
        domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["prose", "dialogue", "technical", "code", "tables", "legal"]
    );
    for d in &domains {
        let f = shared_ngram_fraction(CALIB_MIX, &d.text);
        assert_eq!(
            f,
            0.0,
            "calibration shares {:.3} % of {}'s 12-grams",
            100.0 * f,
            d.name
        );
    }
    // The check itself sees overlap: a domain against itself shares everything.
    assert_eq!(
        shared_ngram_fraction(&domains[0].text, &domains[0].text),
        1.0
    );
}

#[test]
fn every_domain_fills_the_standard_evaluation_on_smollm2() {
    let Some(path) = common::smollm2_file() else {
        return;
    };
    let model = Model::load(&path).unwrap();
    for d in suite_domains(HELD_OUT).unwrap() {
        let n = model.tokenizer.encode(&d.text, true).unwrap().len();
        assert!(n > 512 * 16, "{}: {n} tokens", d.name);
    }
    let n = model.tokenizer.encode(CALIB_MIX, true).unwrap().len();
    assert!(n > 32 * 512 / 2, "calibration mixture: {n} tokens");
}

#[test]
fn eval_on_the_suite_reports_each_domain_and_their_token_weighted_mean() {
    let Some(path) = common::smollm2_file() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(["eval", path.to_str().unwrap(), "--suite", HELD_OUT])
        .args(["--ctx", "64", "--chunks", "2", "--json"])
        .output()
        .unwrap();
    let v = common::ok_json(&out);
    assert_eq!(v["evaluated_on"], "suite held-out");
    let domains = v["domains"].as_object().unwrap();
    assert_eq!(domains.len(), 6);
    let (mut nll, mut tokens) = (0.0, 0.0);
    for d in domains.values() {
        let t = d["tokens"].as_f64().unwrap();
        assert_eq!(
            t,
            2.0 * 31.0,
            "llama.cpp windowing scores the second half of each chunk but its first token"
        );
        nll += t * d["ppl"].as_f64().unwrap().ln();
        tokens += t;
    }
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(((nll / tokens).exp() - ppl).abs() < 1e-9 * ppl, "{ppl}");
    // Code and tables are not prose: the domains really differ.
    let p = |d: &str| domains[d]["ppl"].as_f64().unwrap();
    assert!((p("prose") - p("tables")).abs() > 0.1, "{domains:?}");

    // `--text` and `--suite` together are refused.
    let both = Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args([
            "eval",
            path.to_str().unwrap(),
            "--suite",
            HELD_OUT,
            "--text",
            "x.txt",
        ])
        .output()
        .unwrap();
    assert!(!both.status.success());
}

#[test]
fn calibrating_on_an_evaluated_text_is_warned() {
    let Some(path) = common::smollm2_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[[layers]]\nmatch = \"blk.0.ffn_down\"\n[layers.prune]\nmethod = \"magnitude\"\nratio = 0.1\n",
    )
    .unwrap();
    let licenses = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/licenses.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args([
            "run",
            path.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
        ])
        .args(["--suite", HELD_OUT, "--calib-text", licenses])
        .args([
            "--ctx",
            "64",
            "--chunks",
            "1",
            "--calib-samples",
            "1",
            "--calib-len",
            "64",
        ])
        .args(["--no-store", "--json"])
        .output()
        .unwrap();
    let v = common::ok_json(&out);
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("overlaps the evaluated text (legal (100 %))"),
        "{notes}"
    );
    assert_eq!(v["domains"].as_object().unwrap().len(), 6);
}
