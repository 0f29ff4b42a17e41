//! The alert duty: every few seconds each coordinator looks at the agents of the shards it owns
//! (and the holder of shard 0 at the rollouts), brings their alert books up to date
//! ([`crate::fleet::alerts`]), tells each sink what it has not been told, and stores the books
//! (document `alerts/shard-NNNN`, `alerts/rollouts`). A coordinator that dies leaves its books to
//! the next owner of its shards, who tells the sinks what they were not yet told: at least once.

use super::owner::Owner;
pub use super::sinks::{AlertsConfig, Sink, SinkKind};
use crate::fleet::agents::{attributes, healthy, status_name};
use crate::fleet::alerts::{AlertKind, Book, Condition};
use crate::fleet::configs::{Aspect, Desired};
use crate::fleet::own_metrics::FRESH_MS;
use crate::fleet::rollout::{Rollout, State as RolloutState};
use crate::opamp::desired::desired_config;
use crate::ops::docs::{ROLLOUTS, parse};
use crate::ops::views::config_state;
use flotilla_common::names::{SHARD_COUNT, shard_of, uid_text};
use flotilla_common::store::Doc;
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{AgentRecord, ComponentMetrics};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tracing::{info, warn};

/// The store collection of alert books.
pub const ALERTS: &str = "alerts";
const ROLLOUT_BOOK: &str = "rollouts";
/// How long a resolved alert waits for a sink that is down before it is dropped (and counted).
const KEEP_RESOLVED_MS: u64 = 24 * 3600 * 1000;
/// Alerts sent to one sink in one request at most (the rest go in the next pass).
const MAX_BATCH: usize = 500;

/// The conditions an agent's record shows at `now`.
fn conditions(
    rec: &AgentRecord,
    desired: &Desired,
    kinds: &BTreeSet<AlertKind>,
    now: u64,
) -> Vec<Condition> {
    let uid = uid_text(&rec.instance_uid);
    let status = status_name(rec);
    let mut out = Vec::new();
    let mut raise = |kind: AlertKind, summary: String| {
        if kinds.contains(&kind) {
            out.push((kind, summary));
        }
    };
    match status {
        "connected" if healthy(rec) == Some(false) => raise(
            AlertKind::Unhealthy,
            rec.health
                .as_ref()
                .map(|h| h.last_error.clone())
                .unwrap_or_default(),
        ),
        "silent" => raise(
            AlertKind::Silent,
            "no message within its heartbeat deadline".into(),
        ),
        "disconnected" => raise(AlertKind::Disconnected, "disconnected".into()),
        _ => {}
    }
    if kinds.contains(&AlertKind::ConfigFailed) {
        let attrs = crate::fleet::agents::RecordAttributes(rec);
        let files = desired_config(rec, &attrs, desired, Aspect::Files);
        if config_state(rec, files.map(|c| c.hash.as_str())) == "failed" {
            let error = crate::fleet::agents::config_failure(rec);
            let cfg = files.map_or(String::new(), |c| format!("{} v{}: ", c.name, c.version));
            raise(AlertKind::ConfigFailed, format!("{cfg}{error}"));
        }
    }
    // Its own metrics, while it sends them: exporters failing, queues near full.
    if let Some(m) = rec
        .own_metrics
        .as_ref()
        .filter(|m| now.saturating_sub(m.last_unix_ms) <= FRESH_MS)
    {
        let names = |pick: &dyn Fn(&ComponentMetrics) -> bool| {
            m.exporters
                .iter()
                .filter(|e| pick(e))
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failing = names(&|e| e.failing_since_unix_ms != 0);
        if !failing.is_empty() {
            raise(
                AlertKind::ExporterFailing,
                format!("exporters failing to send: {failing}"),
            );
        }
        let full = names(&|e| e.queue_full_since_unix_ms != 0);
        if !full.is_empty() {
            raise(
                AlertKind::ExporterQueueFull,
                format!("exporter queues 90% full or more: {full}"),
            );
        }
    }
    if out.is_empty() {
        return Vec::new();
    }
    let labels = attributes(rec);
    out.into_iter()
        .map(|(kind, summary)| Condition {
            kind,
            subject: uid.clone(),
            labels: labels.clone(),
            summary,
        })
        .collect()
}

/// The conditions of the rollouts: paused ones, and rolled-back ones no newer rollout of their
/// config has followed.
pub fn rollout_conditions(rollouts: &[Rollout], kinds: &BTreeSet<AlertKind>) -> Vec<Condition> {
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for r in rollouts {
        let t = latest.entry(r.config.as_str()).or_default();
        *t = (*t).max(r.created_unix_ms);
    }
    rollouts
        .iter()
        .filter_map(|r| {
            let kind = match r.state {
                RolloutState::Paused => AlertKind::RolloutPaused,
                RolloutState::RolledBack if latest[r.config.as_str()] == r.created_unix_ms => {
                    AlertKind::RolloutRolledBack
                }
                _ => return None,
            };
            kinds.contains(&kind).then(|| Condition {
                kind,
                subject: r.id.clone(),
                labels: BTreeMap::from([
                    ("config".to_owned(), r.config.clone()),
                    ("to_version".to_owned(), r.to_version.to_string()),
                ]),
                summary: r.reason.clone(),
            })
        })
        .collect()
}

/// One alert book in a pass: its id, the revision it was read at, and the book as read and as
/// the pass leaves it.
struct Kept {
    id: String,
    revision: u64,
    before: Book,
    book: Book,
}

fn book_id(shard: u16) -> String {
    format!("shard-{shard:04}")
}

/// A book as stored: its revision (0: none yet) and content.
fn read_book(doc: Option<&Doc>) -> (u64, Book) {
    match doc {
        Some(d) => match serde_json::from_str(&d.json) {
            Ok(book) => (d.revision, book),
            Err(e) => {
                // Written by a newer version, or damaged: start again rather than stop alerting.
                warn!(id = %d.id, error = %e, "unreadable alert book; starting it afresh");
                (d.revision, Book::default())
            }
        },
        None => (0, Book::default()),
    }
}

impl Owner {
    /// One pass of the alert duty.
    pub(super) async fn alert_pass(&self) -> Result<(), String> {
        let cfg = &self.cfg.alerts;
        let now = now_unix_ms();
        let desired = self.desired.current();
        let mut holding: BTreeMap<String, Vec<Condition>> = BTreeMap::new();
        // The shards owned when the pass starts, for the whole pass: a shard taken over while it
        // runs would otherwise have its book read (and its alerts judged resolved) without its
        // agents having been looked at.
        let owned_now: HashSet<u16> = (0..SHARD_COUNT)
            .filter(|s| self.shards.fence(*s).is_some())
            .collect();
        let owned = |s: u16| owned_now.contains(&s);
        self.visit_owned(&owned, &mut |rec| {
            for c in conditions(rec, &desired, &cfg.kinds, now) {
                holding
                    .entry(book_id(shard_of(&rec.instance_uid)))
                    .or_default()
                    .push(c);
            }
        })
        .await
        .map_err(|e| format!("cannot read agents: {e}"))?;
        let stepping_rollouts = owned(0);
        if stepping_rollouts {
            let rollouts: Vec<Rollout> = self
                .store
                .list_docs(ROLLOUTS)
                .await
                .map_err(|e| format!("cannot read rollouts: {e}"))?
                .iter()
                .filter_map(|d| parse(d).ok())
                .collect();
            holding.insert(
                ROLLOUT_BOOK.into(),
                rollout_conditions(&rollouts, &cfg.kinds),
            );
        }
        let docs = self
            .store
            .list_docs(ALERTS)
            .await
            .map_err(|e| format!("cannot read alert books: {e}"))?;
        let docs: HashMap<&str, &Doc> = docs.iter().map(|d| (d.id.as_str(), d)).collect();
        // The books this process keeps: those of its shards (and the rollouts') that hold
        // something now or held something before.
        let mine = |id: &str| match id.strip_prefix("shard-") {
            Some(n) => n.parse::<u16>().is_ok_and(&owned),
            None => id == ROLLOUT_BOOK && stepping_rollouts,
        };
        let ids: BTreeSet<String> = holding
            .keys()
            .cloned()
            .chain(docs.keys().filter(|id| mine(id)).map(|id| (*id).to_owned()))
            .collect();
        let mut books: Vec<Kept> = Vec::new();
        let mut refused = 0;
        for id in ids {
            let (revision, mut book) = read_book(docs.get(id.as_str()).copied());
            let before = book.clone();
            refused += book
                .observe(now, holding.remove(&id).unwrap_or_default(), &cfg.policy)
                .refused;
            books.push(Kept {
                id,
                revision,
                before,
                book,
            });
        }
        if refused > 0 {
            self.metrics.alerts_refused.inc_by(refused as u64);
        }
        self.tell_sinks(&mut books, now).await;
        self.save_books(books).await;
        Ok(())
    }

    /// Sends each sink (not backing off) what it was not told, in one batch, and records what
    /// it took.
    async fn tell_sinks(&self, books: &mut [Kept], now: u64) {
        let state = &self.alert_state;
        let cfg = &self.cfg.alerts;
        let names: Vec<String> = cfg.sinks.iter().map(Sink::name).collect();
        let resend_ms = super::millis(cfg.resend);
        for (sink, name) in cfg.sinks.iter().zip(&names) {
            if !state
                .lock()
                .backoff
                .entry(name.clone())
                .or_default()
                .ready(now)
            {
                continue;
            }
            let resend =
                matches!(sink.kind, super::sinks::SinkKind::Alertmanager).then_some(resend_ms);
            let due: Vec<(usize, String, &crate::fleet::alerts::Alert)> = books
                .iter()
                .enumerate()
                .flat_map(|(i, Kept { book: b, .. })| {
                    b.due(name, now, resend, MAX_BATCH)
                        .into_iter()
                        .map(move |a| (i, a.id(), a))
                })
                .take(MAX_BATCH)
                .collect();
            if due.is_empty() {
                continue;
            }
            let alerts: Vec<&crate::fleet::alerts::Alert> =
                due.iter().map(|(_, _, a)| *a).collect();
            let sent = sink
                .send(
                    &self.alert_client,
                    &alerts,
                    &self.cfg.region,
                    now,
                    resend_ms,
                )
                .await;
            let outcome = if sent.is_ok() { "delivered" } else { "failed" };
            self.metrics
                .alert_notifications
                .get_or_create(&vec![("sink", sink.kind.as_str()), ("outcome", outcome)])
                .inc_by(due.len() as u64);
            let mut by_book: HashMap<usize, Vec<String>> = HashMap::new();
            for (i, id, _) in due {
                by_book.entry(i).or_default().push(id);
            }
            match sent {
                Ok(()) => {
                    state
                        .lock()
                        .backoff
                        .entry(name.clone())
                        .or_default()
                        .succeeded();
                    for (i, ids) in by_book {
                        books[i].book.delivered(name, &ids, now);
                    }
                }
                Err(e) => {
                    state
                        .lock()
                        .backoff
                        .entry(name.clone())
                        .or_default()
                        .failed(now);
                    warn!(sink = %name, error = %e, "alerts not delivered; trying again later");
                }
            }
        }
        let expired: usize = books
            .iter_mut()
            .map(|k| k.book.settle(&names, now, KEEP_RESOLVED_MS))
            .sum();
        if expired > 0 {
            self.metrics.alerts_expired.inc_by(expired as u64);
            warn!(
                expired,
                "resolved alerts dropped after a day without reaching every sink"
            );
        }
    }

    /// Stores the books that changed (if nobody else wrote them meanwhile: then the next pass
    /// starts from theirs) and refreshes the alert gauges.
    async fn save_books(&self, books: Vec<Kept>) {
        let mut counts = BTreeMap::new();
        for Kept {
            id,
            revision,
            before,
            book,
        } in books
        {
            book.counts(&mut counts);
            if book == before {
                continue;
            }
            let Ok(json) = serde_json::to_string(&book) else {
                continue;
            };
            match self.store.put_doc(ALERTS, &id, revision, &json, None).await {
                Ok(true) => {}
                Ok(false) => info!(book = %id, "alert book changed by another coordinator"),
                Err(e) => {
                    warn!(book = %id, error = %e, "alert book not saved; what was sent may be sent again");
                }
            }
        }
        self.metrics.alerts.clear();
        for ((kind, state), n) in counts {
            self.metrics
                .alerts
                .get_or_create(&vec![("kind", kind.as_str()), ("state", state.as_str())])
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rollout::{ErrorBudget, Plan};
    use std::time::Duration;

    fn rollout(id: &str, config: &str, state: RolloutState, created: u64) -> Rollout {
        Rollout {
            id: id.into(),
            config: config.into(),
            from_version: 1,
            to_version: 2,
            plan: Plan::Percentages {
                percentages: vec![100.0],
            },
            soak: Duration::ZERO,
            error_budget: ErrorBudget {
                max_failure_percent: 10.0,
                min_sample: 1,
                action: Default::default(),
            },
            state,
            reason: "error budget spent".into(),
            phases: Vec::new(),
            agents_total: 0,
            created_by: "ann".into(),
            created_unix_ms: created,
            updated_unix_ms: created,
        }
    }

    #[test]
    fn paused_and_last_rolled_back_rollouts_are_conditions() {
        let all = [
            rollout("r1", "gw", RolloutState::RolledBack, 1),
            rollout("r2", "gw", RolloutState::Completed, 2),
            rollout("r3", "edge", RolloutState::RolledBack, 3),
            rollout("r4", "db", RolloutState::Paused, 4),
            rollout("r5", "x", RolloutState::Running, 5),
        ];
        let kinds = AlertsConfig::default_kinds();
        let got: Vec<(AlertKind, String)> = rollout_conditions(&all, &kinds)
            .into_iter()
            .map(|c| (c.kind, c.subject))
            .collect();
        assert_eq!(
            got,
            [
                (AlertKind::RolloutRolledBack, "r3".to_owned()),
                (AlertKind::RolloutPaused, "r4".to_owned()),
            ],
            "r1 was followed by r2"
        );
        let only_paused = BTreeSet::from([AlertKind::RolloutPaused]);
        assert_eq!(rollout_conditions(&all, &only_paused).len(), 1);
    }

    #[test]
    fn failing_exporters_and_full_queues_of_fresh_own_metrics_are_conditions() {
        use flotilla_proto::bus::{AgentMetrics, AgentStatus};
        let now = 1_800_000_000_000;
        let exporter = |name: &str, failing: u64, full: u64| ComponentMetrics {
            name: name.into(),
            failing_since_unix_ms: failing,
            queue_full_since_unix_ms: full,
            ..Default::default()
        };
        let rec = AgentRecord {
            instance_uid: vec![7; 16],
            status: AgentStatus::Connected as i32,
            own_metrics: Some(Box::new(AgentMetrics {
                last_unix_ms: now - 10_000,
                exporters: vec![
                    exporter("otlp", now - 90_000, 0),
                    exporter("otlphttp", now - 20_000, now - 20_000),
                    exporter("debug", 0, 0),
                ],
                ..Default::default()
            })),
            ..Default::default()
        };
        let kinds: BTreeSet<AlertKind> = AlertKind::ALL.into_iter().collect();
        let desired = Desired::new(Vec::new());
        let got: Vec<(AlertKind, String)> = conditions(&rec, &desired, &kinds, now)
            .into_iter()
            .map(|c| (c.kind, c.summary))
            .collect();
        assert_eq!(
            got,
            [
                (
                    AlertKind::ExporterFailing,
                    "exporters failing to send: otlp, otlphttp".to_owned()
                ),
                (
                    AlertKind::ExporterQueueFull,
                    "exporter queues 90% full or more: otlphttp".to_owned()
                ),
            ]
        );
        // An agent that stopped sending its metrics is not judged on its last ones.
        assert!(conditions(&rec, &desired, &kinds, now + FRESH_MS + 10_000).is_empty());
    }
}
