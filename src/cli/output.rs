//! Shared output helpers: progress bars on a terminal only, JSON on stdout
//! (the `--json` envelope and the failure document, docs/JSON.md).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::Serialize;

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use gapferry::durable;
use gapferry::progress::Observer;

/// The `schema_version` of every `--json` document (docs/JSON.md): fields
/// are only ever added; a rename, removal or change of type bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Set once a command has printed its one JSON document, so the binary's
/// failure document ([`print_failure`]) is never a second one.
static DOCUMENT_PRINTED: AtomicBool = AtomicBool::new(false);

/// The envelope every `--json` document shares: `schema_version` and `ok`
/// (true exactly when the command exits 0) before the command's own fields.
#[derive(Serialize)]
struct Doc<'a, T: ?Sized> {
    schema_version: u32,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
    #[serde(flatten)]
    body: &'a T,
}

impl<'a, T: ?Sized> Doc<'a, T> {
    fn new(body: &'a T, error: Option<ErrorJson>) -> Self {
        Doc {
            schema_version: SCHEMA_VERSION,
            ok: error.is_none(),
            error,
            body,
        }
    }
}

/// Prints `value` as one JSON document on stdout, in the envelope:
/// `schema_version`, `ok` (true exactly when the command exits 0) and, when
/// it does not, `error` (why, and the exit code).
pub fn print_json<T: Serialize + ?Sized>(
    value: &T,
    error: Option<ErrorJson>,
) -> anyhow::Result<()> {
    DOCUMENT_PRINTED.store(true, Ordering::SeqCst);
    let mut out = std::io::stdout().lock();
    let doc = Doc::new(value, error);
    serde_json::to_writer_pretty(&mut out, &doc).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Prints `value` as one line of a JSON-lines stream (`import --inbox`), in
/// the same envelope as [`print_json`].
pub fn print_json_line<T: Serialize + ?Sized>(
    value: &T,
    error: Option<ErrorJson>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let doc = Doc::new(value, error);
    serde_json::to_writer(&mut out, &doc).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The `error` object of a failed command's document: the message printed
/// on stderr, the exit code, and its name.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorJson {
    pub message: String,
    pub exit_code: i32,
    /// `operational` (1), `usage` (2), `rejected` (3) or `policy` (4).
    pub kind: &'static str,
}

impl ErrorJson {
    pub fn new(message: String, exit_code: i32) -> Self {
        let kind = match exit_code {
            2 => "usage",
            3 => "rejected",
            4 => "policy",
            _ => "operational",
        };
        ErrorJson {
            message,
            exit_code,
            kind,
        }
    }

    /// The error as the binary reports it ([`super::describe`],
    /// [`super::exit_code`]).
    pub fn of(err: &anyhow::Error) -> Self {
        ErrorJson::new(super::describe(err), super::exit_code(err))
    }
}

/// The document of a command that failed before it printed its own:
/// `{"schema_version", "ok": false, "command", "error"}`, on one line (so it
/// also ends a JSON-lines stream). Nothing when a document was printed.
pub fn print_failure(command: &str, error: ErrorJson) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Failure<'a> {
        command: &'a str,
    }
    if DOCUMENT_PRINTED.load(Ordering::SeqCst) {
        return Ok(());
    }
    print_json_line(&Failure { command }, Some(error))
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
