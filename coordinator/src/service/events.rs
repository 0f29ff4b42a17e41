//! Agent events (connected, disconnected, silent, unhealthy, healthy, config applied or failed),
//! published as JSON on `opamp.<region>.evt.<kind>` for whoever watches (the API's event stream),
//! with the agent's attributes so watchers can filter them with a selector.

use crate::fleet::agents::attributes;
use crate::metrics::OwnerMetrics;
use crate::opamp::EventKind;
use flotilla_common::bus::{Bus, BusMessage};
use flotilla_common::names::Subjects;
use flotilla_common::names::uid_text;
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::AgentRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::debug;

/// An event as published: its fields in the order of their names.
#[derive(Serialize)]
struct EventBody<'a> {
    at_unix_ms: u64,
    attributes: BTreeMap<String, String>,
    detail: &'a str,
    instance_uid: String,
    kind: &'static str,
    node: &'a str,
}

pub(crate) struct Events {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    node_id: String,
    metrics: OwnerMetrics,
}

impl Events {
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        node_id: &str,
        metrics: OwnerMetrics,
    ) -> Self {
        Self {
            bus,
            subjects,
            node_id: node_id.to_owned(),
            metrics,
        }
    }

    pub async fn emit(&self, kind: EventKind, rec: &AgentRecord) {
        self.publish(self.message(kind, rec)).await;
    }

    /// The event `kind` of agent `rec`, to publish later ([`Events::publish`]), when the record
    /// itself may be gone.
    pub fn message(&self, kind: EventKind, rec: &AgentRecord) -> (EventKind, BusMessage) {
        let detail = match kind {
            EventKind::Unhealthy => rec.health.as_ref().map(|h| h.last_error.as_str()),
            EventKind::ConfigFailed => rec
                .remote_config_status
                .as_ref()
                .map(|s| s.error_message.as_str()),
            _ => None,
        };
        let body = EventBody {
            at_unix_ms: now_unix_ms(),
            attributes: attributes(rec),
            detail: detail.unwrap_or_default(),
            instance_uid: uid_text(&rec.instance_uid),
            kind: kind.as_str(),
            node: &self.node_id,
        };
        // Written straight from the struct (no JSON tree first: events come with every push's
        // reports); its fields are strings, a number and a map of strings, which always serialize.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let msg = BusMessage::new(self.subjects.event(kind.as_str()), json);
        (kind, msg)
    }

    pub async fn publish(&self, (kind, msg): (EventKind, BusMessage)) {
        self.metrics
            .events
            .get_or_create(&vec![("kind", kind.as_str())])
            .inc();
        if let Err(e) = self.bus.publish(msg).await {
            debug!(error = %e, "event not published");
        }
    }
}
