//! The counters as the store keeps them (the `metrics` setting), so that they survive
//! restarts: read back into the registry's counters at start, written when they changed. The
//! stored form is the one earlier versions wrote: each series keyed by its label values
//! joined with tabs, in the family's label order.

use std::collections::BTreeMap;

use prometheus::IntCounterVec;
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

/// Counters, kept across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// `host\toutcome` → count.
    pub updates: BTreeMap<String, u64>,
    pub rollbacks: u64,
    /// `registry\tmethod\tcode` → count.
    pub registry_requests: BTreeMap<String, u64>,
    /// `scheme\toutcome` → count.
    pub notifications: BTreeMap<String, u64>,
    /// `host\tcontainer\toutcome` → count (per-container series).
    pub container_updates: BTreeMap<String, u64>,
    /// `point\toutcome` → count.
    #[serde(default)]
    pub hook_runs: BTreeMap<String, u64>,
}

/// The series of `vec` (labelled `labels`, in that order) as stored: key → count.
pub(crate) fn stored(vec: &IntCounterVec, labels: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            // Label pairs come sorted by name: the key takes the family's order.
            let key: Vec<&str> = labels
                .iter()
                .map(|name| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == *name)
                        .map_or("", |pair| pair.value())
                })
                .collect();
            out.insert(key.join("\t"), metric.get_counter().get_value() as u64);
        }
    }
    out
}

/// Sets the series of `vec` (labelled `labels`) to the stored counts (others are dropped).
pub(crate) fn restore(vec: &IntCounterVec, labels: &[&str], stored: &BTreeMap<String, u64>) {
    vec.reset();
    for (key, count) in stored {
        let mut values: Vec<&str> = key.splitn(labels.len(), '\t').collect();
        // A key with fewer parts (hand-edited, say) still makes a series of this family.
        values.resize(labels.len(), "");
        if let Ok(counter) = vec.get_metric_with_label_values(&values) {
            counter.inc_by(*count);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    #[test]
    fn stored_keys_join_label_values_in_the_family_order() {
        let labels = ["registry", "method", "code"];
        let vec = IntCounterVec::new(Opts::new("t", "t"), &labels).unwrap();
        vec.with_label_values(&["reg.lan:5000", "HEAD", "200"])
            .inc_by(3);
        vec.with_label_values(&["ghcr.io", "GET", "0"]).inc();
        let counts = stored(&vec, &labels);
        assert_eq!(
            counts,
            BTreeMap::from([
                ("ghcr.io\tGET\t0".to_owned(), 1),
                ("reg.lan:5000\tHEAD\t200".to_owned(), 3),
            ])
        );
        let again = IntCounterVec::new(Opts::new("t", "t"), &labels).unwrap();
        again.with_label_values(&["dropped", "GET", "1"]).inc();
        let short = BTreeMap::from([("short".to_owned(), 2)]);
        restore(
            &again,
            &labels,
            &counts.clone().into_iter().chain(short).collect(),
        );
        assert_eq!(
            again
                .with_label_values(&["reg.lan:5000", "HEAD", "200"])
                .get(),
            3
        );
        assert_eq!(again.with_label_values(&["short", "", ""]).get(), 2);
        assert_eq!(stored(&again, &labels).len(), 3, "the old series is gone");
    }
}
