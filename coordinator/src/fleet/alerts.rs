//! Alerts: which conditions of agents and rollouts are raised, when they resolve, and what each
//! sink has been told. Pure: the service observes the fleet, calls [`Book::observe`], sends what
//! [`Book::due`] lists and records the answer with [`Book::delivered`]; the book is stored after
//! each pass, so another coordinator continues it (at least once) should this one die.
//!
//! One alert per condition and subject (one unhealthy agent is one alert however many messages
//! it sends). A condition with a grace period (an agent unhealthy or disconnected) is raised only
//! if it still holds once the grace has passed: a collector supervisor reports unhealthy until its
//! collector is up, and an agent restarting reconnects within seconds. One that ends before it is
//! raised leaves nothing behind.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What is alerted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Connected and reporting unhealthy.
    Unhealthy,
    /// No message within its heartbeat deadline.
    Silent,
    /// Closed its connection (or stopped polling) and has not come back.
    Disconnected,
    /// Failed to apply the config it should run.
    ConfigFailed,
    /// A rollout was paused (by its error budget or an operator).
    RolloutPaused,
    /// A rollout was rolled back (and no newer rollout of its config has started).
    RolloutRolledBack,
    /// Sends its own metrics, and an exporter of it fails to send.
    ExporterFailing,
    /// Sends its own metrics, and an exporter's queue is 90% full or more.
    ExporterQueueFull,
}

impl AlertKind {
    pub const ALL: [AlertKind; 8] = [
        Self::Unhealthy,
        Self::Silent,
        Self::Disconnected,
        Self::ConfigFailed,
        Self::RolloutPaused,
        Self::RolloutRolledBack,
        Self::ExporterFailing,
        Self::ExporterQueueFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unhealthy => "unhealthy",
            Self::Silent => "silent",
            Self::Disconnected => "disconnected",
            Self::ConfigFailed => "config_failed",
            Self::RolloutPaused => "rollout_paused",
            Self::RolloutRolledBack => "rollout_rolled_back",
            Self::ExporterFailing => "exporter_failing",
            Self::ExporterQueueFull => "exporter_queue_full",
        }
    }

    /// The `alertname` label Alertmanager groups by.
    pub fn alert_name(self) -> &'static str {
        match self {
            Self::Unhealthy => "FlotillaAgentUnhealthy",
            Self::Silent => "FlotillaAgentSilent",
            Self::Disconnected => "FlotillaAgentDisconnected",
            Self::ConfigFailed => "FlotillaAgentConfigFailed",
            Self::RolloutPaused => "FlotillaRolloutPaused",
            Self::RolloutRolledBack => "FlotillaRolloutRolledBack",
            Self::ExporterFailing => "FlotillaAgentExporterFailing",
            Self::ExporterQueueFull => "FlotillaAgentExporterQueueFull",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A condition that holds now, as one pass over the fleet saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: AlertKind,
    /// The agent's instance uid or the rollout's id.
    pub subject: String,
    /// What the alert is labelled with (the agent's attributes, the rollout's config).
    pub labels: BTreeMap<String, String>,
    /// One line for people: the agent's last error, the rollout's reason.
    pub summary: String,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Holds, within its grace period: nobody is told yet.
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert and what each sink was told of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub subject: String,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub state: State,
    /// When the condition was first seen to hold (unix ms).
    pub since_ms: u64,
    /// When it was raised and resolved (unix ms), once they happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// Per sink: the state it last acknowledged, and when (unix ms).
    #[serde(default)]
    pub told: BTreeMap<String, (State, u64)>,
}

impl Alert {
    /// A stable id of this occurrence (kind, subject, when it was raised), for receivers that
    /// deduplicate what at-least-once delivery may repeat.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind.as_str(),
            self.subject,
            self.fired_ms.unwrap_or(self.since_ms)
        )
    }
}

/// How alerts are raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long an agent may be unhealthy, disconnected, or have an exporter failing or a queue
    /// near full before it is alerted on.
    pub grace_ms: u64,
    /// Alerts kept per book at most; past it, new conditions are counted, not kept.
    pub max_alerts: usize,
}

impl Policy {
    fn grace(&self, kind: AlertKind) -> u64 {
        match kind {
            AlertKind::Unhealthy
            | AlertKind::Disconnected
            | AlertKind::ExporterFailing
            | AlertKind::ExporterQueueFull => self.grace_ms,
            _ => 0,
        }
    }
}

/// The alerts of one part of the fleet (a shard's agents, or the rollouts), as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// By `kind/subject`.
    pub alerts: BTreeMap<String, Alert>,
}

/// What a pass over a book changed.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// Conditions not kept because the book is full.
    pub refused: usize,
}

fn key(kind: AlertKind, subject: &str) -> String {
    format!("{}/{subject}", kind.as_str())
}

impl Book {
    /// Brings the book up to `now` given every condition that holds now (of this book's part of
    /// the fleet): new ones become pending, pending ones past their grace fire, firing ones that
    /// no longer hold resolve, pending ones that no longer hold are forgotten.
    pub fn observe(&mut self, now_ms: u64, holding: Vec<Condition>, policy: &Policy) -> Observed {
        let mut out = Observed::default();
        let mut seen = std::collections::HashSet::new();
        for c in holding {
            let k = key(c.kind, &c.subject);
            seen.insert(k.clone());
            let full = self.alerts.len() >= policy.max_alerts;
            match self.alerts.get_mut(&k) {
                Some(a) if a.state != State::Resolved => {
                    a.labels = c.labels;
                    a.summary = c.summary;
                }
                // Resolved and back: a new occurrence, once the old one's resolution is out.
                Some(_) => {}
                None if full => out.refused += 1,
                None => {
                    self.alerts.insert(
                        k,
                        Alert {
                            kind: c.kind,
                            subject: c.subject,
                            labels: c.labels,
                            summary: c.summary,
                            state: State::Pending,
                            since_ms: now_ms,
                            fired_ms: None,
                            resolved_ms: None,
                            told: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        self.alerts.retain(|k, a| {
            let holds = seen.contains(k);
            match a.state {
                State::Pending if !holds => return false,
                State::Firing if !holds => {
                    a.state = State::Resolved;
                    a.resolved_ms = Some(now_ms);
                }
                _ => {}
            }
            if a.state == State::Pending
                && now_ms.saturating_sub(a.since_ms) >= policy.grace(a.kind)
            {
                a.state = State::Firing;
                a.fired_ms = Some(now_ms);
            }
            true
        });
        out
    }

    /// The alerts `sink` should be told of now: firing ones it has not acknowledged as firing
    /// (or, with `resend_ms`, not for that long: Alertmanager forgets alerts not re-sent),
    /// resolved ones it has not acknowledged as resolved (one that fired and resolved while the
    /// sink was down is told once, resolved, with both times). At most `max` of them.
    pub fn due(&self, sink: &str, now_ms: u64, resend_ms: Option<u64>, max: usize) -> Vec<&Alert> {
        self.alerts
            .values()
            .filter(|a| match (a.state, a.told.get(sink)) {
                (State::Pending, _) => false,
                (State::Firing, Some((State::Firing, at))) => {
                    resend_ms.is_some_and(|r| now_ms.saturating_sub(*at) >= r)
                }
                (State::Resolved, Some((State::Resolved, _))) => false,
                _ => true,
            })
            .take(max)
            .collect()
    }

    /// Records that `sink` acknowledged `ids` (as [`Alert::id`]) in their current state.
    pub fn delivered(&mut self, sink: &str, ids: &[String], now_ms: u64) {
        for a in self.alerts.values_mut() {
            if ids.contains(&a.id()) {
                a.told.insert(sink.to_owned(), (a.state, now_ms));
            }
        }
    }

    /// Forgets the resolved alerts every sink in `sinks` has been told of, and those resolved
    /// longer than `keep_ms` ago that some sink never took (a sink down for that long); says how
    /// many of the latter there were.
    pub fn settle(&mut self, sinks: &[String], now_ms: u64, keep_ms: u64) -> usize {
        let mut expired = 0;
        self.alerts.retain(|_, a| {
            if a.state != State::Resolved {
                return true;
            }
            let told = |s: &String| matches!(a.told.get(s), Some((State::Resolved, _)));
            if sinks.iter().all(told) {
                return false;
            }
            let old = now_ms.saturating_sub(a.resolved_ms.unwrap_or(now_ms)) > keep_ms;
            expired += usize::from(old);
            !old
        });
        expired
    }

    /// Alerts by kind and state, for the gauges.
    pub fn counts(&self, into: &mut BTreeMap<(AlertKind, State), u64>) {
        for a in self.alerts.values() {
            *into.entry((a.kind, a.state)).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 30_000;

    fn policy() -> Policy {
        Policy {
            grace_ms: GRACE,
            max_alerts: 3,
        }
    }

    fn holds(kind: AlertKind, subject: &str) -> Condition {
        Condition {
            kind,
            subject: subject.into(),
            labels: BTreeMap::from([("service.name".into(), "otelcol".into())]),
            summary: "exporter failing".into(),
        }
    }

    fn ids(book: &Book, sink: &str, now: u64) -> Vec<String> {
        book.due(sink, now, None, 100)
            .into_iter()
            .map(|a| format!("{:?} {}", a.state, a.id()))
            .collect()
    }

    const KEEP: u64 = 86_400_000;

    fn tell(book: &mut Book, sink: &str, now: u64, sinks: &[String]) {
        let due: Vec<String> = book
            .due(sink, now, None, 100)
            .iter()
            .map(|a| a.id())
            .collect();
        book.delivered(sink, &due, now);
        book.settle(sinks, now, KEEP);
    }

    #[test]
    fn an_agent_that_turns_healthy_within_the_grace_raises_nothing() {
        let mut book = Book::default();
        book.observe(0, vec![holds(AlertKind::Unhealthy, "a")], &policy());
        assert!(ids(&book, "hook", 0).is_empty(), "pending: nobody told");
        book.observe(GRACE - 1, vec![holds(AlertKind::Unhealthy, "a")], &policy());
        assert!(ids(&book, "hook", GRACE - 1).is_empty());
        book.observe(GRACE, vec![], &policy());
        assert!(book.alerts.is_empty(), "{book:?}");
    }

    #[test]
    fn one_alert_per_condition_fired_once_resolved_once_then_forgotten() {
        let sinks = ["hook".to_owned(), "am".to_owned()];
        let mut book = Book::default();
        for t in [0, 10_000, GRACE, GRACE + 10_000] {
            book.observe(t, vec![holds(AlertKind::Unhealthy, "a")], &policy());
        }
        assert_eq!(
            ids(&book, "hook", GRACE),
            [format!("Firing unhealthy/a/{GRACE}")]
        );
        tell(&mut book, "hook", GRACE, &sinks);
        assert!(ids(&book, "hook", GRACE + 1).is_empty(), "told once");
        assert_eq!(ids(&book, "am", GRACE + 1).len(), 1, "each sink on its own");
        // Alertmanager forgets what is not re-sent: with a resend interval it is due again.
        assert_eq!(book.due("hook", GRACE + 60_000, Some(60_000), 10).len(), 1);

        book.observe(GRACE + 20_000, vec![], &policy());
        assert_eq!(
            ids(&book, "hook", 0),
            [format!("Resolved unhealthy/a/{GRACE}")]
        );
        tell(&mut book, "hook", GRACE + 20_000, &sinks);
        assert_eq!(
            ids(&book, "am", 0),
            [format!("Resolved unhealthy/a/{GRACE}")],
            "a sink that missed it all is told once, resolved"
        );
        tell(&mut book, "am", GRACE + 20_000, &sinks);
        assert!(
            book.alerts.is_empty(),
            "resolved and told everywhere: forgotten"
        );
    }

    #[test]
    fn a_failed_delivery_stays_due_and_a_stored_book_carries_on() {
        let sinks = ["hook".to_owned()];
        let mut book = Book::default();
        book.observe(0, vec![holds(AlertKind::Silent, "a")], &policy());
        assert_eq!(ids(&book, "hook", 0).len(), 1, "no grace for silence");
        // The sink was down: nothing recorded. Another coordinator reads the stored book.
        let stored = serde_json::to_string(&book).unwrap();
        let mut taken: Book = serde_json::from_str(&stored).unwrap();
        assert_eq!(taken, book);
        taken.observe(5_000, vec![holds(AlertKind::Silent, "a")], &policy());
        assert_eq!(
            ids(&taken, "hook", 5_000),
            ["Firing silent/a/0"],
            "same occurrence"
        );
        tell(&mut taken, "hook", 5_000, &sinks);
        assert!(ids(&taken, "hook", 6_000).is_empty());

        // A sink that never comes back: a resolved alert is kept for it a day, then dropped.
        let both = ["hook".to_owned(), "gone".to_owned()];
        taken.observe(7_000, vec![], &policy());
        tell(&mut taken, "hook", 7_000, &both);
        assert_eq!(taken.alerts.len(), 1, "kept for the sink that missed it");
        assert_eq!(taken.settle(&both, 7_000 + KEEP, KEEP), 0);
        assert_eq!(taken.settle(&both, 7_001 + KEEP, KEEP), 1);
        assert!(taken.alerts.is_empty());
    }

    #[test]
    fn a_full_book_refuses_new_conditions_and_a_returning_one_is_a_new_occurrence() {
        let sinks = ["hook".to_owned()];
        let mut book = Book::default();
        let many: Vec<Condition> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| holds(AlertKind::ConfigFailed, s))
            .collect();
        let out = book.observe(0, many, &policy());
        assert_eq!(out.refused, 1);
        assert_eq!(book.alerts.len(), 3);
        tell(&mut book, "hook", 0, &sinks);
        book.observe(1_000, vec![], &policy());
        // Back before its resolution went out: the resolution goes first.
        book.observe(2_000, vec![holds(AlertKind::ConfigFailed, "a")], &policy());
        assert_eq!(ids(&book, "hook", 2_000).len(), 3, "three resolutions");
        tell(&mut book, "hook", 2_000, &sinks);
        assert!(book.alerts.is_empty());
        book.observe(3_000, vec![holds(AlertKind::ConfigFailed, "a")], &policy());
        assert_eq!(ids(&book, "hook", 3_000), ["Firing config_failed/a/3000"]);
        let mut counts = BTreeMap::new();
        book.counts(&mut counts);
        assert_eq!(
            counts,
            BTreeMap::from([((AlertKind::ConfigFailed, State::Firing), 1)])
        );
    }

    #[test]
    fn kinds_have_one_name_each() {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(AlertKind::parse("nope"), None);
    }
}
