//! `gapferry ledger`: check and print a mirror's import ledger. Read-only:
//! it never takes the import lock and never writes to the state directory.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use gapferry::mirror::ledger::{ExpectedHead, Ledger, LedgerEntry, SlotChange, Suppressed};
use gapferry::mirror::state::{default_state_dir, StateDir};
use gapferry::text::{escape_path, Esc};

use super::output::print_json;

const LEDGER_EXIT_CODES: &str = "\
Exit codes:
  0  the hash chain is intact
  1  the ledger cannot be read (wrong --state-dir, permissions)
  3  the hash chain is broken (the message names the first broken line), or
     a head given with --expect-head is no longer in it

What the chain proves: a line edited, removed, inserted or reordered by hand
breaks it. It is not keyed, so it does not stop someone who can write the
state directory from rewriting lines and recomputing every hash after them.
That is caught only against a head kept elsewhere: every receipt carries the
head (<sha256>@<entries>) to the online side; --expect-head checks that it is
still line <entries> of the chain, so nothing up to that line was changed.
Lines after the newest head kept elsewhere are protected only by the state
directory's permissions.";

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
    /// entry (edited, removed, inserted or reordered lines); with
    /// --expect-head, also check that heads recorded elsewhere (receipts)
    /// are still in it. Prints the head: keep it elsewhere.
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
        Ok((dir.ledger(), dir))
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
            Esc(e.bundle_id.as_deref().unwrap_or("-")),
            Esc(&e.time)
        );
    }
}

/// Says on stderr that the flood limit left attempts out since the last line.
fn note_suppressed(s: &Option<Suppressed>, ledger: &Ledger) {
    if let Some(s) = s {
        eprintln!(
            "note: {} attempt(s) that changed nothing since {} are counted but not yet in {} \
             (flood limit); the next ledger line is preceded by a line summing them up",
            s.repeats + s.over_limit,
            Esc(&s.first),
            escape_path(ledger.path())
        );
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    location: Location,
    /// Print the result as JSON on stdout: {"ledger", "entries", "head_sha256",
    /// "head", "expected_heads", "due"}; "due" is the line an interrupted run
    /// left to append, or null.
    #[arg(long)]
    json: bool,
    /// A head recorded earlier, as a receipt printed it: HEX@N (the SHA-256
    /// of line N, or its first 16 or more hex digits), or HEX alone to
    /// accept any line. Exit 3 unless the chain still holds it. Repeatable.
    #[arg(long, value_name = "HEX[@N]")]
    expect_head: Vec<ExpectedHead>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    location: Location,
    /// Print one JSON document (`entries`: the ledger's lines) on stdout
    /// instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ledger verify --json` output.
#[derive(Debug, Serialize)]
struct VerifyJson {
    ledger: PathBuf,
    entries: usize,
    head_sha256: String,
    /// `<head_sha256>@<entries>`, the form receipts and --expect-head use.
    head: String,
    /// The --expect-head values, all found in the chain.
    expected_heads: Vec<String>,
    /// The line of an interrupted run not yet appended (see `import`).
    due: Option<LedgerEntry>,
}

/// `ledger show --json` output: the entries as the ledger holds them.
#[derive(Debug, Serialize)]
struct ShowJson<'a> {
    ledger: PathBuf,
    entries: &'a [LedgerEntry],
}

impl LedgerArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        match self.command {
            LedgerCommand::Verify(a) => {
                let (ledger, dir) = a.location.ledger()?;
                let report = ledger.verify_expecting(&a.expect_head)?;
                let due = dir.ledger_due()?;
                note_due(&due, &dir);
                note_suppressed(&ledger.suppressed_pending(), &ledger);
                let head = report.checkpoint().to_string();
                if a.json {
                    print_json(
                        &VerifyJson {
                            ledger: ledger.path().to_path_buf(),
                            entries: report.entries,
                            head_sha256: report.head_sha256,
                            head,
                            expected_heads: a.expect_head.iter().map(|e| e.to_string()).collect(),
                            due,
                        },
                        None,
                    )?;
                } else {
                    let path = escape_path(ledger.path());
                    eprintln!(
                        "{path}: {} entries, hash chain intact; head {head}",
                        report.entries,
                    );
                    for e in &a.expect_head {
                        eprintln!(
                            "{path}: recorded head {e} is still in the chain: nothing up to that \
                             line was removed, changed or inserted"
                        );
                    }
                    eprintln!(
                        "note: the chain is not keyed: it shows lines edited, removed or reordered \
                         by hand, but someone who can write {} can rewrite lines and recompute \
                         the hashes. {}",
                        escape_path(dir.path()),
                        if a.expect_head.is_empty() {
                            "Keep this head elsewhere (every receipt carries it) and check it \
                             later with --expect-head."
                        } else {
                            "Lines after the newest head you keep elsewhere are not covered."
                        }
                    );
                }
                Ok(0)
            }
            LedgerCommand::Show(a) => {
                let (ledger, dir) = a.location.ledger()?;
                let entries = ledger.read()?;
                note_due(&dir.ledger_due()?, &dir);
                note_suppressed(&ledger.suppressed_pending(), &ledger);
                if a.json {
                    print_json(
                        &ShowJson {
                            ledger: ledger.path().to_path_buf(),
                            entries: &entries,
                        },
                        None,
                    )?;
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

/// One folder's change, its name padded to `width`: `before -> after`, or
/// `..., not changed` when the attempt left it as it was (a refused or
/// already imported bundle), never `X -> -`, which reads like a removal.
fn versions(c: &SlotChange, width: usize) -> String {
    let v = |v: &gapferry::mirror::ledger::Versions| {
        format!(
            "definitions {} (engine {})",
            Esc(&v.definition_version),
            Esc(&v.engine_version)
        )
    };
    let change = match (&c.before, &c.after) {
        (Some(b), Some(a)) => format!("{} -> {}", v(b), v(a)),
        (None, Some(a)) => format!("(none) -> {}", v(a)),
        (Some(b), None) => format!("{}, not changed", v(b)),
        (None, None) => "(none), not changed".to_string(),
    };
    format!("{:<width$}  {change}", Esc(c.slot.as_str()))
}

/// The human table: one row per entry, then one indented line per folder
/// change and the reason. Every text field is escaped ([`Esc`]), so a file
/// name or reason cannot start a line of its own; the bundle id and
/// channel:sequence of an attempt whose manifest was not verified are
/// marked `(unverified)`, since anyone could have written them.
fn table(entries: &[LedgerEntry]) -> String {
    let mut s = format!(
        "{:>4}  {:<20}  {:<16}  {:<32}  {}\n",
        "#", "time", "outcome", "bundle", "channel:sequence"
    );
    for (i, e) in entries.iter().enumerate() {
        let seq = e.sequence.map(|q| q.to_string()).unwrap_or("-".into());
        let unverified = e.manifest_unverified();
        s.push_str(&format!(
            "{:>4}  {:<20}  {:<16}  {:<32}  {}:{}{}{}\n",
            i + 1,
            Esc(&e.time),
            e.outcome.as_str(),
            Esc(e.bundle_id.as_deref().unwrap_or("-")),
            Esc(e.channel.as_deref().unwrap_or("-")),
            seq,
            if unverified { "  (unverified)" } else { "" },
            if e.allow_downgrade {
                "  (--allow-downgrade)"
            } else {
                ""
            }
        ));
        if unverified {
            s.push_str(
                "        unverified: bundle id, channel, sequence and manifest are what an \
                 unsigned manifest claims\n",
            );
        }
        let width = e
            .slots
            .iter()
            .map(|c| Esc(c.slot.as_str()).to_string().chars().count())
            .max()
            .unwrap_or(0);
        for c in &e.slots {
            s.push_str(&format!("        {}\n", versions(c, width)));
        }
        if let Some(p) = &e.bundle_path {
            s.push_str(&format!("        file: {}\n", Esc(p)));
        }
        if let Some(r) = &e.reason {
            s.push_str(&format!("        reason: {}\n", Esc(r)));
        }
        if let Some(t) = &e.trust_updated {
            s.push_str(&format!(
                "        trust_updated: policy version {} -> {}{}\n",
                t.old_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(none)".into()),
                t.new_version,
                if t.changes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", Esc(&t.changes.join(", ")))
                }
            ));
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

    /// Folder lines are aligned, and a folder an attempt left alone says
    /// "not changed" instead of `X -> -`.
    #[test]
    fn table_aligns_folders_and_says_not_changed() {
        use gapferry::mirror::ledger::Outcome;
        let v = |d: &str| gapferry::mirror::ledger::Versions {
            engine_version: "1.1.1.0".into(),
            definition_version: d.into(),
        };
        let change = |slot: &str, before, after| SlotChange {
            slot: slot.parse().unwrap(),
            before,
            after,
        };
        let mut refused = LedgerEntry::new(Outcome::Refused);
        refused.slots = vec![
            change("linux/production/arch_x86_64", Some(v("1.400.2.0")), None),
            change("linux/production/arch_arm64", Some(v("1.400.2.0")), None),
        ];
        let mut imported = LedgerEntry::new(Outcome::Imported);
        imported.slots = vec![change(
            "mac/production/arch_arm64",
            None,
            Some(v("1.400.1.0")),
        )];
        let text = table(&[imported, refused]);
        assert!(!text.contains("-> -"), "{text}");
        assert!(
            text.contains(
                "linux/production/arch_arm64   definitions 1.400.2.0 (engine 1.1.1.0), not changed"
            ),
            "{text}"
        );
        assert!(
            text.contains("mac/production/arch_arm64  (none) -> definitions 1.400.1.0"),
            "{text}"
        );
        let starts: Vec<usize> = text
            .lines()
            .filter(|l| l.contains("definitions 1.400.2.0"))
            .map(|l| l.find("definitions").unwrap())
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0], starts[1], "{text}");
    }
}
