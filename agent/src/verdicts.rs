//! The agent's side of the coordinator's hook points inside an operation
//! ([`crate::recreate::gate`]): each question goes to the coordinator on the link as a
//! `HookRequest` and waits for the `HookVerdict` with its request id. A link that is gone, or no
//! verdict within the deadline, is an answer too: no.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ouroboros_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::recreate::gate::{Ask, HookGate};

/// Questions waiting for their verdict, by request id.
#[derive(Default)]
pub struct Verdicts {
    pending: Mutex<HashMap<String, oneshot::Sender<pb::HookVerdict>>>,
    next: AtomicU64,
}

impl Verdicts {
    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<pb::HookVerdict>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A verdict from the coordinator (one nobody waits for any more is dropped).
    pub fn deliver(&self, verdict: pb::HookVerdict) {
        if let Some(waiting) = self.pending().remove(&verdict.request_id) {
            let _ = waiting.send(verdict);
        }
    }

    /// The link ended: every question waiting gets no verdict (its sender is dropped).
    pub fn link_ended(&self) {
        self.pending().clear();
    }

    /// The gate of operation `op_id`: questions go on `link`, each waits at most `deadline`.
    pub fn gate(
        self: &Arc<Self>,
        link: mpsc::Sender<pb::AgentMessage>,
        op_id: String,
        deadline: Duration,
    ) -> Arc<dyn HookGate> {
        Arc::new(LinkGate {
            verdicts: self.clone(),
            link,
            op_id,
            deadline,
        })
    }
}

struct LinkGate {
    verdicts: Arc<Verdicts>,
    link: mpsc::Sender<pb::AgentMessage>,
    op_id: String,
    deadline: Duration,
}

impl HookGate for LinkGate {
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let id = format!(
                "hook-{}-{}",
                std::process::id(),
                self.verdicts.next.fetch_add(1, Ordering::Relaxed)
            );
            let (tx, rx) = oneshot::channel();
            self.verdicts.pending().insert(id.clone(), tx);
            let request = pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::HookRequest(pb::HookRequest {
                    request_id: id.clone(),
                    op_id: self.op_id.clone(),
                    point: ask.point.to_owned(),
                    container: ask.container,
                    subject: ask.subject,
                })),
            };
            let verdict = if self.link.send(request).await.is_err() {
                Err("no verdict: the link to the coordinator is gone".to_owned())
            } else {
                match tokio::time::timeout(self.deadline, rx).await {
                    Ok(Ok(v)) if v.allowed => Ok(()),
                    Ok(Ok(v)) => Err(v.reason),
                    Ok(Err(_)) => Err("no verdict: the link to the coordinator ended".to_owned()),
                    Err(_) => Err(format!(
                        "no verdict from the coordinator within {} s",
                        self.deadline.as_secs()
                    )),
                }
            };
            self.verdicts.pending().remove(&id);
            verdict
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Ask {
        Ask {
            point: crate::recreate::gate::BEFORE_STOP_DEPENDS,
            container: "app".into(),
            subject: "proxy".into(),
        }
    }

    #[tokio::test]
    async fn a_verdict_answers_its_question_and_no_verdict_is_a_veto() {
        let verdicts = Arc::new(Verdicts::default());
        let (link, mut coordinator) = mpsc::channel(4);
        let gate = verdicts.gate(link, "op-1".into(), Duration::from_secs(5));
        // The coordinator answers each question: yes, then no.
        let answering = {
            let verdicts = verdicts.clone();
            tokio::spawn(async move {
                for allowed in [true, false] {
                    let Some(pb::AgentMessage {
                        kind: Some(pb::agent_message::Kind::HookRequest(r)),
                    }) = coordinator.recv().await
                    else {
                        panic!("no hook request");
                    };
                    assert_eq!(r.op_id, "op-1");
                    assert_eq!(r.point, "before_stop_depends_container");
                    assert_eq!((r.container.as_str(), r.subject.as_str()), ("app", "proxy"));
                    verdicts.deliver(pb::HookVerdict {
                        request_id: r.request_id,
                        allowed,
                        reason: "vetoed by hook x: busy".into(),
                    });
                }
                coordinator
            })
        };
        assert_eq!(gate.ask(ask()).await, Ok(()));
        assert_eq!(gate.ask(ask()).await, Err("vetoed by hook x: busy".into()));
        let coordinator = answering.await.unwrap();
        // The link ends while a question waits: no, at once.
        let (link, _kept) = mpsc::channel(4);
        let waiting = verdicts.gate(link, "op-4".into(), Duration::from_secs(60));
        let asking = tokio::spawn(async move { waiting.ask(ask()).await });
        while verdicts.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        verdicts.link_ended();
        assert_eq!(
            asking.await.unwrap(),
            Err("no verdict: the link to the coordinator ended".into())
        );
        // Nobody answers within the deadline: no.
        let (link, _silent) = mpsc::channel(4);
        let slow = verdicts.gate(link, "op-2".into(), Duration::from_millis(100));
        assert_eq!(
            slow.ask(ask()).await,
            Err("no verdict from the coordinator within 0 s".into())
        );
        // The link is gone (cut off): no, at once.
        drop(coordinator);
        let (link, gone) = mpsc::channel(4);
        drop(gone);
        let cut = verdicts.gate(link, "op-3".into(), Duration::from_secs(60));
        assert_eq!(
            cut.ask(ask()).await,
            Err("no verdict: the link to the coordinator is gone".into())
        );
        assert!(verdicts.pending().is_empty());
    }
}
