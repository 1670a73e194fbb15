//! `tappass`: the TapPass operator CLI.
//!
//! Subcommands live in `tappass_controlplane::cli`.
//! Exit codes: 0 nothing found / success, 1 findings, 2 usage or I/O error.

use std::process::ExitCode;

use clap::Parser;
use tappass_controlplane::cli::{Cli, Command};

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
        Command::Scan(args) => tappass_controlplane::cli::scan::run(&args),
        Command::Policy(args) => tappass_controlplane::cli::policy::run(&args),
        Command::Provider(args) => tappass_controlplane::cli::provider::run(&args),
        Command::Packs(args) => tappass_controlplane::cli::packs::run(&args),
        Command::Keys(args) => tappass_controlplane::cli::keys::run(&args),
        Command::Audit(args) => tappass_controlplane::cli::audit::run(&args),
        Command::Token(args) => tappass_controlplane::cli::token::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tappass: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
