//! The desktop app driven through egui_kittest on the real app state: widgets are found by
//! their labels, jobs run for real on the bundled zoo model (with small evaluation settings),
//! and the assertions read the studio's state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use reparam::run::EvalSettings;
use reparam::store::{ExperimentRecord, Status, Store};
use reparam::technique::CalibOptions;
use reparam::technique::recipe::{Quant, Recipe};
use reparam::ui::command::Command;
use reparam::ui::dialogs::{DialogAnswer, ScriptedDialogs};
use reparam::ui::jobs::JobState;
use reparam::ui::state::{AppState, EvalPrefs, Panel};
use reparam::ui::{Studio, StudioOptions};

/// Longest wait for a background step (a model load, a small job) in the debug test build.
const TIMEOUT: Duration = Duration::from_secs(120);

fn small_eval() -> EvalPrefs {
    EvalPrefs {
        settings: EvalSettings {
            chunks: Some(2),
            ctx: Some(64),
            task_prompts: 4,
            calib: CalibOptions {
                samples: 4,
                seq_len: 64,
            },
            ..EvalSettings::default()
        },
        tags: String::new(),
    }
}

fn studio(store: &Path, dialogs: &ScriptedDialogs) -> Studio {
    Studio::new(StudioOptions {
        store_dir: store.to_path_buf(),
        dialogs: Arc::new(dialogs.clone()),
        workers: 1,
        state: AppState {
            eval: small_eval(),
            ..AppState::default()
        },
    })
    .expect("studio")
}

fn harness(s: Studio) -> Harness<'static, Studio> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .with_accessibility_check(false)
        .build_ui_state(|ui, s: &mut Studio| s.frame(ui), s)
}

/// A few frames: enough for a click to land and a popup or a grid's sizing pass to finish.
/// (`Harness::run` waits for the UI to stop repainting, which a spinner never does.)
fn settle(h: &mut Harness<'static, Studio>) {
    h.run_steps(3);
}

/// Runs frames until `cond` holds, failing after [`TIMEOUT`].
fn run_until(h: &mut Harness<'static, Studio>, what: &str, cond: impl Fn(&Studio) -> bool) {
    let start = Instant::now();
    loop {
        settle(h);
        if cond(h.state()) {
            return;
        }
        if start.elapsed() >= TIMEOUT {
            let notices: Vec<&str> = h.state().notices.iter().map(|n| n.text.as_str()).collect();
            panic!("timed out waiting for {what}; notices: {notices:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_model(h: &mut Harness<'static, Studio>) {
    run_until(h, "the zoo model", |s| {
        s.model.loaded.is_some() || s.model.error.is_some()
    });
    assert!(
        h.state().model.error.is_none(),
        "{:?}",
        h.state().model.error
    );
}

fn block0_quant(s: &mut Studio) -> Option<Quant> {
    let id = "blk.0.attn_q".parse().unwrap();
    s.analysis()
        .plan
        .get(&id)
        .and_then(|(_, p)| p.quant.clone())
}

/// Open → edit a cell → run → progress → completion → the point on the Pareto plot; undo and
/// redo by keyboard.
#[test]
fn edit_run_and_see_the_point_on_the_pareto_plot() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut h = harness(studio(dir.path(), &dialogs));
    wait_model(&mut h);
    assert_eq!(h.state().summary().unwrap().spec, "zoo:multi");
    h.get_by_label("Recipe").click();
    settle(&mut h);
    assert_eq!(h.state().state.panel, Panel::Recipe);

    // Edit one cell: block 0's bits to shift-add 3.
    h.get_by_label("Block 0 bits").click();
    settle(&mut h);
    h.get_by_label("SA 3").click();
    settle(&mut h);
    assert!(matches!(block0_quant(h.state_mut()), Some(Quant::ShiftAdd(k)) if k.bits == 3));
    let est = h.state_mut().analysis().estimate.clone();
    assert!(est.total_bytes < est.base_bytes, "{est:?}");

    // Undo / redo by keyboard.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    settle(&mut h);
    assert_eq!(block0_quant(h.state_mut()), None);
    h.key_press_modifiers(
        egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
        egui::Key::Z,
    );
    settle(&mut h);
    assert!(block0_quant(h.state_mut()).is_some());

    // Run it and watch the job.
    h.get_by_label("Run").click();
    settle(&mut h);
    assert_eq!(h.state().jobs.entries.len(), 1);
    h.get_by_label("Jobs").click();
    let mut saw_progress = false;
    let start = Instant::now();
    loop {
        settle(&mut h);
        let e = &h.state().jobs.entries[0];
        saw_progress |= e.total > 0 && matches!(e.state, JobState::Running);
        if !e.is_active() {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "job did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(saw_progress, "no progress was reported");
    let rec = h.state().jobs.entries[0].record().unwrap().clone();
    assert_eq!(rec.status, Status::Ok, "{:?}", rec.error);
    settle(&mut h);
    assert!(
        h.query_by_label("ok").is_some(),
        "the jobs panel shows the finished job"
    );

    // The point is on the Pareto plot.
    h.get_by_label("Pareto").click();
    settle(&mut h);
    let s = h.state();
    let row = s.runs.index_of(&rec.id).expect("run in the table");
    assert!(s.views.pareto_cache.rows.contains(&row));
    assert!(
        s.views.pareto_cache.front.contains(&row),
        "a single run is its own front"
    );
    assert!(h.query_by_label("Pareto plot").is_some());

    // Export its recipe through the (scripted) save dialog.
    h.state_mut().state.selected_run = Some(rec.id.clone());
    let out = dir.path().join("exported.toml");
    dialogs.push(&out);
    settle(&mut h);
    h.get_by_label("Export recipe…").click();
    // Until the write is reported, so the next click meets the same screen however fast the
    // writer thread was.
    run_until(&mut h, "the recipe file", |s| {
        out.exists() && s.notices.iter().any(|n| n.text.contains("exported.toml"))
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let back = Recipe::from_toml(&text).unwrap();
    assert_eq!(back.hash(), rec.recipe_hash);

    // The llama.cpp type file and the compressed model, through their dialogs, with progress.
    let types = dir.path().join("types.txt");
    dialogs.push(&types);
    // A frame with the notice laid out, so the click lands where the button now is.
    settle(&mut h);
    h.get_by_label("Export llama.cpp types…").click();
    run_until(&mut h, "the type file", |s| {
        s.export.is_none() && types.exists()
    });
    assert!(
        std::fs::read_to_string(&types)
            .unwrap()
            .contains("blk.0.attn_q")
    );
    // A zoo model is an HF directory; its GGUF export writes the tokenizer keys from
    // tokenizer.json.
    let gguf = dir.path().join("exported.gguf");
    dialogs.push(&gguf);
    settle(&mut h);
    h.get_by_label("Export GGUF…").click();
    run_until(&mut h, "the exported GGUF", |s| {
        s.export.is_none()
            && s.notices
                .iter()
                .any(|n| n.text.contains("exported.gguf") || n.is_error)
    });
    let last = h.state().notices.last().unwrap().clone();
    assert!(!last.is_error, "{}", last.text);
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");
    let model_dir = dir.path().join("exported-model");
    dialogs.push(&model_dir);
    settle(&mut h);
    h.get_by_label("Export model…").click();
    run_until(&mut h, "the exported model", |s| {
        s.export.is_none()
            && s.notices
                .iter()
                .any(|n| n.text.contains("exported-model") || n.is_error)
    });
    let last = h.state().notices.last().unwrap().clone();
    assert!(!last.is_error, "{}", last.text);
    assert!(model_dir.join("config.json").exists());
}

/// A running job is cancelled by its Cancel button; the next one by Esc.
#[test]
fn cancel_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    // Enough work that the job is still running when Cancel is pressed.
    let mut e = small_eval();
    e.settings.chunks = Some(50);
    e.settings.ctx = Some(128);
    e.settings.task_prompts = 200;
    s.state.eval = e;
    let mut h = harness(s);
    wait_model(&mut h);
    h.get_by_label("Jobs").click();
    settle(&mut h);
    h.get_by_label("Run recipe").click();
    run_until(&mut h, "the job to start", |s| {
        s.jobs
            .entries
            .first()
            .is_some_and(|e| matches!(e.state, JobState::Running))
    });
    h.get_by_label("Cancel").click();
    run_until(&mut h, "the job to stop", |s| {
        !s.jobs.entries[0].is_active()
    });
    let rec = h.state().jobs.entries[0].record().unwrap();
    assert_eq!(rec.status, Status::Cancelled, "{:?}", rec.error);
    // A cancel the user asked for is reported, not as an error.
    let last = h.state().notices.last().unwrap().clone();
    assert!(!last.is_error && last.text.contains("stopped"), "{last:?}");
    assert!(h.query_by_label_contains("0 jobs running").is_some());

    // Esc cancels the latest running job. A different seed makes it a new run key.
    h.state_mut().push(Command::SetSeed(7));
    settle(&mut h);
    h.get_by_label("Run recipe").click();
    run_until(&mut h, "the second job to start", |s| {
        s.jobs
            .entries
            .get(1)
            .is_some_and(|e| matches!(e.state, JobState::Running))
    });
    h.key_press(egui::Key::Escape);
    run_until(&mut h, "the second job to stop", |s| {
        !s.jobs.entries[1].is_active()
    });
    assert_eq!(
        h.state().jobs.entries[1].record().unwrap().status,
        Status::Cancelled
    );
}

fn synthetic(i: usize, tag: &str, bytes: f64, kld: f64) -> ExperimentRecord {
    let recipe = Recipe::from_toml(&format!(
        "seed = {i}\n[[layers]]\nmatch = \"blk.*\"\n[layers.shiftadd]\nbits = {}\n",
        2 + i % 4
    ))
    .unwrap();
    let mut r = ExperimentRecord::failed(
        "model-id",
        "multi",
        &recipe,
        &format!("key-{tag}-{i}"),
        std::time::SystemTime::now(),
        1.0,
        Status::Ok,
        "",
        &[tag.to_string()],
    );
    r.status = Status::Ok;
    r.error = None;
    r.metrics.insert("bytes".into(), bytes);
    r.metrics.insert("kld_mean".into(), kld);
    r
}

/// Two tagged sets overlaid: the better set (lower KLD at every size) has the larger
/// hypervolume; tags added in the app land in the store.
/// The Compare view reports the hypervolumes `reparam compare` reports for the same store and
/// tags (one reference point from every point of both sets, dominated ones included).
#[test]
fn compare_two_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5 {
        let b = 1e6 * (i + 1) as f64;
        store
            .append(&synthetic(i, "old", b, 1.0 / (i + 1) as f64))
            .unwrap();
        store
            .append(&synthetic(10 + i, "new", b, 0.5 / (i + 1) as f64))
            .unwrap();
    }
    // Off the fronts: a dominated run that is the worst in both metrics, and a duplicate.
    store.append(&synthetic(5, "old", 7e6, 2.0)).unwrap();
    store.append(&synthetic(15, "new", 2e6, 0.25)).unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.model_spec = String::new();
    let mut h = harness(s);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 12
    });
    h.get_by_label("History").click();
    settle(&mut h);
    h.get_by_label("Set A").click();
    settle(&mut h);
    h.get_by_label("old").click();
    settle(&mut h);
    h.get_by_label("Set B").click();
    settle(&mut h);
    h.get_by_label("new").click();
    settle(&mut h);
    let (hva, hvb) = h.state().views.compare_hv.expect("hypervolumes shown");
    assert!(hva > 0.0 && hvb > hva, "A {hva}, B {hvb}");
    let records = Store::open(dir.path()).unwrap().load().unwrap().records;
    let tagged = |t: &str| -> Vec<ExperimentRecord> {
        records
            .iter()
            .filter(|r| r.tags.iter().any(|x| x == t))
            .cloned()
            .collect()
    };
    let (x, y) = {
        let p = &h.state().state.pareto;
        (p.x.clone(), p.y.clone())
    };
    let objectives = [x.parse().unwrap(), y.parse().unwrap()];
    let cli = reparam::store::query::compare(&tagged("old"), &tagged("new"), &objectives).unwrap();
    assert_eq!(
        Some(hva),
        cli.a.hypervolume,
        "set A: app vs `reparam compare`"
    );
    assert_eq!(
        Some(hvb),
        cli.b.hypervolume,
        "set B: app vs `reparam compare`"
    );

    // Tag a run from the history panel; the store keeps it.
    let id = h.state().runs.rows[0].record.id.clone();
    h.state_mut().state.selected_run = Some(id.clone());
    settle(&mut h);
    // With nothing typed the button is disabled: clicking it adds nothing and reports nothing.
    let notices = h.state().notices.iter().count();
    h.get_by_label("Add tag").click();
    settle(&mut h);
    assert_eq!(h.state().notices.iter().count(), notices);
    // Typing a tag and pressing Enter adds it and empties the field.
    h.get_by_label("New tag").focus();
    settle(&mut h);
    h.get_by_label("New tag").type_text("keep");
    settle(&mut h);
    assert_eq!(h.state().views.tag_input, "keep");
    h.key_press(egui::Key::Enter);
    run_until(&mut h, "the tag", |s| {
        s.runs.rows[0].record.tags.iter().any(|t| t == "keep")
    });
    assert!(h.state().views.tag_input.is_empty(), "the field is emptied");
    let snap = Store::open(dir.path()).unwrap().load().unwrap();
    let stored = snap.records.iter().find(|r| r.id == id).unwrap();
    assert!(stored.tags.iter().any(|t| t == "keep"));
}

/// A file that is not a model gives a readable error, and invalid combinations are flagged.
#[test]
fn bad_model_file_and_invalid_cells() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"this is not a gguf file").unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut h = harness(studio(&dir.path().join("store"), &dialogs));
    wait_model(&mut h);
    dialogs.push(&bad);
    h.get_by_label("Open GGUF…").click();
    run_until(&mut h, "the load error", |s| s.model.error.is_some());
    let err = h.state().model.error.clone().unwrap();
    assert!(err.contains("broken.gguf"), "{err}");
    // The previous model stays open.
    assert!(h.state().model.loaded.is_some());

    h.get_by_label("Recipe").click();
    settle(&mut h);
    h.get_by_label("Block 1 bits").click();
    settle(&mut h);
    h.get_by_label("SA 4").click();
    settle(&mut h);
    // RPS on a quantized layer is not a valid combination: flagged in place, not run.
    let id = "blk.1.ffn_up".parse().unwrap();
    let a = h.state_mut().analysis().clone();
    let targets = vec![id];
    h.state_mut().push(Command::EditCells {
        targets,
        edit: reparam::ui::editor::CellEdit::Rps(Some(reparam::technique::recipe::RpsKnobs {
            ratio: 4.0,
            ..Default::default()
        })),
    });
    settle(&mut h);
    assert!(a.is_valid());
    let a = h.state_mut().analysis().clone();
    assert!(a.cell_errors.contains_key(&id), "{a:?}");
    assert!(h.query_all_by_label("invalid").next().is_some());
    h.get_by_label("Run").click();
    settle(&mut h);
    assert!(
        h.state().jobs.entries.is_empty(),
        "an invalid recipe is not submitted"
    );
}

/// The sensitivity pass runs in the background from the model panel, shows progress, and
/// draws one bar per measured layer: a 2-bit layer stands out against a mild 8-bit one.
#[test]
fn sensitivity_pass_draws_bars() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.sensitivity_bits = 0; // only the recipe's layers: a quick pass
    let recipe = Recipe::from_toml(
        "[[layers]]\nmatch = \"blk.*.ffn_down\"\nrtn = { bits = 8, group = 32 }\n\
         [[layers]]\nmatch = \"blk.1.ffn_down\"\nrtn = { bits = 2, group = 32 }\n",
    )
    .unwrap();
    s.recipe.editor.set(recipe);
    let mut h = harness(s);
    wait_model(&mut h);
    assert!(h.query_by_label("sensitivity bar blk.1.ffn_down").is_none());
    h.get_by_label("Run sensitivity pass").click();
    settle(&mut h);
    assert!(h.state().sensitivity.running.is_some(), "the pass started");
    run_until(&mut h, "the sensitivity pass", |s| {
        s.sensitivity.running.is_none()
    });
    let last = h.state().notices.last().unwrap().clone();
    assert!(!last.is_error, "{}", last.text);
    let sens = h.state().sensitivity.result.clone().expect("a result");
    assert_eq!(sens.layers.len(), 6, "one per ffn_down");
    let kld = |b: usize| {
        sens.layers
            .get(&reparam::model::LinearId::new(
                b,
                reparam::model::LinearKind::FfnDown,
            ))
            .unwrap()
            .kld
    };
    assert!(kld(1) > 10.0 * kld(0), "{} vs {}", kld(1), kld(0));
    // Bars are drawn for the measured layers (block 1 expanded), none for the others.
    h.get_by_label_contains("Block 1 ·").click();
    settle(&mut h);
    assert!(h.query_by_label("sensitivity bar blk.1.ffn_down").is_some());
    assert!(h.query_by_label("sensitivity bar blk.0.ffn_down").is_some());
    assert!(h.query_by_label("sensitivity bar blk.0.attn_q").is_none());
    // The ranked list puts the most sensitive layer first.
    let top = sens.ranked(1)[0].layer.clone();
    assert_eq!(top, "blk.1.ffn_down");
    assert!(h.query_by_label("Most sensitive layers").is_some());
    assert!(h.query_all_by_label(&top).count() >= 1);
    drop(h);

    // The pass was kept in the store: a restarted app shows it again without rerunning.
    let s = studio(dir.path(), &dialogs);
    let mut h = harness(s);
    wait_model(&mut h);
    run_until(&mut h, "the restored pass", |s| {
        s.sensitivity.result.is_some()
    });
    let again = h.state().sensitivity.result.clone().unwrap();
    assert_eq!(again.layers.len(), 6);
    assert_eq!(again.recipe_hash, sens.recipe_hash);
    assert_eq!(again.ranked(1)[0].layer, top);
}

/// The sensitivity pass stops at its Cancel button; a user's cancel is a notice, not an error.
#[test]
fn sensitivity_pass_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.sensitivity_bits = 3; // every linear: many layers, so the cancel lands mid-pass
    let mut h = harness(s);
    wait_model(&mut h);
    h.get_by_label("Run sensitivity pass").click();
    h.run_steps(2);
    h.get_by_label("Cancel sensitivity pass").click();
    run_until(&mut h, "the pass to stop", |s| {
        s.sensitivity.running.is_none()
    });
    let s = h.state();
    assert!(
        s.sensitivity.result.is_none(),
        "a cancelled pass leaves no result"
    );
    let last = s.notices.last().unwrap();
    assert!(
        !last.is_error && last.text.contains("cancelled"),
        "{}",
        last.text
    );
}

/// The device picker is in the job settings; a GPU job in a build without CUDA fails with the
/// reason (no panic), and the app goes on running CPU jobs.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_job_without_cuda_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.eval.settings.device = reparam::device::DeviceChoice::Cuda(0);
    let mut h = harness(s);
    wait_model(&mut h);
    h.get_by_label("Jobs").click();
    settle(&mut h);
    assert!(h.query_by_label("Device").is_some());
    h.get_by_label("Run recipe").click();
    run_until(&mut h, "the GPU job to end", |s| {
        s.jobs.entries.first().is_some_and(|e| !e.is_active())
    });
    let rec = h.state().jobs.entries[0].record().unwrap();
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(rec.device, "cuda:0");
    let error = rec.error.clone().unwrap_or_default();
    assert!(error.contains("--features cuda"), "{error}");

    h.state_mut().state.eval.settings.device = reparam::device::DeviceChoice::Cpu;
    settle(&mut h);
    h.get_by_label("Run recipe").click();
    run_until(&mut h, "the CPU job to end", |s| {
        s.jobs.entries.get(1).is_some_and(|e| !e.is_active())
    });
    let rec = h.state().jobs.entries[1].record().unwrap();
    assert_eq!(rec.status, Status::Ok, "{:?}", rec.error);
    assert_eq!(rec.device, "cpu");
}

/// Changing a Pareto axis fits the view to the new metric at once (no double-click needed).
#[test]
fn a_new_pareto_axis_refits_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..6 {
        let mut r = synthetic(i, "s", 1e6 * (i + 1) as f64, 0.1 / (i + 1) as f64);
        // Perplexities far outside the KLD range, so a stale view would show none of them.
        r.metrics.insert("ppl".into(), 500.0 + 100.0 * i as f64);
        store.append(&r).unwrap();
    }
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.model_spec = String::new();
    s.state.pareto.x = "bytes".into();
    s.state.pareto.y = "kld_mean".into();
    let mut h = harness(s);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 6
    });
    h.get_by_label("Pareto").click();
    settle(&mut h);
    let [_, y0, _, y1] = h.state().views.pareto_view.expect("the plot was drawn");
    assert!(y0 <= 0.02 && (0.1..1.0).contains(&y1), "view {y0}..{y1}");
    h.state_mut().state.pareto.y = "ppl".into();
    settle(&mut h);
    let [_, y0, _, y1] = h.state().views.pareto_view.expect("the plot was drawn");
    assert!(
        y0 <= 500.0 && y1 >= 1000.0,
        "view {y0}..{y1} misses the points"
    );
}

/// Without a desktop portal the file dialog cannot open: the app says so and takes a typed
/// path instead, with completions, and the save goes through.
#[test]
fn a_dialog_that_cannot_open_asks_for_a_typed_path() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(&dir.path().join("store"), &dialogs);
    s.state.model_spec = String::new();
    let mut h = harness(s);
    h.get_by_label("Recipe").click();
    settle(&mut h);
    dialogs.push_answer(DialogAnswer::Unavailable(
        "no file dialog: no portal".into(),
    ));
    h.get_by_label("Save recipe…").click();
    run_until(&mut h, "the path prompt", |s| s.views.path_prompt.is_some());
    let last = h.state().notices.last().unwrap().clone();
    assert!(last.text.contains("type the path instead"), "{last:?}");
    // Completion lists what the typed directory holds.
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    let typed = format!("{}/rec", dir.path().display());
    h.state_mut().views.path_prompt.as_mut().unwrap().text = typed;
    settle(&mut h);
    h.get_by_label(&format!("{}/recipes/", dir.path().display()))
        .click();
    settle(&mut h);
    let out = dir.path().join("recipes/typed.toml");
    h.state_mut().views.path_prompt.as_mut().unwrap().text = out.display().to_string();
    settle(&mut h);
    h.get_by_label("OK").click();
    run_until(&mut h, "the typed save", |_| out.exists());
    assert!(h.state().views.path_prompt.is_none());
    assert!(std::fs::read_to_string(&out).unwrap().contains("seed"));
}

/// At 640×480 with every metric shown as a column, the Columns menu stays in the window.
#[test]
fn the_columns_menu_stays_reachable_in_a_small_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..3 {
        let mut r = synthetic(i, "s", 1e6, 0.1);
        for m in [
            "ppl",
            "top1_agree",
            "avg_bits",
            "decode_tok_s",
            "sparsity",
            "rps_ratio",
        ] {
            r.metrics.insert(m.into(), 1.0);
        }
        store.append(&r).unwrap();
    }
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.model_spec = String::new();
    let mut h = Harness::builder()
        .with_size(egui::vec2(640.0, 480.0))
        .with_accessibility_check(false)
        .build_ui_state(|ui, s: &mut Studio| s.frame(ui), s);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 3
    });
    h.state_mut().state.history.columns = h.state().runs.metric_names();
    h.get_by_label("History").click();
    settle(&mut h);
    let r = h.get_by_label("Columns").rect();
    assert!(r.max.x <= 640.0 && r.max.y <= 480.0, "Columns at {r:?}");
}

/// Search from the Recipe panel: the pass runs in the background, its predicted front is
/// listed and drawn on the Pareto plot of size against KLD, points of it run as jobs and join
/// their predictions, and a predicted point loads into the editor.
#[test]
fn search_predicts_a_front_and_measures_points() {
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("candidates.toml");
    std::fs::write(
        &cands,
        "[[candidate]]\nrtn = { bits = 3, group = 32 }\n\
         [[candidate]]\nmatch = \"blk.*.ffn_*\"\nprune = { method = \"wanda\", ratio = 0.5 }\n",
    )
    .unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(&dir.path().join("store"), &dialogs);
    s.search.form.candidates = cands.display().to_string();
    s.state.panel = Panel::Recipe;
    let mut h = harness(s);
    wait_model(&mut h);
    h.get_by_label("Search").click();
    settle(&mut h);
    h.get_by_label("Run search").click();
    settle(&mut h);
    assert!(h.state().search.running.is_some(), "the search started");
    run_until(&mut h, "the search", |s| s.search.running.is_none());
    let last = h.state().notices.last().unwrap().clone();
    assert!(!last.is_error, "{}", last.text);
    let result = h.state().search.result.clone().expect("a result");
    assert!(result.points.len() >= 3, "{} points", result.points.len());
    assert!(
        result
            .points
            .windows(2)
            .all(|w| w[0].predicted.bytes <= w[1].predicted.bytes)
    );
    // Two points as jobs; on the Pareto plot each joins its prediction.
    h.get_by_label("points as jobs").click();
    settle(&mut h);
    run_until(&mut h, "the search points' jobs", |s| {
        s.runs
            .rows
            .iter()
            .filter(|r| r.record.tags.iter().any(|t| t == "search"))
            .count()
            >= 4
            && s.jobs.active().next().is_none()
    });
    {
        let s = h.state_mut();
        s.state.pareto.x = "bytes".into();
        s.state.pareto.y = "kld_mean".into();
        s.state.panel = Panel::Pareto;
    }
    settle(&mut h);
    assert!(
        h.query_by_label_contains("4 measured").is_some(),
        "the overlay joins the measured points"
    );
    assert!(h.query_by_label_contains("Spearman").is_some());
    assert!(h.query_by_label_contains("measured / predicted").is_some());
    // A predicted point loads into the editor.
    h.state_mut().push(Command::LoadSearchPoint(0));
    settle(&mut h);
    assert_eq!(h.state().recipe.editor.recipe, result.points[0].recipe);
}

/// A store that cannot be written (here: its directory replaced by a file while the job runs,
/// as a lost mount would leave it) does not lose a finished job: the Jobs list keeps its result, marked "not
/// stored" with the reason, an error notice says so, and the app goes on.
#[test]
fn a_run_the_store_cannot_take_stays_in_the_jobs_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let dialogs = ScriptedDialogs::default();
    let mut h = harness(studio(&store, &dialogs));
    wait_model(&mut h);
    h.get_by_label("Jobs").click();
    settle(&mut h);
    h.get_by_label("Run recipe").click();
    // The store goes while the job evaluates (its stored-key lookup came before).
    run_until(&mut h, "the job to evaluate", |s| {
        s.jobs
            .entries
            .first()
            .is_some_and(|e| e.stage.starts_with("evaluating"))
    });
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    run_until(&mut h, "the job to end", |s| {
        s.jobs.entries.first().is_some_and(|e| !e.is_active())
    });
    let entry = &h.state().jobs.entries[0];
    let why = entry.unstored.clone().expect("the store write failed");
    let rec = entry.record().unwrap().clone();
    assert_eq!(rec.status, Status::Ok, "{:?}", rec.error);
    assert!(rec.metrics.get("ppl").is_some_and(|p| p.is_finite()));
    assert!(why.contains("could not be written"), "{why}");
    settle(&mut h);
    assert!(h.query_by_label("not stored").is_some());
    assert!(
        h.state()
            .notices
            .iter()
            .any(|n| n.text.contains("was not stored") && n.text.contains(&rec.id)),
        "no notice"
    );
    // The app goes on: with the store back, the next run is stored.
    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir_all(store.join("tags")).unwrap();
    h.get_by_label("Run recipe").click();
    run_until(&mut h, "the second job to end", |s| {
        s.jobs.entries.get(1).is_some_and(|e| !e.is_active())
    });
    let second = &h.state().jobs.entries[1];
    assert!(second.unstored.is_none(), "{:?}", second.unstored);
    assert_eq!(
        Store::open(&store).unwrap().load().unwrap().records.len(),
        1
    );
}

/// The layer map is the editor's selection: a drag along one kind's row selects that kind in
/// every block, and setting the selection's bits writes one pattern rule (not one per layer);
/// clicking a kind's name selects its row; a click on a cell selects that layer alone.
#[test]
fn the_layer_map_selects_a_pattern_and_writes_one_rule() {
    let dir = tempfile::tempdir().unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.panel = Panel::Recipe;
    s.state.map_quantity = reparam::ui::layer_map::MapQuantity::Bits;
    let mut h = harness(s);
    wait_model(&mut h);
    settle(&mut h);
    let n_blocks = h.state().summary().unwrap().n_blocks;
    let map = h.get_by_label("Layer map cells").rect();
    let kinds = 7.0;
    let cell = |b: usize, k: usize| {
        map.min
            + egui::vec2(
                (b as f32 + 0.5) * map.width() / n_blocks as f32,
                (k as f32 + 0.5) * map.height() / kinds,
            )
    };
    // Drag along the ffn_up row (the sixth kind) from the first block to the last.
    h.drag_at(cell(0, 5));
    settle(&mut h);
    for b in 1..n_blocks {
        h.hover_at(cell(b, 5));
        h.step();
    }
    h.drop_at(cell(n_blocks - 1, 5));
    settle(&mut h);
    let selected = h.state().selected_cells();
    assert_eq!(selected.len(), n_blocks, "{selected:?}");
    assert!(selected.iter().all(|id| id.kind.gguf_name() == "ffn_up"));
    assert!(h.query_by_label_contains("as blk.*.ffn_up").is_some());

    h.get_by_label("Selection bits").click();
    settle(&mut h);
    h.get_by_label("SA 3").click();
    settle(&mut h);
    let layers = &h.state().recipe.editor.recipe.layers;
    assert_eq!(layers.len(), 1, "{layers:?}");
    assert_eq!(layers[0].pattern, "blk.*.ffn_up");
    assert_eq!(layers[0].shiftadd.as_ref().map(|k| k.bits), Some(3));

    h.get_by_label("attn_q").click();
    settle(&mut h);
    let selected = h.state().selected_cells();
    assert_eq!(selected.len(), n_blocks);
    assert!(selected.iter().all(|id| id.kind.gguf_name() == "attn_q"));
    // llama.cpp's own Q4_0 from the same list: symmetric RTN at group 32.
    h.get_by_label("Selection bits").click();
    settle(&mut h);
    h.get_by_label("Q4_0").click_accesskit();
    settle(&mut h);
    let layers = &h.state().recipe.editor.recipe.layers;
    let q4 = layers
        .iter()
        .find(|r| r.pattern == "blk.*.attn_q")
        .unwrap_or_else(|| panic!("{layers:?}"));
    let k = q4.rtn.as_ref().unwrap();
    assert!(k.symmetric && k.group == 32 && k.bits == 4, "{k:?}");

    h.get_by_label("Layer map cells").hover();
    h.event(egui::Event::PointerMoved(cell(1, 2)));
    settle(&mut h);
    h.get_by_label("Layer map cells").click();
    settle(&mut h);
    let selected = h.state().selected_cells();
    assert_eq!(selected.len(), 1, "{selected:?}");
}

/// At 640×480 every panel's controls stay inside the window (toolbars wrap instead of
/// clipping), the history table's rows end above the details panel, and selecting another
/// run leaves the details panel's buttons where they were.
#[test]
fn every_panel_fits_a_640x480_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..8 {
        let mut r = synthetic(i, if i % 2 == 0 { "a" } else { "b" }, 1e6 + i as f64, 0.1);
        r.metrics.insert("ppl".into(), 3.0 + i as f64);
        store.append(&r).unwrap();
    }
    let dialogs = ScriptedDialogs::default();
    let s = studio(dir.path(), &dialogs);
    let mut h = Harness::builder()
        .with_size(egui::vec2(640.0, 480.0))
        .with_accessibility_check(false)
        .build_ui_state(|ui, s: &mut Studio| s.frame(ui), s);
    wait_model(&mut h);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 8
    });
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(640.0, 480.0));
    let inside = |h: &Harness<'static, Studio>, label: &str| {
        let r = h.get_by_label(label).rect();
        assert!(
            window.contains_rect(r),
            "{label} at {r:?} is outside the window"
        );
    };
    for (panel, labels) in [
        (
            "Model",
            &["Open GGUF…", "Open HF directory…", "Run sensitivity pass"][..],
        ),
        ("Recipe", &["Load recipe…", "Select all", "Map colour"]),
        ("Jobs", &["Run recipe", "Run sweep", "Clear finished"]),
        ("Pareto", &["Export PNG…", "Export SVG…", "Box select"]),
        ("History", &["Reload store", "Columns"]),
    ] {
        h.get_by_label(panel).click();
        settle(&mut h);
        for label in ["Run", "Sweep", "Undo", "Redo"].iter().chain(labels) {
            inside(&h, label);
        }
    }
    let ids: Vec<String> = h
        .state()
        .runs
        .rows
        .iter()
        .map(|r| r.record.id.clone())
        .collect();
    h.state_mut()
        .apply(Command::SelectRun(Some(ids[0].clone())));
    settle(&mut h);
    inside(&h, "Load recipe into editor");
    inside(&h, "Export llama.cpp types…");
    let load = h.get_by_label("Load recipe into editor").rect();
    let header = h.get_by_label("created_at v").rect();
    assert!(
        header.max.y < load.min.y,
        "table header {header:?} under the details {load:?}"
    );
    h.state_mut()
        .apply(Command::SelectRun(Some(ids[5].clone())));
    settle(&mut h);
    assert_eq!(
        h.get_by_label("Load recipe into editor").rect(),
        load,
        "the buttons moved"
    );
}

/// A run and its export measured as deployed are joined on the Pareto plot, and the plot says
/// so.
#[test]
fn a_run_is_joined_to_its_deployed_export_on_the_pareto_plot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let run = synthetic(0, "q4", 9.0e7, 0.268);
    let mut file = synthetic(1, "q4", 9.17e7, 0.272);
    file.tags = vec!["deployed".into(), format!("export-of-{}", run.id)];
    store.append(&run).unwrap();
    store.append(&file).unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.model_spec = String::new();
    s.state.panel = Panel::Pareto;
    let mut h = harness(s);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 2
    });
    settle(&mut h);
    assert!(
        h.query_by_label_contains("1 run joined to its file as deployed")
            .is_some()
    );
}

/// A merge run selected in History draws its timeline (tasks, their mean and the perplexity
/// against the models merged), and a step of it loads the merge stopped there into the editor.
#[test]
fn a_merge_timeline_is_drawn_and_a_step_loads_the_merge_up_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let recipe = Recipe::from_toml(
        "[merge]\nmodels = [\"zoo:arith\", \"zoo:brackets\", \"zoo:reverse\"]\nmethod = \"ties\"\n",
    )
    .unwrap();
    let mut run = synthetic(0, "merge", 4.9e6, 0.07);
    run.recipe_json = serde_json::to_string(&recipe).unwrap();
    run.steps_json = Some(
        r#"[{"step":1,"model":"zoo:arith","ppl":3.5,"tasks":{"arith":0.9},"task_acc_mean":0.9},
            {"step":2,"model":"zoo:brackets","ppl":3.8,"tasks":{"arith":0.2},"task_acc_mean":0.2},
            {"step":3,"model":"zoo:reverse","ppl":4.1,"tasks":{"arith":0.0},"task_acc_mean":0.0}]"#
            .into(),
    );
    let id = run.id.clone();
    store.append(&run).unwrap();
    let dialogs = ScriptedDialogs::default();
    let mut s = studio(dir.path(), &dialogs);
    s.state.model_spec = String::new();
    s.state.panel = Panel::History;
    let mut h = harness(s);
    run_until(&mut h, "the store", |s| {
        !s.store.loading && s.runs.rows.len() == 1
    });
    h.state_mut().apply(Command::SelectRun(Some(id.clone())));
    settle(&mut h);
    // The charts paint their axes (no accessible labels); the table under them is readable.
    assert!(h.query_by_label_contains("Merge timeline").is_some());
    h.state_mut().apply(Command::LoadMergeStep { id, step: 2 });
    settle(&mut h);
    let merge = h.state().recipe.editor.recipe.merge.clone().unwrap();
    assert_eq!(merge.models, ["zoo:arith", "zoo:brackets"]);
    assert_eq!(h.state().state.panel, Panel::Recipe);
}
