//! Store benchmark (`cargo bench --bench store`): 100 000 synthetic runs, as a sharded sweep
//! leaves them after `reparam store compact` (one compacted file) plus 200 fresh per-run
//! files. Times opening the store (the lazy scan; and, side by side, decoding every record),
//! a filter on the lazy frame against the same filter on a frame built from decoded records,
//! a front read from the store end to end, and Pareto fronts over two and three objectives on
//! points in memory. Plain timing code: medians of a few runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use polars::prelude::*;
use reparam::store::pareto::{Sense, front};
use reparam::store::query::{Objective, Selection, front_from_store, front_report};
use reparam::store::{ExperimentRecord, Status, Store};
use reparam::technique::recipe::Recipe;

const RECORDS: usize = 100_000;
const LOOSE_FILES: usize = 200;

fn synthetic(i: usize, recipe: &Recipe) -> ExperimentRecord {
    // A smooth trade-off plus noise, so fronts have realistic sizes.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let u = |k: u32| ((h.rotate_left(k * 13) >> 11) as f64) / (1u64 << 53) as f64;
    let bytes = 1e6 * (0.1 + u(1));
    let kld = 0.05 / (bytes / 1e6) * (1.0 + 0.5 * u(2));
    let tok_s = 2e3 * (1.2 - bytes / 1e6) * (1.0 + 0.3 * u(3));
    let mut rec = ExperimentRecord::failed(
        "model",
        "zoo-multi",
        recipe,
        &format!("key{i}"),
        SystemTime::now(),
        3.0,
        Status::Ok,
        "",
        &[],
    );
    rec.error = None;
    rec.metrics = BTreeMap::from([
        ("bytes".into(), bytes.round()),
        ("kld_mean".into(), kld),
        ("decode_tok_s".into(), tok_s),
        ("ppl".into(), 10.0 + kld),
        ("avg_bits".into(), 2.0 + 6.0 * u(4)),
        ("task_acc_mean".into(), u(5)),
    ]);
    rec
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed().as_secs_f64());
    }
    (median(times), last.unwrap())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let recipe =
        Recipe::from_toml("[[layers]]\nmatch = \"blk.*.ffn_*\"\n[layers.rtn]\nbits = 3\n").unwrap();
    let records: Vec<ExperimentRecord> = (0..RECORDS).map(|i| synthetic(i, &recipe)).collect();
    let start = Instant::now();
    let (compacted, loose) = records.split_at(RECORDS - LOOSE_FILES);
    // The compacted part, written as `compact` writes it.
    let mut df = reparam::store::frame_from_records(compacted).unwrap();
    let mut f = std::fs::File::create(dir.path().join("compact-0-bench.parquet")).unwrap();
    ParquetWriter::new(&mut f).finish(&mut df).unwrap();
    for r in loose {
        store.append(r).unwrap();
    }
    println!(
        "wrote {RECORDS} records ({} compacted + {LOOSE_FILES} run files) in {:.2}s",
        compacted.len(),
        start.elapsed().as_secs_f64()
    );

    // Opening the store: the lazy scan (file footers checked, plan built), and, for
    // comparison, decoding every record (`load`, what `frame()` did before it was lazy).
    let (scan_s, scan) = time(5, || Store::open(dir.path()).unwrap().scan().unwrap());
    assert!(scan.skipped.is_empty());
    println!(
        "open the store (lazy scan, footers):     {:>8.1} ms  (target < 500 ms)",
        scan_s * 1e3
    );
    let (open_s, snap) = time(5, || Store::open(dir.path()).unwrap().load().unwrap());
    assert_eq!(snap.records.len(), RECORDS);
    println!(
        "load every record (Store::load):         {:>8.1} ms",
        open_s * 1e3
    );
    let (eager_s, h_eager) = time(5, || {
        let recs = store.load().unwrap().records;
        reparam::store::frame_from_records(&recs)
            .unwrap()
            .lazy()
            .filter(col("avg_bits").lt(lit(3.0)))
            .collect()
            .unwrap()
            .height()
    });
    println!(
        "eager frame (decode all) + filter:  {h_eager:>6}  {:>8.1} ms",
        eager_s * 1e3
    );
    let (frame_s, h) = time(5, || {
        store
            .frame()
            .unwrap()
            .filter(col("avg_bits").lt(lit(3.0)))
            .collect()
            .unwrap()
            .height()
    });
    assert_eq!(h, h_eager);
    println!(
        "lazy frame + filter (avg_bits < 3): {h:>6}  {:>8.1} ms",
        frame_s * 1e3
    );
    let objs: Vec<Objective> = ["bytes", "kld_mean"]
        .iter()
        .map(|o| o.parse().unwrap())
        .collect();
    let sel = Selection::default();
    let (q2_s, q2) = time(5, || front_from_store(&store, &sel, &objs).unwrap().0);
    println!(
        "2-objective front from the store (scan + select + front): {:>5} runs {:>8.1} ms",
        q2.front.len(),
        q2_s * 1e3
    );
    let (r2_s, r2) = time(5, || {
        let recs = store.load().unwrap().records;
        front_report(&recs, &objs, None).unwrap()
    });
    assert_eq!(r2.front.len(), q2.front.len());
    println!(
        "2-objective front from records (load + front):            {:>5} runs {:>8.1} ms",
        r2.front.len(),
        r2_s * 1e3
    );

    let pts2: Vec<Vec<f64>> = snap
        .records
        .iter()
        .map(|r| vec![r.metrics["bytes"], r.metrics["kld_mean"]])
        .collect();
    let pts3: Vec<Vec<f64>> = snap
        .records
        .iter()
        .map(|r| {
            vec![
                r.metrics["bytes"],
                r.metrics["kld_mean"],
                r.metrics["decode_tok_s"],
            ]
        })
        .collect();
    let (f2_s, f2) = time(11, || front(&pts2, &[Sense::Minimize, Sense::Minimize]));
    println!(
        "2-objective front (bytes, kld_mean): {:>5} runs {:>8.2} ms  (target < 20 ms)",
        f2.len(),
        f2_s * 1e3
    );
    let (f3_s, f3) = time(11, || {
        front(&pts3, &[Sense::Minimize, Sense::Minimize, Sense::Maximize])
    });
    println!(
        "3-objective front (+ decode_tok_s):  {:>5} runs {:>8.2} ms  (target < 200 ms)",
        f3.len(),
        f3_s * 1e3
    );
    let ok = scan_s < 0.5 && f2_s < 0.02 && f3_s < 0.2;
    println!(
        "{}",
        if ok {
            "all targets met"
        } else {
            "TARGET MISSED"
        }
    );
}
