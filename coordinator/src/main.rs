//! `ouroboros-coordinator`: parse, set up logging and TLS, run.

use std::process::ExitCode;

use ouroboros_coordinator::cli::{Cli, run};

fn main() -> ExitCode {
    ouroboros_shared::install_crypto_provider();
    let cli: Cli = ouroboros_shared::cli::parse_or_exit();
    ouroboros_shared::telemetry::init(&cli.log_level);
    let runtime = ouroboros_shared::cli::runtime_or_exit();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
        }
    }
}
