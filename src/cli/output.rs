//! Shared output helpers: progress bars on a terminal only, JSON on stdout.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Context;

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use gapferry::durable;
use gapferry::progress::Observer;

/// Prints `value` as one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Prints text for people or scripts on stdout; a closed pipe is an error
/// the caller can ignore (never a panic).
pub fn print_text(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// An indicatif bar when stderr is a terminal and output is not quiet/JSON:
/// a new bar for each phase, drawn from its first frame with its own label
/// and total (so no phase shows the previous one's label at zero), and none
/// for a phase of unknown or zero size.
#[derive(Debug)]
pub struct Bar {
    /// `None`: never draw. Else the current phase's bar, if it has one.
    phase: Option<Mutex<Option<ProgressBar>>>,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let on = !quiet && std::io::stderr().is_terminal();
        Bar {
            phase: on.then(|| Mutex::new(None)),
        }
    }

    fn current(&self) -> Option<std::sync::MutexGuard<'_, Option<ProgressBar>>> {
        self.phase
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Observer for Bar {
    fn start(&self, label: &str, total: u64) {
        if let Some(mut cur) = self.current() {
            if let Some(old) = cur.take() {
                old.finish_and_clear();
            }
            if total > 0 {
                let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                    .with_style(
                        ProgressStyle::with_template(
                            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                        )
                        .expect("static template")
                        .progress_chars("=> "),
                    )
                    .with_message(label.to_string());
                *cur = Some(pb);
            }
        }
    }
    fn advance(&self, n: u64) {
        if let Some(cur) = self.current() {
            if let Some(b) = cur.as_ref() {
                b.inc(n);
            }
        }
    }
    fn finish(&self) {
        if let Some(mut cur) = self.current() {
            if let Some(b) = cur.take() {
                b.finish_and_clear();
            }
        }
    }
}

/// Writes `bytes` to `path` atomically with mode 0644
/// ([`gapferry::durable::write_atomic`]: temp file, fsync, rename, fsync of
/// the folder). A reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    durable::write_atomic(path, bytes, durable::FILE_MODE, durable::Clobber::Replace).with_context(
        || {
            format!(
                "cannot write {}; check that {} exists and is writable",
                path.display(),
                durable::parent_of(path).display()
            )
        },
    )
}

/// The `--log-format` parser: clap lists (and completes) the values, then
/// `auto` is resolved for this process.
pub fn log_format_parser(
) -> impl clap::builder::TypedValueParser<Value = gapferry::eventlog::LogFormat> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(gapferry::eventlog::LogFormat::FLAG_VALUES).map(|s| {
        gapferry::eventlog::LogFormat::parse_flag(&s).unwrap_or(gapferry::eventlog::LogFormat::Text)
    })
}
