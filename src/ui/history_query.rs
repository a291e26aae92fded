//! The history table's filter and sort as a polars query. The frame has the store's column
//! layout (`crate::store::frame::frame_from_records`: `id`, `created_at`, `model_name`,
//! `status`, `tags`, `error`, one `Float64` column per metric) minus the recipe and eval JSON,
//! plus the app's derived columns (`row`: index into the run table, `family`, `summary`, and
//! `search`: the lower-cased text the text filter searches), so
//! one lazy query filters by model, tag, technique family, status and text and sorts by any
//! column. It is built once per change of the runs (off the UI thread when the store is read)
//! and queried only when the filter or sort changes. No egui here.

use polars::prelude::*;

use super::runs::{RunFilter, RunTable};

/// Frames each tag in the `tags` column.
const TAG_SEP: char = '\u{1f}';

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
    // Tags as one string, each tag framed by a unit separator (never typed in a tag), so a
    // tag test is an exact match on a framed token.
    let tags: Vec<String> = t
        .rows
        .iter()
        .map(|r| {
            r.record
                .tags
                .iter()
                .map(|tag| format!("{TAG_SEP}{tag}{TAG_SEP}"))
                .collect()
        })
        .collect();
    cols.push(Column::new("tags".into(), tags));
    // What the text filter searches, lower-cased once here rather than in every query.
    let haystack: Vec<String> = t
        .rows
        .iter()
        .map(|r| {
            let mut h = format!("{}\n{}", r.record.id, r.summary);
            if let Some(e) = &r.record.error {
                h.push('\n');
                h.push_str(e);
            }
            h.to_lowercase()
        })
        .collect();
    cols.push(Column::new("search".into(), haystack));
    for name in t.metric_names() {
        if let Some(values) = t.column(&name) {
            // NaN marks a missing metric in the table; null in the frame (sorts last).
            let v: Vec<Option<f64>> = values.iter().map(|x| x.is_finite().then_some(*x)).collect();
            cols.push(Column::new(name.as_str().into(), v));
        }
    }
    DataFrame::new(n, cols)
}

/// A test on each value of a string column (nulls never match), as a polars UDF: the crate's
/// polars build has no string or list namespace, and this keeps the filter inside the query.
fn str_test(column: &str, test: impl Fn(&str) -> bool + Send + Sync + 'static) -> Expr {
    col(column).map(
        move |c: Column| {
            let ca = c.str()?;
            let out: BooleanChunked = ca.iter().map(|v| Some(v.is_some_and(&test))).collect();
            Ok(out.with_name(c.name().clone()).into_column())
        },
        |_, f| Ok(Field::new(f.name().clone(), DataType::Boolean)),
    )
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

/// Rows of the run table passing `filter`, ordered by `sort` (a fixed column or a metric;
/// missing values last either way), as one lazy polars query over `frame`.
pub fn query_rows(
    frame: &DataFrame,
    filter: &RunFilter,
    sort: &str,
    descending: bool,
) -> PolarsResult<Vec<usize>> {
    let mut lf = frame.clone().lazy();
    if !filter.model.is_empty() {
        lf = lf.filter(col("model_name").eq(lit(filter.model.clone())));
    }
    if !filter.tag.is_empty() {
        let framed = format!("{TAG_SEP}{}{TAG_SEP}", filter.tag);
        lf = lf.filter(str_test("tags", move |s| s.contains(&framed)));
    }
    if !filter.family.is_empty() {
        lf = lf.filter(col("family").eq(lit(filter.family.clone())));
    }
    if filter.ok_only {
        lf = lf.filter(col("status").eq(lit("ok")));
    }
    let text = filter.text.trim().to_lowercase();
    if !text.is_empty() {
        lf = lf.filter(str_test("search", move |s| s.contains(&text)));
    }
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
            query_rows(&f, &filter, sort, desc).unwrap()
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
