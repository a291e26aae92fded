//! Claims: which process is running a run key right now, so two sweeps of one space into one
//! store (two terminals, a Slurm array submitted twice) never both run a point.
//!
//! A claim is a small file `claims/<run key>.claim`, created exclusively (`O_EXCL`, atomic on
//! local disks and NFS v3+), holding the holder's host, process id and a unique stamp. While
//! the run goes on the holder refreshes the file's modification time. A claim whose holder is
//! gone is taken over: on the same host when its process no longer exists (so a `kill -9`
//! blocks nothing), on any host when it has not been refreshed for [`STALE`]. The claim is
//! removed when its run is stored (or fails); a killed holder's file is simply taken over.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::{Store, StoreError, io_err, stamp};

/// How often a holder refreshes its claim.
const REFRESH: Duration = Duration::from_secs(10);
/// A claim not refreshed for this long is its holder's last word (a dead node, a lost mount).
const STALE: Duration = Duration::from_secs(90);

/// A run key this process is running; dropping it releases the claim.
pub struct Claim {
    path: PathBuf,
    content: String,
    stop: Arc<AtomicBool>,
    refresher: Option<JoinHandle<()>>,
}

/// What trying to claim a run key gave.
pub enum ClaimAttempt {
    /// This process holds it now.
    Mine(Claim),
    /// Another live process does; the text names it (host and process id).
    Held(String),
}

/// This machine's name, as a holder's identity (`/proc` on Linux; else the environment).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether the holder written in `content` may still be running, given its file's age.
fn holder_alive(content: &str, age: Duration) -> bool {
    if age > STALE {
        return false;
    }
    let mut parts = content.split_whitespace();
    let (Some(holder_host), Some(pid)) = (parts.next(), parts.next()) else {
        // Not a claim we wrote; only time can tell.
        return true;
    };
    if holder_host != host() {
        return true;
    }
    // Same host: the process either exists or the claim is a leftover of a killed one.
    let proc = Path::new("/proc");
    !proc.exists() || proc.join(pid).exists()
}

fn describe(content: &str) -> String {
    let mut parts = content.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(h), Some(p)) => format!("process {p} on {h}"),
        _ => "another process".into(),
    }
}

impl Store {
    fn claims_dir(&self) -> PathBuf {
        self.dir.join("claims")
    }

    /// Tries to claim `run_key` for this process (taking over a claim whose holder is gone).
    pub fn claim(&self, run_key: &str) -> Result<ClaimAttempt, StoreError> {
        let dir = self.claims_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{run_key}.claim"));
        let content = format!("{} {} {}\n", host(), std::process::id(), stamp());
        // Two rounds: create; else take over a dead holder's claim and create again.
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(content.as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(io_err(&path))?;
                    return Ok(ClaimAttempt::Mine(Claim::hold(path, content)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            let (held, age) = match read_claim(&path) {
                Some(found) => found,
                // Released between our create and our read: try again.
                None => continue,
            };
            if holder_alive(&held, age) {
                return Ok(ClaimAttempt::Held(describe(&held)));
            }
            self.take_over(&path, &held)?;
        }
        // Someone else took the dead claim over first.
        Ok(match read_claim(&path) {
            Some((held, _)) => ClaimAttempt::Held(describe(&held)),
            None => ClaimAttempt::Held("another process".into()),
        })
    }

    /// Moves a dead holder's claim aside. Renaming is atomic, so of several processes taking
    /// over one claim only one moves it; one that moved a claim made anew in between (not the
    /// dead one it judged) puts it back.
    fn take_over(&self, path: &Path, judged: &str) -> Result<(), StoreError> {
        let aside = self
            .claims_dir()
            .join(format!(".dead-{}-{}", std::process::id(), stamp()));
        match std::fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        }
        if read_claim(&aside).is_some_and(|(moved, _)| moved != judged) {
            // A live claim: back under its name unless a newer one is there already.
            let _ = std::fs::hard_link(&aside, path);
        }
        let _ = std::fs::remove_file(&aside);
        Ok(())
    }
}

/// A claim file's text and age; `None` when it does not exist (any more).
fn read_claim(path: &Path) -> Option<(String, Duration)> {
    let meta = std::fs::metadata(path).ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    Some((text, age))
}

impl Claim {
    fn hold(path: PathBuf, content: String) -> Claim {
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::Builder::new()
                .name("reparam-claim".into())
                .spawn(move || refresh(&path, &stop))
                .ok()
        };
        Claim {
            path,
            content,
            stop,
            refresher,
        }
    }
}

/// Keeps a claim's modification time fresh until `stop`.
fn refresh(path: &Path, stop: &AtomicBool) {
    let step = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(step);
        waited += step;
        if waited >= REFRESH {
            waited = Duration::ZERO;
            // A failed refresh only makes the claim look stale sooner; the run goes on.
            let _ = File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        // Only our own claim: a holder that looked dead may have been taken over meanwhile.
        if read_claim(&self.path).is_some_and(|(text, _)| text == self.content) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
