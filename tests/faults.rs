//! The fault suite, on the real binary and the zoo: seeded fuzzing of recipes (each accepted one
//! applied and measured) and of model files (GGUF and safetensors mutants); several processes
//! sweeping one space into one store while compaction, history, pareto and tag run beside them;
//! a store on a full and on a read-only filesystem; SIGTERM and SIGINT mid-sweep and
//! mid-compaction. Each test prints a `fault table:` line with its counts (cases, clear errors,
//! panics, hangs, runs lost), the numbers of the fault table in experiments/RESULTS.md
//! (`cargo test --release --test faults -- --nocapture | grep 'fault table'`). The kill -9 case
//! lives with the other sweep tests in tests/jobs.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use common::{TinySpec, reparam, sweep};
use reparam::model::Model;
use reparam::rng::Rng;
use reparam::store::{ExperimentRecord, Status, Store};
use reparam::technique::recipe::Recipe;

/// The smallest evaluation that still measures everything, as `run` flags.
const TINY_EVAL: [&str; 10] = [
    "--ctx",
    "64",
    "--chunks",
    "2",
    "--prompts",
    "2",
    "--calib-samples",
    "2",
    "--calib-len",
    "64",
];

/// A grid of `ffn.len() × 2` RTN points with the tiny evaluation.
fn write_space(dir: &Path, ffn_bits: &[usize]) -> PathBuf {
    let path = dir.join("space.toml");
    let text = format!(
        "mode = \"grid\"\n[eval]\nctx = 64\nchunks = 2\ntask_prompts = 2\ncalib_samples = 2\n\
         calib_len = 64\n[[rules]]\nmatch = \"blk.*.ffn_*\"\n[rules.rtn]\nbits = {ffn_bits:?}\n\
         group = 32\n[[rules]]\nmatch = \"blk.*.attn_*\"\n[rules.rtn]\nbits = [4, 8]\ngroup = 32\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The store's records: (run keys of ok runs, records in all); no file may be unreadable.
fn stored(store: &Path) -> (Vec<String>, usize) {
    let snap = Store::open(store).unwrap().load().unwrap();
    assert!(snap.skipped.is_empty(), "unreadable: {:?}", snap.skipped);
    let ok = snap
        .records
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.run_key.clone())
        .collect();
    (ok, snap.records.len())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `work` on its own thread; `None` when it has not returned within `limit` (a hang).
fn bounded<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit).ok()
}

/// How one fuzzed case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// Accepted, and (when applied) measured with finite metrics.
    Accepted,
    /// Refused with a message that names the problem.
    ClearError,
    Panic,
    Hang,
}

/// An error message is clear when it says something and is not a panic's text.
fn clear(msg: &str) -> bool {
    msg.trim().len() > 10 && !msg.contains("panicked") && !msg.contains("unwrap()")
}

// ---- recipes ----

const NUMBERS: [&str; 16] = [
    "0",
    "-1",
    "1",
    "2",
    "3",
    "9",
    "64",
    "0.5",
    "1.5",
    "-0.25",
    "1e9",
    "1e308",
    "nan",
    "inf",
    "18446744073709551615",
    "\"7\"",
];
const STRINGS: [&str; 12] = [
    "\"\"",
    "\"blk.99.ffn_up\"",
    "\"blk.*.nope\"",
    "\"[\"",
    "\"(\"",
    "\".*\"",
    "\"token_embd\"",
    "\"output\"",
    "\"column\"",
    "\"diag\"",
    "\"wanda\"",
    "3",
];
const LINES: [&str; 14] = [
    "bits = 1",
    "bits = 9",
    "group = 0",
    "group = 7",
    "ratio = 1.5",
    "ratio = -0.1",
    "layout = \"diag\"",
    "method = \"nope\"",
    "blocks = [3, 2]",
    "n = 3\nm = 2",
    "[[layers]]",
    "[layers.rps]\nratio = 0.0",
    "[flatten]\npairs = [[0, 0]]",
    "match = \"blk.0.attn_q\"",
];

/// One seeded mutation of a recipe's text.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let i = rng.below(lines.len().max(1));
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_string()).collect();
    match rng.below(6) {
        // A value replaced: numbers by numbers, anything by a string.
        0 | 1 => {
            if let Some((k, v)) = out.get(i).and_then(|l| l.split_once(" = ")) {
                let v = if v.trim_start().starts_with('"') || rng.chance(0.3) {
                    rng.pick(&STRINGS)
                } else {
                    rng.pick(&NUMBERS)
                };
                out[i] = format!("{k} = {v}");
            }
        }
        2 => {
            if !out.is_empty() {
                out.remove(i);
            }
        }
        3 => {
            let dup = out.get(i).cloned().unwrap_or_default();
            out.insert(i, dup);
        }
        4 => out.insert(i.min(out.len()), rng.pick(&LINES).to_string()),
        _ => {
            let joined = out.join("\n");
            let cut = rng.below(joined.len() + 1);
            let cut = (0..=cut)
                .rev()
                .find(|c| joined.is_char_boundary(*c))
                .unwrap_or(0);
            return joined[..cut].to_string();
        }
    }
    out.join("\n")
}

/// Seeded mutants of every shipped recipe: each is refused with a clear error, or accepted and
/// then (the first `APPLIED` of them) applied to the zoo and measured with finite metrics or a
/// failed run with its reason; none panics or hangs.
#[test]
fn fuzzed_recipes_end_in_clear_errors_or_runs() {
    const CASES: usize = 400;
    const APPLIED: usize = 40;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/recipes");
    let mut seeds: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    seeds.sort();
    let base = Arc::new(reparam::model::load_spec("zoo:multi").unwrap());
    let mut rng = Rng::new(2026);
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    let mut applied = 0;
    let mut bad = Vec::new();
    for case in 0..CASES {
        let (name, seed) = rng.pick(&seeds).clone();
        let mut text = seed;
        for _ in 0..1 + rng.below(3) {
            text = mutate(&text, &mut rng);
        }
        // Merges train nothing here but load four more models: parsed and resolved only.
        let apply = applied < APPLIED && !name.starts_with("merge");
        let (b, t) = (base.clone(), text.clone());
        let ending = bounded(Duration::from_secs(120), move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let recipe = match Recipe::from_toml(&t) {
                    Ok(r) => r,
                    Err(e) => return (Ending::ClearError, e.to_string(), false),
                };
                if recipe.flatten.is_none()
                    && let Err(e) = recipe.resolve(&b.transformer)
                {
                    return (Ending::ClearError, e.to_string(), false);
                }
                if !apply {
                    return (Ending::Accepted, String::new(), false);
                }
                match reparam::run::run(&b, &recipe, &common::tiny_eval(), &mut |_, _, _| true) {
                    Ok(r) if r.ppl.is_finite() && r.kld_mean.is_finite() => {
                        (Ending::Accepted, String::new(), true)
                    }
                    Ok(r) => (
                        Ending::ClearError,
                        format!("non-finite metrics: ppl {} kld {}", r.ppl, r.kld_mean),
                        true,
                    ),
                    Err(e) => (Ending::ClearError, format!("{e:#}"), true),
                }
            }))
        });
        let (ending, msg) = match ending {
            None => (Ending::Hang, String::new()),
            Some(Err(_)) => (Ending::Panic, String::new()),
            Some(Ok((ending, msg, ran))) => {
                applied += usize::from(ran);
                (ending, msg)
            }
        };
        let ending = if ending == Ending::ClearError && !clear(&msg) {
            Ending::Panic
        } else {
            ending
        };
        *endings.entry(ending).or_default() += 1;
        if matches!(ending, Ending::Panic | Ending::Hang) || msg.starts_with("non-finite") {
            bad.push(format!("case {case} ({name}) {ending:?} {msg}\n{text}"));
        }
    }
    println!(
        "fault table: fuzzed recipes: {CASES} cases, {} accepted ({applied} applied and measured), \
         {} clear errors, {} panics, {} hangs",
        endings.get(&Ending::Accepted).unwrap_or(&0),
        endings.get(&Ending::ClearError).unwrap_or(&0),
        endings.get(&Ending::Panic).unwrap_or(&0),
        endings.get(&Ending::Hang).unwrap_or(&0),
    );
    assert!(bad.is_empty(), "{}", bad.join("\n---\n"));
    assert!(
        applied >= APPLIED / 2,
        "too few accepted mutants applied: {applied}"
    );
    assert!(
        endings
            .get(&Ending::ClearError)
            .is_some_and(|n| *n > CASES / 4)
    );
}

// ---- model files ----

/// One seeded mutation of a model file's bytes: a cut, a few bytes overwritten in the header
/// region, or a length-like field made huge.
fn mutate_bytes(bytes: &[u8], header: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.below(3) {
        0 => out.truncate(rng.below(bytes.len())),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(header.min(out.len()));
                out[at] = rng.next_u64() as u8;
            }
        }
        _ => {
            let at = rng.below(header.min(out.len()).saturating_sub(8).max(1));
            let huge = [u64::MAX, 1 << 40, 1 << 62, u64::from(u32::MAX)];
            let end = (at + 8).min(out.len());
            out[at..end].copy_from_slice(&rng.pick(&huge).to_le_bytes()[..end - at]);
        }
    }
    out
}

/// Loads a model file with the same guards as a recipe case.
fn load_ending(path: PathBuf) -> (Ending, String) {
    match bounded(Duration::from_secs(60), move || {
        std::panic::catch_unwind(AssertUnwindSafe(|| Model::load(&path).map(|_| ())))
    }) {
        None => (Ending::Hang, String::new()),
        Some(Err(_)) => (Ending::Panic, String::new()),
        Some(Ok(Ok(()))) => (Ending::Accepted, String::new()),
        Some(Ok(Err(e))) => {
            let msg = format!("{e:#}");
            if clear(&msg) {
                (Ending::ClearError, msg)
            } else {
                (Ending::Panic, msg)
            }
        }
    }
}

/// Seeded mutants of a GGUF file and of a safetensors checkpoint (its file, its config's bytes
/// and its config's numbers):
/// each loads (a mutation in tensor data that leaves the file well-formed) or is refused
/// clearly; none panics, hangs or tries to allocate what the header claims.
#[test]
fn fuzzed_model_files_end_in_clear_errors() {
    const CASES: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let gguf = spec.gguf_writer("llama", GgmlDType::F32).to_bytes();
    let hf = dir.path().join("hf");
    spec.write_hf(&hf, 1);
    let weights = std::fs::read(hf.join("model.safetensors")).unwrap();
    let config = std::fs::read(hf.join("config.json")).unwrap();
    let st_header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(7);
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let numbers: Vec<serde_json::Value> = serde_json::from_str(
        "[0, 1, 3, -1, 1.5, 1e12, 1099511627776, 18446744073709551615, null, \"8\", true]",
    )
    .unwrap();
    for case in 0..4 * CASES {
        let (path, what) = match case % 4 {
            0 => {
                let p = dir.path().join(format!("m{case}.gguf"));
                std::fs::write(&p, mutate_bytes(&gguf, 4096, &mut rng)).unwrap();
                (p, "gguf")
            }
            1 => {
                let d = dir.path().join(format!("st{case}"));
                spec.write_hf(&d, 1);
                let w = mutate_bytes(&weights, st_header, &mut rng);
                std::fs::write(d.join("model.safetensors"), w).unwrap();
                (d, "safetensors")
            }
            2 => {
                let d = dir.path().join(format!("cfg{case}"));
                spec.write_hf(&d, 1);
                let c = mutate_bytes(&config, config.len(), &mut rng);
                std::fs::write(d.join("config.json"), c).unwrap();
                (d, "config.json")
            }
            // A well-formed config whose numbers lie: zero heads, sizes that disagree with
            // the weights, absurd lengths, wrong types.
            _ => {
                let d = dir.path().join(format!("val{case}"));
                spec.write_hf(&d, 1);
                let mut c: serde_json::Value = serde_json::from_slice(&config).unwrap();
                let obj = c.as_object_mut().unwrap();
                let keys: Vec<String> = obj
                    .iter()
                    .filter(|(_, v)| v.is_number())
                    .map(|(k, _)| k.clone())
                    .collect();
                for _ in 0..1 + rng.below(2) {
                    let k = rng.pick(&keys).clone();
                    obj.insert(k, rng.pick(&numbers).clone());
                }
                std::fs::write(d.join("config.json"), c.to_string()).unwrap();
                (d, "config values")
            }
        };
        let (ending, msg) = load_ending(path.clone());
        *endings.entry(ending).or_default() += 1;
        if matches!(ending, Ending::Panic | Ending::Hang) {
            bad.push(format!(
                "case {case} ({what}, {}): {ending:?} {msg}",
                path.display()
            ));
        }
    }
    println!(
        "fault table: fuzzed model files: {} cases, {} loaded, {} clear errors, {} panics, {} hangs",
        4 * CASES,
        endings.get(&Ending::Accepted).unwrap_or(&0),
        endings.get(&Ending::ClearError).unwrap_or(&0),
        endings.get(&Ending::Panic).unwrap_or(&0),
        endings.get(&Ending::Hang).unwrap_or(&0),
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(endings.get(&Ending::ClearError).is_some_and(|n| *n > CASES));
}

// ---- several processes, one store ----

/// Three shards and two unsharded sweeps of one space write into one store, beside a writer
/// appending small runs all the time, while `store compact`, `history`, `pareto` and `tag` run
/// in a loop: no reader call fails, no run is lost, every point is stored exactly once (the
/// unsharded sweeps wait on the points others claimed), and compactions really merged files
/// under the writers.
#[test]
fn concurrent_sweeps_compaction_and_readers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let space = write_space(dir.path(), &[2, 3, 4, 8]);
    let points = 8;
    let store = dir.path().join("store");
    // Many small files, so compactions take long enough for readers to meet them mid-way.
    let rtn5 = recipe_file(dir.path(), 5);
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe"])
        .arg(&rtn5)
        .arg("--store")
        .arg(&store)
        .args(TINY_EVAL)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let handle = Store::open(&store).unwrap();
    let template = handle.load().unwrap().records[0].clone();
    let synthetic = move |i: usize| {
        let mut r = template.clone();
        r.id = format!("5e{i:010x}");
        r.run_key = format!("synthetic-{i}");
        r
    };
    let template_id = handle.load().unwrap().records[0].id.clone();
    let prefill = 300;
    for i in 0..prefill {
        handle.append(&synthetic(i)).unwrap();
    }
    let mut writers: Vec<Child> = ["0/3", "1/3", "2/3"]
        .iter()
        .map(|s| sweep(&space, &store, &["--shard", s]).spawn().unwrap())
        .collect();
    writers.push(sweep(&space, &store, &[]).spawn().unwrap());
    writers.push(sweep(&space, &store, &[]).spawn().unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let appender = {
        let (done, handle, synthetic) = (done.clone(), handle.clone(), synthetic.clone());
        std::thread::spawn(move || {
            let mut n = prefill;
            while !done.load(Ordering::SeqCst) {
                handle.append(&synthetic(n)).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    let readers = {
        let (done, store) = (done.clone(), store.clone());
        std::thread::spawn(move || {
            let s = store.to_str().unwrap().to_string();
            let (mut calls, mut merges, mut failures) = (0, 0, Vec::new());
            let mut tagged = 0;
            while !done.load(Ordering::SeqCst) {
                let history = reparam()
                    .args(["history", "--json", "--store", &s])
                    .output()
                    .unwrap();
                let id = serde_json::from_slice::<serde_json::Value>(&history.stdout)
                    .ok()
                    .and_then(|v| v.as_array()?.last()?.get("id")?.as_str().map(String::from));
                let mut outs = vec![("history", history)];
                if let Some(id) = id {
                    tagged += 1;
                    let tag = format!("probe{tagged}");
                    let out = reparam().args(["tag", &id, &tag, "--store", &s]).output();
                    outs.push(("tag", out.unwrap()));
                }
                let pareto = ["pareto", "--store", &s, "--x", "bytes", "--y", "ppl"];
                outs.push(("pareto", reparam().args(pareto).output().unwrap()));
                let compact = ["store", "compact", "--store", &s];
                let compact = reparam().args(compact).output().unwrap();
                let said = String::from_utf8_lossy(&compact.stderr).into_owned();
                let merged = said.split_whitespace().nth(1).and_then(|n| n.parse().ok());
                merges += usize::from(merged.is_some_and(|n: usize| n >= 2));
                outs.push(("compact", compact));
                for (what, out) in outs {
                    calls += 1;
                    if !out.status.success() {
                        failures.push(format!("{what}: {}", text(&out)));
                    }
                }
            }
            (calls, merges, failures, tagged)
        })
    };
    let mut sweep_errors = Vec::new();
    for mut w in writers {
        let out = bounded_wait(&mut w, Duration::from_secs(900));
        if !out.status.success() {
            sweep_errors.push(text(&out));
        }
    }
    done.store(true, Ordering::SeqCst);
    let appended = appender.join().unwrap();
    let (calls, merges, failures, tagged) = readers.join().unwrap();
    let snap = handle.load().unwrap();
    assert!(snap.skipped.is_empty(), "unreadable: {:?}", snap.skipped);
    let (synthetic_runs, swept): (Vec<_>, Vec<_>) = snap
        .records
        .iter()
        .partition(|r| r.run_key.starts_with("synthetic-"));
    let swept: Vec<&ExperimentRecord> = swept.into_iter().filter(|r| r.id != template_id).collect();
    let distinct: BTreeSet<&String> = swept.iter().map(|r| &r.run_key).collect();
    let lost = appended - synthetic_runs.len() + points - distinct.len();
    println!(
        "fault table: concurrent store: 5 sweeps and an appender ({appended} small runs), \
         {calls} reader/compaction calls ({merges} merging compactions, {tagged} tags), {} failed \
         calls, {} of {points} points stored, {} duplicates, {lost} runs lost",
        failures.len(),
        distinct.len(),
        swept.len() - distinct.len(),
    );
    assert!(sweep_errors.is_empty(), "{}", sweep_errors.join("\n---\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    assert_eq!(lost, 0, "runs lost");
    assert_eq!(swept.len(), points, "no point run twice, none failed");
    assert!(swept.iter().all(|r| r.status == Status::Ok));
    assert!(
        merges >= 1,
        "no compaction merged files while the sweeps ran"
    );
    // Every tag written during the compactions is still applied.
    let tags: usize = snap.records.iter().map(|r| r.tags.len()).sum();
    assert_eq!(tags, tagged, "tags lost");
    let claims = store.join("claims").read_dir().unwrap();
    let left: Vec<_> = claims.map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "claims left behind: {left:?}");
}

/// Waits for a child with a deadline (a hang fails the test instead of blocking it); its stderr
/// is returned as the output.
fn bounded_wait(child: &mut Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = Vec::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_end(&mut e, &mut stderr).unwrap();
            }
            return Output {
                status,
                stdout: Vec::new(),
                stderr,
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- disk faults ----

/// Runs `script` with `sh` in a new user and mount namespace (root inside, so it may mount a
/// small tmpfs or a read-only bind), or `None` where this kernel allows no such namespace.
fn in_namespace(script: &str, env: &[(&str, &Path)]) -> Option<Output> {
    let probe = Command::new("unshare").args(["-Urm", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: disk-fault test needs `unshare -Urm` (user namespaces)");
        return None;
    }
    let mut c = Command::new("unshare");
    c.args(["-Urm", "sh", "-c", script]);
    for (k, v) in env {
        c.env(k, v);
    }
    Some(
        c.env("BIN", env!("CARGO_BIN_EXE_reparam"))
            .output()
            .unwrap(),
    )
}

fn recipe_file(dir: &Path, bits: usize) -> PathBuf {
    let path = dir.join(format!("rtn{bits}.toml"));
    std::fs::write(
        &path,
        format!("[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.rtn]\nbits = {bits}\ngroup = 32\n"),
    )
    .unwrap();
    path
}

/// The record a failed store write kept in `dir`, if any.
fn kept_record(dir: &Path) -> Option<ExperimentRecord> {
    let path = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("reparam-unstored-run-"))?;
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A store on a full filesystem and one on a read-only filesystem: `run` prints its result,
/// says the store could not be written, keeps the record in a file and exits non-zero; `sweep`
/// says how many points could not be stored and exits non-zero; the read-only store is still
/// read (`history`).
#[test]
fn a_full_or_read_only_store_keeps_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (rtn3, rtn4) = (recipe_file(dir.path(), 3), recipe_file(dir.path(), 4));
    let space = write_space(dir.path(), &[3]);
    let eval = TINY_EVAL.join(" ");

    // Full: a 1 MiB tmpfs filled before the run; the record goes to $TMPDIR.
    let full = dir.path().join("full");
    let tmp = dir.path().join("tmp");
    for d in [&full, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs \"$FULL\" && mkdir -p \"$FULL/store/tags\" && \
         (dd if=/dev/zero of=\"$FULL/fill\" bs=4k 2>/dev/null; true) && \
         \"$BIN\" run zoo:multi --recipe \"$RTN3\" --store \"$FULL/store\" {eval}; echo \"run-rc=$?\"; \
         \"$BIN\" sweep zoo:multi --space \"$SPACE\" --store \"$FULL/store\"; echo \"sweep-rc=$?\""
    );
    let Some(out) = in_namespace(
        &script,
        &[
            ("FULL", &full),
            ("TMPDIR", &tmp),
            ("RTN3", &rtn3),
            ("SPACE", &space),
        ],
    ) else {
        return;
    };
    let t = text(&out);
    assert!(t.contains("run-rc=1") && t.contains("sweep-rc=1"), "{t}");
    assert!(t.contains("No space left on device"), "{t}");
    assert!(
        t.contains("could not be written") && t.contains("not stored"),
        "{t}"
    );
    assert!(
        t.contains("ppl ") && t.contains("kld_mean "),
        "the result is printed: {t}"
    );
    assert!(
        t.contains("2 of 2 finished points could not be stored"),
        "{t}"
    );
    let kept = kept_record(&tmp).expect("the record is kept in $TMPDIR");
    assert_eq!(kept.status, Status::Ok);
    assert!(
        t.contains(&tmp.display().to_string()),
        "the kept file is named: {t}"
    );

    // Read-only: one stored run, then the store (without its tags/ folder) is bound read-only.
    let ro = dir.path().join("ro");
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe"])
        .arg(&rtn4)
        .arg("--store")
        .arg(ro.join("store"))
        .args(TINY_EVAL)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = format!(
        "S=\"$RO/store\"; rmdir \"$S/tags\" && mount --bind \"$S\" \"$S\" && mount -o remount,bind,ro \"$S\" && \
         \"$BIN\" history --store \"$S\"; echo \"history-rc=$?\"; \
         \"$BIN\" run zoo:multi --recipe \"$RTN3\" --store \"$S\" {eval}; echo \"run-rc=$?\""
    );
    let out = in_namespace(&script, &[("RO", &ro), ("RTN3", &rtn3)]).unwrap();
    let t = text(&out);
    assert!(t.contains("history-rc=0") && t.contains("1 run"), "{t}");
    assert!(
        t.contains("run-rc=1") && t.contains("Read-only file system"),
        "{t}"
    );
    assert!(t.contains("ppl "), "the result is printed: {t}");
    let kept = kept_record(&ro).expect("the record is kept beside the store");
    assert_eq!(kept.status, Status::Ok);
    assert_eq!(stored(&ro.join("store")).1, 1);
    println!(
        "fault table: disk faults: full and read-only store, run and sweep: 4 cases, 4 results \
         kept and reported, 0 runs lost"
    );
}

// ---- signals ----

/// Sends SIG`name`; false when the process had already exited.
fn signal(child: &Child, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// SIGTERM and SIGINT mid-sweep stop it at once with the store readable and every finished run
/// kept; the next sweep runs only what is missing (a killed holder's claims block nothing).
/// SIGINT and SIGTERM at random moments of a compaction lose no run, and compaction resumes.
#[test]
fn signals_mid_sweep_and_mid_compaction_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let space = write_space(dir.path(), &[2, 3, 4, 8]);
    let points = 8;
    let store = dir.path().join("store");
    let mut stopped = 0;
    for name in ["TERM", "INT"] {
        let before = Store::open(&store).unwrap().run_files().unwrap().len();
        let mut child = sweep(&space, &store, &[]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Store::open(&store).unwrap().run_files().unwrap().len() <= before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150));
        let sent = Instant::now();
        assert!(signal(&child, name), "the sweep ended before SIG{name}");
        let out = bounded_wait(&mut child, Duration::from_secs(10));
        assert!(
            !out.status.success(),
            "SIG{name}: the sweep was still stopped"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "SIG{name} took {:?}",
            sent.elapsed()
        );
        let (ok, records) = stored(&store);
        assert_eq!(ok.len(), records, "only finished runs are stored");
        stopped += 1;
    }
    let (partial, _) = stored(&store);
    assert!(
        partial.len() < points,
        "the signals came too late to test anything"
    );
    let out = bounded_wait(
        &mut sweep(&space, &store, &[]).spawn().unwrap(),
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "{}", text(&out));
    let (ok, records) = stored(&store);
    assert_eq!(ok.iter().collect::<BTreeSet<_>>().len(), points);
    assert_eq!(records, points, "no point ran twice");

    // Compaction: many small files, interrupted at random moments.
    let cstore = Store::open(&dir.path().join("compact")).unwrap();
    let template = Store::open(&store).unwrap().load().unwrap().records[0].clone();
    let n = 400;
    for i in 0..n {
        let mut r = template.clone();
        r.id = format!("{:012x}", i + 1);
        r.run_key = format!("key{i}");
        cstore.append(&r).unwrap();
    }
    let mut rng = Rng::new(3);
    let (mut interrupted, mut total, trials) = (0, n, 12);
    for trial in 0..trials {
        let mut child = reparam()
            .args(["store", "compact", "--store"])
            .arg(cstore.dir())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(120) as u64));
        // A compaction that finished first is a trial of an uninterrupted one.
        signal(&child, if trial % 2 == 0 { "INT" } else { "TERM" });
        let out = bounded_wait(&mut child, Duration::from_secs(30));
        interrupted += usize::from(!out.status.success());
        let snap = cstore.load().unwrap();
        assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
        assert_eq!(snap.records.len(), total, "trial {trial}: runs lost");
        // New runs land between compactions, as a sweep's would.
        if trial % 4 == 3 {
            for i in 0..50 {
                let mut r = template.clone();
                r.id = format!("{:012x}", 100_000 + trial * 100 + i);
                cstore.append(&r).unwrap();
            }
            total += 50;
        }
    }
    // The next compaction starts from whatever the interrupted ones left.
    assert_eq!(cstore.compact().unwrap().1, total);
    assert_eq!(cstore.run_files().unwrap().len(), 1);
    println!(
        "fault table: signals: {stopped} sweeps stopped by SIGTERM/SIGINT, {trials} compactions \
         signalled ({interrupted} interrupted mid-way), {total} runs checked, 0 runs lost"
    );
}

// ---- numbers checked before work ----

/// Zero, absurd and misspelt inputs are refused with a message naming the problem, before
/// any work (and without a panic or an attempted allocation).
#[test]
fn absurd_numbers_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let rtn4 = recipe_file(dir.path(), 4);
    let r = rtn4.to_str().unwrap();
    let shiftadd =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/recipes/shiftadd-3bit.toml");
    let sa = shiftadd.to_str().unwrap();
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe", r, "--store", s])
        .args(TINY_EVAL)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let space = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let random = |samples: &str| {
        format!(
            "mode = \"random\"\nsamples = {samples}\n[[rules]]\nmatch = \"blk.*.ffn_*\"\n[rules.rtn]\nbits = [2, 3, 4]\n"
        )
    };
    let huge = space("huge.toml", &random("100000000"));
    let max = space("max.toml", &random("18446744073709551615"));
    let zero_ctx = space(
        "ctx0.toml",
        "mode = \"grid\"\n[eval]\nctx = 0\n[[rules]]\nmatch = \"blk.*.ffn_*\"\n[rules.rtn]\nbits = [4]\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                sa,
                "--calib-samples",
                "1000000",
                "--no-store",
            ],
            "not enough memory",
        ),
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                sa,
                "--calib-samples",
                "1000000",
                "--store",
                s,
            ],
            "not enough memory",
        ),
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                sa,
                "--calib-len",
                "0",
                "--store",
                s,
            ],
            "calibration needs at least 1 window",
        ),
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                r,
                "--ctx",
                "0",
                "--store",
                s,
            ],
            "context size 0 is too small",
        ),
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                r,
                "--chunks",
                "0",
                "--store",
                s,
            ],
            "chunk",
        ),
        (
            vec!["sweep", "zoo:multi", "--space", &huge, "--dry-run"],
            "more points than a sweep holds",
        ),
        (
            vec!["sweep", "zoo:multi", "--space", &max, "--dry-run"],
            "samples",
        ),
        (
            vec!["sweep", "zoo:multi", "--space", &zero_ctx, "--store", s],
            "context size 0 is too small",
        ),
        (
            vec![
                "sweep",
                "zoo:multi",
                "--space",
                &huge,
                "--shard",
                "0/0",
                "--dry-run",
            ],
            "shard",
        ),
        (
            vec!["pareto", "--store", s, "--x", "bytes", "--y", "kld_men"],
            "no stored run has the metric `kld_men`",
        ),
        (vec!["run", "zoo:/tmp", "--recipe", r, "--store", s], "zoo"),
        (vec!["tag", "", "x", "--store", s], "no run with id"),
        (
            vec![
                "run",
                "zoo:multi",
                "--recipe",
                r,
                "--tag",
                "two words",
                "--store",
                s,
            ],
            "bad tag",
        ),
    ];
    let mut bad = Vec::new();
    for (args, expect) in &cases {
        let out = bounded(Duration::from_secs(300), {
            let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
            move || reparam().args(&args).output().unwrap()
        });
        let Some(out) = out else {
            bad.push(format!("{args:?}: hang"));
            continue;
        };
        let t = text(&out);
        if out.status.success() || !t.contains(expect) || t.contains("panicked") {
            bad.push(format!(
                "{args:?}: expected a refusal with `{expect}`, got {:?}: {t}",
                out.status
            ));
        }
    }
    println!(
        "fault table: absurd inputs: {} cases, {} clear errors, 0 panics, 0 hangs",
        cases.len(),
        cases.len() - bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
