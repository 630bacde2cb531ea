//! The fleet simulator at a small size, as a correctness test (not timings): many agents over
//! real mTLS gRPC to the real coordinator, each update done once, one registry request per
//! unique tag, a coordinator crash that loses no rollout, and a store that stays bounded.

use std::time::Duration;

use ouroboros_tests::Binaries;
use ouroboros_tests::sim::{Config, run};
use serde_json::Value;

fn simulate(config: &Config) -> Value {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(config)).unwrap()
}

fn number(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {report}"))
}

#[test]
fn fifty_agents_update_every_container_once_with_one_registry_request_per_tag() {
    let bin = Binaries::get().unwrap().coordinator.clone();
    let mut config = Config::new(50, 20, 100, bin);
    config.rollout_share = 0.2;
    config.cycles = 5;
    config.tags_per_cycle = 5;
    config.churn = 0.1;
    config.disconnect_rate = 0.1;
    config.recreate = Duration::from_millis(50);
    config.max_hosts_in_flight = 10;
    // Two of a host's four targets at once (independent containers).
    config.max_containers_in_flight = 2;
    config.timeout = Duration::from_secs(120);
    let report = simulate(&config);
    eprintln!("{report}");

    // One HEAD per unique tag, for the whole fleet, in an idle cycle.
    assert_eq!(number(&report, "idle_cycle_registry_requests"), 100);
    assert_eq!(number(&report, "final_idle_cycle_registry_requests"), 100);
    // 20 tags moved: 10 containers each, all planned and all in the rollout.
    assert_eq!(number(&report, "plan_updates"), 200);
    assert_eq!(number(&report, "rollout_targets"), 200);
    // The rollout the coordinator crash interrupted went on from the store and completed.
    assert_eq!(report["resumed_rollout"], "completed");
    // Every update done once, none missing at the end (churn and disconnects included).
    assert_eq!(number(&report, "updates_applied_twice"), 0);
    assert_eq!(number(&report, "updates_missing"), 0);
    assert!(number(&report, "updates_applied") >= 400, "{report}");
    assert_eq!(report["final_skipped"], serde_json::json!({}));
}

#[test]
fn the_store_stays_bounded_across_a_thousand_cycles() {
    let bin = Binaries::get().unwrap().coordinator.clone();
    let mut config = Config::new(3, 4, 4, bin);
    config.cycles = 1000;
    config.tags_per_cycle = 1;
    config.restart = false;
    config.recreate = Duration::ZERO;
    // Short enough that pruning by age holds the store at its level (rollouts kept = retention
    // / cycle time) well before cycle 500 on any machine: with 20 s and cycles of 39 ms that
    // level came only at cycle 510, and the file's next doubling after the midpoint.
    config.history_retention = Some("2s".into());
    config.timeout = Duration::from_secs(120);
    let report = simulate(&config);
    eprintln!("{report}");

    // Every cycle moved a tag and made a rollout: 1000 of them, 3 updates each.
    assert_eq!(number(&report, "updates_applied_twice"), 0);
    assert_eq!(number(&report, "updates_missing"), 0);
    assert!(number(&report, "updates_applied") >= 3000, "{report}");
    // Only the last retention's worth is kept...
    let stored = number(&report, "rollouts_stored");
    assert!(stored < 600, "{stored} of 1000 rollouts still stored");
    // ...and the store stops growing: the second half of the run adds nothing beyond slack.
    let sizes: Vec<(u64, u64)> = report["store_bytes_by_cycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["cycle"].as_u64().unwrap(),
                s["store_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let at_half = sizes.iter().find(|(c, _)| *c == 500).unwrap().1;
    let last = number(&report, "store_bytes");
    assert!(
        last <= at_half + at_half / 4,
        "the store grew from {at_half} bytes at cycle 500 to {last} at cycle 1000: {sizes:?}"
    );
}
