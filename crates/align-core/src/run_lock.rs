//! One writer per run directory: an advisory lock file holding the writer's process id.
//!
//! [`RunLock::acquire`] opens `DIR/run.lock` and takes an exclusive advisory lock on it
//! (`flock`, through [`std::fs::File::try_lock`]). The operating system releases that lock when
//! the holder exits, however it exits — `SIGKILL`, a crash, a reboot — so a lock left by a dead
//! process never blocks a new run. The file's text names the holder (`pid`, host, start time)
//! for the error a second writer gets and for people reading the directory; a clean exit
//! empties it. A lock file that still names a holder when its lock is free was left by a
//! process that died: it is taken over, and [`RunLock::took_over`] reports the old holder.
//!
//! On NFS, Linux emulates `flock` with byte-range locks the server arbitrates, so the lock
//! holds across machines too (NFSv4; a second lock *in the same process* is then granted,
//! which `align` never asks for). On a file system without locks at all (`try_lock` reports
//! `Unsupported`) the text alone decides: a holder whose process no longer exists on this host
//! is stale; any other holder — this process included — keeps the directory.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("run-lock-doc-{}", std::process::id()));
//! let lock = align_core::RunLock::acquire(&dir).unwrap();
//! // A second writer — another process, or this one again — is refused, naming the holder.
//! let err = align_core::RunLock::acquire(&dir).unwrap_err();
//! assert!(err.to_string().contains(&format!("pid {}", std::process::id())));
//! drop(lock);
//! assert!(align_core::RunLock::acquire(&dir).is_ok());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// The holder a lock file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// Host name (empty when unknown).
    pub host: String,
    /// When it took the lock (seconds since the Unix epoch).
    pub since: u64,
}

impl LockHolder {
    fn this_process() -> Self {
        Self {
            pid: std::process::id(),
            host: host_name(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// The file's text: `pid N`, `host H`, `since S`, one per line.
    fn to_text(&self) -> String {
        format!(
            "pid {}\nhost {}\nsince {}\n",
            self.pid, self.host, self.since
        )
    }

    /// Parses [`LockHolder::to_text`]; `None` for an empty or foreign file.
    fn parse(text: &str) -> Option<Self> {
        let mut pid = None;
        let mut host = String::new();
        let mut since = 0;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("host", v)) => host = v.trim().to_string(),
                Some(("since", v)) => since = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(Self {
            pid: pid?,
            host,
            since,
        })
    }

    fn describe(&self) -> String {
        if self.host.is_empty() {
            format!("pid {}", self.pid)
        } else {
            format!("pid {} on {}", self.pid, self.host)
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether process `pid` exists on this machine (Linux: `/proc/PID`); `true` where that
/// cannot be known, so that an unknown holder is never overridden.
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Whether a lock file's `holder` may be taken over where the text alone decides (no advisory
/// locks): only a holder on this host whose process is gone. This process and holders on
/// other hosts (whose processes cannot be checked) keep the directory.
fn is_stale(holder: &LockHolder, me: u32, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    holder.pid != me && holder.host == host && !alive(holder.pid)
}

/// An exclusive hold on a run directory, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    took_over: Option<LockHolder>,
}

impl RunLock {
    /// Takes the lock of run directory `dir` (created if missing).
    ///
    /// # Errors
    /// [`CoreError::RunInUse`] when another writer holds it (naming its pid and host);
    /// [`CoreError::Checkpoint`] when the directory or lock file cannot be created or read.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let io = |path: &Path, what: &str, e: std::io::Error| CoreError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, "opening the lock file", e))?;
        let mut text = String::new();
        let read_holder = |file: &mut File, text: &mut String| {
            text.clear();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(text))
                .map(|_| LockHolder::parse(text))
        };
        let in_use = |holder: Option<LockHolder>| CoreError::RunInUse {
            dir: dir.display().to_string(),
            holder: holder.map_or_else(|| "another process".to_string(), |h| h.describe()),
            lock: path.display().to_string(),
        };
        let previous = match file.try_lock() {
            Ok(()) => read_holder(&mut file, &mut text)
                .map_err(|e| io(&path, "reading the lock file", e))?,
            Err(TryLockError::WouldBlock) => {
                // The holder may be writing its text right now: a missing name is still a
                // refusal.
                let holder = read_holder(&mut file, &mut text).ok().flatten();
                return Err(in_use(holder));
            }
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                let holder = read_holder(&mut file, &mut text)
                    .map_err(|e| io(&path, "reading the lock file", e))?;
                if let Some(h) = &holder
                    && !is_stale(h, std::process::id(), &host_name(), process_alive)
                {
                    return Err(in_use(holder));
                }
                holder
            }
            Err(TryLockError::Error(e)) => return Err(io(&path, "locking", e)),
        };
        let me = LockHolder::this_process();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.to_text().as_bytes()))
            .and_then(|_| file.sync_data())
            .map_err(|e| io(&path, "writing the lock file", e))?;
        Ok(Self {
            file,
            path,
            took_over: previous,
        })
    }

    /// The holder named by a lock file whose process had died without releasing it (the lock
    /// was taken over from it), if any.
    pub fn took_over(&self) -> Option<&LockHolder> {
        self.took_over.as_ref()
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An empty file marks a clean release; the advisory lock goes with the descriptor.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("align-run-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_and_a_clean_release_frees_the_directory() {
        let dir = tempdir("second");
        let first = RunLock::acquire(&dir).unwrap();
        assert!(first.took_over().is_none());
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(
            LockHolder::parse(&text).unwrap().pid,
            std::process::id(),
            "{text}"
        );
        let err = RunLock::acquire(&dir).unwrap_err();
        let CoreError::RunInUse { holder, lock, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(holder.starts_with(&format!("pid {}", std::process::id())));
        assert!(lock.ends_with(LOCK_FILE));
        drop(first);
        assert_eq!(std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), "");
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.took_over().is_none(), "a clean release is not stale");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over_and_reported() {
        let dir = tempdir("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // What a killed holder leaves: its text, and no advisory lock (the kernel dropped it).
        let dead = LockHolder {
            pid: 4_000_000,
            host: host_name(),
            since: 1,
        };
        std::fs::write(dir.join(LOCK_FILE), dead.to_text()).unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        assert_eq!(lock.took_over(), Some(&dead));
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(LockHolder::parse(&text).unwrap().pid, std::process::id());
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_advisory_locks_only_a_dead_holder_on_this_host_is_stale() {
        let holder = |pid: u32, host: &str| LockHolder {
            pid,
            host: host.into(),
            since: 0,
        };
        let dead = |_: u32| false;
        let alive = |_: u32| true;
        assert!(is_stale(&holder(7, "a"), 1, "a", dead));
        assert!(!is_stale(&holder(7, "a"), 1, "a", alive), "a live holder");
        assert!(!is_stale(&holder(7, "b"), 1, "a", dead), "another host");
        assert!(!is_stale(&holder(1, "a"), 1, "a", dead), "this process");
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn lock_text_round_trips_and_garbage_names_no_holder() {
        let h = LockHolder {
            pid: 17,
            host: "node-3".into(),
            since: 1_700_000_000,
        };
        assert_eq!(LockHolder::parse(&h.to_text()), Some(h));
        assert_eq!(LockHolder::parse(""), None);
        assert_eq!(LockHolder::parse("\u{0}\u{ff}garbage"), None);
        assert_eq!(LockHolder::parse("pid -3\n"), None);
    }
}
