//! The gateway's Prometheus metrics, all named `flotilla_gateway_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
/// Counts by a label of the configuration (a destination's name) and an outcome.
pub type Outcomes = Family<Vec<(&'static str, String)>, Counter>;

#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections: Gauge,
    pub messages: Family<Labels, Counter>,
    pub rejected: Family<Labels, Counter>,
    pub uplink_seconds: Histogram,
    pub uplinks_in_flight: Gauge,
    pub own_metrics: Family<Labels, Counter>,
    pub own_metrics_forwarded: Outcomes,
    pub heartbeats: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connections: Gauge::default(),
            messages: Family::default(),
            rejected: Family::default(),
            uplink_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            uplinks_in_flight: Gauge::default(),
            own_metrics: Family::default(),
            own_metrics_forwarded: Family::default(),
            heartbeats: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("flotilla_gateway");
        r.register(
            "websocket_connections",
            "Open agent WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "messages",
            "OpAMP messages, by transport and direction",
            m.messages.clone(),
        );
        r.register(
            "rejected",
            "Agent messages refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "uplink_seconds",
            "Agent message to owner reply, as seen by the gateway",
            m.uplink_seconds.clone(),
        );
        r.register(
            "uplinks_in_flight",
            "Agent messages sent to their owners and not answered yet (at most 256: past that, \
             agents' next messages wait at the gateway until owners answer)",
            m.uplinks_in_flight.clone(),
        );
        r.register(
            "own_metrics",
            "Agents' own metrics (OTLP): samples queued for, delivered to and not taken by owners, \
             replaced by a newer one of the same agent (superseded), refused for a full queue \
             (queue_full); data points not kept (dropped_points); exports not forwarded under \
             the registry identity rule (not_forwarded_registry)",
            m.own_metrics.clone(),
        );
        r.register(
            "own_metrics_forwarded",
            "Copies of agents' own-metrics exports for --agent-metrics-forward destinations, by \
             destination and outcome (sent, failed, queue_full, unknown_destination)",
            m.own_metrics_forwarded.clone(),
        );
        r.register(
            "heartbeats",
            "Agents' heartbeats the gateway answered itself under their owners' grants (answered), \
             and of those: delivered to and not taken by their owners (recorded, not_delivered), \
             whose grant the owner ended (grant_ended); heartbeats sent to the owner as they \
             came for a full queue (queue_full)",
            m.heartbeats.clone(),
        );
        m
    }
}
