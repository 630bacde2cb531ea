//! `ouroboros-agent`: parse, validate, set up logging and TLS, run until SIGTERM (then bring
//! the operation in flight to a safe point and exit 0).

use std::process::ExitCode;

use clap::Parser;
use ouroboros_agent::cli::{Cli, HEALTHCHECK, HealthcheckCli};
use ouroboros_shared::names::EXIT_USAGE;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(HEALTHCHECK) {
        return healthcheck(&args[1..]);
    }
    ouroboros_shared::install_crypto_provider();
    let cli: Cli = ouroboros_shared::cli::parse_or_exit();
    ouroboros_shared::telemetry::init(&cli.log_level);
    let runtime = ouroboros_shared::cli::runtime_or_exit();
    // A new host: enrol first (exit 64 when refused, 1 when the coordinator is unreachable).
    match cli.join_plan() {
        Ok(Some(plan)) => {
            if let Err(e) = runtime.block_on(ouroboros_agent::enrol::join(&plan)) {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
        Ok(None) => {}
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(64));
        }
    }
    // A renewal a crash cut short is completed (or dropped) before the files are read.
    match ouroboros_agent::renew::finish_interrupted(&cli.cert_path(), &cli.key_path()) {
        Ok(Some(what)) => tracing::warn!("Certificate renewal interrupted earlier: {what}."),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: --cert/--key: finishing an interrupted renewal: {e}");
            return ExitCode::from(1);
        }
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(u8::try_from(EXIT_USAGE).unwrap_or(64));
        }
    };
    match runtime.block_on(ouroboros_agent::run(
        config,
        // A second signal ends the agent at once (128 + SIGTERM); its journal recovers.
        ouroboros_shared::shutdown::signal_then_force(143),
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

/// `ouroboros-agent healthcheck`: one line, exit 0 (healthy) or 1.
fn healthcheck(args: &[String]) -> ExitCode {
    let cli = match HealthcheckCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = ouroboros_shared::cli::report(&error);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
    };
    match cli.verdict() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            println!("{line}");
            ExitCode::FAILURE
        }
    }
}
