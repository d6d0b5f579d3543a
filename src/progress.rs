//! Progress on stderr where people wait (start-up, `imd backup`), shown only when stderr is
//! a terminal: logs and pipes get nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn at most (the first and the last count are always shown).
const REDRAW: Duration = Duration::from_millis(100);

/// One line, `\r`-redrawn: `LABEL: DONE/TOTAL UNIT`.
pub struct Progress {
    tty: bool,
    label: &'static str,
    unit: &'static str,
    drawn: Option<Instant>,
    last: (u64, u64),
}

impl Progress {
    pub fn new(label: &'static str, unit: &'static str) -> Progress {
        Progress { tty: on_terminal(), label, unit, drawn: None, last: (0, 0) }
    }

    /// Whether anything is shown (so callers can skip work, such as counting, for nobody).
    pub fn shown(&self) -> bool {
        self.tty
    }

    pub fn update(&mut self, done: u64, total: u64) {
        self.last = (done, total);
        if self.tty && self.drawn.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let (done, total) = self.last;
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{}: {done}/{total} {}", self.label, self.unit);
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Shows the last count and ends the line.
    pub fn finish(mut self) {
        if self.tty {
            self.draw();
            eprintln!();
        }
    }
}

/// Whether progress would be shown at all.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Several steps one after another, each on its own line.
#[derive(Default)]
pub struct Steps {
    current: Option<Progress>,
}

impl Steps {
    /// How far the step `label` is; a new label ends the previous step's line.
    pub fn update(&mut self, label: &'static str, unit: &'static str, done: u64, total: u64) {
        if self.current.as_ref().is_none_or(|step| step.label != label) {
            self.finish();
            self.current = Some(Progress::new(label, unit));
        }
        if let Some(step) = self.current.as_mut() {
            step.update(done, total);
        }
    }

    /// Ends the line of the last step.
    pub fn finish(&mut self) {
        if let Some(step) = self.current.take() {
            step.finish();
        }
    }
}
