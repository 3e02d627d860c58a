//! Progress reports of a running job, for a front end to show (a progress bar, a log).

use std::sync::Arc;

/// Receives a job's progress. Every method has a default that does nothing, so an observer
/// implements what it shows.
///
/// The jobs call [`Observer::start`] once with the number of iterations, then
/// [`Observer::iteration`] after each iteration with a short status (`"reward 0.612  kl
/// 1.2e-03"`), [`Observer::say`] for lines worth keeping (evaluations, warnings), and
/// [`Observer::finish`] before the final evaluation.
pub trait Observer: Send + Sync {
    /// A run of `total` iterations starts (`done` of them already, when resumed).
    fn start(&self, total: usize, done: usize) {
        let _ = (total, done);
    }
    /// One iteration finished, with a short status line.
    fn iteration(&self, status: &str) {
        let _ = status;
    }
    /// A line of news: base and periodic evaluations, hacking-monitor warnings.
    fn say(&self, line: &str) {
        let _ = line;
    }
    /// The iterations are done (the final evaluation follows).
    fn finish(&self) {}
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}

/// Prints [`Observer::say`] lines on standard output, nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrintLines;

impl Observer for PrintLines {
    fn say(&self, line: &str) {
        println!("{line}");
    }
}

/// A shared observer, as the jobs hold it.
pub type SharedObserver = Arc<dyn Observer>;

/// [`Silent`], shared.
pub fn silent() -> SharedObserver {
    Arc::new(Silent)
}
