//! The `gapferry` binary: parse, dispatch, and turn an error into one of the
//! documented exit codes. Everything else lives in the library and `cli/`.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match args.run() {
        Ok(code) => code,
        Err(err) => {
            if cli::is_broken_pipe(&err) {
                0
            } else {
                eprintln!("gapferry: {}", cli::describe(&err));
                cli::exit_code(&err)
            }
        }
    };
    std::process::exit(code);
}
