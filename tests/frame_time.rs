//! Frame time of the app with a 100 000-run store: builds the run table from synthetic
//! records, then times full frames (layout + tessellation, what the CPU does per frame before
//! the GPU) of the Pareto and history panels. A measurement, printed, not asserted; run it
//! in release:
//!
//! `cargo test --release --test frame_time -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use eframe::egui;
use reparam::store::{ExperimentRecord, Status};
use reparam::technique::recipe::Recipe;
use reparam::ui::dialogs::ScriptedDialogs;
use reparam::ui::history_query::query_rows;
use reparam::ui::runs::RunTable;
use reparam::ui::state::{AppState, Panel};
use reparam::ui::{Studio, StudioOptions};

const RUNS: usize = 100_000;
const FRAMES: usize = 60;

fn records() -> Vec<ExperimentRecord> {
    let recipes: Vec<Recipe> = (2..=8)
        .map(|b| {
            Recipe::from_toml(&format!(
                "[[layers]]\nmatch = \"blk.*\"\n[layers.shiftadd]\nbits = {b}\n"
            ))
            .unwrap()
        })
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..RUNS)
        .map(|i| {
            let recipe = &recipes[i % recipes.len()];
            let mut r = ExperimentRecord::failed(
                "model",
                "multi",
                recipe,
                &format!("key-{i}"),
                std::time::SystemTime::now(),
                1.0,
                Status::Ok,
                "",
                &[if i % 2 == 0 {
                    "a".to_string()
                } else {
                    "b".to_string()
                }],
            );
            r.status = Status::Ok;
            r.error = None;
            let bits = 2.0 + 6.0 * next();
            r.metrics.insert("bytes".into(), 1e6 * bits);
            r.metrics.insert("avg_bits".into(), bits);
            r.metrics
                .insert("kld_mean".into(), (-bits).exp() * (0.5 + next()));
            r.metrics.insert("ppl".into(), 10.0 + 5.0 * next());
            r.metrics
                .insert("decode_tok_s".into(), 100.0 + 50.0 * next());
            r
        })
        .collect()
}

/// (first frame, median, p95) in ms.
fn time_panel(studio: &mut Studio, ctx: &egui::Context, panel: Panel) -> (f64, f64, f64) {
    studio.state.panel = panel;
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        ..Default::default()
    };
    // Warm-up: caches (filters, fronts, sort order) are built on the first frame.
    let t0 = Instant::now();
    let mut out = ctx.run_ui(input(), |ui| studio.frame(ui));
    out.textures_delta.clear();
    let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
    let first = t0.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::new();
    for i in 0..FRAMES {
        let mut inp = input();
        // Move the pointer over the plot so hover picking runs too.
        inp.events.push(egui::Event::PointerMoved(egui::pos2(
            400.0 + i as f32,
            400.0,
        )));
        let t = Instant::now();
        let mut out = ctx.run_ui(inp, |ui| studio.frame(ui));
        out.textures_delta.clear();
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p95 = times[(times.len() * 95 / 100).min(times.len() - 1)];
    (first, median, p95)
}

#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn frame_time_with_100k_runs() {
    let dir = tempfile::tempdir().unwrap();
    let records = records();
    let t = Instant::now();
    let mut table = RunTable::from_records(records);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    table.history_frame().unwrap();
    let frame_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut studio = Studio::new(StudioOptions {
        store_dir: dir.path().to_path_buf(),
        dialogs: Arc::new(ScriptedDialogs::default()),
        workers: 1,
        state: AppState {
            model_spec: String::new(),
            ..AppState::default()
        },
    })
    .unwrap();
    // Let the (empty) store load finish first so it does not replace the table.
    let ctx = egui::Context::default();
    while studio.store.loading {
        studio.poll(&ctx);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    studio.runs = table;
    println!("run table of {RUNS} runs built in {build_ms:.0} ms (off the UI thread in the app)");
    println!("history polars frame built in {frame_ms:.0} ms (off the UI thread in the app)");
    for panel in [Panel::Pareto, Panel::History] {
        let (first, median, p95) = time_panel(&mut studio, &ctx, panel);
        println!(
            "{:?}: first frame {first:.1} ms (builds caches), then median {median:.2} ms, p95 {p95:.2} ms over {FRAMES} frames",
            panel
        );
    }
    // Frames in which the history filter or sort changed: the polars query runs in them.
    studio.state.panel = Panel::History;
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        ..Default::default()
    };
    let changes: [(&str, &str, &str); 6] = [
        ("a", "", "kld_mean"),
        ("", "", "bytes"),
        ("b", "", "created_at"),
        ("", "ab", "created_at"),
        ("a", "3", "ppl"),
        ("", "", "created_at"),
    ];
    let mut times = Vec::new();
    let (mut query_ms, mut loop_ms) = (Vec::new(), Vec::new());
    for (tag, text, sort) in changes {
        let h = &mut studio.state.history;
        h.filter.tag = tag.into();
        h.filter.text = text.into();
        h.sort = sort.into();
        let t = Instant::now();
        let mut out = ctx.run_ui(input(), |ui| studio.frame(ui));
        out.textures_delta.clear();
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(
            studio.views.history_cache.error.is_none(),
            "{:?}",
            studio.views.history_cache.error
        );
        // The two halves of a change: the filter (the app's one rule) and the polars sort.
        let h = studio.state.history.clone();
        let frame = studio.runs.history_frame().unwrap();
        let t = Instant::now();
        let rows = studio.runs.filtered(&h.filter);
        let l = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let sorted = query_rows(&frame, &rows, &h.sort, h.descending).unwrap();
        let q = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(rows.len(), sorted.len());
        query_ms.push(q);
        loop_ms.push(l);
    }
    println!(
        "per change (ms): filter {loop_ms:.1?}; polars sort of the passing rows {query_ms:.1?}"
    );
    times.sort_by(f64::total_cmp);
    println!(
        "History with a new filter/sort (filter, then the polars sort, in the frame): median {:.1} ms, max {:.1} ms over {} changes",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}
