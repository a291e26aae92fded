//! One stored run: [`ExperimentRecord`], how it is built from a run report, and the run key
//! that identifies "the same experiment" across processes and machines.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::run::RunReport;
use crate::technique::recipe::Recipe;

/// The crate version, the first part of [`code_version`].
pub const PACKAGE_VERSION: &str = concat!("reparam ", env!("CARGO_PKG_VERSION"));

/// The code version written into every record and hashed into every run key:
/// `reparam 0.1.0+<blake3 of the source tree, 12 hex>` (see `build.rs`). The crate version
/// alone would return stale stored results after every change to the code; the source hash
/// changes with the code, and is the same for the CLI, the app, the tests and every shard of a
/// cluster sweep built from one tree, in debug and release alike. `REPARAM_CODE_VERSION`
/// overrides it, e.g. to resume a sweep across a change that did not touch the numerics.
pub fn code_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| match std::env::var("REPARAM_CODE_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => format!("{PACKAGE_VERSION}+{}", env!("REPARAM_SOURCE_HASH")),
    })
}

/// The version of the code that computes numbers (the technique layer and below):
/// `reparam 0.1.0+n<blake3 of those modules, 12 hex>`. The search's measurement tables are
/// keyed by it, so they survive changes to the store, the app and the command line and are
/// measured again when a quantizer, a kernel or the model code changes. `REPARAM_CODE_VERSION`
/// overrides it as it does [`code_version`].
pub fn numerics_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| match std::env::var("REPARAM_CODE_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => format!("{PACKAGE_VERSION}+n{}", env!("REPARAM_NUMERICS_HASH")),
    })
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Cancelled,
}

impl Status {
    /// The stored spelling (`ok`, `failed`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Status::Ok),
            "failed" => Some(Status::Failed),
            "cancelled" => Some(Status::Cancelled),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about one run. Each field is one Parquet column, except `metrics` (one
/// `Float64` column per metric, under the metric's own name) and `tags` (a JSON array; tags
/// added later live in tag files and are merged in when the store is read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    /// Short unique id (12 hex digits).
    pub id: String,
    /// Content address of the experiment (see [`run_key`]).
    pub run_key: String,
    /// When the run started, RFC 3339 UTC.
    pub created_at: String,
    pub model_id: String,
    pub model_name: String,
    /// What the user typed to name the model (a path or `zoo:NAME`), so exports and plan diffs
    /// can load it again. Empty in records that predate the column.
    #[serde(default)]
    pub model_spec: String,
    pub recipe_hash: String,
    pub recipe_json: String,
    /// Calibration and evaluation settings (JSON) that went into the run key.
    #[serde(default)]
    pub eval_json: String,
    /// Families the recipe uses, comma separated (`rtn,shiftadd`, `merge`, …).
    #[serde(default)]
    pub techniques: String,
    pub status: Status,
    pub error: Option<String>,
    pub duration_s: f64,
    pub machine: String,
    /// The device the run computed on (`cpu`, `cuda:0`); records that predate the column
    /// read as `cpu`, where every run then computed.
    #[serde(default = "cpu_device")]
    pub device: String,
    pub code_version: String,
    pub tags: Vec<String>,
    /// Every numeric field of the run report (`ppl`, `kld_mean`, `bytes`, …, `task_<name>`).
    pub metrics: BTreeMap<String, f64>,
    /// A merge run's per-step timeline (JSON).
    pub steps_json: Option<String>,
    pub notes: Vec<String>,
}

fn cpu_device() -> String {
    crate::device::DeviceChoice::Cpu.to_string()
}

/// The run key: blake3 over the model id, the recipe hash, the calibration/evaluation settings
/// and the code version, each length-prefixed so no two different tuples collide by
/// concatenation.
pub fn run_key(model_id: &str, recipe_hash: &str, eval_json: &str, code_version: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [model_id, recipe_hash, eval_json, code_version] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The technique families a recipe uses, in a fixed order.
pub fn recipe_techniques(recipe: &Recipe) -> String {
    let mut out: Vec<&str> = Vec::new();
    if recipe.merge.is_some() {
        out.push("merge");
    }
    if recipe.flatten.is_some() {
        out.push("flatten");
    }
    type Uses = fn(&crate::technique::recipe::LayerRule) -> bool;
    let families: [(&str, Uses); 4] = [
        ("prune", |r| r.prune.is_some()),
        ("rtn", |r| r.rtn.is_some()),
        ("shiftadd", |r| r.shiftadd.is_some()),
        ("rps", |r| r.rps.is_some()),
    ];
    for (name, uses) in families {
        if recipe.layers.iter().any(uses) {
            out.push(name);
        }
    }
    out.join(",")
}

/// The metric column holding `metric` measured on one domain of a suite (`ppl@code`).
pub fn domain_metric(metric: &str, domain: &str) -> String {
    format!("{metric}@{domain}")
}

/// Splits a per-domain metric name into (metric, domain).
pub fn split_domain_metric(name: &str) -> Option<(&str, &str)> {
    name.split_once('@')
}

/// The metric a column measures, without its domain (`ppl@code` → `ppl`).
pub fn metric_base(name: &str) -> &str {
    split_domain_metric(name).map_or(name, |(m, _)| m)
}

/// The metrics of a report, flat: every numeric field under its own name, tasks as
/// `task_<name>`, a suite's domains as `<metric>@<domain>`.
pub fn report_metrics(report: &RunReport) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), v);
    };
    put("ppl", report.ppl);
    put("ppl_stderr", report.ppl_stderr);
    put("base_ppl", report.base_ppl);
    put("kld_mean", report.kld_mean);
    put("kld_p99", report.kld_p99);
    put("top1_agree", report.top1_agree);
    put("rms_dp", report.rms_dp);
    put("bytes", report.bytes as f64);
    put("base_bytes", report.base_bytes as f64);
    put("avg_bits", report.avg_bits);
    if let Some(v) = report.decode_tok_s {
        put("decode_tok_s", v);
    }
    if let Some(v) = report.prefill_tok_s {
        put("prefill_tok_s", v);
    }
    for (name, range) in [
        ("decode_tok_s", report.decode_range),
        ("prefill_tok_s", report.prefill_range),
    ] {
        if let Some([lo, hi]) = range {
            put(&format!("{name}_min"), lo);
            put(&format!("{name}_max"), hi);
        }
    }
    put("compress_seconds", report.compress_seconds);
    put("sparsity", report.sparsity);
    put("flattened_blocks", report.flattened_blocks as f64);
    put("rps_ratio", report.rps_ratio);
    put("merged_models", report.merged_models as f64);
    for (domain, d) in report.domains.iter().flatten() {
        put(&domain_metric("ppl", domain), d.ppl);
        if let Some(v) = d.kld_mean {
            put(&domain_metric("kld_mean", domain), v);
        }
        if let Some(v) = d.top1_agree {
            put(&domain_metric("top1_agree", domain), v);
        }
    }
    if let Some(mean) = report.task_acc_mean {
        put("task_acc_mean", mean);
    }
    if let Some(tasks) = &report.tasks {
        for (name, acc) in tasks {
            put(&format!("task_{name}"), *acc);
        }
    }
    m
}

/// This machine: host name and core count, for the `machine` column.
pub fn machine_description() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{host} ({cores} cores, {})", std::env::consts::ARCH)
}

/// A fresh short id: unique across threads (counter), processes (pid) and time.
pub fn new_id(seed: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..12].to_string()
}

/// RFC 3339 UTC with milliseconds (`2026-11-29T11:10:07.123Z`), without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's proleptic Gregorian algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl ExperimentRecord {
    /// A finished run.
    pub fn from_report(
        report: &RunReport,
        recipe: &Recipe,
        run_key: &str,
        started: SystemTime,
        duration_s: f64,
        tags: &[String],
    ) -> Self {
        Self {
            id: new_id(run_key),
            run_key: run_key.to_string(),
            created_at: rfc3339(started),
            model_id: report.model_id.clone(),
            model_name: report.model_name.clone(),
            model_spec: recipe.model.clone().unwrap_or_default(),
            recipe_hash: report.recipe_hash.clone(),
            recipe_json: recipe.to_json(),
            eval_json: String::new(),
            techniques: recipe_techniques(recipe),
            status: Status::Ok,
            error: None,
            duration_s,
            machine: machine_description(),
            device: report.device.to_string(),
            code_version: code_version().to_string(),
            tags: tags.to_vec(),
            metrics: report_metrics(report),
            // Plain structs of numbers and strings always serialize.
            steps_json: report
                .steps
                .as_ref()
                .and_then(|steps| serde_json::to_string(steps).ok()),
            notes: report.notes.clone(),
        }
    }

    /// A run that failed or was cancelled before it produced a report.
    #[allow(clippy::too_many_arguments)]
    pub fn failed(
        model_id: &str,
        model_name: &str,
        recipe: &Recipe,
        run_key: &str,
        started: SystemTime,
        duration_s: f64,
        status: Status,
        error: &str,
        tags: &[String],
    ) -> Self {
        Self {
            id: new_id(run_key),
            run_key: run_key.to_string(),
            created_at: rfc3339(started),
            model_id: model_id.to_string(),
            model_name: model_name.to_string(),
            model_spec: recipe.model.clone().unwrap_or_default(),
            recipe_hash: recipe.hash(),
            recipe_json: recipe.to_json(),
            eval_json: String::new(),
            techniques: recipe_techniques(recipe),
            status,
            error: Some(error.to_string()),
            duration_s,
            machine: machine_description(),
            device: cpu_device(),
            code_version: code_version().to_string(),
            tags: tags.to_vec(),
            metrics: BTreeMap::new(),
            steps_json: None,
            notes: Vec::new(),
        }
    }

    /// A metric by name; `duration_s` is available as a metric too.
    pub fn metric(&self, name: &str) -> Option<f64> {
        if name == "duration_s" {
            return Some(self.duration_s);
        }
        self.metrics.get(name).copied()
    }

    /// The stored recipe.
    pub fn recipe(&self) -> Result<Recipe, crate::technique::recipe::RecipeError> {
        Recipe::from_json(&self.recipe_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn run_keys_separate_fields() {
        assert_ne!(run_key("ab", "c", "", "v"), run_key("a", "bc", "", "v"));
        assert_eq!(run_key("a", "b", "c", "d"), run_key("a", "b", "c", "d"));
    }
}
