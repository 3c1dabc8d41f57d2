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
                let mut cmd = without_hidden(&super::Cli::command());
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

/// The (unbuilt) command `cmd` without its hidden subcommands
/// (`generate`), for the completion scripts: clap_complete would offer
/// them. clap cannot remove a subcommand, so the command is made again
/// from its parts.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut visible = clap::Command::new("gapferry")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    visible.build();
    visible
}

/// The synopsis of `cmd` with every option's value placeholder, as
/// `gapferry import [--mirror <DIR>] --trust <K>... [BUNDLE]`
/// (clap_mangen's own synopsis leaves the placeholders out).
fn synopsis(cmd: &clap::Command) -> String {
    let mut parts = vec![cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()];
    let mut args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    // Optional first, then required, as clap's usage does.
    args.sort_by_key(|a| a.is_required_set());
    for a in args {
        let flag = match (a.get_long(), a.get_short()) {
            (Some(l), _) => format!("--{l}"),
            (None, Some(s)) => format!("-{s}"),
            (None, None) => continue,
        };
        let takes = a.get_action().takes_values();
        let mut s = flag;
        if takes {
            let names: Vec<String> = match a.get_value_names() {
                Some(v) => v.iter().map(|n| format!("<{n}>")).collect(),
                None => vec![format!("<{}>", a.get_id().as_str().to_uppercase())],
            };
            s = format!("{s} {}", names.join(" "));
        }
        if matches!(a.get_action(), clap::ArgAction::Append) {
            s.push_str("...");
        }
        parts.push(if a.is_required_set() {
            s
        } else {
            format!("[{s}]")
        });
    }
    for a in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let name = a
            .get_value_names()
            .and_then(|v| v.first())
            .map(ToString::to_string)
            .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
        let many = if matches!(a.get_action(), clap::ArgAction::Append) {
            "..."
        } else {
            ""
        };
        parts.push(if a.is_required_set() {
            format!("<{name}>{many}")
        } else {
            format!("[{name}]{many}")
        });
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        parts.push("<COMMAND>".into());
    }
    parts.join(" ")
}

/// Text for roff: backslashes and leading control characters escaped,
/// hyphens as minus signs (so they can be searched and copied).
fn roff_text(line: &str) -> String {
    let mut s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        s.insert_str(0, "\\&");
    }
    s
}

/// The EXIT STATUS section: the command's own exit codes (its after-help
/// text) or gapferry's, kept as written (no fill, so the table is not
/// reflowed).
fn exit_status(cmd: &clap::Command) -> String {
    let text = cmd
        .get_after_help()
        .map(ToString::to_string)
        .unwrap_or_else(|| super::EXIT_CODES.to_string());
    let mut out = String::from(".SH \"EXIT STATUS\"\n.nf\n");
    for line in text.lines() {
        out.push_str(&roff_text(line));
        out.push('\n');
    }
    out.push_str(".fi\n");
    out
}

/// Each clap_mangen section starts with the same two-line preamble (the
/// apostrophe string): keep the first, drop the repeats.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line.to_string()) {
            continue;
        }
        out.push_str(line);
    }
    out.into_bytes()
}

/// The page of `cmd`, then those of its visible subcommands. The page is
/// clap_mangen's sections in order, with our synopsis, footer
/// (`gapferry 0.x.y`) and EXIT STATUS instead of clap's after-help as
/// "EXTRA".
fn man_pages(cmd: &clap::Command, out: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let page_cmd = cmd
        .clone()
        .override_usage(synopsis(cmd))
        .after_help(None::<&'static str>)
        .after_long_help(None::<&'static str>);
    let man = clap_mangen::Man::new(page_cmd.clone())
        .source(format!("gapferry {}", env!("CARGO_PKG_VERSION")))
        .manual("gapferry manual");
    let mut buf = Vec::new();
    let render = |buf: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(buf)?;
        // No hyphenation: flags and placeholders are not split mid-word.
        buf.extend_from_slice(b".nh\n");
        man.render_name_section(buf)?;
        man.render_synopsis_section(buf)?;
        man.render_description_section(buf)?;
        if page_cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(buf)?;
        }
        if page_cmd.get_subcommands().any(|s| !s.is_hide_set()) {
            man.render_subcommands_section(buf)?;
        }
        buf.extend_from_slice(exit_status(cmd).as_bytes());
        Ok(())
    };
    render(&mut buf).context("cannot render the man page")?;
    let buf = once_preamble(&buf);
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
