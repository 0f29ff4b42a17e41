//! What a gateway spends on one agent's own-metrics export: reading a collector-like OTLP/HTTP
//! body and keeping what Flotilla keeps of it (`otlp::samples_of`, which decodes only what it
//! keeps), per export, on one core. The baseline in the same run is decoding the same body into
//! opentelemetry-proto's types alone: what an OTLP receiver pays before doing anything with it.
//!
//!     cargo bench -p flotilla-gateway --bench otlp
//!
//! The export: a collector's own metrics as its OTLP exporter sends them (process CPU and
//! memory, 3 receivers and 3 exporters over three signals, queue gauges, and 30 metrics Flotilla
//! drops, e.g. the batch processor's histograms).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_gateway::otlp::{samples_of, string_kv};
use flotilla_loadtest::otlp::{counter, gauge};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::hint::black_box;

fn point(attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        value: Some(number_data_point::Value::AsDouble(v)),
        time_unix_nano: 1_800_000_000_000_000_000,
        start_time_unix_nano: 1_799_999_000_000_000_000,
        ..Default::default()
    }
}

fn collector_export() -> Vec<u8> {
    let signals = ["spans", "metric_points", "log_records"];
    let mut metrics = vec![
        counter("otelcol_process_cpu_seconds", vec![point(vec![], 1234.5)]),
        gauge("otelcol_process_memory_rss", vec![point(vec![], 2.1e8)]),
    ];
    for kind in ["receiver_accepted", "receiver_refused"] {
        for s in signals {
            let points = ["otlp", "prometheus", "filelog"]
                .iter()
                .map(|r| {
                    point(
                        vec![string_kv("receiver", r), string_kv("transport", "grpc")],
                        1e6,
                    )
                })
                .collect();
            metrics.push(counter(&format!("otelcol_{kind}_{s}"), points));
        }
    }
    let exporters = || ["otlp", "otlphttp/backup", "debug"];
    for kind in ["exporter_sent", "exporter_send_failed"] {
        for s in signals {
            let points = exporters()
                .iter()
                .map(|e| point(vec![string_kv("exporter", e)], 1e6))
                .collect();
            metrics.push(counter(&format!("otelcol_{kind}_{s}"), points));
        }
    }
    for g in ["exporter_queue_size", "exporter_queue_capacity"] {
        let points = exporters()
            .iter()
            .map(|e| {
                point(
                    vec![string_kv("exporter", e), string_kv("data_type", "traces")],
                    100.0,
                )
            })
            .collect();
        metrics.push(gauge(&format!("otelcol_{g}"), points));
    }
    for i in 0..30 {
        metrics.push(if i % 3 == 0 {
            Metric {
                name: format!("otelcol_processor_batch_metric_{i}"),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: vec![string_kv("processor", "batch")],
                        count: 100,
                        sum: Some(1000.0),
                        bucket_counts: vec![1; 15],
                        explicit_bounds: (0..14).map(f64::from).collect(),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            }
        } else {
            gauge(
                &format!("otelcol_process_runtime_metric_{i}"),
                vec![point(vec![], 42.0)],
            )
        });
    }
    let resource = Resource {
        attributes: vec![
            string_kv("service.name", "otelcol-contrib"),
            string_kv(
                "service.instance.id",
                "0190c9a4-0000-7000-8000-000000000001",
            ),
            string_kv("service.version", "0.120.0"),
        ],
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let body = bytes::Bytes::from(collector_export());
    let kept = samples_of(&body, None, 1).expect("a valid export");
    eprintln!(
        "export: {} bytes, {} points dropped, sample {} bytes on the bus",
        body.len(),
        kept.dropped_points,
        kept.samples[0].encoded_len()
    );
    let mut g = c.benchmark_group("own_metrics_export");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode only (baseline)", |b| {
        b.iter(|| ExportMetricsServiceRequest::decode(black_box(body.as_ref())).unwrap())
    });
    g.bench_function("decode and keep (samples_of)", |b| {
        b.iter(|| samples_of(black_box(&body), None, 1).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
