//! The threads a decode step splits its work over.
//!
//! At batch 1 a step is ~150 short parallel sections (a linear layer is tens of microseconds),
//! so the cost of handing work to threads matters as much as the kernels. [`Pool::Spin`] keeps
//! its workers spinning on an epoch counter between sections (a hand-off is an atomic store and
//! a few hundred nanoseconds), and parks them after [`SPIN_BEFORE_PARK`] without work so an
//! idle model costs no CPU. [`Pool::Rayon`] uses rayon's global pool; `reparam bench decode`
//! measures the two side by side.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(5);

/// Which thread pool runs the parallel sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum PoolKind {
    /// Persistent workers spinning between sections.
    #[default]
    Spin,
    /// rayon's global pool.
    Rayon,
}

/// Runs `n` tasks, each by index, over a fixed set of threads; returns when all are done.
pub enum Pool {
    Spin(SpinPool),
    Rayon,
}

impl Pool {
    /// A pool of `threads` threads (the caller included).
    pub fn new(kind: PoolKind, threads: usize) -> Self {
        match kind {
            PoolKind::Spin => Self::Spin(SpinPool::new(threads.max(1))),
            PoolKind::Rayon => Self::Rayon,
        }
    }

    /// Threads the work is split over.
    pub fn threads(&self) -> usize {
        match self {
            Self::Spin(p) => p.workers.len() + 1,
            Self::Rayon => rayon::current_num_threads(),
        }
    }

    /// Calls `task(i)` for every `i < n`, in parallel, and waits for all of them.
    pub fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        match self {
            _ if n <= 1 => (0..n).for_each(task),
            Self::Spin(p) => p.run(n, task),
            Self::Rayon => {
                use rayon::prelude::*;
                (0..n).into_par_iter().for_each(task);
            }
        }
    }
}

/// What the caller and the workers share.
struct Shared {
    /// Bumped once per section; workers wait for it to change.
    epoch: AtomicUsize,
    /// The section's task, valid while the section runs (see [`SpinPool::run`]).
    task: Mutex<Option<TaskPtr>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers done with the current section.
    finished: AtomicUsize,
    sleepers: AtomicUsize,
    /// A task panicked on a worker during the current section.
    panicked: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    shutdown: AtomicBool,
}

/// A task reference with its lifetime erased; [`SpinPool::run`] does not return before every
/// worker has stopped using it.
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and it outlives every use (see `SpinPool::run`).
#[allow(unsafe_code)]
unsafe impl Send for TaskPtr {}

pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl SpinPool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            task: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|_| {
                let s = Arc::clone(&shared);
                // The epoch the worker waits to change is read here, not by the new thread:
                // a section could start before the thread first runs.
                let seen = s.epoch.load(Ordering::SeqCst);
                std::thread::spawn(move || worker(&s, seen))
            })
            .collect();
        Self { shared, workers }
    }

    #[allow(unsafe_code)]
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.workers.is_empty() {
            (0..n).for_each(task);
            return;
        }
        // SAFETY: only the lifetime is erased. The pointer is cleared and every worker has
        // reported the section finished (so none can still call it) before this returns.
        let erased: TaskPtr = TaskPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(task)
        });
        *lock(&s.task) = Some(erased);
        s.tasks.store(n, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        s.finished.store(0, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        // The caller's own panic must wait for the workers too: they borrow what it unwinds.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, task)));
        if mine.is_err() {
            s.next.store(usize::MAX / 2, Ordering::SeqCst);
        }
        let mut spins = 0u32;
        while s.finished.load(Ordering::Acquire) < self.workers.len() {
            backoff(&mut spins);
        }
        *lock(&s.task) = None;
        if let Err(payload) = mine {
            s.panicked.store(false, Ordering::SeqCst);
            std::panic::resume_unwind(payload);
        }
        // A worker's panic would otherwise vanish with the worker still alive; raise it on
        // the caller's thread, where the job system reports it.
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a decode task panicked on a worker thread");
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = lock(&s.wake_lock);
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = w.join();
        }
    }
}

/// A poisoned lock only means another thread panicked holding it; the data (an
/// `Option<TaskPtr>` or nothing) has no invariant to break.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One round of a wait loop: a pause instruction for the first rounds, then giving the core
/// away each round, so waiting on a thread that the OS has descheduled (more runnable threads
/// than cores) lets it run instead of burning its time slice.
fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins < 4096 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn run_tasks(s: &Shared, task: &(dyn Fn(usize) + Sync)) {
    let n = s.tasks.load(Ordering::SeqCst);
    loop {
        let i = s.next.fetch_add(1, Ordering::SeqCst);
        if i >= n {
            break;
        }
        task(i);
    }
}

#[allow(unsafe_code)]
fn worker(s: &Shared, mut seen: usize) {
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::SeqCst) == seen {
            backoff(&mut spins);
            if spins.is_multiple_of(1024) && idle_since.elapsed() > SPIN_BEFORE_PARK {
                let mut guard = lock(&s.wake_lock);
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    guard = s
                        .wake
                        .wait(guard)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.epoch.load(Ordering::SeqCst);
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let task = *lock(&s.task);
        if let Some(TaskPtr(ptr)) = task {
            // SAFETY: `SpinPool::run` keeps the task alive until this worker reports below.
            let task = unsafe { &*ptr };
            let run = std::panic::AssertUnwindSafe(|| run_tasks(s, task));
            if std::panic::catch_unwind(run).is_err() {
                // Stop the section's remaining tasks; the caller re-raises.
                s.next.store(usize::MAX / 2, Ordering::SeqCst);
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.finished.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(PoolKind::Spin, 2);
        for bad in [0, 5, 63] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(64, &|i| assert!(i != bad, "task {i}"));
            }));
            assert!(r.is_err(), "task {bad}");
            let hits = AtomicUsize::new(0);
            pool.run(64, &|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 64);
        }
    }

    #[test]
    fn every_task_runs_once_in_both_pools() {
        for kind in [PoolKind::Spin, PoolKind::Rayon] {
            for threads in [1, 2, 3] {
                let pool = Pool::new(kind, threads);
                for n in [0, 1, 2, 7, 64] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    for _ in 0..50 {
                        pool.run(n, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
                }
            }
        }
    }
}
