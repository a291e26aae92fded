//! Jobs and sweeps: events and panics with a scripted executor (fast, no model), then the real
//! thing on the zoo through the `reparam` binary: a sweep killed with SIGKILL loses no finished
//! run and leaves no unreadable file, two concurrent shard processes lose nothing and their
//! union equals the unsharded sweep, a re-run skips stored keys, a running job cancels within
//! about a second, and an exported model reloads with the same metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::{reparam, sweep};
use reparam::jobs::{JobEventKind, JobRunner, JobSpec, Outcome};
use reparam::store::{ExperimentRecord, Status, Store};
use reparam::technique::recipe::Recipe;

fn recipe(bits: usize) -> Recipe {
    Recipe::from_toml(&format!(
        "[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.rtn]\nbits = {bits}\ngroup = 32\n"
    ))
    .unwrap()
}

fn spec(label: &str, bits: usize) -> JobSpec {
    JobSpec {
        label: label.into(),
        model: "zoo:multi".into(),
        recipe: recipe(bits),
        tags: vec![],
        force: false,
        eval: common::tiny_eval(),
    }
}

/// Collects events until every job in `n` has finished (or the deadline passes).
fn finished(runner: &JobRunner, n: usize, limit: Duration) -> Vec<(u64, ExperimentRecord)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(ev) = runner.recv_event(Duration::from_millis(50))
            && let JobEventKind::Finished { record: rec, .. } = ev.kind
        {
            out.push((ev.id.0, *rec));
        }
    }
    out
}

#[test]
fn panics_are_caught_and_the_runner_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = Arc::clone(&wakes);
    let runner = JobRunner::with_executor(
        store.clone(),
        2,
        Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }),
        Box::new(|store, _models, spec, cancel, _reserved, progress| {
            if spec.label == "panic" {
                panic!("scripted failure");
            }
            for i in 0..200 {
                progress("working", i, 200);
                if cancel.load(Ordering::SeqCst) {
                    let rec = ExperimentRecord::failed(
                        "m",
                        "m",
                        &spec.recipe,
                        "k",
                        SystemTime::now(),
                        0.0,
                        Status::Cancelled,
                        "cancelled",
                        &spec.tags,
                    );
                    store.append(&rec)?;
                    return Ok(Outcome {
                        record: rec,
                        cached: false,
                        report: None,
                        unstored: None,
                    });
                }
                std::thread::sleep(Duration::from_millis(if spec.label == "slow" {
                    20
                } else {
                    1
                }));
            }
            let mut rec = ExperimentRecord::failed(
                "m",
                "m",
                &spec.recipe,
                "k",
                SystemTime::now(),
                0.0,
                Status::Ok,
                "",
                &spec.tags,
            );
            rec.error = None;
            store.append(&rec)?;
            Ok(Outcome {
                record: rec,
                cached: false,
                report: None,
                unstored: None,
            })
        }),
    );
    let p = runner.submit(spec("panic", 2));
    let slow = runner.submit(spec("slow", 3));
    let ok = runner.submit(spec("fine", 4));
    let queued = runner.submit(spec("fine", 5));
    std::thread::sleep(Duration::from_millis(100));
    runner.cancel(slow);
    let cancel_at = Instant::now();
    let done = finished(&runner, 4, Duration::from_secs(20));
    assert_eq!(done.len(), 4, "every job finishes exactly once");
    let status = |id: u64| done.iter().find(|(j, _)| *j == id).unwrap().1.status;
    assert_eq!(status(p.0), Status::Failed);
    let panic_rec = &done.iter().find(|(j, _)| *j == p.0).unwrap().1;
    assert!(
        panic_rec
            .error
            .as_deref()
            .unwrap()
            .contains("scripted failure")
    );
    assert_eq!(status(slow.0), Status::Cancelled);
    assert!(cancel_at.elapsed() < Duration::from_secs(2));
    assert_eq!(status(ok.0), Status::Ok);
    assert_eq!(status(queued.0), Status::Ok);
    assert!(
        runner
            .try_events()
            .iter()
            .all(|e| !matches!(e.kind, JobEventKind::Finished { .. }))
    );
    assert!(
        wakes.load(Ordering::SeqCst) >= 8,
        "the waker runs after events"
    );
    // The panic, the cancel and the two successes are all stored.
    assert_eq!(store.load().unwrap().records.len(), 4);
}

fn write_space(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("space.toml");
    std::fs::write(
        &path,
        r#"
mode = "grid"
[eval]
ctx = 64
chunks = 2
task_prompts = 2
calib_samples = 2
calib_len = 64
[[rules]]
match = "blk.*.ffn_*"
[rules.rtn]
bits = [2, 3, 4, 8]
group = 32
[[rules]]
match = "blk.*.attn_*"
[rules.rtn]
bits = [4, 8]
group = 32
"#,
    )
    .unwrap();
    path
}

const POINTS: usize = 8;

fn keys(store: &Path) -> (Vec<String>, usize) {
    let snap = Store::open(store).unwrap().load().unwrap();
    assert!(
        snap.skipped.is_empty(),
        "unreadable files: {:?}",
        snap.skipped
    );
    let ok: Vec<String> = snap
        .records
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.run_key.clone())
        .collect();
    (ok, snap.records.len())
}

/// A sweep whose points fail says so and exits non-zero; every failed point keeps its record
/// with the reason (here: a GPU asked of a build without CUDA).
#[cfg(not(feature = "cuda"))]
#[test]
fn a_sweep_with_failed_points_fails() {
    let dir = tempfile::tempdir().unwrap();
    let space = write_space(dir.path());
    let store = dir.path().join("store");
    let out = sweep(&space, &store, &["--device", "cuda"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{POINTS} of {POINTS} points did not finish")),
        "{err}"
    );
    let snap = Store::open(&store).unwrap().load().unwrap();
    assert_eq!(snap.records.len(), POINTS);
    for r in &snap.records {
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.device, "cuda:0");
        assert!(r.error.as_deref().unwrap_or("").contains("--features cuda"));
    }
}

/// Empty calibration settings are refused before any work, not turned into a destroyed model
/// stored as ok.
#[test]
fn empty_calibration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe_path = dir.path().join("sa.toml");
    std::fs::write(
        &recipe_path,
        "[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.shiftadd]\nbits = 3\n",
    )
    .unwrap();
    for (flag, value) in [("--calib-samples", "0"), ("--calib-len", "0")] {
        let out = reparam()
            .args(["run", "zoo:multi", "--recipe"])
            .arg(&recipe_path)
            .args(["--no-store", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {err}");
        assert!(err.contains("calibration needs at least 1 window"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn killed_sweep_loses_nothing_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let space = write_space(dir.path());
    let store = dir.path().join("store");
    let mut child = sweep(&space, &store, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once two runs are stored (mid-sweep, most likely mid-write of the third).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = Store::open(&store).map_or(0, |s| s.run_files().unwrap().len());
        if n >= 2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (before, _) = keys(&store);
    assert!(
        before.len() >= 2,
        "runs stored before the kill: {}",
        before.len()
    );
    assert!(
        before.len() < POINTS,
        "the kill came too late to test anything"
    );
    // Resume: only the missing points run; nothing stored before is lost or repeated.
    let out = sweep(&space, &store, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} already stored", before.len())),
        "{err}"
    );
    let (after, _) = keys(&store);
    let set: BTreeSet<&String> = after.iter().collect();
    assert_eq!(set.len(), POINTS, "every point stored");
    assert_eq!(after.len(), POINTS, "no point stored twice");
    assert!(before.iter().all(|k| set.contains(k)));
    // A third run has nothing left to do.
    let out = sweep(&space, &store, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{POINTS} already stored, 0 to run")),
        "{err}"
    );
    assert_eq!(keys(&store).1, POINTS);
}

#[test]
fn concurrent_shards_equal_the_unsharded_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let space = write_space(dir.path());
    let shared = dir.path().join("shared");
    let whole = dir.path().join("whole");
    let a = sweep(&space, &shared, &["--shard", "0/2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = sweep(&space, &shared, &["--shard", "1/2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let out = sweep(&space, &whole, &["--jobs", "2"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (sharded, n) = keys(&shared);
    let (unsharded, _) = keys(&whole);
    assert_eq!(n, POINTS, "two writers, nothing lost, nothing doubled");
    let s: BTreeSet<String> = sharded.into_iter().collect();
    let u: BTreeSet<String> = unsharded.into_iter().collect();
    assert_eq!(s.len(), POINTS);
    assert_eq!(s, u);
}

#[test]
fn a_running_job_cancels_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let runner = JobRunner::new(store.clone(), 1, Arc::new(|| {}));
    let mut s = spec("long", 3);
    s.eval.chunks = None; // the whole evaluation text: long enough to cancel in the middle
    s.eval.task_prompts = 200;
    let id = runner.submit(s);
    // Wait until it is evaluating, then cancel.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(ev) = runner.recv_event(Duration::from_millis(50))
            && let JobEventKind::Progress { stage, .. } = &ev.kind
            && stage.starts_with("evaluating")
        {
            break;
        }
    }
    runner.cancel(id);
    let start = Instant::now();
    let done = finished(&runner, 1, Duration::from_secs(30));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.status, Status::Cancelled, "{:?}", done[0].1.error);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(store.load().unwrap().records[0].status, Status::Cancelled);
}

/// The exported model is the measured one: a run with a short context, calibration windows
/// longer than it (cut to the context by the run) and a non-default window count exports a
/// directory that evaluates to the run's numbers exactly.
#[test]
fn export_reloads_with_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let recipe_path = dir.path().join("r.toml");
    std::fs::write(&recipe_path, recipe(3).to_toml().unwrap()).unwrap();
    let args = |extra: &[&str]| {
        let mut c = reparam();
        c.args(["run", "zoo:multi", "--recipe"])
            .arg(&recipe_path)
            .args([
                "--ctx",
                "64",
                "--chunks",
                "3",
                "--prompts",
                "2",
                "--calib-samples",
                "3",
            ])
            .args(["--calib-len", "100", "--json", "--store"])
            .arg(&store)
            .args(extra);
        c
    };
    let out = args(&["--tag", "first"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["cached"], false);
    let id = run["run_id"].as_str().unwrap().to_string();
    // Same key again: the stored record comes back without running.
    let again: serde_json::Value =
        serde_json::from_slice(&args(&[]).output().unwrap().stdout).unwrap();
    assert_eq!(again["cached"], true);
    assert_eq!(again["run_id"], run["run_id"]);
    assert_eq!(again["bytes"], run["bytes"]);

    let model_dir = dir.path().join("exported");
    let rtoml = dir.path().join("exported.toml");
    let types = dir.path().join("types.txt");
    let out = reparam()
        .args(["export", &id[..8], "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&model_dir)
        .arg("--recipe")
        .arg(&rtoml)
        .arg("--llama-quantize-types")
        .arg(&types)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rtoml).unwrap();
    let hash = run["recipe_hash"].as_str().unwrap();
    assert!(text.contains(hash));
    assert!(text.contains(run["model_id"].as_str().unwrap()));
    assert_eq!(Recipe::from_toml(&text).unwrap().hash(), hash);
    let header = std::fs::read(model_dir.join("model.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&header[..header.len().min(1 << 16)]).contains(hash));
    let types = std::fs::read_to_string(&types).unwrap();
    assert!(types.contains("blk.0.ffn_up.weight=q3_k"), "{types}");

    let out = reparam()
        .arg("eval")
        .arg(&model_dir)
        .args([
            "--base",
            "zoo:multi",
            "--ctx",
            "64",
            "--chunks",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_same_metrics("export", &run, &ev, 1e-9, 1e-9);
}

/// Export reproduces a run whose compression reads calibration statistics: shift-add with
/// error feedback, made with a short context, windows longer than it (the run cuts them to the
/// context) and a non-default window count. The exported directory evaluates to the run's
/// numbers exactly; re-applying with other windows would give other weights.
#[test]
fn export_reproduces_a_calibrated_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let recipe_path = dir.path().join("sa.toml");
    std::fs::write(
        &recipe_path,
        "[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.shiftadd]\nbits = 3\n",
    )
    .unwrap();
    let eval_args = ["--ctx", "64", "--chunks", "3"];
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe"])
        .arg(&recipe_path)
        .args(eval_args)
        .args([
            "--prompts",
            "2",
            "--calib-samples",
            "3",
            "--calib-len",
            "100",
        ])
        .args(["--json", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model_dir = dir.path().join("exported");
    let out = reparam()
        .args(["export", run["run_id"].as_str().unwrap(), "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = reparam()
        .arg("eval")
        .arg(&model_dir)
        .args(["--base", "zoo:multi"])
        .args(eval_args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_same_metrics("calibrated export", &run, &ev, 1e-9, 1e-9);
}

/// The run's ppl and KLD equal the reloaded model's, each within a relative tolerance.
fn assert_same_metrics(
    what: &str,
    run: &serde_json::Value,
    ev: &serde_json::Value,
    ppl_tol: f64,
    kld_tol: f64,
) {
    for (key, tol) in [("ppl", ppl_tol), ("kld_mean", kld_tol)] {
        let (a, b) = (run[key].as_f64().unwrap(), ev[key].as_f64().unwrap());
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-3),
            "{what}: {key} {a} vs reloaded {b}"
        );
    }
}

#[test]
fn gguf_export_reloads_with_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny.gguf");
    common::TinySpec::default().write_gguf(&base, candle_core::quantized::GgmlDType::F32);
    let recipe_path = dir.path().join("r.toml");
    std::fs::write(
        &recipe_path,
        "[[layers]]\nmatch = \"blk.*.*\"\n[layers.rtn]\nbits = 4\ngroup = 16\n",
    )
    .unwrap();
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/licenses.txt");
    let store = dir.path().join("store");
    let out = reparam()
        .arg("run")
        .arg(&base)
        .arg("--recipe")
        .arg(&recipe_path)
        .args([
            "--text",
            text,
            "--ctx",
            "32",
            "--chunks",
            "3",
            "--calib-samples",
            "2",
        ])
        .args(["--calib-len", "32", "--json", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exported = dir.path().join("out.gguf");
    let out = reparam()
        .args([
            "export",
            run["run_id"].as_str().unwrap(),
            "--format",
            "gguf",
            "--store",
        ])
        .arg(&store)
        .arg("--model")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = reparam::model::gguf::GgufFile::open(&exported).unwrap();
    assert_eq!(
        file.get_str("reparam.recipe_hash").unwrap(),
        run["recipe_hash"].as_str().unwrap()
    );
    let out = reparam()
        .arg("eval")
        .arg(&exported)
        .arg("--base")
        .arg(&base)
        .args(["--text", text, "--ctx", "32", "--chunks", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (p0, p1) = (run["ppl"].as_f64().unwrap(), ev["ppl"].as_f64().unwrap());
    assert!((p0 - p1).abs() <= 1e-3 * p0, "ppl {p0} vs reloaded {p1}");
    let (k0, k1) = (
        run["kld_mean"].as_f64().unwrap(),
        ev["kld_mean"].as_f64().unwrap(),
    );
    assert!(
        (k0 - k1).abs() <= 1e-2 * k0.max(1e-4),
        "kld {k0} vs reloaded {k1}"
    );
}

#[test]
fn memory_check_refuses_with_numbers() {
    let base = reparam::model::load_spec("zoo:multi").unwrap();
    let small = spec("a", 3);
    let mut big = spec("b", 3);
    big.eval.calib.samples = 512;
    let (s, b) = (
        reparam::jobs::estimate_job_bytes(&base, &small),
        reparam::jobs::estimate_job_bytes(&base, &big),
    );
    assert!(s > 0 && b > s, "{s} {b}");
    let check = reparam::jobs::MemoryCheck {
        needed_bytes: 3 << 30,
        available_bytes: 2 << 30,
        reserved_bytes: 1 << 29,
    };
    assert!(!check.fits());
    let msg = check.message();
    assert!(
        msg.contains("3072 MiB") && msg.contains("2048 MiB") && msg.contains("512 MiB"),
        "{msg}"
    );
    assert!(reparam::jobs::available_memory_bytes().is_some_and(|m| m > 0));
}

/// Runs `recipe` on zoo:multi through the CLI into `store`; returns `run --json`.
fn run_recipe(dir: &Path, store: &Path, name: &str, recipe: &str) -> serde_json::Value {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, recipe).unwrap();
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe"])
        .arg(&path)
        .args(["--ctx", "64", "--chunks", "2", "--prompts", "2"])
        .args(["--calib-samples", "2", "--calib-len", "64", "--json"])
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn eval_dir(model_dir: &Path) -> std::process::Output {
    reparam()
        .arg("eval")
        .arg(model_dir)
        .args([
            "--base",
            "zoo:multi",
            "--ctx",
            "64",
            "--chunks",
            "2",
            "--json",
        ])
        .output()
        .unwrap()
}

#[test]
fn packed_export_reloads_the_inference_forms_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A shift-add run (with RTN and n:m layers beside it) and an RPS run (with CSR and bitmask
    // layers).
    let shiftadd = run_recipe(
        dir.path(),
        &store,
        "shiftadd",
        "[[layers]]\nmatch = \"blk.*.attn_*\"\n[layers.shiftadd]\nbits = 3\ngroup = 32\n\
         [[layers]]\nmatch = \"blk.*.ffn_down\"\n[layers.rtn]\nbits = 3\ngroup = 32\n\
         [[layers]]\nmatch = \"blk.*.ffn_up\"\n[layers.prune]\nmethod = \"nm\"\nn = 2\nm = 4\n",
    );
    let rps = run_recipe(
        dir.path(),
        &store,
        "rps",
        "[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.rps]\nratio = 2.0\n\
         [[layers]]\nmatch = \"blk.*.attn_v\"\n[layers.prune]\nmethod = \"magnitude\"\nratio = 0.5\nform = \"csr\"\n\
         [[layers]]\nmatch = \"blk.*.attn_q\"\n[layers.prune]\nmethod = \"magnitude\"\nratio = 0.5\n",
    );
    let mut forms_seen = BTreeSet::new();
    for (run, name) in [(&shiftadd, "shiftadd"), (&rps, "rps")] {
        let id = run["run_id"].as_str().unwrap();
        let model_dir = dir.path().join(format!("export-{name}"));
        let out = reparam()
            .args(["export", id, "--store"])
            .arg(&store)
            .arg("--model")
            .arg(&model_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let packed = model_dir.join(reparam::model::packed::PACKED_FILE);
        let head = std::fs::read(&packed).unwrap();
        let hash = run["recipe_hash"].as_str().unwrap();
        assert!(String::from_utf8_lossy(&head[..head.len().min(1 << 16)]).contains(hash));
        // Our loader puts the packed forms back in place of the dense copies.
        let model = reparam::model::load_spec(model_dir.to_str().unwrap()).unwrap();
        let t = &model.transformer;
        for id in t.linear_ids() {
            forms_seen.insert(t.linear(id).unwrap().form());
        }
        assert_eq!(
            t.size_bytes() as u64,
            run["bytes"].as_u64().unwrap(),
            "{name}: the reloaded forms hold the run's bytes"
        );
        let ev = eval_dir(&model_dir);
        assert!(
            ev.status.success(),
            "{}",
            String::from_utf8_lossy(&ev.stderr)
        );
        let ev: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
        assert_same_metrics(name, run, &ev, 1e-4, 1e-3);
        // The same run as GGUF from this non-GGUF base: llama architecture and tokenizer keys
        // written from the config and tokenizer.json, and our loader reads it back.
        let gguf = dir.path().join(format!("{name}.gguf"));
        let out = reparam()
            .args(["export", id, "--format", "gguf", "--store"])
            .arg(&store)
            .arg("--model")
            .arg(&gguf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = reparam::model::gguf::GgufFile::open(&gguf).unwrap();
        assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
        assert_eq!(file.get_str("reparam.recipe_hash").unwrap(), hash);
        // A GGUF has no zoo marker: both files score one text file.
        let text_ppl = |m: &Path| -> f64 {
            let out = reparam()
                .arg("eval")
                .arg(m)
                .arg("--text")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/text/licenses.txt"))
                .args(["--ctx", "64", "--chunks", "2", "--json"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["ppl"].as_f64().unwrap()
        };
        let (ph, pg) = (text_ppl(&model_dir), text_ppl(&gguf));
        let close = (ph - pg).abs() <= 1e-3 * pg.abs().max(1e-3);
        assert!(close, "{name}: ppl {ph} (HF) vs {pg} (GGUF)");
        // A truncated packed file is a clear error, not a silent dense fallback.
        std::fs::write(&packed, &head[..head.len() / 2]).unwrap();
        let bad = eval_dir(&model_dir);
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            err.contains("reparam-packed.safetensors") && err.contains("truncated"),
            "{err}"
        );
    }
    for form in ["shiftadd", "rtn", "nm", "rps", "csr", "bitmask"] {
        assert!(
            forms_seen.contains(form),
            "{form} not exported: {forms_seen:?}"
        );
    }
}

/// A finished run whose store write fails is not lost: the job ends with its record (metrics
/// included) and the reason, naming the file beside the store that keeps the record.
#[test]
fn a_failed_store_write_keeps_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let models = reparam::jobs::ModelCache::default();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let reserved = std::sync::atomic::AtomicU64::new(0);
    let outcome = reparam::jobs::execute(
        &store,
        &models,
        &spec("kept", 4),
        &cancel,
        &reserved,
        // The store vanishes under the running job (as a lost mount would): its write fails.
        &mut |stage, _, _| {
            if stage.starts_with("evaluating") && store_dir.exists() {
                std::fs::remove_dir_all(&store_dir).unwrap();
            }
        },
    )
    .unwrap();
    let why = outcome.unstored.expect("the store write fails");
    assert!(why.contains("could not be written"), "{why}");
    assert_eq!(outcome.record.status, Status::Ok);
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("reparam-unstored-run-"))
        .unwrap_or_else(|| panic!("no kept record beside the store: {why}"));
    assert!(why.contains(&kept.display().to_string()), "{why}");
    let rec: ExperimentRecord =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert_eq!(rec.status, Status::Ok);
    assert_eq!(rec.id, outcome.record.id);
    assert!(rec.metrics.get("ppl").is_some_and(|p| p.is_finite()));
}

/// A symmetric RTN 4-bit g32 run on the zoo exports to GGUF as Q4_0 tensors at the size the run
/// counted, and `--verify` has llama.cpp measure the file (against the base, same text and
/// positions) and stores that as a run tagged `deployed` whose llama.cpp perplexity is the
/// run's own within llama.cpp's Q8_0 activation rounding. Needs llama.cpp's tools
/// (`scripts/llamacpp-peer.sh`); without them it says SKIPPED.
#[test]
fn a_gguf_export_is_measured_as_deployed() {
    let Some(bin) = reparam::export::deployed::default_llamacpp_dir()
        .filter(|d| d.join("llama-perplexity").is_file())
    else {
        eprintln!("SKIPPED: llama.cpp's tools are not built (scripts/llamacpp-peer.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("q4_0.toml");
    std::fs::write(
        &recipe,
        "[[layers]]\nmatch = \"blk.*.*\"\n[layers.rtn]\nbits = 4\ngroup = 32\nsymmetric = true\n",
    )
    .unwrap();
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/suite/prose.txt");
    let store = dir.path().join("store");
    let run = run_recipe_text(&recipe, &store, text);
    let id = run["run_id"].as_str().unwrap().to_string();
    let gguf = dir.path().join("m.gguf");
    let out = reparam()
        .args(["export", &id, "--model"])
        .arg(&gguf)
        .args(["--format", "gguf", "--verify", "--verify-text", text])
        .args([
            "--verify-ctx",
            "64",
            "--verify-chunks",
            "4",
            "--json",
            "--peer-bin",
        ])
        .arg(&bin)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    let v = common::ok_json(&out);
    let exact = v["gguf"]["exact"].as_array().unwrap();
    assert!(
        exact.iter().all(|e| e[1] == "Q4_0") && exact.len() == 42,
        "{v}"
    );
    let deployed_ppl = v["deployed"]["ppl"].as_f64().unwrap();
    let ours = run["ppl"].as_f64().unwrap();
    assert!(
        (deployed_ppl / ours - 1.0).abs() < 0.02,
        "{deployed_ppl} vs {ours}"
    );
    let snap = Store::open(&store).unwrap().load().unwrap();
    let row = snap
        .records
        .iter()
        .find(|r| r.tags.iter().any(|t| t == "deployed"))
        .expect("the deployed row");
    assert!(row.notes[0].contains(&id), "{:?}", row.notes);
    assert!(
        row.tags.contains(&format!("export-of-{id}")),
        "{:?}",
        row.tags
    );
    assert_eq!(
        row.metrics["bytes"] as u64,
        v["gguf"]["file_bytes"].as_u64().unwrap()
    );
}

/// `run --json` of `recipe` on zoo:multi on `text` (ctx 64, 4 chunks).
fn run_recipe_text(recipe: &Path, store: &Path, text: &str) -> serde_json::Value {
    let out = reparam()
        .args(["run", "zoo:multi", "--recipe"])
        .arg(recipe)
        .args([
            "--text",
            text,
            "--ctx",
            "64",
            "--chunks",
            "4",
            "--prompts",
            "0",
        ])
        .args(["--json", "--store"])
        .arg(store)
        .output()
        .unwrap();
    common::ok_json(&out)
}
