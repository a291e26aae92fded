//! Measurement tables kept beside the runs, so a second search over the same model measures
//! nothing again: `measurements/<model id>/<settings>/<part>.parquet`, where `<settings>` is a
//! hash of everything a row depends on (evaluation and calibration texts and sizes, seed, code
//! version) and each part holds the rows one step of a pass produced (a block's candidates,
//! the embedding, the fixed cost). Parts are written atomically like every store file, so a
//! pass killed half-way leaves whole parts behind and resumes after them.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::{StoreError, io_err, open_regular, write_parquet};
use crate::technique::measure::Measured;

/// Parts that could not be read: path and reason.
pub type Skipped = Vec<(PathBuf, String)>;

/// The directory of one model's table under one set of settings.
pub fn table_dir(store: &Path, model_id: &str, settings: &str) -> PathBuf {
    store.join("measurements").join(model_id).join(settings)
}

fn frame(rows: &[Measured]) -> PolarsResult<DataFrame> {
    let col_f = |name: &str, f: fn(&Measured) -> f64| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<f64>>())
    };
    let col_u = |name: &str, f: fn(&Measured) -> usize| {
        Column::new(
            name.into(),
            rows.iter().map(|r| f(r) as u64).collect::<Vec<u64>>(),
        )
    };
    DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "layer".into(),
                rows.iter().map(|r| r.layer.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "candidate".into(),
                rows.iter().map(|r| r.candidate.clone()).collect::<Vec<_>>(),
            ),
            col_f("kld", |r| r.kld),
            col_f("nll_delta", |r| r.nll_delta),
            col_u("base_bytes", |r| r.base_bytes),
            col_u("bytes", |r| r.bytes),
            col_f("seconds", |r| r.seconds),
        ],
    )
}

/// Writes one part of a table (`part` is a file-name-safe name, unique in the table).
pub fn save_part(dir: &Path, part: &str, rows: &[Measured]) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let df = frame(rows).map_err(|e| StoreError::Parquet {
        path: dir.join(part),
        message: e.to_string(),
    })?;
    write_parquet(dir, &format!("{part}.parquet"), df)
}

fn read_part(path: &Path) -> Result<Vec<Measured>, String> {
    let df = ParquetReader::new(open_regular(path)?)
        .finish()
        .map_err(|e| e.to_string())?;
    let strings = |name: &str| -> Result<Vec<String>, String> {
        let c = df.column(name).map_err(|e| e.to_string())?;
        c.str()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|v| {
                v.map(str::to_string)
                    .ok_or_else(|| format!("`{name}` is null"))
            })
            .collect()
    };
    let floats = |name: &str| -> Result<Vec<f64>, String> {
        let c = df.column(name).map_err(|e| e.to_string())?;
        let c = c.cast(&DataType::Float64).map_err(|e| e.to_string())?;
        Ok(c.f64()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    let (layer, candidate) = (strings("layer")?, strings("candidate")?);
    let (kld, nll, base_bytes, bytes, seconds) = (
        floats("kld")?,
        floats("nll_delta")?,
        floats("base_bytes")?,
        floats("bytes")?,
        floats("seconds")?,
    );
    Ok((0..df.height())
        .map(|i| Measured {
            layer: layer[i].clone(),
            candidate: candidate[i].clone(),
            kld: kld[i],
            nll_delta: nll[i],
            base_bytes: base_bytes[i] as usize,
            bytes: bytes[i] as usize,
            seconds: seconds[i],
        })
        .collect())
}

/// Every row of a table (a missing table is empty; a pair measured twice counts once), and
/// the parts that could not be read
/// (path, reason), which are left on disk for the user to look at.
pub fn load_table(dir: &Path) -> Result<(Vec<Measured>, Skipped), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with(".tmp-"))
        })
        .collect();
    paths.sort();
    let (mut rows, mut skipped) = (Vec::new(), Vec::new());
    // Two shards (or a pass resumed beside a live one) may measure a pair twice; the first
    // part read keeps it.
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        match read_part(&p) {
            Ok(r) => rows.extend(
                r.into_iter()
                    .filter(|m| seen.insert((m.layer.clone(), m.candidate.clone()))),
            ),
            Err(e) => skipped.push((p, e)),
        }
    }
    Ok((rows, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: &str, cand: &str, kld: f64) -> Measured {
        Measured {
            layer: layer.into(),
            candidate: cand.into(),
            kld,
            nll_delta: -0.01,
            base_bytes: 1000,
            bytes: 300,
            seconds: 1e-4,
        }
    }

    #[test]
    fn parts_round_trip_and_bad_parts_are_reported() {
        let dir = std::env::temp_dir().join(format!("reparam-meas-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = table_dir(&dir, "m", "s");
        assert!(load_table(&t).unwrap().0.is_empty());
        let a = vec![
            row("blk.0.attn_q", "x", 0.5),
            row("blk.0.attn_k", "x", 0.25),
        ];
        save_part(&t, "blk0-x", &a).unwrap();
        let untimed = Measured {
            seconds: f64::NAN,
            ..row("blk.1.attn_q", "x", 1.0)
        };
        save_part(&t, "blk1-x", &[untimed]).unwrap();
        std::fs::write(t.join("broken.parquet"), b"not parquet").unwrap();
        let (rows, skipped) = load_table(&t).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[..2], &a[..]);
        assert!(rows[2].seconds.is_nan());
        assert_eq!(skipped.len(), 1);
        assert!(t.join("broken.parquet").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
