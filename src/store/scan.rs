//! Reading the store lazily: every run file becomes a polars Parquet scan, the scans are
//! concatenated diagonally (a file written before a column existed reads that column as null,
//! so older schema versions and files with different metric sets read as one frame), and
//! queries run on that plan with filters and column selections pushed into the scans.
//!
//! A file is only added to the plan after its Parquet footer has been read and checked (it
//! parses, and it has the columns every run needs); a file that fails is reported in
//! [`Scan::skipped`] and left on disk untouched. A file whose footer is sound but whose data is
//! damaged is only found when a query decodes it: [`Store::collect`] then checks every file in
//! full, reports the bad ones, and runs the query again without them.
//!
//! Tag files are applied on top of the scans (a small join of the tagged runs' final tags), so
//! the `tags` column of the frame always reflects them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use polars::prelude::{PlRefPath, ScanArgsParquet, UnionArgs};

use super::frame::{STRING_COLUMNS, is_fixed_column};
use super::{Store, StoreError, frame_from_records, read_run_file};

/// Columns a run file must have to be read at all (as in [`super::records_from_frame`]).
const REQUIRED: [&str; 4] = ["id", "run_key", "status", "recipe_json"];

/// The union of the readable files (none when there are none), how many files it scans, and
/// the files skipped.
type Union = (Option<LazyFrame>, usize, Vec<(PathBuf, String)>);

/// A lazy view of every readable run in the store.
#[derive(Clone)]
pub struct Scan {
    /// One row per run (copies left by an interrupted compaction appear once), sorted by
    /// `(created_at, id)`, with tag files applied to `tags`. Columns: the fixed record columns
    /// and one `Float64` column per metric found in any file.
    pub frame: LazyFrame,
    /// Files that could not be read, with the reason (they stay on disk untouched).
    pub skipped: Vec<(PathBuf, String)>,
}

/// The normalising projection of one file, from its footer: record columns as the types the
/// current schema writes, numeric metric columns as `Float64`, unknown non-numeric columns
/// dropped (as [`super::records_from_frame`] ignores them).
fn footer_projection(path: &Path) -> Result<Vec<Expr>, String> {
    let file = super::open_regular(path)?;
    let mut reader = ParquetReader::new(file);
    let schema = reader.schema().map_err(|e| e.to_string())?;
    let names: HashSet<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(missing) = REQUIRED.iter().find(|c| !names.contains(**c)) {
        return Err(format!("required column `{missing}` is missing"));
    }
    let mut exprs = Vec::with_capacity(schema.len());
    for (name, field) in schema.iter() {
        let name = name.as_str();
        let dtype = DataType::from_arrow_field(field);
        let target = if STRING_COLUMNS.contains(&name) || name == "steps_json" {
            DataType::String
        } else if name == "schema_version" {
            DataType::UInt32
        } else if name == "duration_s" || (!is_fixed_column(name) && dtype.is_primitive_numeric()) {
            DataType::Float64
        } else {
            continue;
        };
        let e = col(name);
        exprs.push(if dtype == target { e } else { e.cast(target) });
    }
    Ok(exprs)
}

/// A lazy scan of one file (no glob expansion: store file names are literal).
fn scan_file(path: &Path, projection: Vec<Expr>) -> Result<LazyFrame, String> {
    let p = PlRefPath::try_from_path(path).map_err(|e| e.to_string())?;
    let args = ScanArgsParquet {
        glob: false,
        cache: false,
        ..ScanArgsParquet::default()
    };
    LazyFrame::scan_parquet(p, args)
        .map(|lf| lf.select(projection))
        .map_err(|e| e.to_string())
}

fn qerr(dir: &Path) -> impl Fn(PolarsError) -> StoreError + '_ {
    move |e| StoreError::Parquet {
        path: dir.to_path_buf(),
        message: e.to_string(),
    }
}

impl Store {
    /// The union of every run file whose footer checks out, not yet deduplicated nor tagged.
    /// Files in `exclude` are reported as skipped with the given reason.
    fn union(&self, exclude: &[(PathBuf, String)]) -> Result<Union, StoreError> {
        let mut frames = Vec::new();
        let mut skipped: Vec<(PathBuf, String)> = exclude.to_vec();
        for path in self.run_files()? {
            if exclude.iter().any(|(p, _)| *p == path) {
                continue;
            }
            match footer_projection(&path).and_then(|proj| scan_file(&path, proj)) {
                Ok(lf) => frames.push(lf),
                // Not damaged: merged into a newer file; the caller plans again.
                Err(_) if !path.exists() => return Err(StoreError::Vanished(path)),
                Err(why) => {
                    // Reported to the caller (the CLI warns once, the app lists it).
                    tracing::debug!("skipping unreadable store file {}: {why}", path.display());
                    skipped.push((path, why));
                }
            }
        }
        let n = frames.len();
        if frames.is_empty() {
            return Ok((None, 0, skipped));
        }
        let args = UnionArgs {
            diagonal: true,
            to_supertypes: true,
            ..UnionArgs::default()
        };
        let lf = if n == 1 {
            frames.pop()
        } else {
            Some(concat_lf_diagonal(frames, args).map_err(qerr(&self.dir))?)
        };
        Ok((lf, n, skipped))
    }

    /// Every readable run as a lazy frame: see [`Scan`]. Only file footers are read here (and
    /// the tags column of tagged runs, when tag files exist).
    pub fn scan(&self) -> Result<Scan, StoreError> {
        self.scan_where(None)
    }

    /// Like [`Store::scan`], with `pre` applied to the rows of every file before copies are
    /// merged, so polars pushes it into the Parquet scans. `pre` must be a row-wise predicate
    /// that does not read `tags` (tag files are applied afterwards).
    pub fn scan_where(&self, pre: Option<&Expr>) -> Result<Scan, StoreError> {
        self.replanning(|| self.scan_excluding(pre.cloned(), &[]))
    }

    /// The columns and types of the store's frame (footers only), planned again if a
    /// compaction replaces files under it.
    pub fn schema(&self) -> Result<SchemaRef, StoreError> {
        self.replanning(|| {
            self.scan_excluding(None, &[])?
                .frame
                .collect_schema()
                .map_err(qerr(&self.dir))
        })
    }

    fn scan_excluding(
        &self,
        pre: Option<Expr>,
        exclude: &[(PathBuf, String)],
    ) -> Result<Scan, StoreError> {
        let (union, files, skipped) = self.union(exclude)?;
        let Some(all) = union else {
            let empty = frame_from_records(&[]).map_err(qerr(&self.dir))?;
            return Ok(Scan {
                frame: empty.lazy(),
                skipped,
            });
        };
        let pre_copy = pre.clone();
        let mut lf = all.clone();
        if let Some(p) = pre {
            lf = lf.filter(p);
        }
        // Copies of one run (an interrupted compaction) are identical rows; with a single file
        // there are none. Deduplicating after the filter gives the same rows as before it.
        if files > 1 {
            lf = lf.unique_stable(Some(cols(["id"])), UniqueKeepStrategy::First);
        }
        let ops = self.tag_ops()?;
        if !ops.is_empty() {
            lf = match self.apply_tags(all, lf.clone(), &ops) {
                Ok(lf) => lf,
                // Reading the tagged rows decoded a damaged file: find it and leave it out.
                Err(e) if exclude.is_empty() => {
                    let bad = self.deep_check();
                    if bad.is_empty() {
                        return Err(e);
                    }
                    return self.scan_excluding(pre_copy, &bad);
                }
                Err(e) => return Err(e),
            };
        }
        let frame = lf.sort(["created_at", "id"], SortMultipleOptions::default());
        Ok(Scan { frame, skipped })
    }

    /// Replaces the `tags` column of the runs named in tag files with their tags after every
    /// operation. The stored tags of those runs are read first (only `id` and `tags`, only the
    /// tagged rows); tag files never name more than a handful of runs per user action.
    fn apply_tags(
        &self,
        all: LazyFrame,
        lf: LazyFrame,
        ops: &std::collections::BTreeMap<String, Vec<(bool, String)>>,
    ) -> Result<LazyFrame, StoreError> {
        let ids: Vec<&str> = ops.keys().map(String::as_str).collect();
        let stored = all
            .filter(col("id").is_in(lit(Series::new("ids".into(), ids)).implode(false), false))
            .select([col("id"), col("tags")])
            .unique_stable(Some(cols(["id"])), UniqueKeepStrategy::First)
            .collect()
            .map_err(qerr(&self.dir))?;
        let id_col = stored.column("id").and_then(|c| c.str().cloned());
        let tag_col = stored.column("tags").and_then(|c| c.str().cloned());
        let (id_col, tag_col) = (
            id_col.map_err(qerr(&self.dir))?,
            tag_col.map_err(qerr(&self.dir))?,
        );
        let mut new_ids = Vec::new();
        let mut new_tags = Vec::new();
        for (id, tags) in id_col.iter().zip(tag_col.iter()) {
            let Some(id) = id else { continue };
            let mut list: Vec<String> = tags
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default();
            for (add, tag) in ops.get(id).into_iter().flatten() {
                if *add {
                    if !list.contains(tag) {
                        list.push(tag.clone());
                    }
                } else {
                    list.retain(|t| t != tag);
                }
            }
            new_ids.push(id.to_string());
            new_tags.push(serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()));
        }
        let overrides = DataFrame::new(
            new_ids.len(),
            vec![
                Column::new("id".into(), new_ids),
                Column::new("__tags".into(), new_tags),
            ],
        )
        .map_err(qerr(&self.dir))?;
        Ok(lf
            .join(
                overrides.lazy(),
                [col("id")],
                [col("id")],
                JoinArgs::new(JoinType::Left),
            )
            .with_column(coalesce(&[col("__tags"), col("tags")]).alias("tags"))
            .drop(cols(["__tags"])))
    }

    /// Reads every run file in full; returns those that fail, with the reason.
    fn deep_check(&self) -> Vec<(PathBuf, String)> {
        let mut bad = Vec::new();
        for path in self.run_files().unwrap_or_default() {
            // A file that vanished was merged by a compaction, not damaged.
            if let Err(why) = read_run_file(&path)
                && path.exists()
            {
                // Reported to the caller (the CLI warns once, the app lists it).
                tracing::debug!("skipping unreadable store file {}: {why}", path.display());
                bad.push((path, why));
            }
        }
        bad
    }

    /// Every readable run as a lazy frame (see [`Scan`]); unreadable files are left out (use
    /// [`Store::scan`] to learn which).
    pub fn frame(&self) -> Result<LazyFrame, StoreError> {
        Ok(self.scan()?.frame)
    }

    /// Runs `query` on the store's frame (with `pre` pushed into the scans, see
    /// [`Store::scan_where`]) and collects it. When decoding fails (a file whose footer is sound
    /// but whose data is not), every file is read in full, the ones that fail are reported and
    /// skipped, and the query runs once more without them.
    pub fn collect(
        &self,
        pre: Option<&Expr>,
        query: impl Fn(LazyFrame) -> LazyFrame,
    ) -> Result<(DataFrame, Vec<(PathBuf, String)>), StoreError> {
        self.replanning(|| self.collect_once(pre.cloned(), &query))
    }

    fn collect_once(
        &self,
        pre: Option<Expr>,
        query: &impl Fn(LazyFrame) -> LazyFrame,
    ) -> Result<(DataFrame, Vec<(PathBuf, String)>), StoreError> {
        let scan = self.scan_excluding(pre.clone(), &[]);
        let first = scan.and_then(|s| {
            query(s.frame)
                .collect()
                .map(|df| (df, s.skipped))
                .map_err(qerr(&self.dir))
        });
        let Err(first_err) = first else {
            return first;
        };
        let bad = self.deep_check();
        if bad.is_empty() {
            return Err(first_err);
        }
        let s = self.scan_excluding(pre, &bad)?;
        let df = query(s.frame).collect().map_err(qerr(&self.dir))?;
        Ok((df, s.skipped))
    }
}
