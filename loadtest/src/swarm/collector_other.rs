//! The collector's own metrics Flotilla does not keep, for a swarm agent's exports
//! ([`super::collector_metrics`]; built from [`super::collector_parts`]): the Go runtime's, the batch processor's and memory limiter's,
//! the filelog receiver's and the Prometheus remote-write exporter's, and the gRPC and HTTP
//! instrumentation's histograms. Their names, units and attributes are the collector's; their
//! values follow the agent's rates. The gateway drops every point of them (counted), which is
//! what a real collector's export costs it too.

use super::collector_parts::{At, EXPORTERS, SIGNALS, Shape, draw, int_kv, kv};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::Metric;

const SIZE_BOUNDS: [f64; 22] = [
    10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0,
    6000.0, 7000.0, 8000.0, 9000.0, 10000.0, 20000.0, 30000.0, 50000.0, 100000.0,
];
const BYTES_BOUNDS: [f64; 16] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0,
    2097152.0, 4194304.0, 8388608.0, 16777216.0, 33554432.0, 67108864.0,
];
const MS_BOUNDS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
const S_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const COUNT_BOUNDS: [f64; 6] = [1.0, 2.0, 5.0, 10.0, 100.0, 1000.0];
/// Items per batch the batch processor sends, and bytes per item.
const BATCH: f64 = 400.0;
const ITEM_BYTES: f64 = 180.0;

/// The process's other metrics (scope `service`, beside CPU and memory).
pub(super) fn process(at: &mut At, s: &Shape) -> Vec<Metric> {
    let total: f64 = s.rates.iter().sum();
    let one = |v: i64| vec![(vec![], v)];
    vec![
        at.seconds("otelcol_process_uptime", s.t),
        at.gauge(
            "otelcol_process_runtime_heap_alloc_bytes",
            "By",
            one((s.rss * 0.55) as i64),
        ),
        at.counter(
            "otelcol_process_runtime_total_alloc_bytes",
            "By",
            one(s.n(total * 2048.0)),
        ),
        at.gauge(
            "otelcol_process_runtime_total_sys_memory_bytes",
            "By",
            one((s.rss * 1.1) as i64),
        ),
    ]
}

/// The other scopes (name, metrics).
pub(super) fn scopes(at: &mut At, s: &Shape) -> Vec<(String, Vec<Metric>)> {
    let collector = |p: &str| format!("go.opentelemetry.io/collector/{p}");
    let contrib =
        |p: &str| format!("github.com/open-telemetry/opentelemetry-collector-contrib/{p}");
    let instrumentation = |p: &str| format!("go.opentelemetry.io/contrib/instrumentation/{p}");
    vec![
        (collector("processor/batchprocessor"), batch(at, s)),
        (
            collector("processor/memorylimiterprocessor"),
            memory_limiter(at, s),
        ),
        (contrib("pkg/stanza/fileconsumer"), filelog(at, s)),
        (
            contrib("exporter/prometheusremotewriteexporter"),
            remote_write(at, s),
        ),
        (
            instrumentation("google.golang.org/grpc/otelgrpc"),
            grpc(at, s),
        ),
        (instrumentation("net/http/otelhttp"), http(at, s)),
    ]
}

fn batch(at: &mut At, s: &Shape) -> Vec<Metric> {
    let batches = (s.rates.iter().sum::<f64>() / BATCH).max(1.0);
    let attrs = || vec![kv("processor", "batch")];
    let sent = s.n(batches) as u64;
    // Items each processor of the pipelines (memory_limiter, batch) took in or sent on.
    let items = || {
        ["memory_limiter", "batch"]
            .iter()
            .flat_map(|p| {
                SIGNALS.iter().enumerate().map(move |(i, (_, signal))| {
                    let attrs = vec![kv("processor", p), kv("otel.signal", signal)];
                    (attrs, s.n(s.rates[i]))
                })
            })
            .collect::<Vec<_>>()
    };
    vec![
        at.histogram(
            "otelcol_processor_batch_batch_send_size",
            "{units}",
            &SIZE_BOUNDS,
            vec![(attrs(), sent, BATCH)],
        ),
        at.histogram(
            "otelcol_processor_batch_batch_send_size_bytes",
            "By",
            &BYTES_BOUNDS,
            vec![(attrs(), sent, BATCH * ITEM_BYTES)],
        ),
        at.counter(
            "otelcol_processor_batch_batch_size_trigger_send",
            "{times}",
            vec![(attrs(), s.n(batches * 0.8))],
        ),
        at.counter(
            "otelcol_processor_batch_timeout_trigger_send",
            "{times}",
            vec![(attrs(), s.n(batches * 0.2))],
        ),
        at.sum(
            "otelcol_processor_batch_metadata_cardinality",
            "{combinations}",
            false,
            vec![(attrs(), 1)],
        ),
        at.counter("otelcol_processor_incoming_items", "{items}", items()),
        at.counter("otelcol_processor_outgoing_items", "{items}", items()),
    ]
}

fn memory_limiter(at: &mut At, s: &Shape) -> Vec<Metric> {
    let attrs = || vec![kv("processor", "memory_limiter")];
    let mut out = Vec::new();
    for (i, (signal, _)) in SIGNALS.iter().enumerate() {
        let accepted = format!("otelcol_processor_accepted_{signal}");
        out.push(at.counter(&accepted, "{items}", vec![(attrs(), s.n(s.rates[i]))]));
        let refused = format!("otelcol_processor_refused_{signal}");
        out.push(at.counter(&refused, "{items}", vec![(attrs(), 0)]));
    }
    out
}

fn filelog(at: &mut At, s: &Shape) -> Vec<Metric> {
    let files = 3 + (draw(s.uid, 9) * 20.0) as i64;
    vec![
        at.sum(
            "otelcol_fileconsumer_open_files",
            "{files}",
            false,
            vec![(vec![], files)],
        ),
        at.sum(
            "otelcol_fileconsumer_reading_files",
            "{files}",
            false,
            vec![(vec![], files / 3)],
        ),
    ]
}

fn remote_write(at: &mut At, s: &Shape) -> Vec<Metric> {
    vec![
        at.counter(
            "otelcol_exporter_prometheusremotewrite_failed_translations",
            "{series}",
            vec![(vec![], 0)],
        ),
        at.counter(
            "otelcol_exporter_prometheusremotewrite_translated_time_series",
            "{series}",
            vec![(vec![], s.n(s.rates[1]))],
        ),
    ]
}

fn rpc(service: &str) -> Vec<KeyValue> {
    vec![
        kv("rpc.method", "Export"),
        kv(
            "rpc.service",
            &format!("opentelemetry.proto.collector.{service}"),
        ),
        kv("rpc.system", "grpc"),
        int_kv("rpc.grpc.status_code", 0),
    ]
}

const SERVICES: [&str; 3] = [
    "trace.v1.TraceService",
    "metrics.v1.MetricsService",
    "logs.v1.LogsService",
];

/// The gRPC calls the otlp receiver serves (one per 100 items of each signal) and those the otlp
/// exporter makes (one a batch).
fn grpc(at: &mut At, s: &Shape) -> Vec<Metric> {
    let shares = [1.0, 0.3, 0.4];
    let served = |mean: f64| {
        (0..3)
            .map(|i| {
                let calls = s.n(s.rates[i] * shares[i] / 100.0) as u64;
                (rpc(SERVICES[i]), calls, mean)
            })
            .collect::<Vec<_>>()
    };
    let made = s.n(s.rates[EXPORTERS[0].1] / BATCH) as u64;
    let one = |mean: f64| vec![(rpc(SERVICES[0]), made, mean)];
    vec![
        at.histogram("rpc.server.duration", "ms", &MS_BOUNDS, served(2.0)),
        at.histogram(
            "rpc.server.request.size",
            "By",
            &BYTES_BOUNDS,
            served(100.0 * ITEM_BYTES),
        ),
        at.histogram("rpc.server.response.size", "By", &BYTES_BOUNDS, served(5.0)),
        at.histogram(
            "rpc.server.requests_per_rpc",
            "{count}",
            &COUNT_BOUNDS,
            served(1.0),
        ),
        at.histogram(
            "rpc.server.responses_per_rpc",
            "{count}",
            &COUNT_BOUNDS,
            served(1.0),
        ),
        at.histogram("rpc.client.duration", "ms", &MS_BOUNDS, one(20.0)),
        at.histogram(
            "rpc.client.request.size",
            "By",
            &BYTES_BOUNDS,
            one(BATCH * ITEM_BYTES),
        ),
    ]
}

/// The HTTP requests of the two HTTP exporters (one a batch); a failing one is answered 503.
fn http(at: &mut At, s: &Shape) -> Vec<Metric> {
    let hosts = ["tempo.example.com", "mimir.example.com", "loki.example.com"];
    let requests = |mean: f64| {
        (1..3)
            .map(|e| {
                let code = if s.failing == Some(e) { 503 } else { 200 };
                let attrs = vec![
                    kv("http.request.method", "POST"),
                    int_kv("http.response.status_code", code),
                    kv("server.address", hosts[e]),
                    int_kv("server.port", 443),
                ];
                (attrs, s.n(s.rates[EXPORTERS[e].1] / BATCH) as u64, mean)
            })
            .collect::<Vec<_>>()
    };
    vec![
        at.histogram(
            "http.client.request.duration",
            "s",
            &S_BOUNDS,
            requests(0.03),
        ),
        at.histogram(
            "http.client.request.body.size",
            "By",
            &BYTES_BOUNDS,
            requests(BATCH * ITEM_BYTES),
        ),
    ]
}
