//! `fleet-sim`: N simulated agents against a real coordinator; prints what it measured (see
//! `ouroboros_tests::sim`). The README's "Scaling" section has the figures and the command.
//!
//! ```text
//! cargo run --release -p ouroboros-tests --bin fleet-sim -- \
//!     --agents 1000 --containers 50 --tags 500 --output json
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ouroboros_tests::sim::{Config, run};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Text,
}

/// Simulate a fleet of agents against a real ouroboros-coordinator and measure it.
#[derive(Debug, Parser)]
#[command(name = "fleet-sim", version)]
struct Args {
    /// Simulated agents (hosts), each with its own certificate and connection.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Containers per agent.
    #[arg(long, default_value_t = 50)]
    containers: usize,
    /// Unique tags over the fleet (containers are spread over them evenly).
    #[arg(long, default_value_t = 50)]
    tags: usize,
    /// Share of the tags moved for the measured rollout (and again for the restart).
    #[arg(long, default_value_t = 0.1)]
    rollout_share: f64,
    /// Tags moved in each later cycle.
    #[arg(long, default_value_t = 1)]
    tags_per_cycle: usize,
    /// Cycles after the restart (churn, disconnects and moving tags; the store is measured
    /// after them).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Share of agents whose host changes before each cycle (a container goes, one appears).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Share of agents whose link drops before each cycle.
    #[arg(long, default_value_t = 0.0)]
    disconnect_rate: f64,
    /// Round trip of each registry request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    registry_rtt_ms: u64,
    /// How long one simulated recreate takes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    recreate_ms: u64,
    /// The coordinator's --max-hosts-in-flight.
    #[arg(long, default_value_t = 50)]
    max_hosts_in_flight: u32,
    /// The coordinator's --max-containers-in-flight.
    #[arg(long, default_value_t = 1)]
    max_containers_in_flight: u32,
    /// The coordinator's --history-retention (days, or a duration such as 30s).
    #[arg(long)]
    history_retention: Option<String>,
    /// Skip the coordinator crash and restart.
    #[arg(long)]
    no_restart: bool,
    /// The ouroboros-coordinator binary [default: the workspace's, built into this binary's
    /// profile].
    #[arg(long)]
    coordinator: Option<PathBuf>,
    /// Longest wait for each step (agents reporting, a rollout ending), in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // By default the workspace's coordinator, built (if need be) into this binary's profile,
    // as the tests build it.
    let coordinator = match args.coordinator.clone() {
        Some(path) => path,
        None => match ouroboros_tests::Binaries::get() {
            Ok(binaries) => binaries.coordinator.clone(),
            Err(e) => {
                eprintln!("fleet-sim: cannot build the coordinator (or pass --coordinator): {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut config = Config::new(args.agents, args.containers, args.tags, coordinator);
    config.rollout_share = args.rollout_share;
    config.tags_per_cycle = args.tags_per_cycle;
    config.cycles = args.cycles;
    config.churn = args.churn;
    config.disconnect_rate = args.disconnect_rate;
    config.registry_rtt = Duration::from_millis(args.registry_rtt_ms);
    config.recreate = Duration::from_millis(args.recreate_ms);
    config.max_hosts_in_flight = args.max_hosts_in_flight;
    config.max_containers_in_flight = args.max_containers_in_flight;
    config.history_retention = args.history_retention;
    config.restart = !args.no_restart;
    config.timeout = Duration::from_secs(args.timeout_s);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(report) => {
            match args.output {
                Output::Json => println!("{report}"),
                Output::Text => {
                    if let Some(fields) = report.as_object() {
                        for (k, v) in fields {
                            println!("{k:32} {v}");
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
