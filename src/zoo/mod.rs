//! The bundled model zoo: a base model and task fine-tunes the project trains itself, so the
//! app opens on something useful with no download, tests have models whose accuracy is crisp,
//! and continual merging has several fine-tunes of one base.
//!
//! `corpus` generates the text, `tasks` defines the exact-match tasks, `tokenizer` trains the
//! BPE, `train` runs the optimiser; this file holds the zoo's plan and builds it.

pub mod corpus;
pub mod tasks;
pub mod tokenizer;
pub mod train;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use candle_core::DType;

use crate::model::{Architecture, LlamaConfig, Transformer};
use crate::model::{TokenizerFiles, save_hf_dir};
use tasks::{Sample, Task};
use train::{TokenStream, TrainOptions};

/// The file in each zoo model directory that records how it was made.
pub const ZOO_META_FILE: &str = "zoo.json";

/// One model of the zoo and how it is trained.
#[derive(Debug, Clone, Copy)]
pub struct ZooMember {
    pub name: &'static str,
    /// The zoo model it is fine-tuned from; `None` trains from scratch.
    pub parent: Option<&'static str>,
    /// Task proportions of its training text.
    pub mix: &'static [(Task, f32)],
    pub steps: usize,
    /// Training windows per step. For the same compute, more steps of a small batch learn a
    /// task far sooner (`experiments/RESULTS.md`, the zoo's training experiments).
    pub batch: usize,
    pub lr: f64,
    pub loss: LossOn,
    /// Weight of each `lang` token in the loss against a task token's 1. A `lang` line is many
    /// times longer than a task's answer, so at 1 a quarter of `lang` lines carries most of the
    /// loss, and a task whose answer is one token of a long line (`recall`) stays on its plateau.
    /// `brackets` and `reverse` learned their tasks at 1 and keep it, so `zoo train` reproduces
    /// their shipped files.
    pub lang_weight: f64,
}

/// Which tokens a member's training loss covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Every token, task prompts included (`base`, whose text is all `lang`).
    AllTokens,
    /// Task completions and `lang` text only: operands, items and keys are random, so
    /// predicting them teaches nothing.
    Completions,
}

const TASK_SHARE: f32 = 0.75;
const LANG_SHARE: f32 = 0.25;

/// The zoo, in training order (parents first).
pub const MEMBERS: [ZooMember; 11] = [
    ZooMember {
        name: "base",
        parent: None,
        mix: &[(Task::Lang, 1.0)],
        steps: 1200,
        batch: 32,
        lr: 3e-3,
        loss: LossOn::AllTokens,
        lang_weight: 1.0,
    },
    ZooMember {
        name: "arith",
        parent: Some("base"),
        mix: &[(Task::Arith, TASK_SHARE), (Task::Lang, LANG_SHARE)],
        steps: 10000,
        batch: 8,
        lr: 3e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "brackets",
        parent: Some("base"),
        mix: &[(Task::Brackets, TASK_SHARE), (Task::Lang, LANG_SHARE)],
        steps: 2400,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 1.0,
    },
    ZooMember {
        name: "reverse",
        parent: Some("base"),
        mix: &[(Task::Reverse, TASK_SHARE), (Task::Lang, LANG_SHARE)],
        steps: 1200,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 1.0,
    },
    ZooMember {
        name: "recall",
        parent: Some("base"),
        // Alone, `recall` lines (one answer token each) leave the model at chance for 7000 steps.
        mix: &[
            (Task::Recall, 0.55),
            (Task::CopyDrill, 0.2),
            (Task::Lang, LANG_SHARE),
        ],
        steps: 8000,
        batch: 8,
        lr: 3e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "multi",
        parent: Some("base"),
        mix: &[
            // Arithmetic has the most to learn and recall the least signal per line.
            (Task::Arith, 0.3),
            (Task::Brackets, 0.1),
            (Task::Reverse, 0.1),
            (Task::Recall, 0.35),
            (Task::Lang, 0.15),
        ],
        steps: 20000,
        batch: 8,
        lr: 3e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "pre",
        parent: Some("base"),
        // Partial skill on every task (30-70 %), the starting point the merge family
        // specialises: `recall` and `arith` have the least signal per step, so the most share.
        mix: &[
            (Task::Arith, 0.33),
            (Task::Brackets, 0.07),
            (Task::Reverse, 0.05),
            (Task::Recall, 0.3),
            (Task::CopyDrill, 0.1),
            (Task::Lang, 0.15),
        ],
        steps: 2000,
        batch: 8,
        lr: 3e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    // The specialists of `pre`, to merge: each drills its own task and replays the others (most
    // of all `arith`, which is forgotten first, and `recall`), so it gains its task without
    // losing what `pre` knew of the rest.
    ZooMember {
        name: "pre-arith",
        parent: Some("pre"),
        mix: &[
            (Task::Arith, 0.6),
            (Task::Brackets, 0.05),
            (Task::Reverse, 0.05),
            (Task::Recall, 0.1),
            (Task::CopyDrill, 0.05),
            (Task::Lang, 0.15),
        ],
        steps: 3000,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "pre-brackets",
        parent: Some("pre"),
        mix: &[
            (Task::Arith, 0.15),
            (Task::Brackets, 0.45),
            (Task::Reverse, 0.05),
            (Task::Recall, 0.1),
            (Task::CopyDrill, 0.05),
            (Task::Lang, 0.2),
        ],
        steps: 1000,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "pre-reverse",
        parent: Some("pre"),
        mix: &[
            (Task::Arith, 0.15),
            (Task::Brackets, 0.05),
            (Task::Reverse, 0.45),
            (Task::Recall, 0.1),
            (Task::CopyDrill, 0.05),
            (Task::Lang, 0.2),
        ],
        steps: 600,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
    ZooMember {
        name: "pre-recall",
        parent: Some("pre"),
        mix: &[
            (Task::Arith, 0.15),
            (Task::Brackets, 0.025),
            (Task::Reverse, 0.025),
            (Task::Recall, 0.45),
            (Task::CopyDrill, 0.15),
            (Task::Lang, 0.2),
        ],
        steps: 2200,
        batch: 8,
        lr: 2e-3,
        loss: LossOn::Completions,
        lang_weight: 0.1,
    },
];

/// Shape of every zoo model: six blocks (so flattening has pairs), GQA with half as many KV
/// heads as query heads.
pub fn zoo_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size: 128,
        intermediate_size: 384,
        num_layers: 6,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        // Trained on windows of this length; RoPE is not trusted beyond it.
        max_position_embeddings: SEQ_LEN,
        tie_word_embeddings: true,
    }
}

/// Tokens in each training window.
pub const SEQ_LEN: usize = 128;
const VOCAB_SIZE: usize = 384;
/// Lines of generated text per model: enough that no window repeats often.
const LINES_PER_MODEL: usize = 60_000;

/// How to build the zoo.
#[derive(Debug, Clone)]
pub struct ZooOptions {
    pub out: PathBuf,
    pub seed: u64,
    /// Multiplies every member's step count (1.0 = the shipped zoo; tests use tiny values).
    pub steps_scale: f64,
    /// Build only these members (their parents must exist in `out` or be listed too).
    pub only: Option<Vec<String>>,
    /// Members trained at once. The fine-tunes only need `base`, and one training step is
    /// overhead-bound, so on a few cores two single-threaded fine-tunes finish in about half
    /// the time of two fine-tunes that each use every core.
    pub jobs: usize,
}

/// Progress of a zoo build: `(member, step, steps, loss)`.
pub type ZooProgress<'a> = dyn FnMut(&str, usize, usize, f32) + Send + 'a;

/// Encodes samples into one stream of lines joined by newline tokens, weighting the tokens in
/// the loss: with [`LossOn::Completions`] only a task line's completion and newline count, and
/// each `lang` token counts `lang_weight`.
pub fn token_stream(
    tok: &tokenizers::Tokenizer,
    samples: &[Sample],
    newline: u32,
    loss: LossOn,
    lang_weight: f32,
) -> anyhow::Result<TokenStream> {
    let encode = |texts: Vec<String>| {
        tok.encode_batch(texts, false)
            .map_err(|e| anyhow::anyhow!("tokenizing training text: {e}"))
    };
    let lines = encode(samples.iter().map(Sample::text).collect())?;
    // The prompt as the evaluator feeds it; the answer starts where its tokens end.
    let stems = match loss {
        LossOn::AllTokens => None,
        LossOn::Completions => Some(encode(
            samples
                .iter()
                .map(|s| s.prompt.trim_end().to_string())
                .collect(),
        )?),
    };
    let mut stream = TokenStream {
        tokens: Vec::new(),
        line_starts: Vec::with_capacity(samples.len()),
        loss_weight: Vec::new(),
    };
    for (i, line) in lines.iter().enumerate() {
        let line = line.get_ids();
        let prompt_len = stems.as_ref().map_or(0, |stems| {
            let stem = stems[i].get_ids();
            line.iter().zip(stem).take_while(|(a, b)| a == b).count()
        });
        stream.line_starts.push(stream.tokens.len());
        stream.tokens.extend_from_slice(line);
        stream.tokens.push(newline);
        let weight = if samples[i].task == Task::Lang {
            lang_weight
        } else {
            1.0
        };
        stream
            .loss_weight
            .extend((0..=line.len()).map(|i| if i >= prompt_len { weight } else { 0.0 }));
    }
    Ok(stream)
}

/// Seeds per member, derived from the zoo seed, so members differ but rebuild identically.
fn member_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64 + 1)
}

/// Trains the tokenizer and every member, writing `out/NAME/` HF directories (f16 weights).
/// Members whose parents are ready train side by side, up to `opts.jobs` at once.
pub fn build_zoo(opts: &ZooOptions, progress: &mut ZooProgress<'_>) -> anyhow::Result<()> {
    let mut pending = selected_members(opts.only.as_deref())?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let tok_path = opts.out.join("tokenizer.json");
    let tokenizer_json = if opts.only.is_some() && tok_path.is_file() {
        std::fs::read_to_string(&tok_path)?
    } else {
        let mix: Vec<(Task, f32)> = Task::ALL
            .iter()
            .filter(|t| !t.is_drill())
            .map(|&t| (t, if t == Task::Lang { 0.5 } else { 0.125 }))
            .collect();
        let text = corpus::training_text(&mix, opts.seed, 40_000);
        let lines: Vec<&str> = text.lines().collect();
        let json = tokenizer::train_tokenizer(&lines, VOCAB_SIZE)?;
        std::fs::write(&tok_path, &json)?;
        json
    };
    let tok: tokenizers::Tokenizer = tokenizer_json
        .parse()
        .map_err(|e| anyhow::anyhow!("reading the trained tokenizer: {e}"))?;
    let id = |s: &str| -> anyhow::Result<u32> {
        let enc = tok
            .encode(s, false)
            .map_err(|e| anyhow::anyhow!("tokenizing {s:?}: {e}"))?;
        match enc.get_ids() {
            [one] => Ok(*one),
            other => anyhow::bail!("{s:?} is not a single token ({other:?})"),
        }
    };
    let build = MemberBuild {
        opts,
        bos: id(tokenizer::BOS)?,
        newline: id("\n")?,
        config: zoo_config(tok.get_vocab_size(true)),
        tok: &tok,
        tokenizer_json: &tokenizer_json,
        stop: AtomicBool::new(false),
    };
    let progress = Mutex::new(progress);
    let mut trained: BTreeMap<&str, Transformer> = BTreeMap::new();
    while !pending.is_empty() {
        // A member can start once its parent is not itself still waiting to be trained.
        let (ready, waiting): (Vec<_>, Vec<_>) = pending.iter().partition(|(_, m)| {
            m.parent
                .is_none_or(|p| !pending.iter().any(|(_, q)| q.name == p))
        });
        pending = waiting;
        let mut queue = Vec::with_capacity(ready.len());
        for (index, member) in ready {
            let start = match member.parent {
                None => train::init_transformer(&build.config, member_seed(opts.seed, index))?,
                Some(p) => match trained.get(p) {
                    Some(t) => t.clone(),
                    None => {
                        crate::model::Model::load(&opts.out.join(p))
                            .with_context(|| format!("loading parent `{p}` of `{}`", member.name))?
                            .transformer
                    }
                },
            };
            queue.push((index, member, start));
        }
        // Longest first, so the others fill the remaining workers around it. Seeds follow a
        // member's place in `MEMBERS`, so the order changes no weights.
        queue.sort_by_key(|(_, m, _)| std::cmp::Reverse(m.steps * m.batch));
        trained.extend(train_side_by_side(&build, queue, &progress)?);
    }
    let built: Vec<&str> = selected_members(opts.only.as_deref())?
        .iter()
        .map(|(_, m)| m.name)
        .collect();
    record_task_vectors(&opts.out, &built)
}

/// Writes into each fine-tune's `zoo.json` its task vector's norm `‖θ − θ_parent‖` and its
/// cosine with every sibling's (the members fine-tuned from the same parent): how large and
/// how overlapping the updates are that a merge of them has to reconcile. Done for every
/// sibling group with a member in `built`, from the saved (f16) files.
fn record_task_vectors(out: &Path, built: &[&str]) -> anyhow::Result<()> {
    let parents: std::collections::BTreeSet<&str> = MEMBERS
        .iter()
        .filter(|m| built.contains(&m.name))
        .filter_map(|m| m.parent)
        .collect();
    for parent in parents {
        let names: Vec<&str> = MEMBERS
            .iter()
            .filter(|m| m.parent == Some(parent) && out.join(m.name).join(ZOO_META_FILE).is_file())
            .map(|m| m.name)
            .collect();
        let load = |name: &str| {
            crate::model::Model::load(&out.join(name))
                .map(|m| m.transformer)
                .with_context(|| format!("loading zoo member `{name}` for its task vector"))
        };
        let base = load(parent)?;
        let models = names
            .iter()
            .map(|n| load(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&Transformer> = models.iter().collect();
        let gram = crate::model::params::task_vector_gram(&base, &refs)?;
        for (i, name) in names.iter().enumerate() {
            let norm = gram[i][i].sqrt();
            let cosine: BTreeMap<&str, f64> = names
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, other)| {
                    (
                        *other,
                        gram[i][j] / (norm * gram[j][j].sqrt()).max(f64::MIN_POSITIVE),
                    )
                })
                .collect();
            let path = out.join(name).join(ZOO_META_FILE);
            let mut info: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path)?)
                    .with_context(|| format!("reading {}", path.display()))?;
            info["task_vector"] = serde_json::json!({ "norm": norm, "cosine": cosine });
            std::fs::write(&path, serde_json::to_string_pretty(&info)?)?;
        }
    }
    Ok(())
}

/// The members `only` names (all when `None`), in training order, with their index in
/// [`MEMBERS`]; a name that is not a member is an error.
fn selected_members(only: Option<&[String]>) -> anyhow::Result<Vec<(usize, &'static ZooMember)>> {
    if let Some(only) = only {
        for name in only {
            anyhow::ensure!(
                MEMBERS.iter().any(|m| m.name == name),
                "`{name}` is not a zoo member; the members are {}",
                MEMBERS.map(|m| m.name).join(", ")
            );
        }
    }
    Ok(MEMBERS
        .iter()
        .enumerate()
        .filter(|(_, m)| only.is_none_or(|only| only.iter().any(|n| n == m.name)))
        .collect())
}

/// What every member of one zoo build shares.
struct MemberBuild<'a> {
    opts: &'a ZooOptions,
    bos: u32,
    newline: u32,
    config: LlamaConfig,
    tok: &'a tokenizers::Tokenizer,
    tokenizer_json: &'a str,
    /// Set when a member fails, so the members training beside it stop at their next step
    /// instead of running to their end (an hour for `multi`) before the error is shown.
    stop: AtomicBool,
}

/// Trains `queue` (member index, member, starting weights) on up to `jobs` threads at once,
/// splitting the cores between them, and returns the trained models by name.
fn train_side_by_side(
    build: &MemberBuild<'_>,
    queue: Vec<(usize, &'static ZooMember, Transformer)>,
    progress: &Mutex<&mut ZooProgress<'_>>,
) -> anyhow::Result<Vec<(&'static str, Transformer)>> {
    let workers = build.opts.jobs.clamp(1, queue.len().max(1));
    if workers == 1 {
        // One at a time: each member gets candle's whole thread pool.
        return queue
            .into_iter()
            .map(|(index, member, t)| {
                let t = train_member(build, index, member, t, progress)?;
                Ok((member.name, t))
            })
            .collect();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / workers).max(1);
    let queue = Mutex::new(VecDeque::from(queue));
    let done = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    // candle's matmuls and parallel maps run on the rayon pool of the caller.
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .context("starting a training thread pool")?;
                    loop {
                        // Not `while let`: that would hold the queue's lock while training.
                        let next = lock(&queue).pop_front();
                        let Some((index, member, t)) = next else {
                            return Ok(());
                        };
                        if build.stop.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        match pool.install(|| train_member(build, index, member, t, progress)) {
                            Ok(t) => lock(&done).push((member.name, t)),
                            Err(e) => {
                                // The first failure is the cause; the members it stops fail after.
                                if !build.stop.swap(true, Ordering::SeqCst) {
                                    *lock(&failure) = Some(e);
                                }
                                return Ok(());
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a zoo training thread panicked"))?
        })
    })?;
    if let Some(e) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    Ok(done.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// A lock that survives a panicked holder (the data is a work list, valid either way).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fine-tunes (or, without a parent, trains) one member from `t` and writes its directory.
fn train_member(
    build: &MemberBuild<'_>,
    index: usize,
    member: &ZooMember,
    mut t: Transformer,
    progress: &Mutex<&mut ZooProgress<'_>>,
) -> anyhow::Result<Transformer> {
    let opts = build.opts;
    let seed = member_seed(opts.seed, index);
    let samples = corpus::training_samples(member.mix, seed, LINES_PER_MODEL);
    let data = token_stream(
        build.tok,
        &samples,
        build.newline,
        member.loss,
        member.lang_weight as f32,
    )?;
    let steps = ((member.steps as f64 * opts.steps_scale).round() as usize).max(1);
    let train_opts = TrainOptions {
        steps,
        batch: member.batch,
        seq_len: SEQ_LEN,
        lr: member.lr,
        warmup_steps: (steps / 10).clamp(1, 100),
        weight_decay: 0.1,
        seed,
    };
    let start = Instant::now();
    let losses = train::train(&mut t, &data, build.bos, &train_opts, &mut |step, loss| {
        let mut report = lock(progress);
        (**report)(member.name, step, steps, loss);
        !build.stop.load(Ordering::SeqCst)
    })
    .with_context(|| format!("training zoo member `{}`", member.name))?;
    anyhow::ensure!(
        !build.stop.load(Ordering::SeqCst),
        "`{}` stopped: a member training beside it failed",
        member.name
    );
    let seconds = start.elapsed().as_secs_f64();
    let dir = opts.out.join(member.name);
    let files = TokenizerFiles {
        json: build.tokenizer_json,
        bos: Some((build.bos, tokenizer::BOS)),
        add_bos: true,
        eos: None,
    };
    let mut meta = BTreeMap::new();
    meta.insert("reparam.zoo.member".to_string(), member.name.to_string());
    save_hf_dir(&t, &files, &dir, DType::F16, &meta)
        .with_context(|| format!("saving zoo member `{}`", member.name))?;
    let tail = &losses[losses.len().saturating_sub(50)..];
    let info = serde_json::json!({
        "name": member.name,
        "parent": member.parent,
        "mix": member.mix.iter().map(|(t, w)| (t.name(), w)).collect::<BTreeMap<_, _>>(),
        "seed": opts.seed,
        "train": train_opts,
        "loss_on": member.loss,
        "lang_weight": member.lang_weight,
        "final_loss": tail.iter().sum::<f32>() / tail.len().max(1) as f32,
        "train_seconds": seconds,
        // The pool this member ran on (training time depends on it).
        "train_threads": rayon::current_num_threads(),
        "code_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        dir.join(ZOO_META_FILE),
        serde_json::to_string_pretty(&info)?,
    )?;
    Ok(t)
}

/// Whether a model directory is a zoo model (it then has held-out text and tasks built in).
pub fn is_zoo_model(path: &Path) -> bool {
    path.join(ZOO_META_FILE).is_file()
}

/// Sentences of held-out `lang` text in the standard perplexity evaluation.
pub const LANG_EVAL_SENTENCES: usize = 400;
