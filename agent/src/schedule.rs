//! When the agent takes its next inventory: a small state machine, pure and tested here.
//!
//! Docker events come in bursts (a `docker compose up` is dozens). The first event of a burst
//! makes an inventory due [`DEBOUNCE`] after the last event of the burst, but never more than
//! [`DEBOUNCE_MAX`] after the first, so a never-ending burst still reports. Only one inventory
//! runs at a time; whatever happens while it runs makes one more due after it. A failed
//! inventory is retried after [`RETRY`].

use std::time::Duration;

use tokio::time::Instant;

/// Quiet time after a Docker event before the inventory is taken.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a burst of events can hold back the inventory.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// Wait before retrying a failed inventory.
pub const RETRY: Duration = Duration::from_secs(1);

/// The inventory schedule of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventorySchedule {
    /// (first event of the burst, quiet deadline) while an inventory is due.
    pending: Option<(Instant, Instant)>,
    running: bool,
}

impl InventorySchedule {
    /// A new session: the first inventory is due at once.
    pub fn new(now: Instant) -> Self {
        Self {
            pending: Some((now, now)),
            running: false,
        }
    }

    /// A Docker event that can change the inventory.
    pub fn event(&mut self, now: Instant) {
        let first = self.pending.map_or(now, |(first, _)| first);
        self.pending = Some((first, now + DEBOUNCE));
    }

    /// An inventory is wanted now (coordinator's `Refresh`, periodic resync, event stream
    /// restarted).
    pub fn due_now(&mut self, now: Instant) {
        self.pending = Some((now, now));
    }

    /// When the next inventory should start; `None` while one runs or none is due.
    pub fn next_start(&self) -> Option<Instant> {
        if self.running {
            return None;
        }
        self.pending
            .map(|(first, quiet)| quiet.min(first + DEBOUNCE_MAX))
    }

    /// An inventory was started.
    pub fn started(&mut self) {
        self.pending = None;
        self.running = true;
    }

    /// The running inventory ended; a failed one is retried after [`RETRY`] (unless events
    /// already made another one due).
    pub fn finished(&mut self, ok: bool, now: Instant) {
        self.running = false;
        if !ok && self.pending.is_none() {
            let retry = now + RETRY;
            self.pending = Some((retry, retry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_inventory_is_due_at_once() {
        let t0 = Instant::now();
        let s = InventorySchedule::new(t0);
        assert_eq!(s.next_start(), Some(t0));
    }

    #[test]
    fn a_burst_of_events_makes_one_inventory_after_it_is_quiet() {
        let t0 = Instant::now();
        let mut s = InventorySchedule::new(t0);
        s.started();
        s.finished(true, t0);
        assert_eq!(s.next_start(), None);
        for i in 0..5 {
            s.event(t0 + ms(100 * i));
        }
        assert_eq!(s.next_start(), Some(t0 + ms(400) + DEBOUNCE));
    }

    #[test]
    fn an_endless_burst_still_reports_after_the_maximum_delay() {
        let t0 = Instant::now();
        let mut s = InventorySchedule::new(t0);
        s.started();
        s.finished(true, t0);
        for i in 0..100 {
            s.event(t0 + ms(50 * i));
        }
        assert_eq!(s.next_start(), Some(t0 + DEBOUNCE_MAX));
    }

    #[test]
    fn events_during_an_inventory_make_exactly_one_more_after_it() {
        let t0 = Instant::now();
        let mut s = InventorySchedule::new(t0);
        s.started();
        s.event(t0 + ms(10));
        s.event(t0 + ms(20));
        assert_eq!(
            s.next_start(),
            None,
            "a second inventory started while one runs"
        );
        s.finished(true, t0 + ms(500));
        assert_eq!(s.next_start(), Some(t0 + ms(20) + DEBOUNCE));
        s.started();
        s.finished(true, t0 + ms(900));
        assert_eq!(s.next_start(), None);
    }

    #[test]
    fn a_failed_inventory_is_retried() {
        let t0 = Instant::now();
        let mut s = InventorySchedule::new(t0);
        s.started();
        s.finished(false, t0 + ms(100));
        assert_eq!(s.next_start(), Some(t0 + ms(100) + RETRY));
    }

    #[test]
    fn refresh_makes_an_inventory_due_now() {
        let t0 = Instant::now();
        let mut s = InventorySchedule::new(t0);
        s.started();
        s.finished(true, t0);
        s.event(t0 + ms(10));
        s.due_now(t0 + ms(20));
        assert_eq!(s.next_start(), Some(t0 + ms(20)));
    }
}
