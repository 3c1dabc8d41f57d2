//! `gapferry generate` (hidden): man pages and shell completion scripts made
//! from the clap definitions, for packagers (`generate man --out DIR`,
//! `generate completions bash zsh --out DIR`), and the build details shown
//! by `--version`. It only ever writes into `--out`, each file atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::{Generator, Shell};

use super::output::write_atomically;

/// What `gapferry --version` prints: the version and how this binary was built.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:   ",
    env!("GAPFERRY_GIT_COMMIT"),
    "\ntarget:   ",
    env!("GAPFERRY_BUILD_TARGET"),
    "\nprofile:  ",
    env!("GAPFERRY_BUILD_PROFILE"),
    "\ncompiler: ",
    env!("GAPFERRY_BUILD_RUSTC"),
);

/// Generate man pages or shell completions from the command definitions
/// (for packaging).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Man pages: gapferry.1 and one gapferry-<command>.1 per subcommand.
    Man {
        /// Folder to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Completion scripts for the named shells (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shells to write a script for.
        #[arg(value_name = "SHELL", required = true, value_enum)]
        shells: Vec<Shell>,
        /// Folder to write the scripts into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

impl GenerateArgs {
    pub fn run(self) -> anyhow::Result<i32> {
        let mut cmd = super::Cli::command();
        cmd.build();
        let written = match self.what {
            What::Man { out } => {
                create_dir(&out)?;
                let mut written = Vec::new();
                man_pages(&cmd, &out, &mut written)?;
                written
            }
            What::Completions { shells, out } => {
                create_dir(&out)?;
                let mut written = Vec::new();
                for shell in shells {
                    let mut buf = Vec::new();
                    clap_complete::generate(shell, &mut cmd, "gapferry", &mut buf);
                    let path = out.join(shell.file_name("gapferry"));
                    write_atomically(&path, &buf)?;
                    written.push(path);
                }
                written
            }
        };
        for p in written {
            eprintln!("gapferry: wrote {}", p.display());
        }
        Ok(0)
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; check the path and its permissions",
            dir.display()
        )
    })
}

/// The page of `cmd`, then those of its visible subcommands.
fn man_pages(cmd: &clap::Command, out: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut buf = Vec::new();
    man.render(&mut buf).context("cannot render the man page")?;
    let path = out.join(man.get_filename());
    write_atomically(&path, &buf)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, out, written)?;
    }
    Ok(())
}
