//! `ouroboros-agent`: parse, validate, set up logging and TLS, run until SIGTERM.

use std::process::ExitCode;

use ouroboros_agent::cli::Cli;
use ouroboros_shared::names::EXIT_USAGE;

fn main() -> ExitCode {
    ouroboros_shared::install_crypto_provider();
    let cli: Cli = ouroboros_shared::cli::parse_or_exit();
    ouroboros_shared::telemetry::init(&cli.log_level);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(64));
        }
    };
    let runtime = ouroboros_shared::cli::runtime_or_exit();
    match runtime.block_on(ouroboros_agent::run(
        config,
        ouroboros_shared::shutdown::signal(),
    )) {
        Ok(()) => {
            tracing::info!("Agent stopped.");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
