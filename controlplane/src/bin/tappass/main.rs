//! `tappass`: the TapPass operator CLI.
//!
//! One module per subcommand in `cli/`.
//! Exit codes: 0 nothing found / success, 1 findings, 2 usage or I/O error.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of stdout goes
    // away (`tappass … | head`) instead of failing on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Scan(args) => cli::scan::run(&args),
        Command::Policy(args) => cli::policy::run(&args),
        Command::Provider(args) => cli::provider::run(&args),
        Command::Packs(args) => cli::packs::run(&args),
        Command::Keys(args) => cli::keys::run(&args),
        Command::Audit(args) => cli::audit::run(&args),
        Command::Budget(args) => cli::budget::run(&args),
        Command::Token(args) => cli::token::run(&args),
        Command::Up(args) => cli::up::run(&args),
        Command::Agent(args) => cli::agent::run(&args),
        Command::Key(args) => cli::apikey::run(&args),
        Command::Sandbox(args) => cli::sandbox::run(&args),
        Command::Status(args) => cli::status::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tappass: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
