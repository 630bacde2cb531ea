//! What the operations in flight hold, so that several can run at once on one host: each
//! claims its op id and every container it may touch (the container, its soft dependants, the
//! dependants it recreates, by name and id) before it changes anything, and two operations
//! never hold the same container. The coordinator sends only independent containers of a host
//! together; this holds even if it did not. The claim also carries the operation's hook gate
//! (see [`super::gate`]), and recovery skips the operations that are still running.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::gate::HookGate;

/// The claims of the operations in flight on one engine.
#[derive(Default)]
pub(crate) struct Claims {
    held: Mutex<Held>,
    released: Notify,
}

#[derive(Default)]
struct Held {
    /// Operations in flight, with where their hook points are asked.
    ops: BTreeMap<String, Option<Arc<dyn HookGate>>>,
    /// Container name or id → the operation holding it.
    containers: BTreeMap<String, String>,
}

/// An operation's hold on its op id and containers, given back when dropped.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    op_id: String,
    containers: Vec<String>,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `op_id` as soon as no other operation runs under it (a repeated op id waits for
    /// the first to end, and then finds its outcome in the journal).
    pub(crate) async fn wait_for(&self, op_id: &str, gate: Option<Arc<dyn HookGate>>) -> Claim<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(claim) = self.try_claim(op_id, Vec::new(), gate.clone()) {
                return claim;
            }
            released.await;
        }
    }

    /// Holds `op_id` and `containers` if no other operation holds any of them now.
    pub(crate) fn try_claim(
        &self,
        op_id: &str,
        mut containers: Vec<String>,
        gate: Option<Arc<dyn HookGate>>,
    ) -> Option<Claim<'_>> {
        containers.retain(|c| !c.is_empty());
        containers.sort();
        containers.dedup();
        let mut held = self.lock();
        if held.ops.contains_key(op_id)
            || containers.iter().any(|c| held.containers.contains_key(c))
        {
            return None;
        }
        held.ops.insert(op_id.to_owned(), gate);
        for c in &containers {
            held.containers.insert(c.clone(), op_id.to_owned());
        }
        Some(Claim {
            claims: self,
            op_id: op_id.to_owned(),
            containers,
        })
    }

    /// Whether operation `op_id` is in flight.
    pub(crate) fn is_active(&self, op_id: &str) -> bool {
        self.lock().ops.contains_key(op_id)
    }

    /// Where operation `op_id` asks at its hook points (nobody: `None`).
    pub(crate) fn gate(&self, op_id: &str) -> Option<Arc<dyn HookGate>> {
        self.lock().ops.get(op_id).cloned().flatten()
    }
}

impl Claim<'_> {
    /// Also holds `more` as soon as no other operation holds any of them.
    pub(crate) async fn wait_for(&mut self, more: &[String]) {
        loop {
            let released = self.claims.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.extend(more).is_ok() {
                return;
            }
            released.await;
        }
    }

    /// Also holds `more` (containers found after the claim), unless another operation holds one
    /// of them: then `Err` with that container and the operation, and nothing more is held.
    pub(crate) fn extend(&mut self, more: &[String]) -> Result<(), (String, String)> {
        let mut held = self.claims.lock();
        let new: Vec<&String> = more
            .iter()
            .filter(|c| !c.is_empty() && !self.containers.contains(c))
            .collect();
        for c in &new {
            if let Some(holder) = held.containers.get(*c).filter(|h| **h != self.op_id) {
                return Err(((*c).clone(), holder.clone()));
            }
        }
        for c in new {
            held.containers.insert(c.clone(), self.op_id.clone());
            self.containers.push(c.clone());
        }
        Ok(())
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        {
            let mut held = self.claims.lock();
            held.ops.remove(&self.op_id);
            for c in &self.containers {
                if held.containers.get(c) == Some(&self.op_id) {
                    held.containers.remove(c);
                }
            }
        }
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn operations_on_other_containers_run_and_one_on_a_held_container_waits() {
        let claims = Claims::default();
        let mut a = claims.wait_for("op-a", None).await;
        a.wait_for(&names(&["web", "proxy"])).await;
        let mut b = claims.wait_for("op-b", None).await;
        b.wait_for(&names(&["db"])).await;
        assert!(claims.is_active("op-a") && claims.is_active("op-b"));
        // The proxy is op-a's: op-c waits until op-a ends.
        let mut c = claims.wait_for("op-c", None).await;
        let containers = names(&["api", "proxy"]);
        {
            let waiting = c.wait_for(&containers);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                    .await
                    .is_err(),
                "op-c took the proxy beside op-a"
            );
            drop(a);
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("op-c still waits after op-a ended");
        }
        assert!(!claims.is_active("op-a"));
        assert!(claims.try_claim("op-d", names(&["api"]), None).is_none());
        // The same op id again waits for the first.
        let again = claims.wait_for("op-b", None);
        tokio::pin!(again);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut again)
                .await
                .is_err()
        );
        drop(b);
        let _again = tokio::time::timeout(Duration::from_secs(5), again)
            .await
            .expect("the repeated op id still waits");
        drop(c);
        assert!(
            claims
                .try_claim("op-e", names(&["db", "proxy"]), None)
                .is_some()
        );
    }

    #[test]
    fn containers_found_later_are_held_only_when_free() {
        let claims = Claims::default();
        let _other = claims.try_claim("op-1", names(&["sidecar"]), None).unwrap();
        let mut mine = claims.try_claim("op-2", names(&["app"]), None).unwrap();
        assert_eq!(
            mine.extend(&names(&["app-id", "sidecar"])),
            Err(("sidecar".into(), "op-1".into()))
        );
        // Nothing of a refused extension is held.
        assert!(claims.try_claim("op-3", names(&["app-id"]), None).is_some());
        assert_eq!(mine.extend(&names(&["app-id2", "app"])), Ok(()));
        drop(mine);
        assert!(
            claims
                .try_claim("op-4", names(&["app", "app-id2"]), None)
                .is_some()
        );
    }
}
