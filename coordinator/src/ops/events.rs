//! Events as they happen: agents' (connected, disconnected, silent, unhealthy, healthy, config
//! applied or failed, published by their shard owners) and rollouts' (each change of state),
//! followed live by [`Ops::watch_events`] (the API's Server-Sent Events stream). No history: a
//! watcher sees what happens from the moment it starts.

use super::caller::Caller;
use super::error::{Error, Result};
use super::watchers::MAX_WATCHERS;
use super::{Ops, agents::parse_selector};
use crate::fleet::rollout::{Rollout, State};
use crate::opamp::EventKind;
use flotilla_common::bus::BusMessage;
use flotilla_common::selector::Selector;
use flotilla_common::telemetry::now_unix_ms;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::debug;

/// Events held for a watcher that reads slower than they come; past it they are dropped (and it
/// is told how many).
pub const WATCH_QUEUE: usize = 1024;

/// Every kind of event, agents' then rollouts'.
pub fn event_kinds() -> Vec<String> {
    EventKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .chain(State::ALL.iter().map(|s| rollout_event(*s)))
        .collect()
}

fn rollout_event(state: State) -> String {
    format!("rollout_{}", state.as_str())
}

/// What a watcher gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// An event: its kind and its JSON.
    Event { kind: String, json: String },
    /// This many events were dropped because the watcher fell behind.
    Lagged(u64),
}

/// A live stream of events; dropping it stops it.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Watched>,
    _permit: OwnedSemaphorePermit,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<Watched> {
        self.rx.recv().await
    }
}

/// Which events a watcher wants.
struct Filter {
    kinds: Option<BTreeSet<String>>,
    selector: Option<Selector>,
}

impl Filter {
    fn wants(&self, kind: &str, json: &str) -> bool {
        if self.kinds.as_ref().is_some_and(|k| !k.contains(kind)) {
            return false;
        }
        let Some(selector) = &self.selector else {
            return true;
        };
        // Rollout events have no agent attributes: a selector matches agents' events only.
        if kind.starts_with("rollout_") {
            return false;
        }
        let attributes: BTreeMap<String, String> = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("attributes")?.clone()).ok())
            .unwrap_or_default();
        selector.matches(&attributes)
    }
}

impl Ops {
    /// Follows events from now on: those of `kinds` (comma-separated; none: all) whose agent
    /// matches `selector` (none: any, rollouts' included).
    pub async fn watch_events(
        &self,
        _caller: &Caller,
        kinds: Option<&str>,
        selector: Option<&str>,
    ) -> Result<EventStream> {
        let known = event_kinds();
        let kinds = match kinds.map(str::trim).filter(|k| !k.is_empty()) {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|k| {
                        let k = k.trim();
                        known.iter().find(|n| *n == k).cloned().ok_or_else(|| {
                            Error::BadRequest(format!(
                                "unknown event kind {k:?}; kinds are {}",
                                known.join(", ")
                            ))
                        })
                    })
                    .collect::<Result<BTreeSet<String>>>()?,
            ),
        };
        let selector = match selector.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(parse_selector(s)?),
        };
        let permit = self.watchers.permit().ok_or_else(|| {
            Error::Unavailable(format!(
                "{MAX_WATCHERS} event streams are open on this server already; close one or try \
                 another server"
            ))
        })?;
        let mut sub = self
            .bus
            .subscribe(&self.subjects.event("*"))
            .await
            .map_err(|e| Error::Unavailable(format!("cannot follow events: {e}")))?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let filter = Filter { kinds, selector };
        let dropped = self.watchers.dropped.clone();
        tokio::spawn(async move {
            let mut lost = 0u64;
            loop {
                let incoming = tokio::select! {
                    i = sub.next() => i,
                    () = tx.closed() => None,
                };
                let Some(incoming) = incoming else { break };
                let kind = incoming.msg.subject.rsplit('.').next().unwrap_or_default();
                let Ok(json) = std::str::from_utf8(&incoming.msg.payload) else {
                    continue;
                };
                if !filter.wants(kind, json) {
                    continue;
                }
                if lost > 0 && tx.try_send(Watched::Lagged(lost)).is_ok() {
                    lost = 0;
                }
                let event = Watched::Event {
                    kind: kind.to_owned(),
                    json: json.to_owned(),
                };
                match tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        lost += 1;
                        dropped.inc();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        });
        Ok(EventStream {
            rx,
            _permit: permit,
        })
    }

    /// Publishes a rollout's change of state as an event.
    pub(crate) async fn rollout_changed(&self, r: &Rollout) {
        let body = serde_json::json!({
            "kind": rollout_event(r.state),
            "rollout": r.id,
            "config": r.config,
            "to_version": r.to_version,
            "state": r.state.as_str(),
            "reason": r.reason,
            "at_unix_ms": now_unix_ms(),
        });
        let msg = BusMessage::new(
            self.subjects.event(&rollout_event(r.state)),
            body.to_string(),
        );
        if let Err(e) = self.bus.publish(msg).await {
            debug!(error = %e, "rollout event not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_kinds_and_agents_selectors() {
        let agent = r#"{"kind":"unhealthy","attributes":{"env":"prod"}}"#;
        let rollout = r#"{"kind":"rollout_paused","rollout":"r1"}"#;
        let all = Filter {
            kinds: None,
            selector: None,
        };
        assert!(all.wants("unhealthy", agent) && all.wants("rollout_paused", rollout));
        let prod = Filter {
            kinds: None,
            selector: Some("env=prod".parse().unwrap()),
        };
        assert!(prod.wants("unhealthy", agent));
        assert!(!prod.wants("rollout_paused", rollout), "no agent to match");
        let dev = Filter {
            kinds: Some(BTreeSet::from(["unhealthy".to_owned()])),
            selector: Some("env=dev".parse().unwrap()),
        };
        assert!(!dev.wants("unhealthy", agent));
        let kinds = Filter {
            kinds: Some(BTreeSet::from(["silent".to_owned()])),
            selector: None,
        };
        assert!(!kinds.wants("unhealthy", agent));
        assert!(event_kinds().contains(&"rollout_rolled_back".to_owned()));
        assert!(event_kinds().contains(&"healthy".to_owned()));
    }
}
