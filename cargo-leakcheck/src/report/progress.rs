//! A progress bar on stderr, only for a person at a terminal: never when
//! stderr is not a terminal, in CI, or with machine-readable output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// The bar, or nothing.
#[derive(Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    pub(crate) fn start(total: usize, human: bool) -> Progress {
        let wanted = human && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Progress(wanted.then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tests")
            {
                bar.set_style(style);
            }
            bar
        }))
    }

    /// Runs `print` with the bar out of the way.
    pub(crate) fn suspend(&self, print: impl FnOnce()) {
        match &self.0 {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    pub(crate) fn advance(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
