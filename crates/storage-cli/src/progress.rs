//! Progress for long migrations and rollbacks, on stderr.
//!
//! On a terminal: one indicatif bar per step with files, bytes and the
//! time left (a spinner for planning, whose size is not known yet; the
//! time left only once a few seconds have passed, when the rate means
//! something; a shorter bar on a narrow terminal). Not on a terminal
//! (pipes, scripts, logs): nothing, unless `-v` asks for one plain line
//! when a step starts and one when it ends. Nothing at all with `-q`.

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
    /// A line at the start and end of each step: the step, when it
    /// started, and the files counted so far.
    Lines(Mutex<Option<(Step, Instant, u64)>>),
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
    /// Bars when stderr is a terminal; lines off a terminal with `-v`
    /// (`verbose`); otherwise, and when quiet, nothing.
    pub fn choose(quiet: bool, verbose: bool) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bars(Mutex::new(None))
        } else if verbose {
            Display::Lines(Mutex::new(None))
        } else {
            Display::Quiet
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
    // wraps (a wrapped line is redrawn below itself on every tick); below
    // 80 columns the counters are cut to what fits beside a bar.
    // (On a narrow one the bar's width is set here from the terminal's:
    // indicatif's own measure said 80 where `stty` said 60.)
    let target = ProgressDrawTarget::stderr_with_hz(10);
    let columns = console::Term::stderr()
        .size_checked()
        .map(|(_, columns)| usize::from(columns));
    let (len, template) = match (total_bytes > 0, columns) {
        // prefix 10, brackets and spaces 4, "1023.99 KiB/1023.99 KiB" 23
        (true, Some(c)) if c < 80 => (
            total_bytes,
            format!(
                "{{prefix:>10}} [{{bar:{}}}] {{bytes}}/{{total_bytes}}",
                c.saturating_sub(38).max(10)
            ),
        ),
        // prefix 10, brackets and spaces 4, "123456/123456" 13
        (false, Some(c)) if c < 80 => (
            files,
            format!(
                "{{prefix:>10}} [{{bar:{}}}] {{pos}}/{{len}}",
                c.saturating_sub(28).max(10)
            ),
        ),
        (true, _) => (
            total_bytes,
            "{prefix:>10} [{wide_bar}] {msg} {bytes}/{total_bytes}{left}".to_owned(),
        ),
        (false, _) => (
            files,
            "{prefix:>10} [{wide_bar}] {pos}/{len} files{left}".to_owned(),
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .with_key("left", time_left)
            .progress_chars("=> "),
    );
    bar.set_prefix(step.label());
    bar
}

/// ` eta 12s`, once the step has run long enough (3 s) for its rate to mean
/// something; nothing before (a first guess said "eta 47m" for a run of
/// seconds).
fn time_left(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    if state.elapsed() >= Duration::from_secs(3) && state.pos() > 0 {
        let _ = write!(w, " eta {}", indicatif::HumanDuration(state.eta()));
    }
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
                    // What is known at the start: files and bytes, files
                    // only (moves by rename have no bytes to count), or
                    // nothing yet (copy-store counts as it goes).
                    let _ = match (files, total_bytes) {
                        (0, _) => writeln!(err, "{}…", step.label()),
                        (_, 0) => writeln!(err, "{}: {files} file(s)", step.label()),
                        _ => writeln!(
                            err,
                            "{}: {files} file(s), {}",
                            step.label(),
                            bytes(total_bytes)
                        ),
                    };
                }
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((step, Instant::now(), 0));
            }
            Display::Quiet => {}
        }
    }

    fn advance(&self, files: u64, done_bytes: u64) {
        if let Display::Lines(slot) = self
            && let Some((_, _, counted)) = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
        {
            *counted += files;
        }
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
                if let Some((s, started, counted)) = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    && s == step
                    && step != Step::Plan
                {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(
                        err,
                        "{}: {counted} file(s) done in {:.1}s",
                        step.label(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Display::Quiet => {}
        }
    }
}
