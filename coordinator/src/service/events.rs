//! Agent events (connected, disconnected, silent, unhealthy, config applied or failed),
//! published as JSON on `opamp.<region>.evt.<kind>` for whoever watches.

use crate::metrics::OwnerMetrics;
use crate::opamp::EventKind;
use flotilla_common::bus::{Bus, BusMessage};
use flotilla_common::names::Subjects;
use flotilla_common::telemetry::now_unix_ms;
use std::sync::Arc;
use tracing::debug;
use uuid::Uuid;

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

    pub async fn emit(&self, kind: EventKind, uid: Uuid) {
        self.metrics
            .events
            .get_or_create(&vec![("kind", kind.as_str())])
            .inc();
        let body = serde_json::json!({
            "kind": kind.as_str(),
            "instance_uid": uid.to_string(),
            "at_unix_ms": now_unix_ms(),
            "node": self.node_id,
        });
        let msg = BusMessage::new(self.subjects.event(kind.as_str()), body.to_string());
        if let Err(e) = self.bus.publish(msg).await {
            debug!(error = %e, "event not published");
        }
    }
}
