//! The history table's sort as a polars query. The rows come filtered by the app's one filter
//! rule ([`RunTable::filtered`]); the frame has the store's column layout
//! (`crate::store::frame::frame_from_records`: `id`, `created_at`, `model_name`, `status`,
//! `error`, one `Float64` column per metric) minus the recipe and eval JSON, plus the app's
//! derived columns (`row`: index into the run table, `family`, `summary`), so one lazy query
//! sorts the passing rows by any column. It is built once per change of the runs (off the UI
//! thread when the store is read) and queried only when the filter or sort changes. No egui
//! here.

use polars::prelude::*;

use super::runs::RunTable;

/// String columns of the frame, besides the metrics.
const TEXT_COLUMNS: [&str; 7] = [
    "id",
    "created_at",
    "model_name",
    "status",
    "family",
    "summary",
    "error",
];

/// The runs of `t` as a frame (see the module doc).
pub fn history_frame(t: &RunTable) -> PolarsResult<DataFrame> {
    let n = t.rows.len();
    let mut cols: Vec<Column> = Vec::with_capacity(TEXT_COLUMNS.len() + 2);
    cols.push(Column::new(
        "row".into(),
        (0..n as u32).collect::<Vec<u32>>(),
    ));
    for name in TEXT_COLUMNS {
        let values: Vec<Option<&str>> = t
            .rows
            .iter()
            .map(|r| match name {
                "id" => Some(r.record.id.as_str()),
                "created_at" => Some(r.record.created_at.as_str()),
                "model_name" => Some(r.record.model_name.as_str()),
                "status" => Some(r.status_label()),
                "family" => Some(r.family),
                "summary" => Some(r.summary.as_str()),
                _ => r.record.error.as_deref(),
            })
            .collect();
        cols.push(Column::new(name.into(), values));
    }
    for name in t.metric_names() {
        if let Some(values) = t.column(&name) {
            // NaN marks a missing metric in the table; null in the frame (sorts last).
            let v: Vec<Option<f64>> = values.iter().map(|x| x.is_finite().then_some(*x)).collect();
            cols.push(Column::new(name.as_str().into(), v));
        }
    }
    DataFrame::new(n, cols)
}

/// The frame's table columns users sort by, mapped from the history panel's names.
fn sort_column(sort: &str) -> &str {
    match sort {
        "model" => "model_name",
        "recipe" => "summary",
        "" => "created_at",
        other => other,
    }
}

/// `rows` (indices into the run table, e.g. [`RunTable::filtered`]) ordered by `sort` (a fixed
/// column or a metric; missing values last either way), as one lazy polars query over `frame`.
pub fn query_rows(
    frame: &DataFrame,
    rows: &[usize],
    sort: &str,
    descending: bool,
) -> PolarsResult<Vec<usize>> {
    let idx = IdxCa::from_vec("row".into(), rows.iter().map(|&r| r as IdxSize).collect());
    let mut lf = frame.take(&idx)?.lazy();
    let by = sort_column(sort);
    if frame.column(by).is_ok() {
        lf = lf.sort(
            [by],
            SortMultipleOptions::default()
                .with_order_descending(descending)
                .with_nulls_last(true)
                .with_maintain_order(true),
        );
    }
    let df = lf.select([col("row")]).collect()?;
    Ok(df
        .column("row")?
        .u32()?
        .iter()
        .flatten()
        .map(|r| r as usize)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ExperimentRecord, Status};
    use crate::ui::runs::RunFilter;

    fn rec(i: usize, model: &str, tags: &[&str], kld: Option<f64>, ok: bool) -> ExperimentRecord {
        let mut r = ExperimentRecord {
            id: format!("run{i:03}"),
            run_key: String::new(),
            created_at: format!("2026-01-01T00:00:{i:02}Z"),
            model_id: String::new(),
            model_name: model.into(),
            model_spec: String::new(),
            recipe_hash: String::new(),
            recipe_json: "{\"layers\":[]}".into(),
            eval_json: String::new(),
            techniques: String::new(),
            status: if ok { Status::Ok } else { Status::Failed },
            error: (!ok).then(|| "Out of memory".to_string()),
            duration_s: 1.0,
            machine: String::new(),
            device: "cpu".into(),
            code_version: String::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metrics: Default::default(),
            steps_json: None,
            notes: Vec::new(),
        };
        if let Some(k) = kld {
            r.metrics.insert("kld_mean".into(), k);
        }
        r
    }

    #[test]
    fn filters_and_sorts_like_the_table() {
        let t = RunTable::from_records(vec![
            rec(0, "multi", &["a"], Some(0.3), true),
            rec(1, "base", &["a", "b"], Some(0.1), true),
            rec(2, "multi", &["b"], None, true),
            rec(3, "multi", &[], Some(0.2), false),
        ]);
        let f = history_frame(&t).unwrap();
        let q = |filter: RunFilter, sort: &str, desc: bool| {
            query_rows(&f, &t.filtered(&filter), sort, desc).unwrap()
        };
        let all = RunFilter::default();
        assert_eq!(q(all.clone(), "created_at", true), vec![3, 2, 1, 0]);
        // Missing metric last in both directions.
        assert_eq!(q(all.clone(), "kld_mean", false), vec![1, 3, 0, 2]);
        assert_eq!(q(all.clone(), "kld_mean", true), vec![0, 3, 1, 2]);
        let tag_b = RunFilter {
            tag: "b".into(),
            ..all.clone()
        };
        assert_eq!(q(tag_b, "id", false), vec![1, 2]);
        let multi_ok = RunFilter {
            model: "multi".into(),
            ok_only: true,
            ..all.clone()
        };
        assert_eq!(q(multi_ok, "id", false), vec![0, 2]);
        let text = RunFilter {
            text: "MEMORY".into(),
            ..all.clone()
        };
        assert_eq!(q(text, "id", false), vec![3]);
        let id = RunFilter {
            text: "run00".into(),
            ..all
        };
        assert_eq!(q(id, "id", true), vec![3, 2, 1, 0]);
    }
}
