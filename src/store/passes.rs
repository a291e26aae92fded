//! Sensitivity passes kept beside the runs, so a pass survives a restart: one JSON file per
//! (model, recipe) under `sensitivity/`, written atomically like every store file.

use std::path::{Path, PathBuf};

use super::{StoreError, io_err, write_atomic};
use crate::technique::sensitivity::SensitivityReport;

/// A saved pass: the report and the hash of the recipe it measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Saved {
    recipe_hash: String,
    report: serde_json::Value,
}

fn dir(store: &Path) -> PathBuf {
    store.join("sensitivity")
}

/// Keeps `report` (measured for the recipe with hash `recipe_hash`), replacing an earlier pass
/// of the same model and recipe.
pub fn save_sensitivity(
    store: &Path,
    recipe_hash: &str,
    report: &SensitivityReport,
) -> Result<PathBuf, StoreError> {
    let d = dir(store);
    std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    let saved = Saved {
        recipe_hash: recipe_hash.to_string(),
        report: serde_json::to_value(report).map_err(|e| StoreError::Query(e.to_string()))?,
    };
    let text = serde_json::to_vec_pretty(&saved).map_err(|e| StoreError::Query(e.to_string()))?;
    let hash = &recipe_hash[..recipe_hash.len().min(16)];
    let name = format!("{}-{hash}.json", report.model_id);
    write_atomic(&d, &name, |f| {
        use std::io::Write as _;
        f.write_all(&text).map_err(io_err(&d.join(&name)))
    })
}

/// The newest saved pass of `model_id` and the recipe hash it measured; `Ok(None)` when there
/// is none. A file that cannot be read is an error naming it (and is left on disk).
pub fn latest_sensitivity(
    store: &Path,
    model_id: &str,
) -> Result<Option<(String, SensitivityReport)>, StoreError> {
    let d = dir(store);
    let Ok(entries) = std::fs::read_dir(&d) else {
        return Ok(None);
    };
    let prefix = format!("{model_id}-");
    let newest = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let Some((_, path)) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let bad = |e: String| StoreError::Query(format!("{}: {e}", path.display()));
    let saved: Saved = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let report = SensitivityReport::from_json(&saved.report.to_string())
        .map_err(|e| bad(format!("{e:#}")))?;
    Ok(Some((saved.recipe_hash, report)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::technique::sensitivity::LayerSensitivity;

    fn report(model: &str, kld: f64) -> SensitivityReport {
        SensitivityReport {
            model_id: model.into(),
            model_name: "m".into(),
            tokens: 64,
            base_nll: 2.0,
            seconds: 1.0,
            layers: vec![LayerSensitivity {
                layer: "blk.1.ffn_down".into(),
                id: "blk.1.ffn_down".parse().unwrap(),
                setting: "shiftadd 3b".into(),
                kld,
                nll_delta: 0.01,
                base_bytes: 100,
                bytes: 20,
            }],
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_saved_pass_comes_back_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest_sensitivity(dir.path(), "m1").unwrap().is_none());
        save_sensitivity(dir.path(), "hash-a", &report("m1", 0.5)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        save_sensitivity(dir.path(), "hash-b", &report("m1", 0.7)).unwrap();
        save_sensitivity(dir.path(), "hash-c", &report("m2", 0.9)).unwrap();
        let (hash, r) = latest_sensitivity(dir.path(), "m1").unwrap().unwrap();
        assert_eq!(hash, "hash-b");
        assert_eq!(r.layers[0].kld, 0.7);
        assert_eq!(r.layers[0].id, "blk.1.ffn_down".parse().unwrap());
        // A damaged file is an error that names it, not a panic or a silent empty result.
        let bad = dir.path().join("sensitivity/m3-x.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let err = latest_sensitivity(dir.path(), "m3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m3-x.json"), "{err}");
    }
}
