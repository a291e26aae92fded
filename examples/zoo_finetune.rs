//! The training experiments of the zoo section in `experiments/RESULTS.md`: fine-tunes a zoo
//! model (`zoo:base` unless `--from` names another) on one task mix with a chosen schedule, then prints exact-match accuracy
//! on 200 held-out prompts per task, and `arith` split by its longest operand, as one JSON
//! object. Nothing is written. `zoo train` is how the zoo itself is built;
//! this is for trying a schedule before changing the zoo's plan.
//!
//! `cargo run --release --example zoo_finetune -- [--from MODEL] MIX STEPS LR BATCH LOSS
//! [LANG_WEIGHT]`, where MODEL is a model spec (`zoo:pre`, a directory), and
//! MIX is `task=weight,...` (e.g. `brackets=0.75,lang=0.25`), LOSS is `all` or `completions`,
//! and LANG_WEIGHT (default 1) weights each `lang` token in the loss against a task token.

use std::collections::BTreeMap;

use anyhow::Context as _;
use reparam::eval::tasks::{EVAL_PROMPTS_PER_TASK, complete, task_accuracy};
use reparam::model::load_spec;
use reparam::zoo::corpus::training_samples;
use reparam::zoo::tasks::{Task, eval_set, is_correct};
use reparam::zoo::train::{TrainOptions, train};
use reparam::zoo::{LossOn, token_stream};

/// Large training temporaries are reused instead of faulted in again each step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seeds of the samples and of the window order (fixed, so runs differ only in their knobs).
const SAMPLE_SEED: u64 = 7;
const TRAIN_SEED: u64 = 11;
/// Training lines generated, as for a zoo member.
const LINES: usize = 60_000;

fn parse_mix(spec: &str) -> anyhow::Result<Vec<(Task, f32)>> {
    spec.split(',')
        .map(|part| {
            let (task, weight) = part
                .split_once('=')
                .with_context(|| format!("`{part}` is not task=weight"))?;
            let task = Task::from_name(task).with_context(|| format!("unknown task `{task}`"))?;
            Ok((task, weight.parse()?))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let from = match args.first().map(String::as_str) {
        Some("--from") if args.len() > 1 => {
            let from = args.remove(1);
            args.remove(0);
            from
        }
        _ => "zoo:base".to_string(),
    };
    let ([mix, steps, lr, batch, loss], lang_weight) = (match args.as_slice() {
        [knobs @ .., w] if args.len() == 6 => (knobs, w.parse()?),
        knobs => (knobs, 1.0),
    }) else {
        anyhow::bail!(
            "usage: zoo_finetune [--from MODEL] MIX STEPS LR BATCH all|completions [LANG_WEIGHT]"
        );
    };
    let mix = parse_mix(mix)?;
    let loss = match loss.as_str() {
        "all" => LossOn::AllTokens,
        "completions" => LossOn::Completions,
        other => anyhow::bail!("LOSS is `all` or `completions`, not `{other}`"),
    };
    let steps: usize = steps.parse()?;
    let mut model = load_spec(&from)?;
    let tok_json = std::fs::read_to_string(model.path.join("tokenizer.json"))?;
    let tok: tokenizers::Tokenizer = tok_json
        .parse()
        .map_err(|e| anyhow::anyhow!("reading the zoo tokenizer: {e}"))?;
    let token = |s: &str| {
        tok.token_to_id(s)
            .with_context(|| format!("no token {s:?}"))
    };
    let (bos, newline) = (token("<s>")?, token("Ċ")?);
    let samples = training_samples(&mix, SAMPLE_SEED, LINES);
    let data = token_stream(&tok, &samples, newline, loss, lang_weight)?;
    let opts = TrainOptions {
        steps,
        batch: batch.parse()?,
        seq_len: reparam::zoo::SEQ_LEN,
        lr: lr.parse()?,
        warmup_steps: (steps / 10).clamp(1, 100),
        weight_decay: 0.1,
        seed: TRAIN_SEED,
    };
    let start = std::time::Instant::now();
    train(
        &mut model.transformer,
        &data,
        bos,
        &opts,
        &mut |step, loss| {
            if step % 100 == 0 {
                eprintln!(
                    "[{:>5.0}s] step {step} loss {loss:.4}",
                    start.elapsed().as_secs_f64()
                );
            }
            true
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let tasks = task_accuracy(&model, &Task::SKILLS, EVAL_PROMPTS_PER_TASK, &mut |_, _| {
        true
    })?;
    let mut arith_by_digits: BTreeMap<usize, [usize; 2]> = BTreeMap::new();
    for sample in eval_set(Task::Arith, EVAL_PROMPTS_PER_TASK) {
        // Operands are zero-padded; their length is that of the number.
        let digits = sample
            .prompt
            .split(' ')
            .filter_map(|word| word.parse::<u32>().ok())
            .map(|n| n.to_string().len())
            .max()
            .unwrap_or(0);
        let right = is_correct(&sample, &complete(&model, &sample)?);
        let entry = arith_by_digits.entry(digits).or_default();
        entry[0] += usize::from(right);
        entry[1] += 1;
    }
    let report = serde_json::json!({
        "from": from,
        "args": args,
        "train_seconds": seconds,
        "tasks": tasks,
        "arith_right_of_n_by_longest_operand": arith_by_digits,
    });
    println!("{report}");
    Ok(())
}
