//! Questions asked of the store: `--where` filters (compiled to polars expressions over the
//! lazy frame), Pareto fronts of chosen metrics with hypervolume and knee, and the comparison
//! of two groups of runs. Front ends print these reports; nothing here prints.

use polars::prelude::*;
use serde::Serialize;

use super::pareto::{Sense, front, hypervolume, knee_point};
use super::{ExperimentRecord, Status, Store, StoreError};

/// One `column op value` clause.
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    column: String,
    op: &'static str,
    value: Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Num(f64),
    Text(String),
}

/// A conjunction of comparisons: `avg_bits < 3 and status == ok and techniques != rps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    clauses: Vec<Clause>,
}

const OPS: [&str; 6] = ["<=", ">=", "==", "!=", "<", ">"];

/// Whether `text` looks like a filter expression rather than a tag.
pub fn is_filter(text: &str) -> bool {
    OPS.iter().any(|op| text.contains(op)) || text.contains('=')
}

impl std::str::FromStr for Filter {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self, StoreError> {
        let bad = |what: String| StoreError::Query(format!("--where `{text}`: {what}"));
        let mut clauses = Vec::new();
        let normalised = text.replace("&&", " and ");
        for part in normalised.split(" and ").map(str::trim) {
            if part.is_empty() {
                return Err(bad("empty clause".into()));
            }
            let Some((pos, op)) = OPS
                .iter()
                .filter_map(|op| part.find(op).map(|p| (p, *op)))
                .min_by_key(|(p, op)| (*p, std::cmp::Reverse(op.len())))
                .or_else(|| part.find('=').map(|p| (p, "=")))
            else {
                return Err(bad(format!(
                    "`{part}` has no comparison (one of {})",
                    OPS.join(" ")
                )));
            };
            let column = part[..pos].trim().to_string();
            let raw = part[pos + op.len()..].trim().trim_matches(['\'', '"']);
            if column.is_empty() || raw.is_empty() {
                return Err(bad(format!("`{part}` needs a column and a value")));
            }
            let op = if op == "=" { "==" } else { op };
            let value = raw
                .parse::<f64>()
                .map_or_else(|_| Value::Text(raw.to_string()), Value::Num);
            if matches!(value, Value::Text(_)) && !matches!(op, "==" | "!=") {
                return Err(bad(format!(
                    "`{part}`: text can only be compared with == or !="
                )));
            }
            clauses.push(Clause { column, op, value });
        }
        Ok(Filter { clauses })
    }
}

impl Filter {
    /// The columns the filter reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.clauses.iter().map(|c| c.column.as_str())
    }

    /// The filter as one polars expression.
    pub fn expr(&self) -> Expr {
        let mut out: Option<Expr> = None;
        for c in &self.clauses {
            let lhs = col(c.column.as_str());
            let rhs = match &c.value {
                Value::Num(v) => lit(*v),
                Value::Text(t) => lit(t.clone()),
            };
            let e = match c.op {
                "<=" => lhs.lt_eq(rhs),
                ">=" => lhs.gt_eq(rhs),
                "<" => lhs.lt(rhs),
                ">" => lhs.gt(rhs),
                "!=" => lhs.neq(rhs),
                _ => lhs.eq(rhs),
            };
            out = Some(match out {
                Some(acc) => acc.and(e),
                None => e,
            });
        }
        out.unwrap_or_else(|| lit(true))
    }
}

/// The error for a filter naming a column the runs do not have.
fn check_columns(filter: &Filter, columns: &[String]) -> Result<(), StoreError> {
    match filter.columns().find(|c| !columns.iter().any(|x| x == c)) {
        Some(c) => Err(StoreError::Query(format!(
            "--where: no column `{c}` (columns: {})",
            columns.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The runs of `records` matching `filter`, evaluated by polars over a frame built from them.
pub fn filter_records(
    records: &[ExperimentRecord],
    filter: &Filter,
) -> Result<Vec<ExperimentRecord>, StoreError> {
    let qerr = |e: PolarsError| StoreError::Query(format!("--where: {e}"));
    let df = super::frame_from_records(records).map_err(qerr)?;
    let columns: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    check_columns(filter, &columns)?;
    let ids = df
        .lazy()
        .filter(filter.expr())
        .select([col("id")])
        .collect()
        .map_err(qerr)?;
    let ids: std::collections::HashSet<String> = ids
        .column("id")
        .and_then(|c| {
            c.str()
                .map(|s| s.iter().flatten().map(str::to_string).collect())
        })
        .map_err(qerr)?;
    Ok(records
        .iter()
        .filter(|r| ids.contains(&r.id))
        .cloned()
        .collect())
}

/// Which runs a query reads: all, those with a tag, those matching a filter, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub tag: Option<String>,
    pub filter: Option<Filter>,
}

impl Selection {
    /// A tag, or a filter if the text contains a comparison (as `compare --a/--b` take them).
    pub fn tag_or_filter(text: &str) -> Result<Self, StoreError> {
        Ok(if is_filter(text) {
            Selection {
                tag: None,
                filter: Some(text.parse()?),
            }
        } else {
            Selection {
                tag: Some(text.to_string()),
                filter: None,
            }
        })
    }
}

/// Files the store could not read, as every query reports them.
pub type Skipped = Vec<(std::path::PathBuf, String)>;

/// Runs `selection` over the store's lazy frame and collects `columns` (all when `None`).
/// The filter (and `pre`, a row-wise predicate) is pushed into the Parquet scans; a filter on
/// `tags` runs after tag files are applied. The tag test runs on the collected `tags` column
/// (a JSON list per run).
fn collect_selection(
    store: &Store,
    selection: &Selection,
    pre: Option<Expr>,
    columns: Option<&[String]>,
) -> Result<(DataFrame, Skipped), StoreError> {
    let schema_err = |e: PolarsError| StoreError::Query(e.to_string());
    let schema = store.schema()?;
    let names: Vec<String> = schema.iter_names().map(|c| c.to_string()).collect();
    let mut pre = pre;
    let mut post = None;
    if let Some(f) = &selection.filter {
        check_columns(f, &names)?;
        if f.columns().any(|c| c == "tags") {
            post = Some(f.expr());
        } else {
            pre = Some(match pre {
                Some(p) => p.and(f.expr()),
                None => f.expr(),
            });
        }
    }
    let mut wanted: Option<Vec<Expr>> =
        columns.map(|c| c.iter().map(|n| col(n.as_str())).collect());
    if let (Some(w), Some(_)) = (&mut wanted, &selection.tag)
        && !columns.is_some_and(|c| c.iter().any(|n| n == "tags"))
    {
        w.push(col("tags"));
    }
    let (df, skipped) = store.collect(pre.as_ref(), |lf| {
        let lf = match &post {
            Some(p) => lf.filter(p.clone()),
            None => lf,
        };
        match &wanted {
            Some(w) => lf.select(w.clone()),
            None => lf,
        }
    })?;
    let Some(tag) = &selection.tag else {
        return Ok((df, skipped));
    };
    let tags = df
        .column("tags")
        .and_then(|c| c.str().cloned())
        .map_err(schema_err)?;
    let mask: BooleanChunked = tags
        .iter()
        .map(|t| {
            t.and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
                .is_some_and(|list| list.iter().any(|x| x == tag))
        })
        .collect();
    let df = df.filter(&mask).map_err(schema_err)?;
    Ok((df, skipped))
}

/// The runs `selection` picks from the store, decoded into records (oldest first, tags
/// applied), with the files that could not be read.
pub fn select_records(
    store: &Store,
    selection: &Selection,
) -> Result<(Vec<ExperimentRecord>, Skipped), StoreError> {
    let (df, skipped) = collect_selection(store, selection, None, None)?;
    let records = super::records_from_frame(&df).map_err(|e| StoreError::Query(e.to_string()))?;
    Ok((records, skipped))
}

/// Runs selected by a tag, or by a filter expression if the text contains a comparison.
pub fn select(store: &Store, tag_or_filter: &str) -> Result<Vec<ExperimentRecord>, StoreError> {
    Ok(select_records(store, &Selection::tag_or_filter(tag_or_filter)?)?.0)
}

/// One objective: a metric and its sense. `max:NAME` / `min:NAME` override the default sense.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Objective {
    pub metric: String,
    pub sense: Sense,
}

impl std::str::FromStr for Objective {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let (sense, metric) = if let Some(m) = s.strip_prefix("max:") {
            (Sense::Maximize, m)
        } else if let Some(m) = s.strip_prefix("min:") {
            (Sense::Minimize, m)
        } else {
            (Sense::for_metric(s), s)
        };
        if metric.is_empty() {
            return Err(StoreError::Query(format!(
                "objective `{s}` names no metric"
            )));
        }
        Ok(Objective {
            metric: metric.to_string(),
            sense,
        })
    }
}

/// A run on a front.
#[derive(Debug, Clone, Serialize)]
pub struct FrontRun {
    pub id: String,
    pub values: Vec<f64>,
    pub techniques: String,
    pub tags: Vec<String>,
    pub recipe_hash: String,
}

/// The Pareto front of a set of runs.
#[derive(Debug, Clone, Serialize)]
pub struct FrontReport {
    pub objectives: Vec<Objective>,
    /// Successful runs that have every objective.
    pub considered: usize,
    pub front: Vec<FrontRun>,
    pub knee: Option<String>,
    /// Against `reference` (2 or 3 objectives).
    pub hypervolume: Option<f64>,
    pub reference: Vec<f64>,
}

/// What a front reports of each run.
#[derive(Debug, Clone)]
struct RunRef {
    id: String,
    techniques: String,
    tags: Vec<String>,
    recipe_hash: String,
}

/// The usable runs and their objective values.
fn points(records: &[ExperimentRecord], objectives: &[Objective]) -> (Vec<RunRef>, Vec<Vec<f64>>) {
    let mut recs = Vec::new();
    let mut pts = Vec::new();
    for r in records.iter().filter(|r| r.status == Status::Ok) {
        let v: Option<Vec<f64>> = objectives
            .iter()
            .map(|o| r.metric(&o.metric).filter(|x| x.is_finite()))
            .collect();
        if let Some(v) = v {
            recs.push(RunRef {
                id: r.id.clone(),
                techniques: r.techniques.clone(),
                tags: r.tags.clone(),
                recipe_hash: r.recipe_hash.clone(),
            });
            pts.push(v);
        }
    }
    (recs, pts)
}

/// The front of the successful runs `selection` picks from the store over `objectives`, read
/// lazily: only the objective and label columns of matching rows are decoded. A metric no
/// stored run has gives an empty front, as in [`front_report`].
pub fn front_from_store(
    store: &Store,
    selection: &Selection,
    objectives: &[Objective],
) -> Result<(FrontReport, Skipped), StoreError> {
    check_objective_count(objectives)?;
    let qerr = |e: PolarsError| StoreError::Query(e.to_string());
    let schema = store.schema()?;
    if objectives.iter().any(|o| {
        schema
            .get(o.metric.as_str())
            .is_none_or(|d| !d.is_primitive_numeric())
    }) {
        let names: Vec<String> = schema.iter_names().map(|c| c.to_string()).collect();
        if let Some(f) = &selection.filter {
            check_columns(f, &names)?;
        }
        // A store with runs but no such metric: a misspelt name, not an empty front.
        if schema.get("id").is_some() {
            let missing: Vec<&str> = objectives
                .iter()
                .map(|o| o.metric.as_str())
                .filter(|m| schema.get(m).is_none_or(|d| !d.is_primitive_numeric()))
                .collect();
            let metrics: Vec<&str> = schema
                .iter()
                .filter(|(n, d)| {
                    d.is_primitive_numeric() && !super::frame::is_fixed_column(n.as_str())
                })
                .map(|(n, _)| n.as_str())
                .collect();
            return Err(StoreError::Query(format!(
                "no stored run has the metric{} {}; the metrics in this store: {}",
                if missing.len() > 1 { "s" } else { "" },
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                metrics.join(", ")
            )));
        }
        let skipped = store.scan()?.skipped;
        return Ok((
            front_of(&|_| unreachable_label(), &[], objectives, None),
            skipped,
        ));
    }
    let mut pre = col("status").eq(lit(Status::Ok.as_str()));
    for o in objectives {
        pre = pre.and(col(o.metric.as_str()).is_not_null());
    }
    let mut columns: Vec<String> = ["id", "techniques", "tags", "recipe_hash"]
        .map(String::from)
        .to_vec();
    columns.extend(objectives.iter().map(|o| o.metric.clone()));
    let (df, skipped) = collect_selection(store, selection, Some(pre), Some(&columns))?;
    let text = |name: &str| -> Result<StringChunked, StoreError> {
        let c = df
            .column(name)
            .map_err(qerr)?
            .cast(&DataType::String)
            .map_err(qerr)?;
        Ok(c.str().map_err(qerr)?.clone())
    };
    let (ids, techniques, tags, hashes) = (
        text("id")?,
        text("techniques")?,
        text("tags")?,
        text("recipe_hash")?,
    );
    let mut values = Vec::with_capacity(objectives.len());
    for o in objectives {
        let c = df
            .column(o.metric.as_str())
            .map_err(qerr)?
            .cast(&DataType::Float64)
            .map_err(qerr)?;
        values.push(c.f64().map_err(qerr)?.iter().collect::<Vec<Option<f64>>>());
    }
    // Row of each usable point; labels are built only for the runs the report names.
    let mut rows = Vec::new();
    let mut pts = Vec::new();
    for i in 0..df.height() {
        let v: Option<Vec<f64>> = values
            .iter()
            .map(|col| col[i].filter(|x| x.is_finite()))
            .collect();
        if let Some(v) = v {
            rows.push(i);
            pts.push(v);
        }
    }
    let get = |c: &StringChunked, i: usize| c.get(rows[i]).unwrap_or_default().to_string();
    let label = |i: usize| RunRef {
        id: get(&ids, i),
        techniques: get(&techniques, i),
        tags: serde_json::from_str(&get(&tags, i)).unwrap_or_default(),
        recipe_hash: get(&hashes, i),
    };
    Ok((front_of(&label, &pts, objectives, None), skipped))
}

/// The label of a point that does not exist (an empty front names no run).
fn unreachable_label() -> RunRef {
    RunRef {
        id: String::new(),
        techniques: String::new(),
        tags: Vec::new(),
        recipe_hash: String::new(),
    }
}

fn check_objective_count(objectives: &[Objective]) -> Result<(), StoreError> {
    if (2..=5).contains(&objectives.len()) {
        Ok(())
    } else {
        Err(StoreError::Query(format!(
            "a front needs 2 to 5 objectives, got {}",
            objectives.len()
        )))
    }
}

/// A reference point just worse than every given point: the worst value plus 10% of the range
/// (plus 1e-9 relative, so the worst point still adds volume).
pub fn reference_point(pts: &[Vec<f64>], objectives: &[Objective]) -> Vec<f64> {
    objectives
        .iter()
        .enumerate()
        .map(|(d, o)| {
            let (lo, hi) = pts
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p[d]), hi.max(p[d]))
                });
            if !lo.is_finite() {
                return 0.0;
            }
            let pad = 0.1 * (hi - lo) + 1e-9 * hi.abs().max(lo.abs()).max(1.0);
            match o.sense {
                Sense::Minimize => hi + pad,
                Sense::Maximize => lo - pad,
            }
        })
        .collect()
}

/// The front of `records` over `objectives` (2–5), with hypervolume against `reference`
/// (computed from the points themselves when `None`).
pub fn front_report(
    records: &[ExperimentRecord],
    objectives: &[Objective],
    reference: Option<&[f64]>,
) -> Result<FrontReport, StoreError> {
    check_objective_count(objectives)?;
    let (recs, pts) = points(records, objectives);
    Ok(front_of(&|i| recs[i].clone(), &pts, objectives, reference))
}

/// The front of labelled points.
fn front_of(
    label: &dyn Fn(usize) -> RunRef,
    pts: &[Vec<f64>],
    objectives: &[Objective],
    reference: Option<&[f64]>,
) -> FrontReport {
    let senses: Vec<Sense> = objectives.iter().map(|o| o.sense).collect();
    let reference = reference.map_or_else(|| reference_point(pts, objectives), <[f64]>::to_vec);
    let f = front(pts, &senses);
    let knee = knee_point(pts, &senses).map(|i| label(i).id);
    let hv =
        (objectives.len() <= 3 && !pts.is_empty()).then(|| hypervolume(pts, &senses, &reference));
    FrontReport {
        objectives: objectives.to_vec(),
        considered: pts.len(),
        front: f
            .iter()
            .map(|&i| {
                let r = label(i);
                FrontRun {
                    id: r.id,
                    values: pts[i].clone(),
                    techniques: r.techniques,
                    tags: r.tags,
                    recipe_hash: r.recipe_hash,
                }
            })
            .collect(),
        knee,
        hypervolume: hv,
        reference,
    }
}

pub use crate::technique::recipe::{LayerDiff, plan_diff};

/// Two groups of runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub a: FrontReport,
    pub b: FrontReport,
    /// `a.hypervolume - b.hypervolume` (same reference for both).
    pub hypervolume_diff: Option<f64>,
    /// The closest pair of front runs (one from each side), in objective space scaled to 0–1.
    pub best_match: Option<(String, String)>,
    /// Per-layer plan differences of that pair (empty when their plans agree or cannot be
    /// resolved; see `plan_note`).
    pub plan_diff: Vec<LayerDiff>,
    pub plan_note: Option<String>,
}

/// Hypervolumes of two point sets (all their points, dominated ones included) against one
/// shared reference: [`reference_point`] over both sets. `reparam compare` and the app's
/// Compare view both report these numbers.
pub fn shared_hypervolumes(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    objectives: &[Objective],
) -> (Vec<f64>, f64, f64) {
    let all: Vec<Vec<f64>> = a.iter().chain(b).cloned().collect();
    let reference = reference_point(&all, objectives);
    let senses: Vec<Sense> = objectives.iter().map(|o| o.sense).collect();
    let hv = |pts: &[Vec<f64>]| hypervolume(pts, &senses, &reference);
    let (ha, hb) = (hv(a), hv(b));
    (reference, ha, hb)
}

/// Compares two groups: both fronts against one shared reference point, the hypervolume
/// difference, and the closest pair of front runs.
pub fn compare(
    a: &[ExperimentRecord],
    b: &[ExperimentRecord],
    objectives: &[Objective],
) -> Result<CompareReport, StoreError> {
    let (_, pa) = points(a, objectives);
    let (_, pb) = points(b, objectives);
    let (reference, _, _) = shared_hypervolumes(&pa, &pb, objectives);
    let all: Vec<&Vec<f64>> = pa.iter().chain(&pb).collect();
    let fa = front_report(a, objectives, Some(&reference))?;
    let fb = front_report(b, objectives, Some(&reference))?;
    let hypervolume_diff = fa.hypervolume.zip(fb.hypervolume).map(|(x, y)| x - y);
    // Scale by the combined range so metrics of different magnitude weigh alike.
    let span: Vec<f64> = (0..objectives.len())
        .map(|d| {
            let (lo, hi) = all
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p[d]), hi.max(p[d]))
                });
            if hi > lo { hi - lo } else { 1.0 }
        })
        .collect();
    let mut best: Option<(f64, String, String)> = None;
    for x in &fa.front {
        for y in &fb.front {
            let d: f64 = x
                .values
                .iter()
                .zip(&y.values)
                .zip(&span)
                .map(|((p, q), s)| ((p - q) / s).powi(2))
                .sum();
            if best.as_ref().is_none_or(|(bd, _, _)| d < *bd) {
                best = Some((d, x.id.clone(), y.id.clone()));
            }
        }
    }
    Ok(CompareReport {
        a: fa,
        b: fb,
        hypervolume_diff,
        best_match: best.map(|(_, x, y)| (x, y)),
        plan_diff: Vec::new(),
        plan_note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let f: Filter = "avg_bits < 3 and status == 'ok'".parse().unwrap();
        assert_eq!(f.clauses.len(), 2);
        assert_eq!(f.clauses[0].op, "<");
        assert_eq!(f.clauses[1].value, Value::Text("ok".into()));
        let g: Filter = "bytes<=100&&kld_mean>=0.5".parse().unwrap();
        assert_eq!(g.clauses[0].op, "<=");
        assert_eq!(g.clauses[1].op, ">=");
        assert!("status < ok".parse::<Filter>().is_err());
        assert!("nothing".parse::<Filter>().is_err());
        assert!(is_filter("bits<3") && !is_filter("baseline"));
    }

    #[test]
    fn objectives_parse() {
        let o: Objective = "max:kld_mean".parse().unwrap();
        assert_eq!(o.sense, Sense::Maximize);
        assert_eq!(
            "decode_tok_s".parse::<Objective>().unwrap().sense,
            Sense::Maximize
        );
        assert_eq!("bytes".parse::<Objective>().unwrap().sense, Sense::Minimize);
    }
}
