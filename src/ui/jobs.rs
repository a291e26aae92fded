//! The jobs the app started: the runner's events folded into one entry per job (stage,
//! progress, timing, the finished record). No egui here.

use std::time::{Duration, Instant};

use crate::jobs::{JobEvent, JobEventKind, JobId};
use crate::store::{ExperimentRecord, Status};

/// Where a job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Queued,
    Running,
    /// Finished, with its record (status ok, failed or cancelled).
    Finished(Box<ExperimentRecord>),
}

/// One job as the jobs panel shows it.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub id: JobId,
    pub label: String,
    pub state: JobState,
    pub stage: String,
    pub done: usize,
    pub total: usize,
    pub submitted: Instant,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    /// Cancel was asked for; the job stops at its next checkpoint.
    pub cancel_requested: bool,
    /// The run key was already stored: the record came from the store, nothing ran.
    pub from_store: bool,
    /// The finished record could not be stored: why, and where it was kept.
    pub unstored: Option<String>,
}

impl JobEntry {
    pub fn new(id: JobId, label: String) -> Self {
        Self {
            id,
            label,
            state: JobState::Queued,
            stage: "queued".into(),
            done: 0,
            total: 0,
            submitted: Instant::now(),
            started: None,
            finished: None,
            cancel_requested: false,
            from_store: false,
            unstored: None,
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(self.state, JobState::Finished(_))
    }

    /// Fraction done, when the stage reports a total.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f32 / self.total as f32).clamp(0.0, 1.0))
    }

    /// Time since it started (or was queued), frozen when it finished.
    pub fn elapsed(&self) -> Duration {
        let from = self.started.unwrap_or(self.submitted);
        self.finished
            .unwrap_or_else(Instant::now)
            .duration_since(from)
    }

    pub fn record(&self) -> Option<&ExperimentRecord> {
        match &self.state {
            JobState::Finished(r) => Some(r),
            _ => None,
        }
    }

    /// `ok`, `failed`, `cancelled`, `running`, `queued`.
    pub fn status_label(&self) -> &'static str {
        match &self.state {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Finished(r) => match r.status {
                Status::Ok => "ok",
                Status::Failed => "failed",
                Status::Cancelled => "cancelled",
            },
        }
    }
}

/// All jobs of this session, newest last.
#[derive(Debug, Default)]
pub struct JobsView {
    pub entries: Vec<JobEntry>,
}

impl JobsView {
    pub fn add(&mut self, id: JobId, label: String) {
        self.entries.push(JobEntry::new(id, label));
    }

    /// Folds one event in; returns the record when the event finished a job.
    pub fn apply(&mut self, ev: JobEvent) -> Option<ExperimentRecord> {
        let e = self.entries.iter_mut().find(|e| e.id == ev.id)?;
        match ev.kind {
            JobEventKind::Queued => e.state = JobState::Queued,
            JobEventKind::Started => {
                e.state = JobState::Running;
                e.stage = "starting".into();
                e.started = Some(Instant::now());
            }
            JobEventKind::Progress { stage, done, total } => {
                if e.is_active() {
                    e.state = JobState::Running;
                    e.started.get_or_insert_with(Instant::now);
                    e.stage = stage;
                    e.done = done;
                    e.total = total;
                }
            }
            JobEventKind::Finished {
                record: rec,
                cached,
                unstored,
            } => {
                e.finished = Some(Instant::now());
                e.from_store = cached;
                e.unstored = unstored;
                e.stage = "finished".into();
                let out = (*rec).clone();
                e.state = JobState::Finished(rec);
                return Some(out);
            }
        }
        None
    }

    pub fn active(&self) -> impl Iterator<Item = &JobEntry> {
        self.entries.iter().filter(|e| e.is_active())
    }

    pub fn get_mut(&mut self, id: JobId) -> Option<&mut JobEntry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    pub fn clear_finished(&mut self) {
        self.entries.retain(JobEntry::is_active);
    }
}
