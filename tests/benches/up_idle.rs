//! An idle `ouroboros-coordinator up --run-once` against the real engine and registry: the
//! all-in-one mode starts (store, PKI already made, server, embedded agent), takes the
//! inventory, probes every tag once, finds nothing to do and exits. This is what a
//! single-host user's cron job or systemd timer costs each time it fires.
//!
//! `CONTAINERS` (default 20) containers run one image pushed to a local registry and are
//! up to date. The first run (which creates the PKI) is not counted; then `RUNS` (default 10)
//! runs are timed: wall time of the process (median), and its CPU time (user + system, from this
//! process' `cutime`/`cstime` in `/proc/self/stat` after each child is reaped; mean over the runs,
//! as the clock ticks are 10 ms).
//!
//! ```sh
//! cargo bench -p ouroboros-tests --bench up_idle
//! # another build of the binaries, e.g. an older commit's, for comparison:
//! OUROBOROS_TEST_BIN_DIR=/path/to/target/release cargo bench -p ouroboros-tests --bench up_idle
//! ```
//!
//! Needs a Docker engine (prints `skipping` without one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::ensure;
use ouroboros_tests::{Binaries, Cleanup, Registry, publish, require_engine, unique_name};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of this process' reaped children so far, from `/proc/self/stat`
/// fields 16 and 17 (clock ticks of 10 ms, `CLK_TCK` 100 as on Linux here).
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after `(comm)` start with the state, field 3: cutime is 16, cstime 17.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [13, 14]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        println!("skipping: no Docker engine");
        return Ok(());
    };
    let containers = env_number("CONTAINERS", 20);
    let runs = env_number("RUNS", 10).max(1);
    let bins = Binaries::get()?;
    let registry = Registry::start()?;
    let cleanup = Cleanup::new(&engine);
    let repo = unique_name("bench-up");
    let image = publish(&cleanup, &registry, &repo, "stable", 1)?;
    let mut names = Vec::new();
    for _ in 0..containers {
        names.push(cleanup.run_container(
            "bench-up",
            &["--network", "none"],
            &image.reference,
            &[],
        )?);
    }
    let dir = tempfile::Builder::new()
        .prefix("ouroboros-bench-up-")
        .tempdir()?;
    let data = dir.path().join("data");
    let monitor = names.join(",");

    let run_once = || -> anyhow::Result<(Duration, Duration)> {
        let cpu_before = children_cpu();
        let started = Instant::now();
        let out = std::process::Command::new(&bins.coordinator)
            .args([
                "up",
                "--run-once",
                "--listen",
                "127.0.0.1:0",
                "--monitor",
                &monitor,
            ])
            .args(["--docker-host", engine.host(), "--data-dir"])
            .arg(&data)
            .output()?;
        let wall = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && !stdout.contains("updated"),
            "up --run-once: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((wall, children_cpu().saturating_sub(cpu_before)))
    };
    // The first run creates the PKI and the store.
    run_once()?;
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..runs {
        let (wall, cpu) = run_once()?;
        walls.push(wall);
        cpus.push(cpu);
    }
    let size = std::fs::metadata(&bins.coordinator)?.len();
    println!(
        "binary {} ({:.1} MB)",
        bins.coordinator.display(),
        size as f64 / 1e6
    );
    println!(
        "idle up --run-once, {containers} containers, {runs} runs: wall median {:.0} ms \
         (min {:.0}, max {:.0}), CPU mean {:.1} ms",
        median(walls.clone()).as_secs_f64() * 1000.0,
        walls.iter().min().unwrap().as_secs_f64() * 1000.0,
        walls.iter().max().unwrap().as_secs_f64() * 1000.0,
        // Ticks are 10 ms: the mean over all runs is finer than any one run.
        cpus.iter().sum::<Duration>().as_secs_f64() * 1000.0 / runs as f64,
    );
    Ok(())
}
