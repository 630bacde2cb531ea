//! The registry's figures: names, types and labels as exported, the text format against what
//! the hand-written renderer printed before (`../fixtures/*.prom`), the InfluxDB points
//! against what it wrote (`../fixtures/*.influx`), per-container filtering, restarts.

use std::collections::{BTreeMap, BTreeSet};

use ouroboros_tests::exposition::{self, Sample};

use super::*;
use crate::telemetry::export::line_protocol;

/// A fleet view: container names by host.
fn view(hosts: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    hosts
        .iter()
        .map(|(h, names)| {
            let names = names.iter().map(|n| (*n).to_owned()).collect();
            ((*h).to_owned(), names)
        })
        .collect()
}

fn metrics(per_container: bool) -> Metrics {
    Metrics::new(per_container).unwrap()
}

/// The samples of `family` (its histogram's `_bucket`, `_sum` and `_count` not included).
fn samples(text: &str, family: &str) -> Vec<Sample> {
    exposition::samples(text)
        .into_iter()
        .filter(|s| s.name == family)
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The host name with characters both formats escape.
const ODD: &str = "odd \"h\",x=y z";

/// Every family with samples, label values that need escaping in both formats, a
/// per-container update of a container the view does not have, and a second cycle; with the
/// fleet view it is rendered for. The same as the fixtures were recorded with.
fn busy() -> (Metrics, FleetFigures) {
    let m = metrics(true);
    for (host, container, outcome) in [
        ("web-01", "shop", "updated"),
        ("web-01", "shop", "updated"),
        ("web-01", "cart", "reverted"),
        ("db-01", "pg", "rolled-back"),
        ("web-01", "gone", "error"),
        (ODD, "c\\d", "updated"),
    ] {
        m.update_done(host, container, outcome);
    }
    for (registry, method, code) in [
        ("registry.lan:5000", "HEAD", 200),
        ("registry.lan:5000", "HEAD", 200),
        ("registry.lan:5000", "GET", 200),
        ("ghcr.io", "GET", 401),
        ("docker.io", "HEAD", 0),
    ] {
        m.registry_request(registry, method, code);
    }
    for seconds in [0.02, 0.3, 7.0] {
        m.probe(seconds);
    }
    m.ratelimit("docker.io", "99;w=21600");
    m.ratelimit("ghcr.io", "12.5");
    m.ratelimit("quay.io", "not a number");
    m.notification("ntfy", "sent");
    m.notification("ntfy", "sent");
    m.notification("smtp", "failed");
    m.hook_run("before_update", "ok");
    m.hook_run("before_update", "ok");
    m.hook_run("before_update", "failed");
    m.cycle(
        1.5,
        1_764_000_000.0,
        BTreeMap::from([("web-01".into(), 3)]),
        2,
    );
    m.cycle(
        42.25,
        1_764_000_300.5,
        BTreeMap::from([("web-01".into(), 2), ("db-01".into(), 1), (ODD.into(), 1)]),
        1,
    );
    let fleet = FleetFigures {
        host_connected: BTreeMap::from([
            ("web-01".into(), true),
            ("db-01".into(), false),
            (ODD.into(), true),
        ]),
        containers: view(&[
            ("web-01", &["shop", "cart"]),
            ("db-01", &["pg"]),
            (ODD, &["c\\d"]),
        ]),
        rollouts: BTreeMap::from([("completed".into(), 4), ("paused".into(), 1)]),
    };
    (m, fleet)
}

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/telemetry/fixtures")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// `text` cut into families: the `# HELP` and `# TYPE` lines of each, and its samples as a
/// set (their order, and the order of labels in them, means nothing to Prometheus).
fn families(text: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") {
            out.push((vec![line.to_owned()], Vec::new()));
        } else if let Some((head, samples)) = out.last_mut() {
            if line.starts_with('#') {
                head.push(line.to_owned());
            } else {
                samples.extend(exposition::samples(line).iter().map(|s| format!("{s:?}")));
            }
        }
    }
    for (_, samples) in &mut out {
        samples.sort();
    }
    out
}

#[test]
fn the_exposition_has_the_families_samples_and_help_texts_it_had_before() {
    let fresh = metrics(true).render(&FleetFigures::default()).unwrap();
    assert_eq!(
        families(&fresh),
        families(&fixture("fresh.prom")),
        "{fresh}"
    );
    let (m, fleet) = busy();
    let busy = m.render(&fleet).unwrap();
    assert_eq!(families(&busy), families(&fixture("busy.prom")), "{busy}");
    // Only label order moved (the prometheus crate sorts labels by name).
    assert_eq!(busy.lines().count(), fixture("busy.prom").lines().count());
}

#[test]
fn the_influxdb_points_are_the_ones_written_before() {
    let at = 1_764_000_000_000_000_000;
    let fresh = metrics(true).gather(&FleetFigures::default());
    assert_eq!(line_protocol(&fresh, at), fixture("fresh.influx"));
    let (m, fleet) = busy();
    assert_eq!(line_protocol(&m.gather(&fleet), at), fixture("busy.influx"));
}

/// Fails when a name, type or label name changes: dashboards, alert rules and stored
/// queries depend on them. Written out here on purpose, not taken from `families.rs`.
#[test]
fn every_family_keeps_its_name_type_and_label_names() {
    let expected: BTreeSet<(&str, &str, Vec<&str>)> = [
        ("ouroboros_agents_connected", "gauge", vec![]),
        ("ouroboros_hosts", "gauge", vec![]),
        ("ouroboros_host_connected", "gauge", vec!["host"]),
        ("ouroboros_containers_monitored", "gauge", vec!["host"]),
        ("ouroboros_updates_available", "gauge", vec![]),
        (
            "ouroboros_updates_total",
            "counter",
            vec!["host", "outcome"],
        ),
        (
            "ouroboros_container_updates_total",
            "counter",
            vec!["container", "host", "outcome"],
        ),
        ("ouroboros_rollbacks_total", "counter", vec![]),
        (
            "ouroboros_registry_requests_total",
            "counter",
            vec!["code", "method", "registry"],
        ),
        ("ouroboros_registry_probe_seconds", "histogram", vec![]),
        (
            "ouroboros_registry_ratelimit_remaining",
            "gauge",
            vec!["registry"],
        ),
        ("ouroboros_cycle_seconds", "histogram", vec![]),
        ("ouroboros_last_cycle_timestamp_seconds", "gauge", vec![]),
        ("ouroboros_rollouts", "gauge", vec!["state"]),
        (
            "ouroboros_notifications_total",
            "counter",
            vec!["outcome", "scheme"],
        ),
        (
            "ouroboros_hook_runs_total",
            "counter",
            vec!["outcome", "point"],
        ),
    ]
    .into_iter()
    .collect();
    let (m, fleet) = busy();
    let gathered = m.gather(&fleet);
    let found: BTreeSet<(&str, &str, Vec<&str>)> = gathered
        .iter()
        .map(|f| {
            let declared = ALL.iter().find(|d| d.name == f.name()).unwrap();
            assert_eq!(declared.kind, f.get_field_type(), "{}", f.name());
            assert_eq!(declared.help, f.help(), "{}", f.name());
            let names: BTreeSet<&str> = f
                .get_metric()
                .iter()
                .flat_map(|m| m.get_label().iter().map(|l| l.name()))
                .collect();
            (
                declared.name,
                declared.kind_name(),
                names.into_iter().collect(),
            )
        })
        .collect();
    assert_eq!(found, expected);
    assert_eq!(ALL.len(), expected.len());
    // Each family's declared labels are the ones its samples carry.
    for family in &ALL {
        let mut declared: Vec<&str> = family.labels.to_vec();
        declared.sort_unstable();
        assert!(
            expected
                .iter()
                .any(|(n, _, l)| *n == family.name && *l == declared),
            "{family:?}"
        );
    }
}

#[test]
fn per_container_series_exist_only_for_containers_the_fleet_view_has() {
    let m = metrics(true);
    m.update_done("web-01", "shop", "updated");
    m.update_done("web-01", "nope", "error");
    // A name of another host's container.
    m.update_done("db-01", "shop", "error");
    // A host the view does not have.
    m.update_done("gone-01", "shop", "updated");
    let mut fleet = FleetFigures {
        host_connected: BTreeMap::from([("web-01".into(), true), ("db-01".into(), true)]),
        containers: view(&[("web-01", &["shop"]), ("db-01", &["pg"])]),
        ..FleetFigures::default()
    };
    let text = m.render(&fleet).unwrap();
    let shop = labels(&[
        ("host", "web-01"),
        ("container", "shop"),
        ("outcome", "updated"),
    ]);
    let series = samples(&text, "ouroboros_container_updates_total");
    assert_eq!(series.len(), 1, "{text}");
    assert_eq!((&series[0].labels, series[0].value), (&shop, 1.0));
    // The updates themselves are still counted by host, and all of it is stored.
    let errors = [("host", "web-01"), ("outcome", "error")];
    assert_eq!(
        exposition::value(&text, "ouroboros_updates_total", &errors),
        Some(1.0),
        "{text}"
    );
    let stored = m.take_dirty().unwrap();
    assert_eq!(stored.container_updates.len(), 4, "{stored:?}");
    assert_eq!(stored.updates.values().sum::<u64>(), 4);

    // Out of the view (set aside during a recreate, say), the series is not exported; back
    // in it, the series goes on from its stored count, after a restart too.
    fleet.containers = view(&[("web-01", &[]), ("db-01", &["pg"])]);
    let text = m.render(&fleet).unwrap();
    assert!(
        samples(&text, "ouroboros_container_updates_total").is_empty(),
        "{text}"
    );
    m.update_done("web-01", "shop", "updated");
    let restarted = metrics(true);
    restarted.restore(&m.take_dirty().unwrap());
    fleet.containers = view(&[("web-01", &["shop"]), ("db-01", &["pg"])]);
    let text = restarted.render(&fleet).unwrap();
    let series = samples(&text, "ouroboros_container_updates_total");
    assert_eq!(series.len(), 1, "{text}");
    assert_eq!((&series[0].labels, series[0].value), (&shop, 2.0));
}

#[test]
fn every_known_host_has_a_connected_gauge_and_nothing_else_does() {
    let m = metrics(true);
    // Figures of a host the fleet does not know make no host_connected series.
    m.update_done("gone-01", "shop", "updated");
    let fleet = FleetFigures {
        host_connected: BTreeMap::from([
            ("a".into(), true),
            ("b".into(), false),
            ("c\"d".into(), false),
        ]),
        ..FleetFigures::default()
    };
    let text = m.render(&fleet).unwrap();
    let connected: Vec<(String, f64)> = samples(&text, "ouroboros_host_connected")
        .into_iter()
        .map(|s| (s.labels["host"].clone(), s.value))
        .collect();
    assert_eq!(
        connected,
        [("a".into(), 1.0), ("b".into(), 0.0), ("c\"d".into(), 0.0)],
        "{text}"
    );
    assert!(
        text.contains("ouroboros_host_connected{host=\"c\\\"d\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("ouroboros_agents_connected 1\n"), "{text}");
    assert!(text.contains("ouroboros_hosts 3\n"), "{text}");
    let points = line_protocol(&m.gather(&fleet), 7);
    for needle in [
        "ouroboros_fleet agents_connected=1i,hosts=3i,",
        "ouroboros_host_connected,host=a value=1i 7\n",
        "ouroboros_host_connected,host=b value=0i 7\n",
    ] {
        assert!(points.contains(needle), "missing {needle:?} in:\n{points}");
    }
    assert!(
        !points.contains("ouroboros_host_connected,host=gone-01"),
        "{points}"
    );

    // No hosts any more: the family is declared and has no samples.
    let text = m.render(&FleetFigures::default()).unwrap();
    assert!(
        text.contains("# TYPE ouroboros_host_connected gauge\n"),
        "{text}"
    );
    assert!(
        samples(&text, "ouroboros_host_connected").is_empty(),
        "{text}"
    );
    assert!(text.contains("ouroboros_hosts 0\n"), "{text}");
}

#[test]
fn per_container_series_off_are_neither_counted_nor_declared() {
    let m = metrics(false);
    m.update_done("web-01", "cart", "updated");
    let fleet = FleetFigures {
        containers: view(&[("web-01", &["cart"])]),
        ..FleetFigures::default()
    };
    let text = m.render(&fleet).unwrap();
    assert!(
        !text.contains("ouroboros_container_updates_total"),
        "{text}"
    );
    assert!(m.declared().all(|f| f.name != CONTAINER_UPDATES_TOTAL.name));
    let counters = m.take_dirty().unwrap();
    assert!(counters.container_updates.is_empty(), "{counters:?}");
    assert_eq!(counters.updates.len(), 1);
    // Stored per-container counts are kept (and stored again) while off.
    let kept = Counters {
        container_updates: BTreeMap::from([("web-01\tcart\tupdated".into(), 3)]),
        ..counters
    };
    m.restore(&kept);
    assert!(
        m.take_dirty().is_none(),
        "nothing changed since the restore"
    );
    m.notification("ntfy", "sent");
    assert_eq!(
        m.take_dirty().unwrap().container_updates,
        kept.container_updates
    );
}

#[test]
fn counters_go_to_the_store_and_come_back() {
    let (m, _) = busy();
    let counters = m.take_dirty().unwrap();
    assert!(m.take_dirty().is_none(), "nothing changed since");
    // Gauges and histograms are not counters: probes and cycles change nothing stored.
    m.probe(0.1);
    m.ratelimit("docker.io", "3");
    assert!(m.take_dirty().is_none());
    assert_eq!(counters.rollbacks, 2);
    assert_eq!(counters.updates["web-01\tupdated"], 2);
    assert_eq!(
        counters.registry_requests["registry.lan:5000\tHEAD\t200"],
        2
    );
    assert_eq!(counters.notifications["ntfy\tsent"], 2);
    assert_eq!(
        counters.container_updates[&format!("{ODD}\tc\\d\tupdated")],
        1
    );
    // As JSON, in the form earlier versions stored.
    let json = serde_json::to_value(&counters).unwrap();
    assert_eq!(json["updates"]["db-01\trolled-back"], 1, "{json}");
    let restored = metrics(true);
    restored.restore(&serde_json::from_value(json).unwrap());
    restored.update_done("web-01", "shop", "updated");
    let again = restored.take_dirty().unwrap();
    assert_eq!(again.updates["web-01\tupdated"], 3);
    assert_eq!(
        Counters {
            updates: counters.updates.clone(),
            container_updates: counters.container_updates.clone(),
            ..again.clone()
        },
        counters
    );
}
