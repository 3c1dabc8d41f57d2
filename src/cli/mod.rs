//! Command-line surface: one module per subcommand, each owning its clap
//! arguments (doc comments are the help text) and a `run` that returns the
//! process exit code. Human output goes to stderr, `--json` to stdout.

use clap::{CommandFactory, Parser, Subcommand};

mod cosign;
mod demo;
mod endpoint_config;
mod export;
mod fetch;
mod generate;
mod import;
mod inspect;
mod keygen;
mod ledger;
pub mod output;
mod password;
mod repair;
mod rollback;
mod s3;
mod status;
mod trust;
mod verify;
mod windows;

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success, including \"already imported, nothing to do\"
  1  operational failure (I/O, disk full, lock held, network)
  2  usage error
  3  bundle rejected (signature, integrity, unsafe or malformed content)
  4  refused by policy (older than served, expired, wrong channel, threshold not met)";

/// Carry Microsoft Defender for Endpoint offline definition updates across an
/// air gap in signed bundles.
#[derive(Debug, Parser)]
#[command(name = "gapferry", version, long_version = generate::LONG_VERSION, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Keygen(keygen::KeygenArgs),
    Fetch(fetch::FetchArgs),
    Export(export::ExportArgs),
    Inspect(inspect::InspectArgs),
    Verify(verify::VerifyArgs),
    Sign(cosign::SignArgs),
    Manifest(cosign::ManifestArgs),
    Attach(cosign::AttachArgs),
    Repair(repair::RepairArgs),
    Import(import::ImportArgs),
    Status(status::StatusArgs),
    Rollback(rollback::RollbackArgs),
    /// Check or print a mirror's import ledger.
    Ledger(ledger::LedgerArgs),
    Trust(trust::TrustArgs),
    EndpointConfig(endpoint_config::EndpointConfigArgs),
    Demo(demo::DemoArgs),
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

impl Cli {
    /// Runs the chosen subcommand and returns its exit code.
    pub fn run(self) -> anyhow::Result<i32> {
        match self.command {
            Command::Keygen(a) => a.run(),
            Command::Export(a) => a.run(),
            Command::Inspect(a) => a.run(),
            Command::Verify(a) => a.run(),
            Command::Sign(a) => a.run(),
            Command::Manifest(a) => a.run(),
            Command::Attach(a) => a.run(),
            Command::Repair(a) => a.run(),
            Command::Import(a) => a.run(),
            Command::Status(a) => a.run(),
            Command::Rollback(a) => a.run(),
            Command::Demo(a) => a.run(),
            Command::Ledger(a) => a.run(),
            Command::Trust(a) => a.run(),
            Command::Fetch(args) => args.run(),
            Command::EndpointConfig(a) => a.run(),
            Command::Generate(a) => a.run(),
        }
    }
}

pub use gapferry::error::UsageError;

/// The parser of a flag whose values are a fixed list (`--platform`,
/// `--ring`, `--arch`): clap lists them in help, errors and shell
/// completions (a completion offers the values, not file names).
pub fn one_of<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(all.iter().map(move |&v| PossibleValue::new(name(v)))).map(
        move |s: String| {
            *all.iter()
                .find(|&&v| name(v) == s)
                .expect("clap accepts listed values only")
        },
    )
}

/// The exit code of a failed command: the one place the binary maps an
/// error to the documented codes. Library errors carry their kind through
/// the crate error ([`gapferry::Error`]), found anywhere in the chain (so a
/// `.context(..)` added by a subcommand does not hide it); the binary's own
/// usage errors are [`UsageError`], one of its variants. An error with no
/// crate error in its chain (the binary's own I/O) is operational.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    gapferry::error::exit_kind_of_chain(err.chain()).code()
}

/// The subcommand words (`ledger verify`) when the command was given
/// `--json`, at any level of subcommands; `None` without `--json`. The one
/// place the binary learns that a failure must be a JSON document too.
pub fn json_command(matches: &clap::ArgMatches) -> Option<String> {
    let mut words = Vec::new();
    let mut json = false;
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name);
        json |= matches!(sub.try_get_one::<bool>("json"), Ok(Some(true)));
        m = sub;
    }
    json.then(|| words.join(" "))
}

/// The subcommand words of a raw command line clap refused: the leading
/// words that are not flags (`ledger verify` of `ledger verify --bogus`).
pub fn command_words(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let mut cmd = Cli::command();
    let mut words = Vec::new();
    for a in args.skip(1) {
        let Some(a) = a.to_str() else { break };
        let Some(sub) = cmd.find_subcommand(a).cloned() else {
            break;
        };
        words.push(a.to_string());
        cmd = sub;
    }
    words.join(" ")
}

/// The first line of a clap error, without its `error: ` prefix.
pub fn clap_message(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (error types that print their source inline).
/// Escaped for a terminal or log ([`gapferry::text::escape`]): errors quote
/// file names and manifest strings, which must not be able to start a line.
pub fn describe(err: &anyhow::Error) -> String {
    gapferry::text::escape(&describe_raw(err)).into_owned()
}

fn describe_raw(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// True when the error is only a closed stdout (`gapferry ... | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Refuses a served folder given as `flag` that does not exist or is not a
/// folder, saying so plainly rather than "nothing is served" (a typo, or a
/// mirror never created or not mounted); `fix` ends the "does not exist"
/// message.
pub(crate) fn existing_folder(
    flag: &str,
    dir: &std::path::Path,
    fix: &str,
) -> Result<(), UsageError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UsageError(format!(
            "{flag} {}: not a folder; give the mirror's folder",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError(format!(
            "{flag} {} does not exist; {fix}",
            dir.display()
        ))),
        Err(e) => Err(UsageError(format!(
            "{flag} {}: {e}; check the path and its permissions",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    /// `--json` is found at any depth of subcommands, with the command's
    /// words; without it there is no failure document.
    #[test]
    fn json_command_finds_the_flag_and_the_words() {
        let m = |args: &[&str]| {
            let mut all = vec!["gapferry"];
            all.extend_from_slice(args);
            json_command(&Cli::command().try_get_matches_from(all).unwrap())
        };
        assert_eq!(
            m(&["ledger", "verify", "--state-dir", "s", "--json"]).as_deref(),
            Some("ledger verify")
        );
        assert_eq!(
            m(&["verify", "b", "--trust", "k", "--json"]).as_deref(),
            Some("verify")
        );
        assert_eq!(m(&["verify", "b", "--trust", "k"]), None);
        assert_eq!(m(&["ledger", "show", "--state-dir", "s"]), None);
        // A command without --json (keygen) never has one.
        assert_eq!(
            m(&["keygen", "--secret-key", "k", "--public-key", "p"]),
            None
        );
        assert_eq!(
            command_words(
                ["gapferry", "trust", "show", "--bogus"]
                    .into_iter()
                    .map(std::ffi::OsString::from)
            ),
            "trust show"
        );
    }

    /// The binary's one mapping, on errors as the subcommands raise them:
    /// `bail!` of a usage error, a library error under `.context(..)`, the
    /// crate error, and an I/O error of the binary's own.
    #[test]
    fn exit_code_reads_the_chain() {
        use anyhow::Context;
        use gapferry::bundle::BundleError;
        let usage = anyhow::Error::from(UsageError("give exactly one of A or B".into()));
        assert_eq!(exit_code(&usage), 2);
        let rejected: anyhow::Result<()> = Err(BundleError::Rejected {
            path: "b".into(),
            reason: "x".into(),
        })
        .context("verifying b");
        assert_eq!(exit_code(&rejected.unwrap_err()), 3);
        let policy = anyhow::Error::from(gapferry::Error::from(BundleError::Policy {
            path: "b".into(),
            reason: "expired".into(),
        }));
        assert_eq!(exit_code(&policy), 4);
        let io: anyhow::Result<()> =
            Err(std::io::Error::other("disk full")).context("writing out.json");
        assert_eq!(exit_code(&io.unwrap_err()), 1);
    }
}
