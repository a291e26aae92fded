//! The model zoo: training works (loss falls on a tiny run; side-by-side members match one-at-a-time ones), `zoo:NAME` resolves, and the shipped models in `assets/zoo` meet the quality bars
//! (measured here on held-out prompts; nothing is retrained).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use reparam::eval::tasks::{EVAL_PROMPTS_PER_TASK, task_accuracy};
use reparam::eval::{PerplexityOptions, perplexity};
use reparam::model::params::task_vector_gram;
use reparam::model::{Model, load_spec};
use reparam::zoo::corpus::{lang_eval_text, training_samples, training_text};
use reparam::zoo::tasks::{Sample, Task};
use reparam::zoo::train::{TrainOptions, init_transformer, train};
use reparam::zoo::{
    LANG_EVAL_SENTENCES, LossOn, MEMBERS, ZOO_META_FILE, ZooOptions, build_zoo, token_stream,
    tokenizer::train_tokenizer, zoo_config,
};

#[test]
fn a_short_training_run_lowers_the_loss() {
    let text = training_text(&[(Task::Lang, 0.5), (Task::Arith, 0.5)], 1, 3000);
    let lines: Vec<&str> = text.lines().collect();
    let json = train_tokenizer(&lines, 300).unwrap();
    let tok: tokenizers::Tokenizer = json.parse().unwrap();
    let samples = training_samples(&[(Task::Lang, 0.5), (Task::Arith, 0.5)], 1, 3000);
    let newline = tok.token_to_id("Ċ").unwrap();
    let data = token_stream(&tok, &samples, newline, LossOn::AllTokens, 1.0).unwrap();
    let mut config = zoo_config(tok.get_vocab_size(true));
    config.hidden_size = 64;
    config.intermediate_size = 128;
    config.num_layers = 2;
    config.head_dim = 16;
    let mut t = init_transformer(&config, 3).unwrap();
    let opts = TrainOptions {
        steps: 40,
        batch: 8,
        seq_len: 64,
        lr: 3e-3,
        warmup_steps: 5,
        weight_decay: 0.0,
        seed: 1,
    };
    let bos = tok.token_to_id("<s>").unwrap();
    let losses = train(&mut t, &data, bos, &opts, &mut |_, _| true).unwrap();
    let head: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = losses[35..].iter().sum::<f32>() / 5.0;
    // From ~ln(300) = 5.7 at random init; 40 steps reliably take off well over one nat.
    assert!(
        tail < head - 1.0,
        "loss went from {head} to {tail}: {losses:?}"
    );
}

#[test]
fn only_answers_and_weighted_language_count_in_the_loss() {
    let text = training_text(&[(Task::Lang, 0.5), (Task::Arith, 0.5)], 1, 2000);
    let lines: Vec<&str> = text.lines().collect();
    let tok: tokenizers::Tokenizer = train_tokenizer(&lines, 300).unwrap().parse().unwrap();
    let newline = tok.token_to_id("Ċ").unwrap();
    let samples = [
        Sample {
            task: Task::Arith,
            prompt: "0407 + 1385 = ".into(),
            completion: "01792".into(),
        },
        Sample {
            task: Task::Lang,
            prompt: String::new(),
            completion: "the old dogs sleep.".into(),
        },
    ];
    let stream = token_stream(&tok, &samples, newline, LossOn::Completions, 0.25).unwrap();
    assert_eq!(stream.loss_weight.len(), stream.tokens.len());
    let weighted = |range: std::ops::Range<usize>, weight: f32| -> String {
        assert!(
            range
                .clone()
                .all(|i| [0.0, weight].contains(&stream.loss_weight[i])),
            "{:?}",
            &stream.loss_weight[range]
        );
        let ids: Vec<u32> = range
            .filter(|&i| stream.loss_weight[i] > 0.0)
            .map(|i| stream.tokens[i])
            .collect();
        tok.decode(&ids, false).unwrap()
    };
    let second = stream.line_starts[1];
    assert_eq!(weighted(0..second, 1.0), " 01792\n");
    // The language line counts in full, at the `lang` weight.
    assert_eq!(
        weighted(second..stream.tokens.len(), 0.25),
        "the old dogs sleep.\n"
    );
}

/// Accuracy of every shipped zoo model on every task, and `lang` perplexity.
fn measure_zoo() -> BTreeMap<&'static str, (BTreeMap<String, f64>, f64)> {
    MEMBERS
        .iter()
        .map(|m| {
            let model = load_spec(&format!("zoo:{}", m.name))
                .unwrap_or_else(|e| panic!("the shipped zoo must load: {e:#}"));
            let acc = task_accuracy(&model, &Task::SKILLS, EVAL_PROMPTS_PER_TASK, &mut |_, _| {
                true
            })
            .unwrap();
            (m.name, (acc, lang_ppl(&model)))
        })
        .collect()
}

fn lang_ppl(model: &Model) -> f64 {
    let tokens = model
        .tokenizer
        .encode(&lang_eval_text(LANG_EVAL_SENTENCES), true)
        .unwrap();
    let opts = PerplexityOptions {
        ctx: model.config().max_position_embeddings,
        chunks: None,
    };
    perplexity(model, &tokens, opts, None, &mut |_, _| true)
        .unwrap()
        .ppl
}

/// The quality bars of the zoo issue, on the shipped models (see experiments/RESULTS.md):
/// `base` has learned the language and knows no task; every model keeps the language; `multi`
/// is ≥ 90 % on every task; each task model is ≥ 90 % on its own task and at least 30 points
/// below that on every other; the merge family as below.
#[test]
fn shipped_zoo_meets_the_quality_bars() {
    let results = measure_zoo();
    for (name, (acc, ppl)) in &results {
        eprintln!("{name:<9} ppl {ppl:6.3}  {acc:?}");
    }
    let (base, base_ppl) = &results["base"];
    assert!(*base_ppl < 5.0, "base lang perplexity {base_ppl}");
    for (task, a) in base {
        assert!(*a <= 0.01, "base: {task} accuracy {a} should be 0");
    }
    for (name, (acc, ppl)) in &results {
        assert!(
            *ppl < 1.5 * base_ppl,
            "{name} forgot the language: ppl {ppl} vs base {base_ppl}"
        );
        for a in acc.values() {
            assert!((0.0..=1.0).contains(a));
        }
    }
    let (multi, _) = &results["multi"];
    for (task, a) in multi {
        assert!(*a >= 0.9, "multi: {task} accuracy {a} < 0.9");
    }
    for task in Task::SKILLS {
        let (acc, _) = &results[task.name()];
        let own = acc[task.name()];
        assert!(own >= 0.9, "{task}: own-task accuracy {own} < 0.9");
        for (other, a) in acc {
            if other != task.name() {
                assert!(
                    *a <= own - 0.3,
                    "{task}: accuracy on {other} ({a}) is not clearly below its own ({own})"
                );
            }
        }
    }
    // The merge family: `pre` knows part of every task, and each specialist of it masters its
    // own task without falling below `pre` on the others.
    let (pre, _) = &results["pre"];
    for (task, a) in pre {
        assert!(
            (0.2..=0.8).contains(a),
            "pre: {task} accuracy {a} is not partial"
        );
    }
    for task in Task::SKILLS {
        let name = format!("pre-{}", task.name());
        let (acc, _) = &results[name.as_str()];
        let own = acc[task.name()];
        assert!(own >= 0.9, "{name}: own-task accuracy {own} < 0.9");
        for (other, a) in acc {
            assert!(
                *a >= pre[other],
                "{name}: {other} accuracy {a} fell below pre's {}",
                pre[other]
            );
        }
    }
}

/// Each member of the merge family records its task vector: its norm, and its cosine with
/// every sibling's, symmetric between the two.
#[test]
fn the_merge_family_records_its_task_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/zoo");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name).join(ZOO_META_FILE)).unwrap())
            .unwrap()
    };
    let names: Vec<String> = Task::SKILLS
        .iter()
        .map(|t| format!("pre-{}", t.name()))
        .collect();
    let pre = load_spec("zoo:pre").unwrap().transformer;
    for a in &names {
        let tv = &read(a)["task_vector"];
        let model = load_spec(&format!("zoo:{a}")).unwrap().transformer;
        let norm = task_vector_gram(&pre, &[&model]).unwrap()[0][0].sqrt();
        let recorded = tv["norm"].as_f64().unwrap();
        assert!(
            norm > 0.0 && (recorded - norm).abs() <= 1e-9 * norm,
            "{a}: {recorded} vs {norm}"
        );
        for b in names.iter().filter(|b| *b != a) {
            let ab = tv["cosine"][b].as_f64().unwrap();
            let ba = read(b)["task_vector"]["cosine"][a].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&ab), "{a}/{b}: {ab}");
            assert!((ab - ba).abs() < 1e-9, "{a}/{b}: {ab} vs {ba}");
        }
    }
}

#[test]
fn unknown_zoo_name_is_a_clear_error() {
    let err = load_spec("zoo:nonexistent").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no bundled zoo model `nonexistent`"), "{msg}");
    // Paths are not zoo names, even when they lead to a real model directory.
    for spec in ["zoo:../zoo/multi", "zoo:/tmp", "zoo:", "zoo:multi/"] {
        let msg = format!("{:#}", load_spec(spec).unwrap_err());
        assert!(msg.contains("is not a zoo model name"), "{spec}: {msg}");
    }
}

/// Builds `only` with `jobs` members at once into a fresh directory, a few steps each.
fn tiny_build(only: &[&str], jobs: usize) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let opts = ZooOptions {
        out: dir.path().to_path_buf(),
        seed: 3,
        steps_scale: 0.002,
        only: Some(only.iter().map(|s| s.to_string()).collect()),
        jobs,
    };
    build_zoo(&opts, &mut |_, _, _, _| {})?;
    Ok(dir)
}

#[test]
fn members_trained_side_by_side_match_one_at_a_time() {
    let members = ["base", "brackets", "reverse"];
    let one = tiny_build(&members, 1).unwrap();
    let two = tiny_build(&members, 2).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for m in members {
        let weights = |dir: &tempfile::TempDir| {
            std::fs::read(dir.path().join(m).join("model.safetensors")).unwrap()
        };
        assert!(
            weights(&one) == weights(&two),
            "{m}: the weights depend on --jobs"
        );
        let threads = |dir: &tempfile::TempDir| -> u64 {
            let meta = std::fs::read_to_string(dir.path().join(m).join(ZOO_META_FILE)).unwrap();
            let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
            meta["train_threads"].as_u64().unwrap()
        };
        // `base` trains alone either way; the two fine-tunes split the cores when side by side.
        let side_by_side = if m == "base" {
            threads(&one)
        } else {
            (cores as u64 / 2).max(1)
        };
        assert_eq!(threads(&two), side_by_side, "{m}");
    }
}

#[test]
fn building_an_unknown_member_is_a_clear_error() {
    let err = tiny_build(&["base", "recal"], 2).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("`recal` is not a zoo member"), "{msg}");
    assert!(
        msg.contains("recall"),
        "the message lists the members: {msg}"
    );
}

/// A member that fails stops the one training beside it at its next step, rather than the
/// error waiting for that member to finish (an hour for `multi`).
#[test]
fn a_failing_member_stops_the_members_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = load_spec("zoo:base").unwrap().path;
    std::fs::create_dir(dir.path().join("base")).unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("base").join(entry.file_name()),
        )
        .unwrap();
    }
    // The zoo's tokenizer, as `zoo train --only` expects beside the members.
    std::fs::copy(
        shipped.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    // `reverse` (60 steps here) cannot write its directory; `arith` has 500 steps to go.
    std::fs::write(dir.path().join("reverse"), "not a directory").unwrap();
    let opts = ZooOptions {
        out: dir.path().to_path_buf(),
        seed: 3,
        steps_scale: 0.05,
        only: Some(vec!["arith".into(), "reverse".into()]),
        jobs: 2,
    };
    let mut arith_steps = 0;
    let err = build_zoo(&opts, &mut |name, step, _, _| {
        if name == "arith" {
            arith_steps = step;
        }
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("saving zoo member `reverse`"), "{msg}");
    assert!(arith_steps < 500, "arith ran to its end: {arith_steps}");
    assert!(!dir.path().join("arith").exists());
}
