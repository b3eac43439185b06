//! Progress for long migrations and rollbacks, on stderr.
//!
//! On a terminal: one indicatif bar per step with files, bytes, rate and
//! time left (a spinner for planning, whose size is not known yet). Not on a
//! terminal (CI logs, pipes): one plain line when a step starts and one when
//! it ends, so logs stay readable. Nothing at all with `-q`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use storage_migrate::{Progress, Step};

use crate::render::bytes;

/// How progress is shown.
pub enum Display {
    /// Bars, redrawn in place.
    Bars(Mutex<Option<Bar>>),
    /// A line at the start and end of each step.
    Lines(Mutex<Option<(Step, Instant, u64, u64)>>),
    /// Nothing (`-q`).
    Quiet,
}

/// The current bar and what it counts.
pub struct Bar {
    progress: ProgressBar,
    by_bytes: bool,
    files: u64,
    files_total: u64,
}

impl Display {
    /// Bars when stderr is a terminal, lines otherwise, nothing when quiet.
    pub fn choose(quiet: bool) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bars(Mutex::new(None))
        } else {
            Display::Lines(Mutex::new(None))
        }
    }
}

fn bar_for(step: Step, files: u64, total_bytes: u64) -> ProgressBar {
    if step == Step::Plan {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>10} legacy files...")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar.set_prefix(step.label());
        return bar;
    }
    // `wide_bar` takes what the terminal's width leaves, so a line never
    // wraps (a wrapped line is redrawn below itself on every tick).
    let (len, template) = if total_bytes > 0 {
        (
            total_bytes,
            "{prefix:>10} [{wide_bar}] {msg} {bytes}/{total_bytes} eta {eta}",
        )
    } else {
        (
            files,
            "{prefix:>10} [{wide_bar}] {pos}/{len} files eta {eta}",
        )
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(step.label());
    bar
}

impl Progress for Display {
    fn start(&self, step: Step, files: u64, total_bytes: u64) {
        match self {
            Display::Bars(slot) => {
                // Verification counts the legacy files it re-reads without
                // their bytes: by files, so no byte counter sits at `0 B`.
                let total_bytes = if step == Step::Verify { 0 } else { total_bytes };
                let bar = bar_for(step, files, total_bytes);
                if total_bytes > 0 {
                    bar.set_message(format!("0/{files} files"));
                }
                let mut slot = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *slot = Some(Bar {
                    progress: bar,
                    by_bytes: total_bytes > 0,
                    files: 0,
                    files_total: files,
                });
            }
            Display::Lines(slot) => {
                if step != Step::Plan {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(
                        err,
                        "{}: {files} file(s), {}",
                        step.label(),
                        bytes(total_bytes)
                    );
                }
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((step, Instant::now(), files, total_bytes));
            }
            Display::Quiet => {}
        }
    }

    fn advance(&self, files: u64, done_bytes: u64) {
        if let Display::Bars(slot) = self {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(b) = slot.as_mut() {
                b.files += files;
                if b.by_bytes {
                    b.progress.inc(done_bytes);
                    b.progress
                        .set_message(format!("{}/{} files", b.files, b.files_total));
                } else {
                    b.progress.inc(files);
                }
            }
        }
    }

    fn finish(&self, step: Step) {
        match self {
            Display::Bars(slot) => {
                if let Some(b) = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                {
                    b.progress.finish_and_clear();
                }
            }
            Display::Lines(slot) => {
                if let Some((s, started, ..)) = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    && s == step
                    && step != Step::Plan
                {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(
                        err,
                        "{}: done in {:.1}s",
                        step.label(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Display::Quiet => {}
        }
    }
}
