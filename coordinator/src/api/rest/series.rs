//! `GET /metrics/agents` (opt-in, `--per-agent-metrics`): one Prometheus series per agent and
//! measure, for users who chart agents by id: `flotilla_agent_up`, `flotilla_agent_healthy`,
//! `flotilla_agent_cpu_cores`, `flotilla_agent_memory_bytes`, and per exporter
//! `flotilla_agent_exporter_failed_per_second` and `flotilla_agent_exporter_queue_fill`. Its size
//! grows with the fleet (docs/agent-metrics.md says by how much); the main `/metrics` stays bounded.

use super::reply::ApiError;
use crate::ops::{Caller, Ops};
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_common::telemetry::label_value;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type Series = Family<Labels, Gauge<f64, AtomicU64>>;

pub(super) async fn agents(
    State(ops): State<Ops>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let agents = ops.agent_series(&caller).await?;
    let [up, healthy, cpu, memory, failed, fill] = std::array::from_fn(|_| Series::default());
    for a in &agents {
        let labels = vec![
            ("instance_uid", a.instance_uid.clone()),
            ("service_name", label_value(&a.service_name)),
        ];
        up.get_or_create(&labels)
            .set(f64::from(u8::from(a.connected)));
        if let Some(h) = a.healthy {
            healthy.get_or_create(&labels).set(f64::from(u8::from(h)));
        }
        if let Some(c) = a.cpu_cores {
            cpu.get_or_create(&labels).set(c);
        }
        if let Some(m) = a.memory_bytes {
            memory.get_or_create(&labels).set(m);
        }
        for (name, failed_per_second, queue_fill) in &a.exporters {
            let mut labels = labels.clone();
            labels.push(("exporter", label_value(name)));
            failed.get_or_create(&labels).set(*failed_per_second);
            if let Some(f) = queue_fill {
                fill.get_or_create(&labels).set(*f);
            }
        }
    }
    let mut registry = Registry::with_prefix("flotilla_agent");
    registry.register("up", "1 while the agent is connected", up);
    registry.register(
        "healthy",
        "1 while the agent reports healthy, 0 unhealthy (absent: it reports no health)",
        healthy,
    );
    registry.register(
        "cpu_cores",
        "CPU the agent used over its last own-metrics interval, in cores",
        cpu,
    );
    registry.register("memory_bytes", "The agent's resident memory", memory);
    registry.register(
        "exporter_failed_per_second",
        "Items an exporter of the agent failed to send, per second over the last interval",
        failed,
    );
    registry.register(
        "exporter_queue_fill",
        "How full an exporter's sending queue is (size / capacity)",
        fill,
    );
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        return Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
