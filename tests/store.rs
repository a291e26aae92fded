//! The experiment store without models: Parquet round trips, corrupt files skipped and left
//! alone, older schemas read, tags as separate files, atomic compaction, filters, and the
//! Pareto/hypervolume code against brute force on seeded random points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::time::SystemTime;

use common::ok_json;
use polars::prelude::*;
use reparam::store::pareto::{Sense, dominates_min, front, hypervolume, knee_point, pareto_ranks};
use reparam::store::query::{
    Filter, Objective, Selection, compare, filter_records, front_from_store, front_report,
};
use reparam::store::{ExperimentRecord, Status, Store};
use reparam::technique::recipe::Recipe;

fn recipe(bits: usize) -> Recipe {
    Recipe::from_toml(&format!(
        "[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.rtn]\nbits = {bits}\n"
    ))
    .unwrap()
}

fn record(bits: usize, bytes: f64, kld: f64) -> ExperimentRecord {
    let r = recipe(bits);
    let mut rec = ExperimentRecord::failed(
        "model-id",
        "tiny",
        &r,
        &format!("key-{bits}-{bytes}-{kld}"),
        SystemTime::now(),
        1.5,
        Status::Ok,
        "",
        &["t0".to_string()],
    );
    rec.error = None;
    rec.metrics = BTreeMap::from([
        ("bytes".to_string(), bytes),
        ("kld_mean".to_string(), kld),
        ("task_arith".to_string(), 0.5),
    ]);
    rec.notes = vec!["a note".into()];
    rec
}

#[test]
fn round_trip_and_key_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = record(2, 100.0, 0.5);
    let mut b = record(4, 200.0, 0.1);
    b.device = "cuda:0".into();
    b.status = Status::Failed;
    b.error = Some("boom".into());
    b.steps_json = Some("[1,2]".into());
    store.append(&a).unwrap();
    store.append(&b).unwrap();
    let snap = store.load().unwrap();
    assert!(snap.skipped.is_empty());
    assert_eq!(snap.records.len(), 2);
    let got_a = snap.records.iter().find(|r| r.id == a.id).unwrap();
    assert_eq!(got_a, &a);
    let got_b = snap.records.iter().find(|r| r.id == b.id).unwrap();
    assert_eq!(got_b, &b);
    assert_eq!(store.find_key(&a.run_key).unwrap().unwrap().id, a.id);
    assert!(
        store.find_key(&b.run_key).unwrap().is_none(),
        "failed runs do not satisfy a key"
    );
    // Plain Parquet: one column per metric under its own name, readable by any reader.
    let df =
        ParquetReader::new(File::open(dir.path().join(format!("run-{}.parquet", a.id))).unwrap())
            .finish()
            .unwrap();
    assert_eq!(
        df.column("kld_mean").unwrap().f64().unwrap().get(0),
        Some(0.5)
    );
    assert_eq!(
        df.column("status").unwrap().str().unwrap().get(0),
        Some("ok")
    );
    // The lazy frame answers queries.
    let n = store
        .frame()
        .unwrap()
        .filter(col("bytes").lt(lit(150.0)))
        .collect()
        .unwrap()
        .height();
    assert_eq!(n, 1);
}

#[test]
fn corrupt_files_are_skipped_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&record(2, 1.0, 1.0)).unwrap();
    let bad = dir.path().join("run-garbage.parquet");
    std::fs::write(&bad, b"PAR1 this is not parquet").unwrap();
    // A truncated copy of a real file.
    let good = store.run_files().unwrap()[0].clone();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("run-truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.records.len(), 1);
    assert_eq!(snap.skipped.len(), 2);
    // Compaction merges what it can read and leaves the rest exactly as it was.
    store.append(&record(3, 2.0, 0.5)).unwrap();
    store.compact().unwrap();
    assert_eq!(std::fs::read(&bad).unwrap(), b"PAR1 this is not parquet");
    assert_eq!(
        std::fs::read(&truncated).unwrap(),
        &bytes[..bytes.len() / 2]
    );
    let snap = store.load().unwrap();
    assert_eq!(snap.records.len(), 2);
    assert_eq!(snap.skipped.len(), 2);
    // The CLI says so on stderr.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(["history", "--store", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: skipping unreadable store file"),
        "{err}"
    );
    assert!(err.contains("run-garbage.parquet"), "{err}");
}

/// A FIFO (or any special file) named like a run or tag file is reported and left alone; no
/// reader blocks on it: the load, the lazy scan, compaction and `history` all finish.
#[cfg(unix)]
#[test]
fn special_files_never_hang_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&record(2, 1.0, 1.0)).unwrap();
    let fifo = dir.path().join("run-fifo.parquet");
    let tag_fifo = dir.path().join("tags/x.1-1.tag");
    for f in [&fifo, &tag_fifo] {
        let ok = std::process::Command::new("mkfifo")
            .arg(f)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let store = Store::open(&path).unwrap();
        let snap = store.load().unwrap();
        let frame = store.collect(None, |lf| lf).map(|(df, _)| df.height());
        store.compact().unwrap();
        tx.send((snap.records.len(), snap.skipped, frame)).unwrap();
    });
    let (records, skipped, frame) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a reader blocked on the FIFO");
    assert_eq!(records, 1);
    assert_eq!(frame.unwrap(), 1);
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].1.contains("not a regular file"),
        "{:?}",
        skipped[0]
    );
    assert!(fifo.exists(), "left alone");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(["history", "--store", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A store path that is not UTF-8 is refused up front (it could be written but never scanned).
#[cfg(unix)]
#[test]
fn a_non_utf8_store_path_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"store-\xff"));
    let err = Store::open(&bad).unwrap_err().to_string();
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(!bad.exists(), "nothing was created");
}

/// Temporary files of writers killed long ago are cleared by any compaction (even one with
/// nothing to merge), in the store and in `tags/`; fresh ones, which may be live writes, stay.
#[test]
fn compaction_clears_stale_temporary_files_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&record(2, 1.0, 1.0)).unwrap();
    let two_hours_ago = SystemTime::now() - std::time::Duration::from_secs(7200);
    let stale = [
        dir.path().join(".tmp-1-2-run-x.parquet"),
        dir.path().join("tags/.tmp-1-2-x.tag"),
    ];
    for p in &stale {
        std::fs::write(p, b"partial").unwrap();
        let f = File::options().write(true).open(p).unwrap();
        f.set_modified(two_hours_ago).unwrap();
    }
    let fresh = dir.path().join("tags/.tmp-3-4-y.tag");
    std::fs::write(&fresh, b"in progress").unwrap();
    store.compact().unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} stayed", p.display());
    }
    assert!(fresh.exists());
    assert_eq!(store.load().unwrap().records.len(), 1);
}

#[test]
fn older_schema_versions_still_read() {
    let dir = tempfile::tempdir().unwrap();
    // A version-1 file: no model_spec, eval_json or techniques columns, plus a column some
    // newer version added that this one does not know.
    let mut df = df!(
        "schema_version" => [1u32],
        "id" => ["old000000001"],
        "run_key" => ["k-old"],
        "created_at" => ["2026-01-01T00:00:00.000Z"],
        "model_id" => ["m"],
        "model_name" => ["tiny"],
        "recipe_hash" => [recipe(3).hash()],
        "recipe_json" => [recipe(3).to_json()],
        "status" => ["ok"],
        "duration_s" => [2.0],
        "machine" => ["box"],
        "code_version" => ["reparam 0.0.9"],
        "tags" => ["[\"legacy\"]"],
        "notes" => ["[]"],
        "future_text_column" => ["ignored"],
        "bytes" => [123i64],
        "kld_mean" => [0.25],
    )
    .unwrap();
    let mut f = File::create(dir.path().join("run-old000000001.parquet")).unwrap();
    ParquetWriter::new(&mut f).finish(&mut df).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&record(2, 50.0, 0.9)).unwrap();
    let snap = store.load().unwrap();
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
    let old = snap
        .records
        .iter()
        .find(|r| r.id == "old000000001")
        .unwrap();
    assert_eq!(old.model_spec, "");
    assert_eq!(old.eval_json, "");
    // Every run before the device column computed on the CPU.
    assert_eq!(old.device, "cpu");
    assert_eq!(old.error, None);
    assert_eq!(old.tags, vec!["legacy".to_string()]);
    assert_eq!(old.metrics.get("bytes"), Some(&123.0));
    assert!(!old.metrics.contains_key("future_text_column"));
    // Both versions in one frame, and compaction rewrites them under the new schema.
    assert_eq!(store.frame().unwrap().collect().unwrap().height(), 2);
    store.compact().unwrap();
    assert_eq!(store.run_files().unwrap().len(), 1);
    assert_eq!(store.load().unwrap().records.len(), 2);
}

#[test]
fn the_lazy_scan_reads_every_version_applies_tags_and_skips_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A version-1 file (integer metric, no steps_json, an unknown text column).
    let mut old = df!(
        "schema_version" => [1u32],
        "id" => ["old000000001"],
        "run_key" => ["k-old"],
        "created_at" => ["2026-01-01T00:00:00.000Z"],
        "recipe_json" => [recipe(3).to_json()],
        "status" => ["ok"],
        "tags" => ["[\"legacy\"]"],
        "future_text_column" => ["ignored"],
        "bytes" => [123i64],
        "kld_mean" => [0.25],
    )
    .unwrap();
    let mut f = File::create(dir.path().join("run-old000000001.parquet")).unwrap();
    ParquetWriter::new(&mut f).finish(&mut old).unwrap();
    let mut a = record(2, 100.0, 0.5);
    a.metrics.insert("ppl".into(), 9.0);
    a.steps_json = Some("[]".into());
    let b = record(4, 200.0, 0.1);
    let mut failed = record(8, 50.0, 0.0);
    failed.status = Status::Failed;
    for r in [&a, &b, &failed] {
        store.append(r).unwrap();
    }
    // A copy of a run file, as an interrupted compaction leaves it.
    let a_file = dir.path().join(format!("run-{}.parquet", a.id));
    std::fs::copy(&a_file, dir.path().join("compact-0-copy.parquet")).unwrap();
    // A file whose footer is not Parquet, and one whose footer is sound but data is not.
    std::fs::write(dir.path().join("run-garbage.parquet"), b"PAR1 nope PAR1").unwrap();
    let mut bytes = std::fs::read(dir.path().join(format!("run-{}.parquet", b.id))).unwrap();
    let damaged = dir.path().join("run-damaged.parquet");
    let end = bytes.len() / 3;
    bytes[4..end].fill(0xff);
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(reparam::store::read_run_file(&damaged).is_err());
    let damaged_before = std::fs::read(&damaged).unwrap();

    let scan = store.scan().unwrap();
    assert_eq!(scan.skipped.len(), 1, "only the footer check runs here");
    assert!(scan.skipped[0].0.ends_with("run-garbage.parquet"));
    store.add_tag(&a.id, "best").unwrap();
    store.remove_tag(&b.id, "t0").unwrap();
    assert_eq!(
        store.scan().unwrap().skipped.len(),
        2,
        "applying tags decodes"
    );
    // A full read finds the damaged file, reports it and answers without it.
    let (df, skipped) = store.collect(None, |lf| lf).unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(df.height(), 4, "old, a (once), b, failed");
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        damaged_before,
        "left alone"
    );
    let recs = reparam::store::records_from_frame(&df).unwrap();
    let by_id = |id: &str| recs.iter().find(|r| r.id == id).unwrap().clone();
    assert_eq!(by_id("old000000001").metrics["bytes"], 123.0);
    assert_eq!(by_id("old000000001").tags, vec!["legacy"]);
    assert_eq!(by_id(&a.id).tags, vec!["t0", "best"]);
    assert_eq!(by_id(&a.id).metrics["ppl"], 9.0);
    assert!(by_id(&b.id).tags.is_empty());
    assert!(!by_id(&b.id).metrics.contains_key("ppl"));
    // The same records as the eager reader, in the same order.
    let eager = store.load().unwrap();
    assert_eq!(eager.skipped.len(), 2);
    assert_eq!(recs, eager.records);

    // Lookups push their filters down.
    assert_eq!(store.find_key(&a.run_key).unwrap().unwrap().id, a.id);
    assert!(store.find_key(&failed.run_key).unwrap().is_none());
    assert_eq!(store.get(&a.id[..7]).unwrap().tags, vec!["t0", "best"]);

    // Fronts from the store equal fronts over decoded records, with tag and filter.
    let objs: Vec<Objective> = vec!["bytes".parse().unwrap(), "kld_mean".parse().unwrap()];
    for sel in [
        Selection::default(),
        Selection::tag_or_filter("bytes >= 150").unwrap(),
        Selection::tag_or_filter("legacy").unwrap(),
    ] {
        let (got, _) = front_from_store(&store, &sel, &objs).unwrap();
        let (sel_recs, _) = reparam::store::query::select_records(&store, &sel).unwrap();
        let want = front_report(&sel_recs, &objs, None).unwrap();
        let ids = |f: &reparam::store::query::FrontReport| {
            f.front.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(&want), "{sel:?}");
        assert_eq!(got.considered, want.considered);
        assert_eq!(got.hypervolume, want.hypervolume);
    }
    let tagged = Selection::tag_or_filter("best").unwrap();
    assert_eq!(
        reparam::store::query::select_records(&store, &tagged)
            .unwrap()
            .0
            .len(),
        1
    );
    // A metric nobody stored is a misspelling, not an empty front: a clear error naming the
    // metrics there are; a bad filter column likewise.
    let none: Vec<Objective> = vec!["bytes".parse().unwrap(), "nosuch".parse().unwrap()];
    let err = front_from_store(&store, &Selection::default(), &none)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`nosuch`") && err.contains("kld_mean"),
        "{err}"
    );
    let bad = Selection::tag_or_filter("nosuch < 3").unwrap();
    let err = front_from_store(&store, &bad, &objs).unwrap_err();
    assert!(err.to_string().contains("no column `nosuch`"), "{err}");
}

#[test]
fn tags_live_in_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = record(2, 1.0, 1.0);
    let file = store.append(&rec).unwrap();
    let before = std::fs::read(&file).unwrap();
    store.add_tag(&rec.id, "best").unwrap();
    store.add_tag(&rec.id[..6], "paper").unwrap();
    store.remove_tag(&rec.id, "t0").unwrap();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "run files are never rewritten"
    );
    let got = store.get(&rec.id).unwrap();
    assert_eq!(got.tags, vec!["best".to_string(), "paper".to_string()]);
    assert!(store.add_tag(&rec.id, "has space").is_err());
    assert!(store.add_tag("nope", "x").is_err());
    // Tags survive compaction (they are applied on read).
    store.append(&record(3, 1.0, 1.0)).unwrap();
    store.compact().unwrap();
    assert_eq!(store.get(&rec.id).unwrap().tags, vec!["best", "paper"]);
}

#[test]
fn compaction_is_lossless_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..20 {
        store
            .append(&record(2 + i % 6, i as f64, 1.0 / (1.0 + i as f64)))
            .unwrap();
    }
    let before = store.load().unwrap().records;
    assert_eq!(store.compact().unwrap(), (20, 20));
    assert_eq!(store.run_files().unwrap().len(), 1);
    assert_eq!(store.load().unwrap().records, before);
    // An interrupted compaction (merged file written, inputs not yet removed) reads the same.
    let merged = store.run_files().unwrap()[0].clone();
    std::fs::copy(&merged, dir.path().join("compact-0-copy.parquet")).unwrap();
    assert_eq!(store.load().unwrap().records, before);
    store.compact().unwrap();
    assert_eq!(store.load().unwrap().records, before);
    // CSV export has a header and one line per run.
    let csv = dir.path().join("runs.csv");
    assert_eq!(store.export_csv(&csv).unwrap(), 20);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.lines().next().unwrap().contains("kld_mean"));
}

#[test]
fn filters_and_fronts_over_records() {
    let recs: Vec<ExperimentRecord> = vec![
        record(2, 100.0, 0.9),
        record(3, 150.0, 0.4),
        record(4, 200.0, 0.1),
        record(8, 400.0, 0.01),
        record(5, 300.0, 0.2), // dominated by the 4-bit run
    ];
    let f: Filter = "bytes < 250 and status == ok".parse().unwrap();
    assert_eq!(filter_records(&recs, &f).unwrap().len(), 3);
    assert!(filter_records(&recs, &"nosuch < 1".parse().unwrap()).is_err());
    let objs: Vec<Objective> = vec!["bytes".parse().unwrap(), "kld_mean".parse().unwrap()];
    let rep = front_report(&recs, &objs, None).unwrap();
    assert_eq!(rep.front.len(), 4);
    assert_eq!(rep.front[0].id, recs[0].id);
    assert!(rep.hypervolume.unwrap() > 0.0);
    let cmp = compare(&recs[..2], &recs[2..], &objs).unwrap();
    assert!(cmp.hypervolume_diff.is_some());
    assert!(cmp.best_match.is_some());
}

/// SplitMix64, seeded: reproducible random points without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Small integers, so ties and duplicates happen often.
    fn small(&mut self, n: u64) -> f64 {
        (self.next() % n) as f64
    }
}

fn to_min(p: &[f64], senses: &[Sense]) -> Vec<f64> {
    p.iter()
        .zip(senses)
        .map(|(v, s)| if *s == Sense::Maximize { -v } else { *v })
        .collect()
}

/// Rank by definition: peel off the points no remaining point dominates.
fn brute_ranks(points: &[Vec<f64>], senses: &[Sense]) -> Vec<usize> {
    let pts: Vec<Vec<f64>> = points.iter().map(|p| to_min(p, senses)).collect();
    let mut ranks = vec![usize::MAX; pts.len()];
    let mut rank = 0;
    while ranks.contains(&usize::MAX) {
        let left: Vec<usize> = (0..pts.len()).filter(|&i| ranks[i] == usize::MAX).collect();
        let front: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| !left.iter().any(|&j| dominates_min(&pts[j], &pts[i])))
            .collect();
        for i in front {
            ranks[i] = rank;
        }
        rank += 1;
    }
    ranks
}

/// Hypervolume by cells: the grid of all coordinates; a cell counts when some point is at or
/// below its lower corner in every objective.
fn brute_hv(points: &[Vec<f64>], senses: &[Sense], reference: &[f64]) -> f64 {
    let pts: Vec<Vec<f64>> = points.iter().map(|p| to_min(p, senses)).collect();
    let r = to_min(reference, senses);
    let d = r.len();
    let axes: Vec<Vec<f64>> = (0..d)
        .map(|k| {
            let mut v: Vec<f64> = pts.iter().map(|p| p[k]).filter(|x| *x < r[k]).collect();
            v.push(r[k]);
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        })
        .collect();
    let mut total = 0.0;
    let mut idx = vec![0usize; d];
    loop {
        if (0..d).all(|k| idx[k] + 1 < axes[k].len()) {
            let corner: Vec<f64> = (0..d).map(|k| axes[k][idx[k]]).collect();
            if pts
                .iter()
                .any(|p| p.iter().zip(&corner).all(|(a, c)| a <= c))
            {
                total += (0..d)
                    .map(|k| axes[k][idx[k] + 1] - axes[k][idx[k]])
                    .product::<f64>();
            }
        }
        let mut k = 0;
        loop {
            if k == d {
                return total;
            }
            idx[k] += 1;
            if idx[k] < axes[k].len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
    }
}

#[test]
fn ranks_and_fronts_match_brute_force() {
    let mut rng = Rng(42);
    for case in 0..300 {
        let dims = 2 + case % 4;
        let n = 1 + (rng.next() % 60) as usize;
        let senses: Vec<Sense> = (0..dims)
            .map(|_| {
                if rng.next().is_multiple_of(2) {
                    Sense::Minimize
                } else {
                    Sense::Maximize
                }
            })
            .collect();
        let spread = if case % 3 == 0 { 4 } else { 1000 };
        let pts: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..dims).map(|_| rng.small(spread)).collect())
            .collect();
        let ranks = pareto_ranks(&pts, &senses);
        assert_eq!(
            ranks,
            brute_ranks(&pts, &senses),
            "case {case}: {pts:?} {senses:?}"
        );
        let f = front(&pts, &senses);
        let mut expect: Vec<usize> = (0..n).filter(|&i| ranks[i] == 0).collect();
        expect.sort_by(|&a, &b| pts[a][0].total_cmp(&pts[b][0]).then(a.cmp(&b)));
        assert_eq!(f, expect, "case {case}");
        let knee = knee_point(&pts, &senses).unwrap();
        assert_eq!(ranks[knee], 0, "the knee is on the front");
    }
}

#[test]
fn hypervolume_matches_brute_force() {
    let mut rng = Rng(7);
    for case in 0..200 {
        let dims = 2 + case % 2;
        let n = 1 + (rng.next() % 14) as usize;
        let senses: Vec<Sense> = (0..dims)
            .map(|_| {
                if rng.next().is_multiple_of(2) {
                    Sense::Minimize
                } else {
                    Sense::Maximize
                }
            })
            .collect();
        let pts: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..dims).map(|_| rng.small(20)).collect())
            .collect();
        // A reference inside the cloud sometimes, so points beyond it must be ignored.
        let reference: Vec<f64> = senses
            .iter()
            .map(|s| {
                let edge = rng.small(24) - 2.0;
                if *s == Sense::Minimize {
                    edge
                } else {
                    19.0 - edge
                }
            })
            .collect();
        let got = hypervolume(&pts, &senses, &reference);
        let want = brute_hv(&pts, &senses, &reference);
        assert!(
            (got - want).abs() < 1e-9 * want.max(1.0),
            "case {case}: {got} vs {want}"
        );
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_reparam"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn experiment_commands_on_a_synthetic_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for (bits, bytes, kld) in [
        (2, 100.0, 0.9),
        (3, 150.0, 0.4),
        (4, 200.0, 0.1),
        (8, 400.0, 0.01),
    ] {
        let mut r = record(bits, bytes, kld);
        r.model_spec = "zoo:multi".into();
        store.append(&r).unwrap();
        ids.push(r.id);
    }
    assert!(cli(&["tag", &ids[0], "low", "--store", d]).status.success());
    assert!(cli(&["tag", &ids[1], "low", "--store", d]).status.success());
    assert!(
        !cli(&["tag", "nosuchrun", "low", "--store", d])
            .status
            .success()
    );

    let hist = ok_json(&cli(&["history", "--tag", "low", "--json", "--store", d]));
    assert_eq!(hist.as_array().unwrap().len(), 2);

    let front = ok_json(&cli(&[
        "pareto",
        "--store",
        d,
        "--x",
        "bytes",
        "--y",
        "kld_mean",
        "--where",
        "bytes < 300",
        "--json",
    ]));
    assert_eq!(front["front"].as_array().unwrap().len(), 3);
    assert!(front["hypervolume"].as_f64().unwrap() > 0.0);
    let bad = cli(&["pareto", "--store", d, "--where", "nosuch < 3"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no column `nosuch`"));

    let cmp = ok_json(&cli(&[
        "compare",
        "--store",
        d,
        "--a",
        "low",
        "--b",
        "bytes >= 200",
        "--json",
    ]));
    let (ha, hb) = (
        cmp["a"]["hypervolume"].as_f64().unwrap(),
        cmp["b"]["hypervolume"].as_f64().unwrap(),
    );
    assert!((cmp["hypervolume_diff"].as_f64().unwrap() - (ha - hb)).abs() < 1e-9);
    // The closest pair is the 3-bit run (A) and the 4-bit run (B); their FFN plans differ.
    assert_eq!(cmp["best_match"][0], ids[1].as_str());
    assert_eq!(cmp["best_match"][1], ids[2].as_str());
    let diff = cmp["plan_diff"].as_array().unwrap();
    assert_eq!(diff.len(), 6 * 3, "{cmp}");
    assert_eq!(diff[0]["a"], "rtn 3b g128");
    assert_eq!(diff[0]["b"], "rtn 4b g128");

    let csv = dir.path().join("out.csv");
    assert!(
        cli(&[
            "store",
            "export",
            "--store",
            d,
            "--csv",
            csv.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 5);
    assert!(cli(&["store", "compact", "--store", d]).status.success());
    assert_eq!(store.run_files().unwrap().len(), 1);
    let hist = ok_json(&cli(&["history", "--tag", "low", "--json", "--store", d]));
    assert_eq!(hist.as_array().unwrap().len(), 2, "tags survive compaction");

    let toml_out = dir.path().join("r.toml");
    assert!(
        cli(&[
            "export",
            &ids[2],
            "--store",
            d,
            "--recipe",
            toml_out.to_str().unwrap()
        ])
        .status
        .success()
    );
    let text = std::fs::read_to_string(&toml_out).unwrap();
    assert_eq!(Recipe::from_toml(&text).unwrap().hash(), recipe(4).hash());
}

/// Store edges that once lost or mislabelled data: a CSV export aimed at a run file (or into
/// `tags/`) is refused, an empty id names no run (not the only one), and a
/// record with a tag `tag` would refuse is refused on append too.
#[test]
fn store_edges_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = record(3, 10.0, 0.2);
    let file = store.append(&rec).unwrap();
    let before = std::fs::read(&file).unwrap();
    let err = store.export_csv(&file).unwrap_err().to_string();
    assert!(err.contains("the store's own files"), "{err}");
    assert!(store.export_csv(&dir.path().join("tags/x.csv")).is_err());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the run file is untouched"
    );
    let outside = tempfile::tempdir().unwrap();
    assert_eq!(
        store.export_csv(&outside.path().join("runs.csv")).unwrap(),
        1
    );

    assert!(store.get(&rec.id[..4]).is_ok());
    for empty in ["", "  "] {
        let err = store.get(empty).unwrap_err().to_string();
        assert!(err.contains("no run with id"), "{err}");
    }

    let mut bad = record(4, 20.0, 0.1);
    bad.tags = vec!["two words".into()];
    let err = store.append(&bad).unwrap_err().to_string();
    assert!(err.contains("bad tag"), "{err}");
    assert_eq!(store.load().unwrap().records.len(), 1);
}

/// An unreadable store file is reported once per command, with no colour codes when stderr is
/// not a terminal, and the readable runs are still listed.
#[test]
fn a_damaged_file_is_reported_once_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&record(3, 10.0, 0.2)).unwrap();
    std::fs::write(dir.path().join("run-garbage00000.parquet"), b"not parquet").unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        &["history", "--store", d][..],
        &["pareto", "--store", d, "--x", "bytes", "--y", "kld_mean"],
    ] {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.matches("run-garbage00000.parquet").count(),
            1,
            "{args:?}: {err}"
        );
        assert!(!err.contains('\u{1b}'), "{args:?}: colour codes in {err:?}");
    }
}
