//! The command line end to end on the bundled zoo: `allocate` writes a recipe that `run`
//! accepts, `info --json` describes the model, `bench kernels --json` reports every
//! configuration, and bad input is a one-line error with a failing exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::ok_json;

/// Runs the binary with a store of its own, so no run is served from an earlier one and the
/// repository's default store stays untouched.
fn reparam(args: &[&str]) -> Output {
    let store = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(args)
        .env("REPARAM_STORE", store.path())
        .output()
        .unwrap()
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
    let report = ok_json(&reparam(&[
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
    let info = ok_json(&reparam(&["info", "zoo:base", "--json"]));
    assert_eq!(info["layers"].as_array().unwrap().len(), 42);
    assert_eq!(info["config"]["num_kv_heads"], 2);
    assert_eq!(info["model_id"].as_str().unwrap().len(), 64);
}

#[test]
fn bench_kernels_reports_each_configuration() {
    let rows = ok_json(&reparam(&[
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
    // Tags follow `tag`'s rule everywhere, checked before any work.
    let recipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/recipes/rtn-4bit.toml"
    );
    let out = reparam(&["run", "zoo:multi", "--recipe", recipe, "--tag", "two words"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad tag `two words`"), "{err}");
    // Absurd sizes meet the memory check before any allocation, with or without the store.
    for extra in [&["--no-store"][..], &[][..]] {
        let mut args = vec!["run", "zoo:multi", "--recipe", recipe];
        args.extend_from_slice(&["--calib-samples", "1000000000", "--json"]);
        args.extend_from_slice(extra);
        let out = reparam(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("not enough memory"), "{extra:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn eval_prints_task_accuracy_as_json() {
    let json = ok_json(&reparam(&[
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
    let r = ok_json(&reparam(&[
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
    // Four planes on a small model: close to the base (zoo:multi measures KLD 0.08 and keeps
    // 97.5 % of these prompts), a fraction of its bytes.
    assert!(f("kld_mean") < 0.15, "{r}");
    assert!(f("top1_agree") > 0.9, "{r}");
    assert!(f("task_acc_mean") > 0.8, "{r}");
    assert!(f("bytes") < f("base_bytes") / 3.0, "{r}");
    // 4 planes + 4 scales of 16 bits (APoT codes) per 128 weights = 4.5, plus one base-exponent
    // byte per matrix.
    assert!(f("avg_bits") > 4.5 && f("avg_bits") < 4.51, "{r}");
    for k in [
        "ppl",
        "decode_tok_s",
        "prefill_tok_s",
        "compress_seconds",
        "task_acc_mean",
    ] {
        assert!(f(k).is_finite() && f(k) >= 0.0, "{k}: {r}");
    }
    // Latency is the median of its timed rounds, which lie within the reported range.
    for k in ["decode", "prefill"] {
        let range = r[format!("{k}_range")].as_array().unwrap();
        let (lo, hi) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
        let v = f(&format!("{k}_tok_s"));
        assert!(lo <= v && v <= hi, "{k}: {lo} <= {v} <= {hi}");
    }
    assert_eq!(r["tasks"].as_object().unwrap().len(), 4);
    assert_eq!(r["recipe_hash"].as_str().unwrap().len(), 64);
    assert_eq!(r["device"], "cpu");
}

/// Every computing subcommand takes `--device`; a build without CUDA refuses a GPU with the way
/// to get one, and a misspelled device names the accepted spellings. Nothing panics.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_is_refused_clearly_without_cuda() {
    let recipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/recipes/rtn-4bit.toml"
    );
    for args in [
        &["eval", "zoo:multi", "--device", "cuda"][..],
        &[
            "run",
            "zoo:multi",
            "--recipe",
            recipe,
            "--no-store",
            "--device",
            "cuda:1",
        ],
        &[
            "sensitivity",
            "zoo:multi",
            "--default-bits",
            "3",
            "--device",
            "cuda",
        ],
        &[
            "allocate",
            "zoo:multi",
            "--avg-bits",
            "3",
            "--device",
            "cuda",
        ],
    ] {
        let out = reparam(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = reparam(&["eval", "zoo:multi", "--device", "tpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda:N"), "{err}");
}

fn run_zoo_recipe(recipe: &str) -> serde_json::Value {
    ok_json(&reparam(&[
        "run",
        "zoo:multi",
        "--recipe",
        recipe,
        "--chunks",
        "2",
        "--prompts",
        "5",
        "--calib-samples",
        "4",
        "--json",
    ]))
}

#[test]
fn prune_recipes_run_on_a_zoo_model() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/recipes");
    let wanda = run_zoo_recipe(&format!("{dir}/wanda-50.toml"));
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    assert!((f(&wanda, "sparsity") - 0.5).abs() < 1e-3, "{wanda}");
    assert_eq!(wanda["flattened_blocks"], 0);
    // 50 % is stored as a bitmask: half the values plus one bit per weight (and a 32-bit row
    // start per row), ~17 bits per weight instead of 32.
    assert!(f(&wanda, "bytes") < f(&wanda, "base_bytes"), "{wanda}");
    let bits = f(&wanda, "avg_bits");
    assert!((17.0..17.5).contains(&bits), "{wanda}");
    assert!(f(&wanda, "kld_mean") < 0.5, "{wanda}");
    let nm = run_zoo_recipe(&format!("{dir}/nm-2of4.toml"));
    assert!((f(&nm, "sparsity") - 0.5).abs() < 1e-3, "{nm}");
    // 2:4 stored compressed: 9 bytes per 4 weights instead of 16.
    assert!((f(&nm, "avg_bits") - 18.0).abs() < 1e-9, "{nm}");
    assert!(f(&nm, "bytes") < f(&nm, "base_bytes"), "{nm}");
    assert_eq!(nm["tasks"].as_object().unwrap().len(), 4);
}

#[test]
fn flatten_and_drop_recipes_run_on_a_zoo_model() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/recipes");
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    for name in ["flatten-2", "drop-2"] {
        let r = run_zoo_recipe(&format!("{dir}/{name}.toml"));
        assert_eq!(r["flattened_blocks"], 2, "{name}: {r}");
        // Two of six blocks gone: the blocks are 1/6 of the bytes each, minus shared embeddings.
        assert!(f(&r, "bytes") < f(&r, "base_bytes"), "{name}: {r}");
        assert!(
            f(&r, "ppl").is_finite() && f(&r, "kld_mean") > 0.0,
            "{name}: {r}"
        );
        assert_eq!(r["tasks"].as_object().unwrap().len(), 4);
    }
}

#[test]
fn allocate_prune_owl_writes_a_recipe_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("owl.toml");
    let out = reparam(&[
        "allocate",
        "zoo:multi",
        "--prune",
        "0.5",
        "--owl",
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
    let r =
        reparam::technique::recipe::Recipe::from_toml(&std::fs::read_to_string(&recipe).unwrap())
            .unwrap();
    assert_eq!(r.layers.len(), 6, "one rule per block");
    let ratios: Vec<f64> = r
        .layers
        .iter()
        .map(|l| l.prune.as_ref().unwrap().ratio)
        .collect();
    let mean = ratios.iter().sum::<f64>() / 6.0;
    assert!((mean - 0.5).abs() < 1e-9, "{ratios:?}");
    let report = run_zoo_recipe(recipe.to_str().unwrap());
    assert!(
        (report["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-2,
        "{report}"
    );
}

#[test]
fn prune_with_shiftadd_is_a_recipe_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("both.toml");
    std::fs::write(
        &bad,
        "[[layers]]\nmatch = \"blk.*.*\"\n[layers.prune]\nratio = 0.5\n[layers.shiftadd]\nbits = 3\n",
    )
    .unwrap();
    let out = reparam(&["run", "zoo:multi", "--recipe", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("combines `prune` with `shiftadd`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn recipe_path(name: &str) -> String {
    format!("{}/experiments/recipes/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn run_shares_a_zoo_model_with_rps() {
    let run = |recipe: &str| {
        ok_json(&reparam(&[
            "run",
            "zoo:multi",
            "--recipe",
            recipe,
            "--chunks",
            "2",
            "--prompts",
            "5",
            "--json",
        ]))
    };
    // c = 1 with the fold mapping reproduces the model exactly, in an array plus a seed.
    let r = run(&recipe_path("rps-1x.toml"));
    assert_eq!(r["kld_mean"].as_f64().unwrap(), 0.0, "{r}");
    assert_eq!(r["rps_ratio"].as_f64().unwrap(), 1.0, "{r}");
    // c = 2 halves the linears' bytes (each keeps an 8-byte seed).
    let r = run(&recipe_path("rps-2x.toml"));
    assert_eq!(r["rps_ratio"].as_f64().unwrap(), 2.0, "{r}");
    let bits = r["avg_bits"].as_f64().unwrap();
    assert!(bits > 16.0 && bits < 16.01, "{r}");
    assert!(r["kld_mean"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn run_merges_the_zoo_and_reports_a_timeline() {
    let r = ok_json(&reparam(&[
        "run",
        "zoo:pre",
        "--recipe",
        &recipe_path("merge-opcm.toml"),
        "--chunks",
        "1",
        "--prompts",
        "4",
        "--json",
    ]));
    assert_eq!(r["merged_models"], 4, "{r}");
    let steps = r["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["model"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "zoo:pre-arith",
            "zoo:pre-brackets",
            "zoo:pre-reverse",
            "zoo:pre-recall"
        ]
    );
    for s in steps {
        assert_eq!(s["tasks"].as_object().unwrap().len(), 4, "{s}");
        assert!(s["task_acc_mean"].as_f64().is_some(), "{s}");
    }
    // The last step's accuracies are the run's.
    assert_eq!(steps[3]["tasks"], r["tasks"]);
    assert_eq!(steps[3]["task_acc_mean"], r["task_acc_mean"]);
    // A model of another architecture is refused with a one-line error.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[merge]\nmodels = [\"zoo:pre-arith\", \"/no/such/model\"]\nmethod = \"average\"\n",
    )
    .unwrap();
    let out = reparam(&["run", "zoo:pre", "--recipe", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/model") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bench_kernels_compares_rps_with_dense() {
    let rows = ok_json(&reparam(&[
        "bench",
        "kernels",
        "--small",
        "--bits",
        "2",
        "--threads",
        "1",
        "--rps-ratios",
        "2",
        "--json",
    ]));
    let rps: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "rps")
        .collect();
    assert_eq!(rps.len(), 4);
    for r in rps {
        for k in ["rps_us", "dense_us", "dense_loop_us"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

/// `--prompts 0` measures no task (no 0 % figures); `eval --tasks` with it is an error.
#[test]
fn zero_prompts_measure_no_task() {
    let recipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/recipes/rtn-4bit.toml"
    );
    let r = ok_json(&reparam(&[
        "run",
        "zoo:multi",
        "--recipe",
        recipe,
        "--chunks",
        "2",
        "--prompts",
        "0",
        "--json",
        "--no-store",
    ]));
    assert!(
        r.get("tasks").is_none() && r.get("task_acc_mean").is_none(),
        "{r}"
    );
    let out = reparam(&["eval", "zoo:multi", "--tasks", "--prompts", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompts 0"));
}

/// What users bring from other tools becomes a recipe that runs: a mergekit config (task
/// arithmetic over two zoo fine-tunes) and a llama.cpp `--tensor-type` list.
#[test]
fn imported_mergekit_and_tensor_type_recipes_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("merge.yml");
    std::fs::write(
        &config,
        "merge_method: task_arithmetic\nbase_model: zoo:base\nmodels:\n  - model: zoo:arith\n    \
         parameters:\n      weight: 0.3\n  - model: zoo:reverse\n    parameters:\n      \
         weight: 0.3\ndtype: float32\n",
    )
    .unwrap();
    let merge = dir.path().join("merge.toml");
    let out = reparam(&[
        "import",
        "--mergekit",
        config.to_str().unwrap(),
        "--out",
        merge.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ok_json(&reparam(&[
        "run",
        "zoo:base",
        "--recipe",
        merge.to_str().unwrap(),
        "--chunks",
        "1",
        "--prompts",
        "4",
        "--json",
    ]));
    assert_eq!(r["merged_models"], 2, "{r}");

    let list = dir.path().join("types.txt");
    std::fs::write(&list, "--tensor-type attn_v=q8_0\nblk\\.\\d+\\..*=q4_0\n").unwrap();
    let rtn = dir.path().join("rtn.toml");
    let out = reparam(&[
        "import",
        "--tensor-types",
        list.to_str().unwrap(),
        "--out",
        rtn.to_str().unwrap(),
        "--model",
        "zoo:multi",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("42 of 42 linears set"),
        "{err}"
    );
    let r = ok_json(&reparam(&[
        "run",
        "zoo:multi",
        "--recipe",
        rtn.to_str().unwrap(),
        "--chunks",
        "1",
        "--prompts",
        "0",
        "--json",
    ]));
    assert!(r["kld_mean"].as_f64().is_some_and(|k| k.is_finite()), "{r}");
}
