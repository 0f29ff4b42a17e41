//! The coordinator's Prometheus metrics, all named `flotilla_coordinator_*`: the shard owner's
//! ([`OwnerMetrics`]) and the admin API's ([`ApiMetrics`]). Any layer may use this module; it uses
//! none.

use flotilla_common::telemetry::LogLimiter;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::num::NonZeroU32;
use std::sync::Arc;

type Labels = Vec<(&'static str, &'static str)>;
/// Labels with a value known only at run time (a version, a route template, a status code).
type OwnedLabels = Vec<(&'static str, String)>;

const PREFIX: &str = "flotilla_coordinator";

/// What the shard owner counts.
#[derive(Debug, Clone)]
pub struct OwnerMetrics {
    pub uplinks: Family<Labels, Counter>,
    pub uplink_seconds: Histogram,
    pub uplinks_in_flight: Gauge,
    pub list_part_seconds: Histogram,
    pub pushes: Family<Labels, Counter>,
    pub pushes_awaiting: Gauge,
    pub pushes_unanswered: Counter,
    pub events: Family<Labels, Counter>,
    pub own_metrics: Family<Labels, Counter>,
    pub agents: Family<Labels, Gauge>,
    pub agents_health: Family<Labels, Gauge>,
    pub agents_config: Family<Labels, Gauge>,
    pub agents_version: Family<OwnedLabels, Gauge>,
    pub rollouts: Family<Labels, Gauge>,
    pub alerts: Family<Labels, Gauge>,
    pub alerts_refused: Counter,
    pub alerts_expired: Counter,
    pub alert_notifications: Family<Labels, Counter>,
    pub owned_shards: Gauge,
    pub shard_changes: Family<Labels, Counter>,
    pub duty_failures: Family<Labels, Counter>,
    /// Rate limits for log lines an agent can cause at will.
    pub refusal_log: Arc<LogLimiter>,
    pub store_log: Arc<LogLimiter>,
}

impl OwnerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            uplinks: Family::default(),
            uplink_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            uplinks_in_flight: Gauge::default(),
            list_part_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            pushes: Family::default(),
            pushes_awaiting: Gauge::default(),
            pushes_unanswered: Counter::default(),
            events: Family::default(),
            own_metrics: Family::default(),
            agents: Family::default(),
            agents_health: Family::default(),
            agents_config: Family::default(),
            agents_version: Family::default(),
            rollouts: Family::default(),
            alerts: Family::default(),
            alerts_refused: Counter::default(),
            alerts_expired: Counter::default(),
            alert_notifications: Family::default(),
            owned_shards: Gauge::default(),
            shard_changes: Family::default(),
            duty_failures: Family::default(),
            refusal_log: Arc::default(),
            store_log: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "uplinks",
            "Agent messages processed, by result",
            m.uplinks.clone(),
        );
        r.register(
            "uplink_seconds",
            "Time to process one agent message",
            m.uplink_seconds.clone(),
        );
        r.register(
            "uplinks_in_flight",
            "Agent messages taken from the bus and not answered yet (at most 256; past that the \
             owner takes no more until some are answered, and gateways wait or answer UNAVAILABLE)",
            m.uplinks_in_flight.clone(),
        );
        r.register(
            "list_part_seconds",
            "Time to walk the owned shards for this owner's part of an agent list (ADR 0019)",
            m.list_part_seconds.clone(),
        );
        r.register(
            "pushes",
            "ServerToAgent pushes to connected agents, by result",
            m.pushes.clone(),
        );
        r.register(
            "pushes_awaiting",
            "Agents a push or a reply offered a config to that have not answered yet (about 48 \
             at most: past that, pushes wait and replies offer no config)",
            m.pushes_awaiting.clone(),
        );
        r.register(
            "pushes_unanswered",
            "Agents a push reached that did not answer it within 5 s (they stopped being awaited)",
            m.pushes_unanswered.clone(),
        );
        r.register(
            "agent_events",
            "Agent events emitted, by kind",
            m.events.clone(),
        );
        r.register(
            "own_metrics_samples",
            "Agents' own-metrics samples from gateways, by outcome (kept; unknown_agent: no such \
             agent; identity: its certificate may not speak for the agent; stale: older than the \
             last kept; store_error)",
            m.own_metrics.clone(),
        );
        r.register(
            "agents",
            "Agents of the shards this coordinator owns, by status (refreshed every few seconds)",
            m.agents.clone(),
        );
        r.register(
            "agents_health",
            "Connected agents of the shards this coordinator owns, by reported health \
             (healthy, unhealthy, unknown)",
            m.agents_health.clone(),
        );
        r.register(
            "agents_config",
            "Agents of the shards this coordinator owns, by config state (applied, applying, \
             failed, pending, unmanaged)",
            m.agents_config.clone(),
        );
        r.register(
            "agents_version",
            "Agents of the shards this coordinator owns, by service.version (the 12 most common; \
             the rest as (other))",
            m.agents_version.clone(),
        );
        r.register(
            "rollouts",
            "Rollouts by state (running, paused, completed, rolled_back, aborted), reported by \
             the coordinator that steps them (the holder of shard 0)",
            m.rollouts.clone(),
        );
        r.register(
            "alerts",
            "Alerts in the books of the shards this coordinator owns, by kind and state \
             (pending: within its grace period; firing; resolved: not yet told to every sink)",
            m.alerts.clone(),
        );
        r.register(
            "alerts_refused",
            "Conditions not raised because their alert book was full",
            m.alerts_refused.clone(),
        );
        r.register(
            "alerts_expired",
            "Resolved alerts dropped after a day without reaching every sink (a sink down that \
             long)",
            m.alerts_expired.clone(),
        );
        r.register(
            "alert_notifications",
            "Alert notifications sent, by sink kind (webhook, alertmanager) and outcome \
             (delivered, failed: sent again later)",
            m.alert_notifications.clone(),
        );
        r.register(
            "owned_shards",
            "Shards this coordinator holds a valid lease on",
            m.owned_shards.clone(),
        );
        r.register(
            "duty_failures",
            "Runs of a background duty (silence_sweep, rollouts, gauges, desired_state, \
             agent_retention) that failed or panicked",
            m.duty_failures.clone(),
        );
        r.register(
            "shard_changes",
            "Shard ownership changes: acquired, released (handed off), lost (expired or fenced)",
            m.shard_changes.clone(),
        );
        m
    }
}

/// What the admin API counts.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// By method, route (the template, e.g. `/api/v1/agents/{uid}`) and status code.
    pub requests: Family<OwnedLabels, Counter>,
    /// By method and route.
    pub request_seconds: Family<OwnedLabels, Histogram>,
    pub refused: Family<Labels, Counter>,
    pub refusal_log: Arc<LogLimiter>,
    /// How many refused calls reach the audit log: bursts of 20, then one a second, so callers
    /// without a valid token cannot grow the log at will (all are counted).
    pub refusal_audit: Arc<DefaultDirectRateLimiter>,
}

impl ApiMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let burst = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            refused: Family::default(),
            refusal_log: Arc::default(),
            refusal_audit: Arc::new(RateLimiter::direct(
                Quota::per_second(NonZeroU32::MIN).allow_burst(burst),
            )),
        };
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "api_requests",
            "Admin API requests (REST, gRPC, console) by method, route template and status code",
            m.requests.clone(),
        );
        r.register(
            "api_request_seconds",
            "Admin API request duration by method and route template",
            m.request_seconds.clone(),
        );
        r.register(
            "api_refused",
            "Admin API calls refused before reaching an operation, by reason \
             (unauthenticated, forbidden)",
            m.refused.clone(),
        );
        m
    }
}
