//! The terminal progress bar, as an [`align_train::Observer`].

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps with the CLI's style, or a hidden one.
pub(crate) fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Shows a job's iterations on a progress bar and its news lines above it; when standard
/// error is not a terminal (a log file), only the news lines, printed on standard output.
pub(crate) struct Bar(ProgressBar);

impl Bar {
    /// A bar on standard error (indicatif hides it when that is not a terminal).
    pub(crate) fn new() -> Self {
        Self(progress_bar(0, true))
    }
}

impl align_train::Observer for Bar {
    fn start(&self, total: usize, done: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
    fn iteration(&self, status: &str) {
        self.0.set_message(status.to_string());
        self.0.inc(1);
    }
    fn say(&self, line: &str) {
        if self.0.is_hidden() {
            println!("{line}");
        } else {
            self.0.println(line);
        }
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
