//! How the CLI reports: a report as its readable summary (`Display`, defined next to
//! each report type in the library) or as JSON with `--json`; progress bars on long
//! work; usage errors, which exit with 2.

use std::fmt::Display;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Bad usage: exits with 2, like a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A report as JSON (`--json`) or as its readable summary.
pub fn print_report(report: &(impl Serialize + Display), json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)
    } else {
        print!("{report}");
        Ok(())
    }
}

/// A progress bar on stderr (a spinner when the length is unknown); hidden for
/// `--json`, and by indicatif itself when stderr is not a terminal.
pub fn progress(len: Option<u64>, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})"
    } else {
        "{spinner} {msg} {pos} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The error and its causes, skipping causes whose text an outer message already
/// includes (library errors often embed their source in their own message).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
