//! Where alerts go: a generic webhook (one JSON document a batch) and Alertmanager's v2 API
//! (`POST /api/v2/alerts`, firing and resolved, labelled with the agent's attributes). A sink that
//! fails is tried again later with exponential backoff; what it was not told stays due.

use crate::fleet::alerts::{Alert, AlertKind, Policy, State};
use crate::ops::views::rfc3339;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// How alerts are raised and where they go.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub sinks: Vec<Sink>,
    /// The kinds raised (the others are not even looked for).
    pub kinds: BTreeSet<AlertKind>,
    pub policy: Policy,
    /// How often Alertmanager is told again of what still fires (it forgets what is not).
    pub resend: Duration,
    /// How often the fleet is looked at.
    pub every: Duration,
}

impl AlertsConfig {
    /// Every kind but `disconnected` (agents shut down on purpose close their connection too).
    pub fn default_kinds() -> BTreeSet<AlertKind> {
        AlertKind::ALL
            .into_iter()
            .filter(|k| *k != AlertKind::Disconnected)
            .collect()
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            kinds: Self::default_kinds(),
            policy: Policy {
                grace_ms: 60_000,
                max_alerts: 2_000,
            },
            resend: Duration::from_secs(60),
            every: Duration::from_secs(5),
        }
    }
}

/// What the alert duty keeps between passes: each sink's backoff.
#[derive(Debug, Default)]
pub(crate) struct AlertState {
    pub(super) backoff: HashMap<String, Backoff>,
}

/// How long a sink has to answer.
pub(crate) const SINK_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of receiver a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Webhook,
    Alertmanager,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Alertmanager => "alertmanager",
        }
    }
}

/// One configured receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    pub kind: SinkKind,
    /// The webhook's URL, or Alertmanager's base URL (`http://am:9093`).
    pub url: String,
}

impl Sink {
    /// Its name in the alert book and in metrics: kind and URL.
    pub fn name(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.url)
    }

    /// Checks the URL at start, so a typo is said before anything runs.
    pub fn new(kind: SinkKind, url: &str) -> Result<Self, String> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("alert sink {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(format!(
                "alert sink {url:?} is not an http:// or https:// URL"
            ));
        }
        Ok(Self {
            kind,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// Sends `alerts` in one request; Err says why the receiver did not take them.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        alerts: &[&Alert],
        region: &str,
        now_ms: u64,
        resend_ms: u64,
    ) -> Result<(), String> {
        let (url, body) = match self.kind {
            SinkKind::Webhook => (self.url.clone(), webhook_body(alerts, region)),
            SinkKind::Alertmanager => (
                format!("{}/api/v2/alerts", self.url),
                alertmanager_body(alerts, region, now_ms, resend_ms),
            ),
        };
        let resp = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {}", resp.status()))
        }
    }
}

/// The generic webhook's document: one notification per alert that fired or resolved.
pub fn webhook_body(alerts: &[&Alert], region: &str) -> Value {
    let notifications: Vec<Value> = alerts
        .iter()
        .map(|a| {
            json!({
                "id": a.id(),
                "kind": a.kind.as_str(),
                "state": a.state.as_str(),
                "subject": a.subject,
                "labels": a.labels,
                "summary": a.summary,
                "since": rfc3339(a.since_ms),
                "fired_at": a.fired_ms.map(rfc3339),
                "resolved_at": a.resolved_ms.map(rfc3339),
            })
        })
        .collect();
    json!({"source": "flotilla", "region": region, "notifications": notifications})
}

/// Alertmanager's `postableAlerts`. A firing alert ends, unless sent again, four resend intervals
/// from now (as Prometheus does): should Flotilla stop, its alerts resolve on their own.
pub fn alertmanager_body(alerts: &[&Alert], region: &str, now_ms: u64, resend_ms: u64) -> Value {
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let ends = match a.state {
                State::Resolved => a.resolved_ms.unwrap_or(now_ms),
                _ => now_ms.saturating_add(resend_ms.saturating_mul(4)),
            };
            json!({
                "labels": alertmanager_labels(a, region),
                "annotations": {"summary": a.summary},
                "startsAt": rfc3339(a.fired_ms.unwrap_or(a.since_ms)),
                "endsAt": rfc3339(ends),
            })
        })
        .collect();
    Value::Array(list)
}

/// Attributes become labels with Prometheus names (`service.name` → `service_name`); at most
/// this many, so an agent with hundreds of attributes does not make a huge alert.
const MAX_ATTRIBUTE_LABELS: usize = 32;
const MAX_LABEL_VALUE: usize = 256;

fn alertmanager_labels(a: &Alert, region: &str) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    for (k, v) in a.labels.iter().take(MAX_ATTRIBUTE_LABELS) {
        let name = label_name(k);
        let value: String = v.chars().take(MAX_LABEL_VALUE).collect();
        if !value.is_empty() {
            labels.insert(name, Value::String(value));
        }
    }
    let subject = match a.kind {
        AlertKind::RolloutPaused | AlertKind::RolloutRolledBack => "rollout",
        _ => "instance_uid",
    };
    // Flotilla's own labels last: an attribute cannot pass for them.
    labels.insert("alertname".into(), a.kind.alert_name().into());
    labels.insert("severity".into(), severity(a.kind).into());
    labels.insert("flotilla_region".into(), region.into());
    labels.insert(subject.into(), a.subject.clone().into());
    labels
}

fn severity(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Disconnected => "info",
        _ => "warning",
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, other characters as `_`.
fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// When a failing sink is tried again: 10 s after the first failure, doubling to 5 minutes.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    next_try_ms: u64,
}

impl Backoff {
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.next_try_ms
    }

    pub fn failed(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let wait = 10_000u64.saturating_mul(1 << (self.failures.min(6) - 1));
        self.next_try_ms = now_ms + wait.min(300_000);
    }

    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(state: State) -> Alert {
        Alert {
            kind: AlertKind::Unhealthy,
            subject: "0190c9a4-0000-7000-8000-000000000001".into(),
            labels: BTreeMap::from([
                ("service.name".into(), "otelcol".into()),
                ("9lives".into(), "x".into()),
                ("alertname".into(), "spoof".into()),
                ("empty".into(), String::new()),
            ]),
            summary: "exporter failing".into(),
            state,
            since_ms: 1_000,
            fired_ms: Some(31_000),
            resolved_ms: (state == State::Resolved).then_some(90_000),
            told: BTreeMap::new(),
        }
    }

    #[test]
    fn alertmanager_gets_prometheus_labels_and_start_and_end_times() {
        let firing = alert(State::Firing);
        let resolved = alert(State::Resolved);
        let body = alertmanager_body(&[&firing, &resolved], "eu", 60_000, 60_000);
        let f = &body[0];
        assert_eq!(
            f["labels"]["alertname"], "FlotillaAgentUnhealthy",
            "not the attribute"
        );
        assert_eq!(f["labels"]["service_name"], "otelcol");
        assert_eq!(f["labels"]["_9lives"], "x");
        assert_eq!(f["labels"]["instance_uid"], firing.subject.as_str());
        assert_eq!(f["labels"]["flotilla_region"], "eu");
        assert!(
            f["labels"].get("empty").is_none(),
            "empty labels mean absent"
        );
        assert_eq!(f["startsAt"], "1970-01-01T00:00:31.000Z");
        assert_eq!(f["endsAt"], "1970-01-01T00:05:00.000Z", "now + 4 resends");
        assert_eq!(
            body[1]["endsAt"], "1970-01-01T00:01:30.000Z",
            "when it resolved"
        );
        assert_eq!(f["annotations"]["summary"], "exporter failing");
    }

    #[test]
    fn the_webhook_gets_one_notification_per_alert() {
        let firing = alert(State::Firing);
        let body = webhook_body(&[&firing], "eu");
        let n = &body["notifications"][0];
        assert_eq!(n["id"], format!("unhealthy/{}/31000", firing.subject));
        assert_eq!(n["state"], "firing");
        assert_eq!(n["labels"]["service.name"], "otelcol");
        assert_eq!(n["resolved_at"], Value::Null);
        assert_eq!(body["region"], "eu");
    }

    #[test]
    fn sinks_need_http_urls_and_back_off_when_failing() {
        assert!(Sink::new(SinkKind::Webhook, "http://hooks:8080/x/").is_ok());
        for bad in ["hooks:8080", "ftp://x/y", "http://", "not a url"] {
            let err = Sink::new(SinkKind::Alertmanager, bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        let mut b = Backoff::default();
        assert!(b.ready(0));
        b.failed(0);
        assert!(!b.ready(9_999) && b.ready(10_000));
        b.failed(10_000);
        assert!(!b.ready(29_999) && b.ready(30_000));
        for _ in 0..20 {
            b.failed(0);
        }
        assert!(b.ready(300_000), "capped at 5 minutes");
        b.succeeded();
        assert!(b.ready(0));
    }
}
