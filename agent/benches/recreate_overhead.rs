//! What the safe recreate costs above the Docker calls it cannot avoid.
//!
//! `cargo bench -p ouroboros-agent --bench recreate_overhead` (needs a Docker engine).
//!
//! For the same container, alternately between two local images (no pull, no healthcheck,
//! minimum running time 0, so the health gate is a single inspect):
//! - raw: stop, rename aside, create, start, remove old, straight through bollard;
//! - recreate: `Recreator::recreate` (inspect, derive, journal writes with fsync, the same
//!   Docker calls, the health gate's inspect, the look at every container of the host for
//!   dependants).
//!
//! `BENCH_BYSTANDERS` (default 20) other containers run on the engine meanwhile, as on a real
//! host: the dependant lookup inspects each of them.
//!
//! Prints per-iteration medians and means of both and their difference.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use ouroboros_agent::engine::{DockerEndpoint, Engine as AgentEngine};
use ouroboros_agent::recreate::executor::{Deadlines, Recreator, Request};
use ouroboros_agent::recreate::journal::{Journal, Outcome};
use ouroboros_tests::{Cleanup, ImageSpec, require_engine, unique_name};

const ITERATIONS: usize = 20;

fn stats(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap_or(1);
    (median, mean)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let cleanup = Cleanup::new(&engine);
    let images = [
        cleanup.build_image(&format!("{}:a", unique_name("bench")), ImageSpec::new(1))?,
        cleanup.build_image(&format!("{}:b", unique_name("bench")), ImageSpec::new(2))?,
    ];
    let endpoint = DockerEndpoint::new(engine.host(), false, None).map_err(anyhow::Error::msg)?;
    let agent_engine = AgentEngine::connect(&endpoint).await?;
    let docker = agent_engine.docker().clone();
    let journal_dir = tempfile::Builder::new()
        .prefix("ouroboros-bench-journal-")
        .tempdir()?;
    let recreator = Recreator::new(
        &agent_engine,
        Journal::open(journal_dir.path())?,
        Deadlines {
            min_running: Duration::ZERO,
            ..Deadlines::default()
        },
        None,
    );
    let run_args = ["--network", "none", "--no-healthcheck"];
    let bystanders: usize = std::env::var("BENCH_BYSTANDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for _ in 0..bystanders {
        cleanup.run_container("bench-bystander", &run_args, &images[0], &[])?;
    }

    // Raw Docker calls.
    let raw_name = cleanup.run_container("bench-raw", &run_args, &images[0], &[])?;
    let mut current = engine.inspect(&raw_name, "{{.Id}}")?;
    let mut raw = Vec::new();
    for i in 0..ITERATIONS {
        let image = &images[(i + 1) % 2];
        let start = Instant::now();
        docker
            .stop_container(&current, Some(StopContainerOptionsBuilder::new().build()))
            .await?;
        let aside = format!("{raw_name}-aside");
        docker
            .rename_container(
                &current,
                RenameContainerOptionsBuilder::new().name(&aside).build(),
            )
            .await?;
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&raw_name).build()),
                ContainerCreateBody {
                    image: Some(image.clone()),
                    labels: Some([("com.ouroboros.test".to_owned(), "1".to_owned())].into()),
                    host_config: Some(bollard::models::HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await?;
        docker.start_container(&created.id, None).await?;
        docker
            .remove_container(
                &current,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await?;
        raw.push(start.elapsed());
        current = created.id;
    }

    // The same through the recreate sequence.
    let name = cleanup.run_container("bench-recreate", &run_args, &images[0], &[])?;
    let mut recreate = Vec::new();
    for i in 0..ITERATIONS {
        let image_id = engine.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &images[(i + 1) % 2],
        ])?;
        let request = Request {
            op_id: format!("bench-{i}"),
            container: name.clone(),
            image: Some(image_id),
            ..Request::default()
        };
        let start = Instant::now();
        let outcome = recreator.recreate(&request).await?;
        recreate.push(start.elapsed());
        anyhow::ensure!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
    }

    let (raw_median, raw_mean) = stats(&mut raw);
    let (re_median, re_mean) = stats(&mut recreate);
    println!("iterations: {ITERATIONS}, other containers on the host: {bystanders}");
    println!("raw docker calls   median {raw_median:>10.1?}  mean {raw_mean:>10.1?}");
    println!("safe recreate      median {re_median:>10.1?}  mean {re_mean:>10.1?}");
    println!(
        "overhead           median {:>10.1?}  mean {:>10.1?}",
        re_median.saturating_sub(raw_median),
        re_mean.saturating_sub(raw_mean)
    );
    Ok(())
}
