//! Names for everything a test creates: unique, recognisable, and labelled.
//!
//! Every container, network, volume, image repository and temporary directory a test makes is
//! named by [`unique_name`], so that neither a user's objects nor the objects of another test
//! (a parallel thread, or a parallel nextest process) can collide with it. The common
//! [`NAME_MARKER`] lets [`crate::Cleanup`] refuse to delete anything it did not name.

use std::sync::atomic::{AtomicU64, Ordering};

/// Label carried by every object the harness creates (`com.ouroboros.test=1`).
pub const TEST_LABEL: &str = "com.ouroboros.test";

/// `TEST_LABEL=1`, ready for `--label` and `--filter label=...`.
pub const TEST_LABEL_ARG: &str = "com.ouroboros.test=1";

/// Every name made by [`unique_name`] starts with this.
pub const NAME_MARKER: &str = "ouroboros-test-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `ouroboros-test-{prefix}-{pid}-{counter}-{random}`.
///
/// The prefix is lower-cased and every character outside `[a-z0-9-]` becomes `-`, so the result
/// is valid as a container name, a network or volume name and an image repository component.
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{NAME_MARKER}{prefix}-{}-{counter}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_docker_safe() {
        let a = unique_name("Web_App");
        let b = unique_name("Web_App");
        assert_ne!(a, b);
        assert!(a.starts_with("ouroboros-test-web-app-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
    }
}
