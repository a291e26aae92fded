//! Records ↔ polars frames: the Parquet column layout. Fixed columns first, then one
//! `Float64` column per metric under the metric's own name, so pandas, DuckDB and Spark see
//! plain columns. Reading tolerates missing columns (older schema versions) and ignores unknown
//! non-numeric ones (newer versions).

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;

use super::record::{ExperimentRecord, Status};

/// The schema written by this code. Bump when a column is added; readers fill columns a file
/// lacks with their defaults.
pub const SCHEMA_VERSION: u32 = 3;

/// String columns, in write order (`error` and `steps_json` may be null).
pub(crate) const STRING_COLUMNS: [&str; 17] = [
    "id",
    "run_key",
    "created_at",
    "model_id",
    "model_name",
    "model_spec",
    "recipe_hash",
    "recipe_json",
    "eval_json",
    "techniques",
    "status",
    "error",
    "machine",
    "device",
    "code_version",
    "tags",
    "notes",
];

/// Fixed columns that are neither strings above nor metrics.
const OTHER_FIXED: [&str; 3] = ["schema_version", "duration_s", "steps_json"];

/// Whether `name` is a fixed (non-metric) column.
pub fn is_fixed_column(name: &str) -> bool {
    STRING_COLUMNS.contains(&name) || OTHER_FIXED.contains(&name)
}

/// One frame holding `records`; metric columns are the union over all records (null where a
/// record lacks the metric).
pub fn frame_from_records(records: &[ExperimentRecord]) -> PolarsResult<DataFrame> {
    let n = records.len();
    let mut cols: Vec<Column> = Vec::new();
    cols.push(Column::new(
        "schema_version".into(),
        vec![SCHEMA_VERSION; n],
    ));
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    for name in STRING_COLUMNS {
        let values: Vec<Option<String>> = records
            .iter()
            .map(|r| match name {
                "id" => Some(r.id.clone()),
                "run_key" => Some(r.run_key.clone()),
                "created_at" => Some(r.created_at.clone()),
                "model_id" => Some(r.model_id.clone()),
                "model_name" => Some(r.model_name.clone()),
                "model_spec" => Some(r.model_spec.clone()),
                "recipe_hash" => Some(r.recipe_hash.clone()),
                "recipe_json" => Some(r.recipe_json.clone()),
                "eval_json" => Some(r.eval_json.clone()),
                "techniques" => Some(r.techniques.clone()),
                "status" => Some(r.status.as_str().to_string()),
                "error" => r.error.clone(),
                "machine" => Some(r.machine.clone()),
                "device" => Some(r.device.clone()),
                "code_version" => Some(r.code_version.clone()),
                "tags" => Some(json(&r.tags)),
                _ => Some(json(&r.notes)),
            })
            .collect();
        cols.push(Column::new(name.into(), values));
    }
    cols.push(Column::new(
        "duration_s".into(),
        records.iter().map(|r| r.duration_s).collect::<Vec<f64>>(),
    ));
    cols.push(Column::new(
        "steps_json".into(),
        records
            .iter()
            .map(|r| r.steps_json.clone())
            .collect::<Vec<Option<String>>>(),
    ));
    let metric_names: BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.metrics.keys().map(String::as_str))
        .filter(|k| !is_fixed_column(k))
        .collect();
    for name in metric_names {
        let values: Vec<Option<f64>> = records
            .iter()
            .map(|r| r.metrics.get(name).copied())
            .collect();
        cols.push(Column::new(name.into(), values));
    }
    DataFrame::new(n, cols)
}

/// A string column as owned optional values; `None` when the file predates the column.
fn strings(df: &DataFrame, name: &str) -> PolarsResult<Option<Vec<Option<String>>>> {
    let Ok(col) = df.column(name) else {
        return Ok(None);
    };
    let col = col.cast(&DataType::String)?;
    Ok(Some(
        col.str()?.iter().map(|v| v.map(str::to_string)).collect(),
    ))
}

/// A numeric column as optional f64 values; `None` when absent.
fn floats(df: &DataFrame, name: &str) -> PolarsResult<Option<Vec<Option<f64>>>> {
    let Ok(col) = df.column(name) else {
        return Ok(None);
    };
    let col = col.cast(&DataType::Float64)?;
    Ok(Some(col.f64()?.iter().collect()))
}

/// Records from a frame written by any schema version. Rows missing an id or with an unknown
/// status are an error (the file is then reported as unreadable, not half-read).
pub fn records_from_frame(df: &DataFrame) -> PolarsResult<Vec<ExperimentRecord>> {
    let n = df.height();
    let mut string_cols: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for name in STRING_COLUMNS.iter().chain(["steps_json"].iter()) {
        if let Some(v) = strings(df, name)? {
            string_cols.insert(name, v);
        }
    }
    for required in ["id", "run_key", "status", "recipe_json"] {
        if !string_cols.contains_key(required) {
            polars_bail!(ColumnNotFound: "required column `{}` is missing", required);
        }
    }
    let duration = floats(df, "duration_s")?;
    let metric_names: Vec<String> = df
        .columns()
        .iter()
        .filter(|c| !is_fixed_column(c.name()) && c.dtype().is_primitive_numeric())
        .map(|c| c.name().to_string())
        .collect();
    let mut metric_cols = Vec::with_capacity(metric_names.len());
    for name in &metric_names {
        if let Some(v) = floats(df, name)? {
            metric_cols.push((name.as_str(), v));
        }
    }
    // Values are moved out of the columns, not cloned: opening a large store is mostly this.
    let mut get = |name: &str, i: usize| -> Option<String> {
        string_cols.get_mut(name).and_then(|c| c[i].take())
    };
    let list = |text: Option<String>| -> Vec<String> {
        text.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let Some(id) = get("id", i) else {
            polars_bail!(ComputeError: "row {} has no id", i);
        };
        let status_text = get("status", i).unwrap_or_default();
        let Some(status) = Status::parse(&status_text) else {
            polars_bail!(ComputeError: "row {} has unknown status `{}`", i, status_text);
        };
        let metrics = metric_cols
            .iter()
            .filter_map(|(name, v)| v[i].map(|x| (name.to_string(), x)))
            .collect();
        out.push(ExperimentRecord {
            id,
            run_key: get("run_key", i).unwrap_or_default(),
            created_at: get("created_at", i).unwrap_or_default(),
            model_id: get("model_id", i).unwrap_or_default(),
            model_name: get("model_name", i).unwrap_or_default(),
            model_spec: get("model_spec", i).unwrap_or_default(),
            recipe_hash: get("recipe_hash", i).unwrap_or_default(),
            recipe_json: get("recipe_json", i).unwrap_or_default(),
            eval_json: get("eval_json", i).unwrap_or_default(),
            techniques: get("techniques", i).unwrap_or_default(),
            status,
            error: get("error", i),
            duration_s: duration.as_ref().and_then(|d| d[i]).unwrap_or(0.0),
            machine: get("machine", i).unwrap_or_default(),
            device: get("device", i)
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| crate::device::DeviceChoice::Cpu.to_string()),
            code_version: get("code_version", i).unwrap_or_default(),
            tags: list(get("tags", i)),
            metrics,
            steps_json: get("steps_json", i),
            notes: list(get("notes", i)),
        });
    }
    Ok(out)
}
