//! The `gapferry` binary: parse, dispatch, and turn an error into one of the
//! documented exit codes. Everything else lives in the library and `cli/`.

mod cli;

use clap::{CommandFactory, FromArgMatches};

fn main() {
    let matches = match cli::Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(err) => {
            // With --json, a command line clap refuses still gets its one
            // failure document (exit 2); help and --version are not errors.
            if err.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let _ = cli::output::print_failure(
                    &cli::command_words(std::env::args_os()),
                    cli::output::ErrorJson::new(cli::clap_message(&err), err.exit_code()),
                );
            }
            err.exit()
        }
    };
    let json = cli::json_command(&matches);
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let code = match args.run() {
        Ok(code) => code,
        Err(err) => {
            if cli::is_broken_pipe(&err) {
                0
            } else {
                eprintln!("gapferry: {}", cli::describe(&err));
                if let Some(command) = &json {
                    let _ = cli::output::print_failure(command, cli::output::ErrorJson::of(&err));
                }
                cli::exit_code(&err)
            }
        }
    };
    std::process::exit(code);
}
