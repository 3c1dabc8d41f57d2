//! Command-line surface: one module per subcommand, each owning its clap
//! arguments (doc comments are the help text) and a `run` that returns the
//! process exit code. Human output goes to stderr, `--json` to stdout.

use clap::{Parser, Subcommand};

mod demo;
mod endpoint_config;
mod export;
mod fetch;
mod generate;
mod import;
mod inspect;
mod keygen;
mod ledger;
mod output;
mod password;
mod repair;
mod rollback;
mod status;
mod verify;

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
    Repair(repair::RepairArgs),
    Import(import::ImportArgs),
    Status(status::StatusArgs),
    Rollback(rollback::RollbackArgs),
    /// Check or print a mirror's import ledger.
    Ledger(ledger::LedgerArgs),
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
            Command::Repair(a) => a.run(),
            Command::Import(a) => a.run(),
            Command::Status(a) => a.run(),
            Command::Rollback(a) => a.run(),
            Command::Demo(a) => a.run(),
            Command::Ledger(a) => a.run(),
            Command::Fetch(args) => args.run(),
            Command::EndpointConfig(a) => a.run(),
            Command::Generate(a) => a.run(),
        }
    }
}

pub use gapferry::error::UsageError;

/// The exit code of a failed command: the one place the binary maps an
/// error to the documented codes. Library errors carry their kind through
/// the crate error ([`gapferry::Error`]), found anywhere in the chain (so a
/// `.context(..)` added by a subcommand does not hide it); the binary's own
/// usage errors are [`UsageError`], one of its variants. An error with no
/// crate error in its chain (the binary's own I/O) is operational.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    gapferry::error::exit_kind_of_chain(err.chain()).code()
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
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
