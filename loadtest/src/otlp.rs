//! OTLP metric exports made by hand, for the tests and benchmarks that need exact numbers (the
//! swarm's realistic collector exports are in `swarm/collector_metrics.rs`).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use uuid::Uuid;

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn point(attributes: Vec<KeyValue>, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// A cumulative, monotonic sum.
pub fn counter(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    metric(
        name,
        Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
    )
}

pub fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    metric(
        name,
        Data::Gauge(Gauge {
            data_points: points,
        }),
    )
}

fn metric(name: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    }
}

/// An export of `metrics` for one resource (`service.instance.id` = `instance_id`, when given),
/// as OTLP/HTTP protobuf.
pub fn export(instance_id: Option<&str>, metrics: Vec<Metric>) -> Vec<u8> {
    let attributes = instance_id
        .map(|id| vec![kv("service.instance.id", id)])
        .unwrap_or_default();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// A collector's own metrics for agent `uid`: `cpu` seconds of CPU so far, 150 MB resident, and
/// its exporter `otlp` with `sent` and `failed` spans so far and `queue` items in its queue of
/// 1000.
pub fn collector(uid: Uuid, cpu: f64, sent: f64, failed: f64, queue: f64) -> Vec<u8> {
    let otlp = |v: f64| vec![point(vec![kv("exporter", "otlp")], v)];
    let metrics = vec![
        counter("otelcol_process_cpu_seconds", vec![point(vec![], cpu)]),
        gauge("otelcol_process_memory_rss", vec![point(vec![], 150e6)]),
        counter("otelcol_exporter_sent_spans", otlp(sent)),
        counter("otelcol_exporter_send_failed_spans", otlp(failed)),
        gauge("otelcol_exporter_queue_size", otlp(queue)),
        gauge("otelcol_exporter_queue_capacity", otlp(1000.0)),
    ];
    export(Some(&uid.to_string()), metrics)
}
