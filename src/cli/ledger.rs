//! `gapferry ledger`: check and print a mirror's import ledger. Read-only:
//! it never takes the import lock and never writes to the state directory.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use gapferry::mirror::ledger::{Ledger, LedgerEntry, SlotChange};
use gapferry::mirror::state::{default_state_dir, StateDir};

use super::output::print_json;

const LEDGER_EXIT_CODES: &str = "\
Exit codes:
  0  the hash chain is intact
  1  the ledger cannot be read (wrong --state-dir, permissions)
  3  the hash chain is broken: the message names the first broken line";

/// Check or print the import ledger: one hash-chained JSON line per import
/// attempt (accepted, already imported, rejected or refused), kept in the
/// state directory as ledger.jsonl.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Walk the hash chain from the first line and name the first broken
    /// entry (edited, removed, inserted or reordered lines). Prints the head
    /// hash: note it elsewhere to protect the newest entry too.
    #[command(after_help = LEDGER_EXIT_CODES)]
    Verify(VerifyArgs),
    /// Print the ledger: a table for people, or with --json an array of
    /// entries. The chain is checked first.
    #[command(after_help = LEDGER_EXIT_CODES)]
    Show(ShowArgs),
}

/// Which state directory to read.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Location {
    /// The state directory given to `gapferry import --state-dir`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The mirror root (or --target folder) whose default state directory to
    /// read, for imports run without --state-dir.
    #[arg(long, value_name = "DIR")]
    mirror: Option<PathBuf>,
}

impl Location {
    fn ledger(&self) -> anyhow::Result<(Ledger, StateDir)> {
        let dir = match (&self.state_dir, &self.mirror) {
            (Some(d), _) => d.clone(),
            (None, Some(m)) => default_state_dir(m)?,
            (None, None) => unreachable!("clap requires one"),
        };
        let dir = StateDir::existing(&dir)?;
        Ok((Ledger::in_state_dir(&dir), dir))
    }
}

/// Says on stderr that an interrupted run's line is still to be appended.
fn note_due(due: &Option<LedgerEntry>, dir: &StateDir) {
    if let Some(e) = due {
        eprintln!(
            "note: {} holds the ledger line of a run that was interrupted after \
             changing the mirror ({} {} at {}); the next import or rollback appends it",
            dir.state_path().display(),
            e.outcome.as_str(),
            e.bundle_id.as_deref().unwrap_or("-"),
            e.time
        );
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    location: Location,
    /// Print the result as JSON on stdout: {"ledger", "entries", "head_sha256",
    /// "due"}; "due" is the line an interrupted run left to append, or null.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    location: Location,
    /// Print a JSON array of entries on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ledger verify --json` output.
#[derive(Debug, Serialize)]
struct VerifyJson {
    ledger: PathBuf,
    entries: usize,
    head_sha256: String,
    /// The line of an interrupted run not yet appended (see `import`).
    due: Option<LedgerEntry>,
}

impl LedgerArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        match self.command {
            LedgerCommand::Verify(a) => {
                let (ledger, dir) = a.location.ledger()?;
                let report = ledger.verify()?;
                let due = ledger.due(&dir)?;
                note_due(&due, &dir);
                if a.json {
                    print_json(&VerifyJson {
                        ledger: ledger.path().to_path_buf(),
                        entries: report.entries,
                        head_sha256: report.head_sha256,
                        due,
                    })?;
                } else {
                    eprintln!(
                        "{}: {} entries, hash chain intact; head sha256 {}",
                        ledger.path().display(),
                        report.entries,
                        report.head_sha256
                    );
                }
                Ok(0)
            }
            LedgerCommand::Show(a) => {
                let (ledger, dir) = a.location.ledger()?;
                let entries = ledger.read()?;
                note_due(&ledger.due(&dir)?, &dir);
                if a.json {
                    print_json(&entries)?;
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(table(&entries).as_bytes())?;
                    out.flush()?;
                }
                Ok(0)
            }
        }
    }
}

fn versions(c: &SlotChange) -> String {
    let v = |v: &Option<gapferry::mirror::ledger::Versions>| match v {
        Some(v) => format!(
            "definitions {} (engine {})",
            v.definition_version, v.engine_version
        ),
        None => "-".to_string(),
    };
    format!("{}  {} -> {}", c.slot, v(&c.before), v(&c.after))
}

/// The human table: one row per entry, then one indented line per folder
/// change and the reason.
fn table(entries: &[LedgerEntry]) -> String {
    let mut s = format!(
        "{:>4}  {:<20}  {:<16}  {:<32}  {}\n",
        "#", "time", "outcome", "bundle", "channel:sequence"
    );
    for (i, e) in entries.iter().enumerate() {
        let seq = e.sequence.map(|q| q.to_string()).unwrap_or("-".into());
        s.push_str(&format!(
            "{:>4}  {:<20}  {:<16}  {:<32}  {}:{}{}\n",
            i + 1,
            e.time,
            e.outcome.as_str(),
            e.bundle_id.as_deref().unwrap_or("-"),
            e.channel.as_deref().unwrap_or("-"),
            seq,
            if e.allow_downgrade {
                "  (--allow-downgrade)"
            } else {
                ""
            }
        ));
        for c in &e.slots {
            s.push_str(&format!("        {}\n", versions(c)));
        }
        if let Some(r) = &e.reason {
            s.push_str(&format!("        reason: {r}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(Debug, clap::Parser)]
    struct Wrap {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Ledger(LedgerArgs),
    }

    #[test]
    fn ledger_args_debug_assert() {
        Wrap::command().debug_assert();
    }
}
