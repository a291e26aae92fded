//! Terminal progress for long CLI work: a bar on a TTY, nothing otherwise (scripts and CI logs
//! stay clean). The library reports progress through plain callbacks; this adapts them.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar that only draws when stderr is a terminal.
pub struct TermProgress {
    bar: Option<ProgressBar>,
}

impl TermProgress {
    pub fn new(label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        Self { bar }
    }

    /// Records `done` of `total`; always asks the caller to go on.
    pub fn update(&self, done: usize, total: usize) -> bool {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        true
    }

    /// Shows what is being done now.
    pub fn set_stage(&self, stage: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(stage.to_string());
        }
    }

    /// [`Self::set_stage`] and [`Self::update`] at once: the library's progress callback.
    pub fn report(&self, stage: &str, done: usize, total: usize) -> bool {
        self.set_stage(stage);
        self.update(done, total)
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
