//! The command line end to end on the bundled zoo: `allocate` writes a recipe that `run`
//! accepts, `info --json` describes the model, `bench kernels --json` reports every
//! configuration, and bad input is a one-line error with a failing exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn reparam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn allocate_writes_a_recipe_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("mix.toml");
    let out = reparam(&[
        "allocate",
        "zoo:multi",
        "--avg-bits",
        "2.5",
        "--calib-samples",
        "4",
        "--out",
        recipe.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&recipe).unwrap();
    let r = reparam::technique::recipe::Recipe::from_toml(&text).unwrap();
    assert_eq!(r.layers.len(), 6 * 7, "one rule per linear");
    let report = json(&reparam(&[
        "run",
        "zoo:multi",
        "--recipe",
        recipe.to_str().unwrap(),
        "--chunks",
        "2",
        "--prompts",
        "5",
        "--calib-samples",
        "4",
        "--json",
        // Measured fresh, not written into the repository's default store.
        "--no-store",
    ]));
    // At most 2.5 planes on average, each with a 32-bit scale per 128 weights: ≤ 2.5 · 1.25.
    let bits = report["avg_bits"].as_f64().unwrap();
    assert!(bits > 2.5 && bits <= 3.125 + 1e-9, "{report}");
}

#[test]
fn info_describes_every_linear() {
    let info = json(&reparam(&["info", "zoo:base", "--json"]));
    assert_eq!(info["layers"].as_array().unwrap().len(), 42);
    assert_eq!(info["config"]["num_kv_heads"], 2);
    assert_eq!(info["model_id"].as_str().unwrap().len(), 64);
}

#[test]
fn bench_kernels_reports_each_configuration() {
    let rows = json(&reparam(&[
        "bench",
        "kernels",
        "--small",
        "--bits",
        "2,3",
        "--threads",
        "1",
        "--json",
    ]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4 * 2);
    for r in rows {
        for k in ["lut_us", "dense_us", "dense_loop_us"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[layers]]\nmatch = \"blk.*.nothing\"\n[layers.rtn]\nbits = 4\n",
    )
    .unwrap();
    let out = reparam(&["run", "zoo:multi", "--recipe", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("matches no layer"),
        "{err}"
    );
    let out = reparam(&["eval", dir.path().join("missing.gguf").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("missing.gguf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn eval_prints_task_accuracy_as_json() {
    let json = json(&reparam(&[
        "eval",
        "zoo:multi",
        "--tasks",
        "--prompts",
        "20",
        "--json",
    ]));
    let tasks = json["tasks"].as_object().unwrap();
    assert_eq!(tasks.len(), 4);
    for (task, acc) in tasks {
        let acc = acc.as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{task}: {acc}");
    }
    assert!(json["ppl"].as_f64().unwrap().is_finite());
    assert!(json["task_acc_mean"].as_f64().is_some());
}

#[test]
fn run_applies_a_recipe_to_a_zoo_model() {
    let recipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/recipes/shiftadd-4bit.toml"
    );
    let r = json(&reparam(&[
        "run",
        "zoo:multi",
        "--recipe",
        recipe,
        "--chunks",
        "4",
        "--prompts",
        "10",
        "--calib-samples",
        "4",
        "--json",
        // Measured fresh, not written into the repository's default store.
        "--no-store",
    ]));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {r}"));
    // Four planes on a small model: close to the base, a fraction of its bytes.
    assert!(f("kld_mean") < 0.05, "{r}");
    assert!(f("top1_agree") > 0.9, "{r}");
    assert!(f("bytes") < f("base_bytes") / 3.0, "{r}");
    assert!((f("avg_bits") - 5.0).abs() < 1e-9, "{r}");
    for k in [
        "ppl",
        "decode_tok_s",
        "prefill_tok_s",
        "compress_seconds",
        "task_acc_mean",
    ] {
        assert!(f(k).is_finite() && f(k) >= 0.0, "{k}: {r}");
    }
    assert_eq!(r["tasks"].as_object().unwrap().len(), 4);
    assert_eq!(r["recipe_hash"].as_str().unwrap().len(), 64);
}
