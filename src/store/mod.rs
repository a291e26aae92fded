//! The experiment store: every run ever made, as plain Parquet files in one directory.
//!
//! Layout of a store directory (default [`DEFAULT_DIR`]):
//! - `run-<id>.parquet`: one finished run (one row), written once and never rewritten;
//! - `compact-<stamp>-<id>.parquet`: many runs merged by [`Store::compact`];
//! - `tags/<id>.<stamp>.tag`: one tag operation (`+tag` or `-tag`) per small file;
//! - `sensitivity/<model>-<recipe>.json`: the app's last sensitivity pass per model and recipe
//!   ([`passes`]);
//! - `measurements/<model>/<settings>/*.parquet`: the search's per-layer measurement tables
//!   ([`measurements`]);
//! - `claims/<run key>.claim`: a run some process is running now, so two sweeps of one space
//!   never both run a point ([`claims`]);
//! - `.tmp-*`: a write in progress (ignored by readers; a killed writer may leave one).
//!
//! Every file is written to a temporary name, fsynced, renamed into place and the directory
//! fsynced, so a reader sees either the whole file or nothing, and several processes (a sharded
//! sweep on a cluster) can write into one directory without locks. Reading is a lazy polars
//! scan of the files ([`Store::scan`], [`Store::frame`], [`Store::collect`]; see [`scan`]);
//! [`Store::load`] decodes every record for callers that want them. A file that cannot be read
//! is reported ([`Snapshot::skipped`], [`Scan::skipped`]) and left alone. This module never deletes a run file
//! except the inputs of a finished compaction, whose rows are then in the compacted file.

pub mod claims;
pub mod frame;
pub mod measurements;
pub mod pareto;
pub mod passes;
pub mod query;
pub mod record;
pub mod scan;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polars::prelude::*;

pub use claims::{Claim, ClaimAttempt};
pub use frame::{SCHEMA_VERSION, frame_from_records, records_from_frame};
pub use record::{ExperimentRecord, Status, code_version, run_key};
pub use scan::Scan;

/// Where runs go unless `--store DIR` says otherwise.
pub const DEFAULT_DIR: &str = "experiments/store";

/// Temporary files older than this are leftovers of killed writers; `compact` removes them.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// How many times a read is planned again when the store's files changed under it.
const REPLANS: u32 = 50;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("no run with id `{0}` in the store")]
    NoSuchRun(String),
    #[error("run id `{id}` is ambiguous: {matches} runs start with it")]
    AmbiguousId { id: String, matches: usize },
    #[error("bad tag `{0}`: tags are 1–64 characters, no whitespace, not starting with `+`/`-`")]
    BadTag(String),
    #[error("{0}")]
    Query(String),
    /// A file planned for a read was removed before it was read (a compaction merged it).
    #[error("{0}: removed while it was being read (a compaction merged it); try again")]
    Vanished(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Run files read (path, rows) and files that could not be read (path, reason).
type RawLoad = (
    Vec<(PathBuf, Vec<ExperimentRecord>)>,
    Vec<(PathBuf, String)>,
);

/// Everything readable in the store at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Runs, oldest first, tags merged in, each id once.
    pub records: Vec<ExperimentRecord>,
    /// Files that could not be read, with the reason (they stay on disk untouched).
    pub skipped: Vec<(PathBuf, String)>,
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A unique, sortable stamp for file names: nanoseconds since the epoch, zero padded.
fn stamp() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:020}")
}

/// Opens a store file for reading, refusing anything but a regular file first: opening a FIFO
/// named like a run file would block the reader forever.
pub(crate) fn open_regular(path: &Path) -> Result<File, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, socket, device or directory); left alone".into());
    }
    File::open(path).map_err(|e| e.to_string())
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync the directory.
fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> Result<(), StoreError>,
) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(format!(".tmp-{}-{}-{name}", std::process::id(), stamp()));
    let dest = dir.join(name);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        write(&mut file)?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        // Our own partial file; nobody else can be reading it under its temporary name.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

fn write_parquet(dir: &Path, name: &str, mut df: DataFrame) -> Result<PathBuf, StoreError> {
    let path = dir.join(name);
    write_atomic(dir, name, |file| {
        ParquetWriter::new(file)
            .finish(&mut df)
            .map(|_| ())
            .map_err(|e| StoreError::Parquet {
                path: path.clone(),
                message: e.to_string(),
            })
    })
}

/// Reads one Parquet file of runs.
pub fn read_run_file(path: &Path) -> Result<Vec<ExperimentRecord>, String> {
    let file = open_regular(path)?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| e.to_string())?;
    records_from_frame(&df).map_err(|e| e.to_string())
}

/// The one tag rule: for `tag`, `run --tag`, `sweep --tag`, the app's tag box and its tags for
/// new runs, and every record the store takes.
pub fn check_tag(tag: &str) -> Result<(), StoreError> {
    let ok = !tag.is_empty()
        && tag.chars().count() <= 64
        && !tag.chars().any(char::is_whitespace)
        && !tag.starts_with(['+', '-']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadTag(tag.to_string()))
    }
}

impl Store {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // The Parquet scan takes UTF-8 paths only: a store it could write but never read back
        // would re-run and duplicate every run, so such a path is refused before anything.
        if dir.to_str().is_none() {
            return Err(StoreError::Query(format!(
                "the store path {} is not valid UTF-8; choose a directory whose name is",
                dir.display()
            )));
        }
        if let Err(e) = std::fs::create_dir_all(dir.join("tags")) {
            // A read-only store is still read; each write reports its own failure.
            if !dir.is_dir() {
                return Err(io_err(dir)(e));
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run files currently in the directory (finished writes only), sorted by name.
    pub fn run_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && name.ends_with(".parquet") {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Runs `read`; when it fails while the store's run files changed under it (a compaction
    /// merged and removed files the read had planned on), plans and runs it again: the merged
    /// file holds the same rows, so a reader never fails, nor misses runs, for a concurrent
    /// compaction. Other failures are returned at once.
    pub(crate) fn replanning<T>(
        &self,
        mut read: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            let before = self.run_files()?;
            let err = match read() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            attempt += 1;
            let changed = matches!(err, StoreError::Vanished(_))
                || self.run_files().is_ok_and(|now| now != before);
            if !changed || attempt >= REPLANS {
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
        }
    }

    /// Stores one finished run as its own file; returns the file's path.
    pub fn append(&self, rec: &ExperimentRecord) -> Result<PathBuf, StoreError> {
        for tag in &rec.tags {
            check_tag(tag)?;
        }
        let df =
            frame_from_records(std::slice::from_ref(rec)).map_err(|e| StoreError::Parquet {
                path: self.dir.clone(),
                message: e.to_string(),
            })?;
        write_parquet(&self.dir, &format!("run-{}.parquet", rec.id), df)
    }

    /// Reads every run file, without tag files applied. Unreadable files are reported.
    fn load_raw(&self) -> Result<RawLoad, StoreError> {
        let mut good = Vec::new();
        let mut skipped = Vec::new();
        for path in self.run_files()? {
            match read_run_file(&path) {
                Ok(recs) => good.push((path, recs)),
                Err(_) if !path.exists() => return Err(StoreError::Vanished(path)),
                Err(why) => {
                    // Reported to the caller (the CLI warns once, the app lists it).
                    tracing::debug!("skipping unreadable store file {}: {why}", path.display());
                    skipped.push((path, why));
                }
            }
        }
        Ok((good, skipped))
    }

    /// Every readable run, oldest first, with tag files applied; each id appears once (a
    /// compaction interrupted before it removed its inputs leaves duplicates on disk).
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let (files, skipped) = self.replanning(|| self.load_raw())?;
        let mut records: Vec<ExperimentRecord> =
            files.into_iter().flat_map(|(_, recs)| recs).collect();
        // Copies of one run (an interrupted compaction) are identical, so after sorting by
        // (created_at, id) they are neighbours.
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        records.dedup_by(|a, b| a.id == b.id);
        let ops = self.tag_ops()?;
        for r in &mut records {
            if let Some(ops) = ops.get(&r.id) {
                for (add, tag) in ops {
                    if *add {
                        if !r.tags.contains(tag) {
                            r.tags.push(tag.clone());
                        }
                    } else {
                        r.tags.retain(|t| t != tag);
                    }
                }
            }
        }
        Ok(Snapshot { records, skipped })
    }

    /// Runs matching `pre` (pushed into the scans; see [`Store::scan_where`]), decoded into
    /// records, oldest first, tags applied.
    pub fn records_where(&self, pre: &Expr) -> Result<Vec<ExperimentRecord>, StoreError> {
        let (df, _) = self.collect(Some(pre), |lf| lf)?;
        records_from_frame(&df).map_err(|e| StoreError::Parquet {
            path: self.dir.clone(),
            message: e.to_string(),
        })
    }

    /// The newest successful run with this key, if any. Only the matching rows are decoded.
    pub fn find_key(&self, run_key: &str) -> Result<Option<ExperimentRecord>, StoreError> {
        let pre = col("run_key")
            .eq(lit(run_key))
            .and(col("status").eq(lit(Status::Ok.as_str())));
        Ok(self.records_where(&pre)?.pop())
    }

    /// The run whose id is `id` or starts with it (unique prefix). An exact id is looked up
    /// with a filter pushed into the scans; a prefix reads the id column only.
    pub fn get(&self, id: &str) -> Result<ExperimentRecord, StoreError> {
        // An empty prefix would name the only run of a one-run store.
        if id.trim().is_empty() {
            return Err(StoreError::NoSuchRun(id.to_string()));
        }
        if let Some(r) = self.records_where(&col("id").eq(lit(id)))?.pop() {
            return Ok(r);
        }
        let (df, _) = self.collect(None, |lf| lf.select([col("id")]))?;
        let ids = df.column("id").and_then(|c| c.str().cloned());
        let ids = ids.map_err(|e| StoreError::Parquet {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        let matches: Vec<&str> = ids.iter().flatten().filter(|r| r.starts_with(id)).collect();
        match matches.as_slice() {
            [one] => self
                .records_where(&col("id").eq(lit(*one)))?
                .pop()
                .ok_or_else(|| StoreError::NoSuchRun(id.to_string())),
            [] => Err(StoreError::NoSuchRun(id.to_string())),
            many => Err(StoreError::AmbiguousId {
                id: id.to_string(),
                matches: many.len(),
            }),
        }
    }

    fn tag_op(&self, id: &str, tag: &str, add: bool) -> Result<(), StoreError> {
        check_tag(tag)?;
        let id = self.get(id)?.id;
        let dir = self.dir.join("tags");
        let name = format!("{id}.{}-{}.tag", stamp(), std::process::id());
        let line = format!("{}{tag}\n", if add { '+' } else { '-' });
        write_atomic(&dir, &name, |f| {
            f.write_all(line.as_bytes()).map_err(io_err(&dir))
        })?;
        Ok(())
    }

    /// Adds `tag` to run `id` (a new small tag file; the run file is not touched).
    pub fn add_tag(&self, id: &str, tag: &str) -> Result<(), StoreError> {
        self.tag_op(id, tag, true)
    }

    /// Removes `tag` from run `id` (also by a new tag file).
    pub fn remove_tag(&self, id: &str, tag: &str) -> Result<(), StoreError> {
        self.tag_op(id, tag, false)
    }

    /// Tag operations per run id, in the order they were made.
    fn tag_ops(&self) -> Result<BTreeMap<String, Vec<(bool, String)>>, StoreError> {
        let dir = self.dir.join("tags");
        let mut files = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err(&dir))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') && name.ends_with(".tag") {
                        files.push(name);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        // Names are `<id>.<stamp>-<pid>.tag`: sorting by the part after the id orders by time.
        let mut ops: Vec<(String, String, PathBuf)> = files
            .into_iter()
            .filter_map(|name| {
                let (id, rest) = name.split_once('.')?;
                Some((rest.to_string(), id.to_string(), dir.join(&name)))
            })
            .collect();
        ops.sort();
        let mut out: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
        for (_, id, path) in ops {
            let text = open_regular(&path).and_then(|mut f| {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut f, &mut t).map_err(|e| e.to_string())?;
                Ok(t)
            });
            let Ok(text) = text else {
                tracing::warn!("skipping unreadable tag file {}", path.display());
                continue;
            };
            for line in text.lines() {
                if let Some(tag) = line.strip_prefix('+') {
                    out.entry(id.clone())
                        .or_default()
                        .push((true, tag.to_string()));
                } else if let Some(tag) = line.strip_prefix('-') {
                    out.entry(id.clone())
                        .or_default()
                        .push((false, tag.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Merges every readable run file into one new file, atomically: the merged file is
    /// complete on disk before any input is removed, so a crash at any point loses nothing (at
    /// worst, rows exist twice and readers keep one). Unreadable files are left as they are.
    /// Returns (files merged, runs in the new file).
    pub fn compact(&self) -> Result<(usize, usize), StoreError> {
        // Leftovers of writers killed long ago go whether or not there is anything to merge.
        self.remove_stale_tmp();
        let (files, _skipped) = self.replanning(|| self.load_raw())?;
        if files.len() <= 1 {
            return Ok((files.len(), files.iter().map(|(_, r)| r.len()).sum()));
        }
        let mut seen = HashSet::new();
        let records: Vec<ExperimentRecord> = files
            .iter()
            .flat_map(|(_, recs)| recs.iter().cloned())
            .filter(|r| seen.insert(r.id.clone()))
            .collect();
        let df = frame_from_records(&records).map_err(|e| StoreError::Parquet {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        let name = format!("compact-{}-{}.parquet", stamp(), record::new_id("compact"));
        let merged = write_parquet(&self.dir, &name, df)?;
        for (path, _) in &files {
            if *path != merged {
                match std::fs::remove_file(path) {
                    // A concurrent compaction merged and removed it first; its rows are safe.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other.map_err(io_err(path))?,
                }
            }
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok((files.len(), records.len()))
    }

    /// Removes temporary files of writers that died mid-write long ago.
    fn remove_stale_tmp(&self) {
        let tags = self.dir.join("tags");
        let entries = [&self.dir, &tags]
            .into_iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|e| e.flatten());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if name.starts_with(".tmp-") && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Whether `path` is, or would be, one of the store's own files: a Parquet or temporary
    /// file in its directory, or anything in its `tags/`.
    fn owns(&self, path: &Path) -> bool {
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = canonical(&self.dir);
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => canonical(p),
            _ => canonical(Path::new(".")),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        (parent == dir && (name.ends_with(".parquet") || name.starts_with(".tmp-")))
            || parent.starts_with(dir.join("tags"))
    }

    /// Writes every run as CSV (the Parquet columns, tags applied); returns the number of runs.
    pub fn export_csv(&self, out: &Path) -> Result<usize, StoreError> {
        // Never over a file the store owns: a CSV named like a run file would replace that run.
        if self.owns(out) {
            return Err(StoreError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "refusing to write an export over the store's own files (run, compaction, \
                     temporary and tag files)",
                ),
            });
        }
        let (mut df, _) = self.collect(None, |lf| lf)?;
        let mut file = File::create(out).map_err(io_err(out))?;
        CsvWriter::new(&mut file)
            .finish(&mut df)
            .map_err(|e| StoreError::Parquet {
                path: out.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(df.height())
    }
}
