//! Background jobs: a queue of experiments (apply a recipe, evaluate, store) run by a few
//! worker threads, with progress events, cooperative cancellation and panic isolation.
//!
//! Owns: the queue, the workers, the shared base-model cache, the memory check before a job
//! starts, and [`execute`] (one job, synchronously; `reparam run` calls it directly). It does
//! not draw anything: a front end drains [`JobRunner::try_events`] and is woken by the waker.
//!
//! Guarantees: every submitted job gets exactly one `Finished` event, also when it is
//! cancelled, fails, or panics; progress events are throttled (at most ~10 per second per job,
//! plus every stage change), so they may be dropped. Cancelling a running job makes its next
//! progress callback return `false`, which stops the pipeline and the evaluation at their
//! next step (well under a second on the zoo).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::model::{Model, load_spec};
use crate::run::{EvalSettings, RunReport};
use crate::store::record::code_version;
use crate::store::{Claim, ClaimAttempt, ExperimentRecord, Status, Store, StoreError, run_key};
use crate::technique::recipe::Recipe;

/// One experiment to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Shown to the user.
    pub label: String,
    /// A path or `zoo:NAME`.
    pub model: String,
    pub recipe: Recipe,
    pub tags: Vec<String>,
    /// Run even when the store already has this run key.
    pub force: bool,
    pub eval: EvalSettings,
}

/// A job's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// Something that happened to a job.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub id: JobId,
    pub kind: JobEventKind,
}

#[derive(Debug, Clone)]
pub enum JobEventKind {
    Queued,
    Started,
    /// `stage` (e.g. `compressing blk.3.ffn_up`, `evaluating`) and how far it is.
    Progress {
        stage: String,
        done: usize,
        total: usize,
    },
    /// The job's stored (or already stored) record: status ok, failed or cancelled.
    Finished {
        record: Box<ExperimentRecord>,
        /// The run key was already stored: the record is the earlier run's, nothing ran.
        cached: bool,
        /// Why the finished record could not be stored, and where it was kept instead.
        unstored: Option<String>,
    },
}

/// Base models loaded once per model string and shared by every job.
#[derive(Default)]
pub struct ModelCache {
    models: Mutex<HashMap<String, Arc<Model>>>,
}

impl ModelCache {
    /// The model named `spec`, loading it on first use.
    pub fn get(&self, spec: &str) -> anyhow::Result<Arc<Model>> {
        // Loading happens under the lock: two jobs on one new model load it once.
        let mut models = self
            .models
            .lock()
            .map_err(|_| anyhow::anyhow!("model cache poisoned by an earlier panic"))?;
        if let Some(m) = models.get(spec) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(load_spec(spec)?);
        models.insert(spec.to_string(), Arc::clone(&m));
        Ok(m)
    }

    /// Puts an already loaded model under `spec` (a front end that loaded it to validate).
    pub fn insert(&self, spec: &str, model: Arc<Model>) {
        if let Ok(mut models) = self.models.lock() {
            models.insert(spec.to_string(), model);
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` where there is no such file).
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A rough upper estimate of the extra memory one job needs beyond the shared base model:
/// the rewritten linears (a dense working copy and the result), merged or flattened weights,
/// calibration activations and per-layer statistics, and the evaluation's logits.
pub fn estimate_job_bytes(base: &Model, spec: &JobSpec) -> u64 {
    let c = base.config();
    let f = 4u64; // f32
    let linear_bytes: u64 = base
        .transformer
        .linear_ids()
        .filter_map(|id| base.transformer.linear(id))
        .map(|w| w.size_bytes() as u64)
        .sum();
    let model_bytes = base.transformer.size_bytes() as u64;
    let mut bytes = if spec.recipe.layers.is_empty() {
        0
    } else {
        2 * linear_bytes
    };
    if let Some(m) = &spec.recipe.merge {
        // Each merged model is loaded, plus the running merge.
        bytes += (m.models.len() as u64 + 1) * model_bytes;
    }
    if spec.recipe.flatten.is_some() {
        bytes += model_bytes;
    }
    let width = c.hidden_size.max(c.intermediate_size) as u64;
    let ctx =
        crate::eval::PerplexityOptions::ctx_or_default(spec.eval.ctx, c.max_position_embeddings);
    let calib = spec.eval.calib.within_ctx(ctx);
    let (ctx, calib_tokens) = (ctx as u64, (calib.samples * calib.seq_len) as u64);
    bytes += 4 * calib_tokens * width * f; // hidden states and block activations
    bytes += 8 * width * width * f; // XᵀX statistics of the block's linears
    bytes += 4 * ctx * c.vocab_size as u64 * f; // logits of base and compressed, softmax
    bytes += 2 * ctx * (c.num_layers * c.num_kv_heads * c.head_dim) as u64 * f; // KV
    bytes
}

/// The memory check for `spec` on `base` with `reserved` bytes already promised to running
/// jobs: one rule for jobs, sweeps and `run --no-store`.
pub fn memory_check(base: &Model, spec: &JobSpec, reserved: u64) -> MemoryCheck {
    MemoryCheck {
        needed_bytes: estimate_job_bytes(base, spec),
        available_bytes: available_memory_bytes().unwrap_or(u64::MAX),
        reserved_bytes: reserved,
    }
}

/// What the memory check found.
#[derive(Debug, Clone, Copy)]
pub struct MemoryCheck {
    pub needed_bytes: u64,
    pub available_bytes: u64,
    pub reserved_bytes: u64,
}

impl MemoryCheck {
    pub fn fits(&self) -> bool {
        self.needed_bytes + self.reserved_bytes <= self.available_bytes
    }

    /// The refusal message, with the numbers.
    pub fn message(&self) -> String {
        format!(
            "not enough memory: this job needs about {} MiB, {} MiB are available and {} MiB \
             are reserved by running jobs",
            self.needed_bytes >> 20,
            self.available_bytes >> 20,
            self.reserved_bytes >> 20
        )
    }
}

/// A progress sink for [`execute`]: `(stage, done, total)`.
pub type ProgressSink<'a> = dyn FnMut(&str, usize, usize) + 'a;

/// How [`execute`] ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub record: ExperimentRecord,
    /// The run key was already stored; nothing ran.
    pub cached: bool,
    /// The full report of a fresh successful run.
    pub report: Option<RunReport>,
    /// The store write failed: why, and where the record was kept instead. The record and
    /// report are still the run's, so its result is shown, never lost silently.
    pub unstored: Option<String>,
}

/// Runs one job synchronously: stored key → the stored record (unless `force`); otherwise the
/// memory check, apply + evaluate, and the record (ok, failed or cancelled) is stored.
/// `reserved` counts the memory of jobs running beside this one. Only store errors are
/// errors; a failed run is a record.
pub fn execute(
    store: &Store,
    models: &ModelCache,
    spec: &JobSpec,
    cancel: &AtomicBool,
    reserved: &AtomicU64,
    progress: &mut ProgressSink<'_>,
) -> Result<Outcome, StoreError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut recipe = spec.recipe.clone();
    recipe.model = Some(spec.model.clone());
    let eval_json = spec.eval.key_json();
    let fail = |model: Option<&Model>, key: &str, status: Status, error: String| {
        let mut rec = ExperimentRecord::failed(
            model.map_or("", |m| m.id.as_str()),
            model.map_or(spec.model.as_str(), |m| m.name.as_str()),
            &recipe,
            key,
            started,
            clock.elapsed().as_secs_f64(),
            status,
            &error,
            &spec.tags,
        );
        rec.eval_json = eval_json
            .as_ref()
            .map_or_else(|_| String::new(), Clone::clone);
        rec.device = spec.eval.device.to_string();
        rec
    };
    let store_outcome = |rec: ExperimentRecord, report: Option<RunReport>| {
        let unstored = store.append(&rec).err().map(|e| {
            // A finished result is not lost with the store write: it is kept beside the store.
            let kept = keep_unstored(store, &rec).map_or_else(
                || "and it could not be kept elsewhere either".to_string(),
                |p| format!("the run's record is kept in {}", p.display()),
            );
            format!("the store could not be written ({e}); {kept}")
        });
        Ok(Outcome {
            record: rec,
            cached: false,
            report,
            unstored,
        })
    };
    let eval_json = match &eval_json {
        Ok(j) => j.clone(),
        Err(e) => return store_outcome(fail(None, "", Status::Failed, format!("{e:#}")), None),
    };
    progress("loading model", 0, 1);
    let base = match models.get(&spec.model) {
        Ok(m) => m,
        Err(e) => return store_outcome(fail(None, "", Status::Failed, format!("{e:#}")), None),
    };
    let key = run_key(&base.id, &recipe.hash(), &eval_json, code_version());
    let cached = |record| {
        Ok(Outcome {
            record,
            cached: true,
            report: None,
            unstored: None,
        })
    };
    if !spec.force
        && let Some(rec) = store.find_key(&key)?
    {
        return cached(rec);
    }
    // Held until this job's record is stored: another process running the same point waits.
    let _claim = if spec.force {
        None
    } else {
        match claim_or_wait(store, &key, cancel, progress) {
            Ok(Claimed::Mine(claim)) => Some(claim),
            // A store that cannot take a claim (read-only, full) cannot take the record either:
            // the run still runs, and its result is kept beside the store.
            Err(e) => {
                tracing::warn!("running without a claim on the run key: {e}");
                None
            }
            Ok(Claimed::Stored(rec)) => return cached(*rec),
            Ok(Claimed::Cancelled) => {
                let rec = fail(Some(&base), &key, Status::Cancelled, "cancelled".into());
                return store_outcome(rec, None);
            }
        }
    };
    if let Err(e) = recipe.resolve(&base.transformer).map(|_| ()).or_else(|e| {
        // Depth-changing steps resolve after they ran; the pipeline checks again then.
        if recipe.flatten.is_some() {
            Ok(())
        } else {
            Err(e)
        }
    }) {
        return store_outcome(fail(Some(&base), &key, Status::Failed, e.to_string()), None);
    }
    let check = memory_check(&base, spec, reserved.load(Ordering::SeqCst));
    let needed = check.needed_bytes;
    if !check.fits() {
        return store_outcome(
            fail(Some(&base), &key, Status::Failed, check.message()),
            None,
        );
    }
    reserved.fetch_add(needed, Ordering::SeqCst);
    let result = crate::run::run(&base, &recipe, &spec.eval, &mut |stage, done, total| {
        progress(stage, done, total);
        !cancel.load(Ordering::SeqCst)
    });
    reserved.fetch_sub(needed, Ordering::SeqCst);
    let rec = match result {
        Ok(report) => {
            let mut rec = ExperimentRecord::from_report(
                &report,
                &recipe,
                &key,
                started,
                clock.elapsed().as_secs_f64(),
                &spec.tags,
            );
            rec.eval_json = eval_json;
            return store_outcome(rec, Some(report));
        }
        Err(_) if cancel.load(Ordering::SeqCst) => {
            fail(Some(&base), &key, Status::Cancelled, "cancelled".into())
        }
        Err(e) => fail(Some(&base), &key, Status::Failed, format!("{e:#}")),
    };
    store_outcome(rec, None)
}

/// How waiting for a run key's claim ended.
enum Claimed {
    Mine(Claim),
    /// The process that held it stored the run meanwhile.
    Stored(Box<ExperimentRecord>),
    Cancelled,
}

/// Claims `key`, waiting while another live process runs it (its stored record then ends the
/// wait), so two sweeps of one space into one store never both run a point.
fn claim_or_wait(
    store: &Store,
    key: &str,
    cancel: &AtomicBool,
    progress: &mut ProgressSink<'_>,
) -> Result<Claimed, StoreError> {
    loop {
        match store.claim(key)? {
            ClaimAttempt::Mine(claim) => {
                // Stored between our first look and the claim: nothing to run.
                return Ok(match store.find_key(key)? {
                    Some(rec) => Claimed::Stored(Box::new(rec)),
                    None => Claimed::Mine(claim),
                });
            }
            ClaimAttempt::Held(holder) => {
                progress(&format!("waiting: {holder} is running this point"), 0, 1);
                for _ in 0..10 {
                    if cancel.load(Ordering::SeqCst) {
                        return Ok(Claimed::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Some(rec) = store.find_key(key)? {
                    return Ok(Claimed::Stored(Box::new(rec)));
                }
            }
        }
    }
}

/// Writes a run whose store write failed as JSON beside the store directory (else in the
/// temporary directory) and returns where, so no finished result is lost silently.
fn keep_unstored(store: &Store, rec: &ExperimentRecord) -> Option<PathBuf> {
    let json = serde_json::to_string_pretty(rec).ok()?;
    let name = format!("reparam-unstored-run-{}.json", rec.id);
    let beside = store.dir().parent().map(|p| p.join(&name));
    beside
        .into_iter()
        .chain([std::env::temp_dir().join(&name)])
        .find(|p| std::fs::write(p, &json).is_ok())
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".into()
    }
}

/// What a worker runs for one job: [`execute`] normally; tests and other back ends may pass
/// their own. Arguments: store, model cache, spec, cancel flag, reserved memory, progress.
pub type Executor = dyn Fn(
        &Store,
        &ModelCache,
        &JobSpec,
        &AtomicBool,
        &AtomicU64,
        &mut ProgressSink<'_>,
    ) -> Result<Outcome, StoreError>
    + Send
    + Sync;

/// State shared by the runner and its workers.
struct Shared {
    store: Store,
    models: ModelCache,
    executor: Box<Executor>,
    queue: Mutex<VecDeque<(JobId, JobSpec)>>,
    wake_workers: Condvar,
    cancels: Mutex<HashMap<JobId, Arc<AtomicBool>>>,
    events: Mutex<Sender<JobEvent>>,
    waker: Arc<dyn Fn() + Send + Sync>,
    reserved: AtomicU64,
    shutdown: AtomicBool,
}

impl Shared {
    fn emit(&self, id: JobId, kind: JobEventKind) {
        if let Ok(tx) = self.events.lock() {
            // The receiver lives in the runner; if it is gone nobody is listening.
            let _ = tx.send(JobEvent { id, kind });
        }
        (self.waker)();
    }

    fn next_job(&self) -> Option<(JobId, JobSpec)> {
        let mut q = self.queue.lock().ok()?;
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(job) = q.pop_front() {
                return Some(job);
            }
            q = self.wake_workers.wait(q).ok()?;
        }
    }

    fn run_job(&self, id: JobId, spec: &JobSpec) {
        let cancel = self
            .cancels
            .lock()
            .ok()
            .and_then(|c| c.get(&id).cloned())
            .unwrap_or_default();
        self.emit(id, JobEventKind::Started);
        let mut last = Instant::now();
        let mut last_stage = String::new();
        let mut progress = |stage: &str, done: usize, total: usize| {
            if stage != last_stage || done == total || last.elapsed() >= Duration::from_millis(100)
            {
                last = Instant::now();
                last_stage = stage.to_string();
                self.emit(
                    id,
                    JobEventKind::Progress {
                        stage: stage.to_string(),
                        done,
                        total,
                    },
                );
            }
        };
        let started = SystemTime::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            (self.executor)(
                &self.store,
                &self.models,
                spec,
                &cancel,
                &self.reserved,
                &mut progress,
            )
        }));
        let (record, cached, unstored) = match result {
            Ok(Ok(outcome)) => (outcome.record, outcome.cached, outcome.unstored),
            Ok(Err(store_err)) => {
                let mut rec = ExperimentRecord::failed(
                    "",
                    &spec.model,
                    &spec.recipe,
                    "",
                    started,
                    0.0,
                    Status::Failed,
                    &format!("could not store the run: {store_err}"),
                    &spec.tags,
                );
                rec.notes.push("not stored".into());
                (rec, false, None)
            }
            Err(payload) => {
                let msg = format!("panicked: {}", panic_message(payload.as_ref()));
                let rec = ExperimentRecord::failed(
                    "",
                    &spec.model,
                    &spec.recipe,
                    "",
                    started,
                    0.0,
                    Status::Failed,
                    &msg,
                    &spec.tags,
                );
                let unstored = self.store.append(&rec).err().map(|e| e.to_string());
                (rec, false, unstored)
            }
        };
        if let Ok(mut c) = self.cancels.lock() {
            c.remove(&id);
        }
        self.emit(
            id,
            JobEventKind::Finished {
                record: Box::new(record),
                cached,
                unstored,
            },
        );
    }
}

/// The queue and its workers. Dropping it cancels what runs and waits for the workers.
pub struct JobRunner {
    shared: Arc<Shared>,
    events: Mutex<Receiver<JobEvent>>,
    workers: Vec<JoinHandle<()>>,
    next_id: AtomicU64,
}

/// Workers that fit this machine: each job's kernels use several threads already, so one
/// worker per four cores, at least one.
pub fn default_workers() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 4).max(1)
}

/// The most workers a runner starts, whatever is asked: one per core. More only adds threads
/// that wait (each job's kernels already use every core) and memory reserved for nothing.
pub fn max_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl JobRunner {
    /// Starts `workers` threads (0 = [`default_workers`]). `waker` is called after every event.
    pub fn new(store: Store, workers: usize, waker: Arc<dyn Fn() + Send + Sync>) -> JobRunner {
        Self::with_executor(store, workers, waker, Box::new(execute))
    }

    /// Like [`JobRunner::new`], with another executor in place of [`execute`].
    pub fn with_executor(
        store: Store,
        workers: usize,
        waker: Arc<dyn Fn() + Send + Sync>,
        executor: Box<Executor>,
    ) -> JobRunner {
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            store,
            models: ModelCache::default(),
            executor,
            queue: Mutex::new(VecDeque::new()),
            wake_workers: Condvar::new(),
            cancels: Mutex::new(HashMap::new()),
            events: Mutex::new(tx),
            waker,
            reserved: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        });
        let n = if workers == 0 {
            default_workers()
        } else {
            workers.min(max_workers())
        };
        let workers = (0..n)
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("reparam-job-{i}"))
                    .spawn(move || {
                        while let Some((id, spec)) = shared.next_job() {
                            shared.run_job(id, &spec);
                        }
                    })
                    .map_err(|e| tracing::error!("starting job worker {i}: {e}"))
                    .ok()
            })
            .collect();
        JobRunner {
            shared,
            events: Mutex::new(rx),
            workers,
            next_id: AtomicU64::new(1),
        }
    }

    /// The store jobs write into.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The base models the workers share (load one here to inspect it without loading twice).
    pub fn models(&self) -> &ModelCache {
        &self.shared.models
    }

    /// Queues a job.
    pub fn submit(&self, spec: JobSpec) -> JobId {
        let id = JobId(self.next_id.fetch_add(1, Ordering::SeqCst));
        if let Ok(mut c) = self.shared.cancels.lock() {
            c.insert(id, Arc::new(AtomicBool::new(false)));
        }
        self.shared.emit(id, JobEventKind::Queued);
        if let Ok(mut q) = self.shared.queue.lock() {
            q.push_back((id, spec));
        }
        self.shared.wake_workers.notify_one();
        id
    }

    /// Cancels a job: a queued one finishes at once as cancelled (and is stored so), a running
    /// one at its next progress step. Unknown or finished ids are ignored.
    pub fn cancel(&self, id: JobId) {
        let queued = self.shared.queue.lock().ok().and_then(|mut q| {
            let pos = q.iter().position(|(j, _)| *j == id)?;
            q.remove(pos)
        });
        if let Some((_, spec)) = queued {
            let mut rec = ExperimentRecord::failed(
                "",
                &spec.model,
                &spec.recipe,
                "",
                SystemTime::now(),
                0.0,
                Status::Cancelled,
                "cancelled before it started",
                &spec.tags,
            );
            rec.recipe_hash = spec.recipe.hash();
            let unstored = self.shared.store.append(&rec).err().map(|e| e.to_string());
            if let Ok(mut c) = self.shared.cancels.lock() {
                c.remove(&id);
            }
            self.shared.emit(
                id,
                JobEventKind::Finished {
                    record: Box::new(rec),
                    cached: false,
                    unstored,
                },
            );
            return;
        }
        if let Some(flag) = self
            .shared
            .cancels
            .lock()
            .ok()
            .and_then(|c| c.get(&id).cloned())
        {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Every event since the last call, without blocking.
    pub fn try_events(&self) -> Vec<JobEvent> {
        let Ok(rx) = self.events.lock() else {
            return Vec::new();
        };
        rx.try_iter().collect()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_event(&self, timeout: Duration) -> Option<JobEvent> {
        self.events.lock().ok()?.recv_timeout(timeout).ok()
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        {
            // Under the queue lock, so no worker is between its check and its wait.
            let _q = self.shared.queue.lock();
            self.shared.shutdown.store(true, Ordering::SeqCst);
        }
        if let Ok(c) = self.shared.cancels.lock() {
            for flag in c.values() {
                flag.store(true, Ordering::SeqCst);
            }
        }
        self.shared.wake_workers.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::device::DeviceChoice;

    /// CPU runs keep the keys they had before devices existed; a GPU is one key whatever its
    /// index, and not the CPU's.
    #[test]
    fn only_a_gpu_changes_the_run_key() {
        let cpu = EvalSettings::default();
        let key = cpu.key_json().unwrap();
        assert!(!key.contains("device"), "{key}");
        let on = |device| {
            EvalSettings {
                device,
                ..EvalSettings::default()
            }
            .key_json()
            .unwrap()
        };
        assert_eq!(on(DeviceChoice::Cuda(0)), on(DeviceChoice::Cuda(3)));
        assert_ne!(on(DeviceChoice::Cuda(0)), key);
    }
}
