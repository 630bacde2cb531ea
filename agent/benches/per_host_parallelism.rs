//! How long one host takes to update many containers without healthchecks, one at a time and
//! several at once (`--max-containers-in-flight`), and what that does to each container.
//!
//! `cargo bench -p ouroboros-agent --bench per_host_parallelism` (needs a Docker engine).
//!
//! `BENCH_CONTAINERS` (default 30) containers of a local image without a healthcheck run on
//! the engine; for each parallelism in `BENCH_PARALLELISM` (default `1,5,10`) every one of them
//! is recreated on the other of two local images (no pull) through one `CommandRunner`, the
//! way the coordinator sends them: at most N commands in flight, the next one sent as soon as
//! one is answered. The agent's default health gate applies: a container without a healthcheck
//! must run 10 s without a restart, and that window is what parallel updates share.
//!
//! Per setting it prints the wall time and, from the engine's own events (their nanosecond
//! timestamps), per container:
//! - down: from the old container's exit (`die`) to the new one's `start`: no container of it
//!   runs;
//! - old+new overlap: from the new container's `create` to the old one's `destroy`: both exist
//!   (the old one stopped, kept for a rollback while the new one is watched);
//!
//! each as median and maximum, with the most containers in that state at the same moment.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use ouroboros_agent::commands::CommandRunner;
use ouroboros_agent::engine::{DockerEndpoint, Engine as AgentEngine};
use ouroboros_agent::recreate::executor::{Deadlines, Recreator};
use ouroboros_agent::recreate::journal::Journal;
use ouroboros_proto::v1 as pb;
use ouroboros_tests::{Cleanup, ImageSpec, require_engine, unique_name};
use tokio::sync::{Semaphore, mpsc};

/// One container's update, from the engine's events (ns since the epoch).
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    old_die: i64,
    old_destroy: i64,
    new_create: i64,
    new_start: i64,
}

impl Times {
    fn down(&self) -> (i64, i64) {
        (self.old_die, self.new_start)
    }

    fn both(&self) -> (i64, i64) {
        (self.new_create, self.old_destroy)
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// The engine's time format for `since`: seconds with nanoseconds.
fn engine_time(ns: i64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// Median and maximum of `spans` (ns), in seconds.
fn median_max(spans: &mut [i64]) -> (f64, f64) {
    spans.sort();
    let s = |ns: i64| ns as f64 / 1e9;
    (
        s(spans[spans.len() / 2]),
        s(spans.last().copied().unwrap_or_default()),
    )
}

/// The most intervals open at the same moment.
fn peak(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|(from, to)| [(*from, 1), (*to, -1)])
        .collect();
    // An interval that ends when another begins does not overlap it.
    edges.sort();
    let (mut open, mut most) = (0_i32, 0_i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    most as usize
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(engine) = require_engine() else {
        return Ok(());
    };
    let containers: usize = env_or("BENCH_CONTAINERS", 30);
    let settings: Vec<usize> = std::env::var("BENCH_PARALLELISM")
        .unwrap_or_else(|_| "1,5,10".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let cleanup = Cleanup::new(&engine);
    let no_check = &["HEALTHCHECK NONE"];
    let images = [
        cleanup.build_image(
            &format!("{}:a", unique_name("bench-par")),
            ImageSpec::new(1).with_config(no_check),
        )?,
        cleanup.build_image(
            &format!("{}:b", unique_name("bench-par")),
            ImageSpec::new(2).with_config(no_check),
        )?,
    ];
    let marker = unique_name("bench-par-run");
    let label = format!("com.ouroboros.bench={marker}");
    let mut names = Vec::new();
    for i in 0..containers {
        names.push(cleanup.run_container(
            &format!("bench-par-{i}"),
            &["--network", "none", "--label", &label],
            &images[0],
            &[],
        )?);
    }
    let endpoint = DockerEndpoint::new(engine.host(), false, None).map_err(anyhow::Error::msg)?;
    let agent_engine = AgentEngine::connect(&endpoint).await?;
    let docker = agent_engine.docker().clone();
    let journal_dir = tempfile::Builder::new()
        .prefix("ouroboros-bench-journal-")
        .tempdir()?;
    let recreator = Recreator::new(
        &agent_engine,
        Journal::open(journal_dir.path())?,
        Deadlines::default(),
        None,
    );
    let runner = CommandRunner::new(recreator, agent_engine.clone(), None, None);

    println!(
        "{containers} containers without a healthcheck on one host, the agent's default gate (10 s running); no pull"
    );
    println!(
        "down: old container exited -> new one started; old+new overlap: new one created -> old one removed"
    );
    println!(
        "{:>11} | {:>9} | {:>21} | {:>10} | {:>21} | {:>10}",
        "parallelism",
        "wall",
        "down median / max",
        "down peak",
        "old+new median / max",
        "both peak"
    );
    for (round, &parallelism) in settings.iter().enumerate() {
        let image = images[(round + 1) % 2].clone();
        let old_ids: Vec<String> = names
            .iter()
            .map(|n| engine.inspect(n, "{{.Id}}"))
            .collect::<anyhow::Result<_>>()?;
        // What the engine sees meanwhile, followed live (it replays only its last few hundred
        // events to a late reader).
        let seen: Arc<Mutex<HashMap<String, Times>>> = Arc::default();
        let follower = {
            let (docker, seen, label) = (docker.clone(), seen.clone(), label.clone());
            let since = engine_time(now_ns());
            tokio::spawn(async move {
                let filters =
                    HashMap::from([("type", vec!["container"]), ("label", vec![label.as_str()])]);
                let options = EventsOptionsBuilder::new()
                    .since(&since)
                    .filters(&filters)
                    .build();
                let mut events = docker.events(Some(options));
                while let Some(Ok(event)) = events.next().await {
                    let (Some(action), Some(id), Some(at)) = (
                        event.action.as_deref(),
                        event.actor.as_ref().and_then(|a| a.id.clone()),
                        event.time_nano,
                    ) else {
                        continue;
                    };
                    let mut seen = seen.lock().unwrap();
                    let times = seen.entry(id).or_default();
                    match action {
                        "die" => times.old_die = at,
                        "destroy" => times.old_destroy = at,
                        "create" => times.new_create = at,
                        "start" => times.new_start = at,
                        _ => {}
                    }
                }
            })
        };
        let started = Instant::now();
        let (tx, mut rx) = mpsc::channel::<pb::AgentMessage>(4096);
        let slots = Arc::new(Semaphore::new(parallelism));
        let mut tasks = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let command = pb::Recreate {
                op_id: format!("{marker}-{round}-{i}"),
                container: name.clone(),
                image: image.clone(),
                ..Default::default()
            };
            let (runner, tx, slots) = (runner.clone(), tx.clone(), slots.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                runner.recreate(command, tx).await;
            }));
        }
        drop(tx);
        let mut new_ids: HashMap<String, String> = HashMap::new();
        while let Some(message) = rx.recv().await {
            if let Some(pb::agent_message::Kind::Result(r)) = message.kind {
                let result = r.recreate.unwrap_or_default();
                anyhow::ensure!(
                    result.status() == pb::recreate_result::Status::Updated,
                    "{}: {result:?}",
                    r.op_id
                );
                new_ids.insert(r.op_id, result.new_id);
            }
        }
        let wall = started.elapsed();
        for task in tasks {
            task.await?;
        }
        anyhow::ensure!(new_ids.len() == containers, "{} answers", new_ids.len());

        // Every container's four events, once the engine has sent them.
        let unit = |i: usize, seen: &HashMap<String, Times>| {
            let new = &new_ids[&format!("{marker}-{round}-{i}")];
            let (o, n) = (
                seen.get(&old_ids[i]).copied().unwrap_or_default(),
                seen.get(new).copied().unwrap_or_default(),
            );
            let t = Times {
                old_die: o.old_die,
                old_destroy: o.old_destroy,
                new_create: n.new_create,
                new_start: n.new_start,
            };
            (t.old_die > 0 && t.old_destroy > 0 && t.new_create > 0 && t.new_start > 0).then_some(t)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let units: Vec<Times> = loop {
            let found: Option<Vec<Times>> = {
                let seen = seen.lock().unwrap();
                (0..containers).map(|i| unit(i, &seen)).collect()
            };
            match found {
                Some(units) => break units,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                None => anyhow::bail!("the engine's events of some containers never came"),
            }
        };
        follower.abort();
        let downs: Vec<(i64, i64)> = units.iter().map(Times::down).collect();
        let boths: Vec<(i64, i64)> = units.iter().map(Times::both).collect();
        let (down_median, down_max) =
            median_max(&mut downs.iter().map(|(a, b)| b - a).collect::<Vec<_>>());
        let (both_median, both_max) =
            median_max(&mut boths.iter().map(|(a, b)| b - a).collect::<Vec<_>>());
        println!(
            "{:>11} | {:>8.1}s | {:>8.2}s / {:>8.2}s | {:>10} | {:>8.2}s / {:>8.2}s | {:>10}",
            parallelism,
            wall.as_secs_f64(),
            down_median,
            down_max,
            peak(&downs),
            both_median,
            both_max,
            peak(&boths)
        );
    }
    Ok(())
}
