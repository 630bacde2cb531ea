//! `ouroboros-coordinator`: parse, set up logging and TLS, run.

use std::process::ExitCode;

use clap::Parser;
use ouroboros_coordinator::cli::{Cli, EXIT_ADMIN_USAGE, admin_command_line, run};
use ouroboros_shared::names::EXIT_USAGE;

fn main() -> ExitCode {
    ouroboros_shared::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    // Admin commands exit 2 on a usage error, the server and PKI commands 64.
    let usage_code = |code: i32, admin: bool| {
        if admin && code == EXIT_USAGE {
            EXIT_ADMIN_USAGE
        } else {
            code
        }
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = ouroboros_shared::cli::report(&error);
            return exit(usage_code(code, admin_command_line(&args)));
        }
    };
    let admin = cli.command.is_admin();
    ouroboros_shared::telemetry::init(&cli.log_level);
    let runtime = ouroboros_shared::cli::runtime_or_exit();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            exit(usage_code(failure.code, admin))
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
