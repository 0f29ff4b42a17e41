//! What a swarm agent's own-metrics export holds: the OTLP metrics an OpenTelemetry Collector
//! sends about itself (its internal telemetry, as the supervisor configures it), made from the
//! agent's uid and the time alone, so that an agent's state stays a few numbers. Its rates (CPU,
//! memory, items per second) are drawn from the uid; its counters are cumulative from the
//! agent's start and grow between exports. This file has what Flotilla keeps (process CPU and
//! memory, receivers' and exporters' item counts, exporters' queues), from the parts in
//! [`super::collector_parts`];
//! [`super::collector_other`] the collector's other metrics, which the gateway drops, so that an
//! ingest benchmark pays for those too. Builds protobuf only: no I/O, no clock.

use super::collector_other;
use super::collector_parts::{At, EXPORTERS, Points, SIGNALS, Shape, draw, kv};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use uuid::Uuid;

/// Receivers: name, transport, and the share of the agent's spans, metric points and log records
/// each takes in.
const RECEIVERS: [(&str, &str, [f64; 3]); 3] = [
    ("otlp", "grpc", [1.0, 0.3, 0.4]),
    ("prometheus", "http", [0.0, 0.7, 0.0]),
    ("filelog", "", [0.0, 0.0, 0.6]),
];
/// The exporters' sending_queue queue_size (the collector's default).
const QUEUE_CAPACITY: i64 = 1000;
const MIB: f64 = 1024.0 * 1024.0;

/// One agent as its exports describe it.
pub(super) struct Collector<'a> {
    pub uid: Uuid,
    pub service: &'a str,
    pub version: &'a str,
    /// When its process started (unix ns): the start of its cumulative counters.
    pub started_ns: u64,
    /// One of its exporters fails everything it is given, its queue near full, and its otlp
    /// receiver refuses some spans.
    pub failing: bool,
}

/// The receivers' accepted (or refused) items of signal `s`.
fn receiver_points(shape: &Shape, s: usize, refused: bool) -> Points {
    RECEIVERS
        .iter()
        .filter(|r| r.2[s] > 0.0)
        .map(|&(name, transport, share)| {
            let v = match refused {
                false => shape.n(shape.rates[s] * share[s]),
                // Back-pressure from a full queue: the otlp receiver refuses some spans.
                true if shape.failing.is_some() && name == "otlp" && s == 0 => {
                    shape.n(shape.rates[s] * 0.05)
                }
                true => 0,
            };
            (vec![kv("receiver", name), kv("transport", transport)], v)
        })
        .collect()
}

/// Each exporter's sent, failed and not-queued items, and its queue.
fn exporter_metrics(at: &mut At, shape: &Shape) -> Vec<Metric> {
    let mut out = Vec::new();
    let exp = |e: usize| vec![kv("exporter", EXPORTERS[e].0)];
    for (e, &(_, s)) in EXPORTERS.iter().enumerate() {
        let rate = shape.rates[s];
        let (sent, failed, not_queued) = match shape.failing == Some(e) {
            true => (0, shape.n(rate * 0.6), shape.n(rate * 0.4)),
            false => (shape.n(rate), 0, 0),
        };
        let signal = SIGNALS[s].0;
        for (name, v) in [
            (format!("otelcol_exporter_sent_{signal}"), sent),
            (format!("otelcol_exporter_send_failed_{signal}"), failed),
            (
                format!("otelcol_exporter_enqueue_failed_{signal}"),
                not_queued,
            ),
        ] {
            out.push(at.counter(&name, "{items}", vec![(exp(e), v)]));
        }
    }
    let second = (shape.t as u64).wrapping_add((draw(shape.uid, 8) * 1e6) as u64);
    let queue = |e: usize| match shape.failing == Some(e) {
        true => QUEUE_CAPACITY * 92 / 100 + (second % 70) as i64,
        false => (second.wrapping_mul(7 + e as u64) % 40) as i64,
    };
    let sizes = (0..3).map(|e| (exp(e), queue(e))).collect();
    out.push(at.gauge("otelcol_exporter_queue_size", "{batches}", sizes));
    let capacities = (0..3).map(|e| (exp(e), QUEUE_CAPACITY)).collect();
    out.push(at.gauge("otelcol_exporter_queue_capacity", "{batches}", capacities));
    out
}

impl Collector<'_> {
    /// The export this agent sends at `now_ns` (unix), and how many data points it holds.
    pub(super) fn export(&self, now_ns: u64) -> (ExportMetricsServiceRequest, usize) {
        let uid = self.uid;
        let t = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let failing = self.failing.then(|| (draw(uid, 4) * 3.0) as usize);
        let extra = |mib: f64| if self.failing { mib } else { 0.0 };
        let shape = Shape {
            uid,
            t,
            rates: [
                50.0 + 950.0 * draw(uid, 1),
                200.0 + 1800.0 * draw(uid, 2),
                100.0 + 1900.0 * draw(uid, 3),
            ],
            failing,
            // A full queue holds its data in memory.
            rss: MIB * (90.0 + 160.0 * draw(uid, 6) + extra(120.0))
                + 3.0 * MIB * (t / 30.0 + 6.3 * draw(uid, 7)).sin(),
        };
        let mut at = At {
            start: self.started_ns,
            now: now_ns,
            points: 0,
        };
        let cores = 0.02 + 0.18 * draw(uid, 5) + extra(0.05);
        let mut process = vec![
            at.seconds("otelcol_process_cpu_seconds", 0.35 + cores * t),
            at.gauge(
                "otelcol_process_memory_rss",
                "By",
                vec![(vec![], shape.rss as i64)],
            ),
        ];
        process.extend(collector_other::process(&mut at, &shape));
        let mut receivers = Vec::new();
        for (s, (signal, _)) in SIGNALS.iter().enumerate() {
            for (what, refused) in [("accepted", false), ("refused", true)] {
                let pts = receiver_points(&shape, s, refused);
                let name = format!("otelcol_receiver_{what}_{signal}");
                receivers.push(at.counter(&name, "{items}", pts));
            }
        }
        let exporters = exporter_metrics(&mut at, &shape);

        let scope = |name: &str| InstrumentationScope {
            name: name.into(),
            version: self.version.into(),
            ..Default::default()
        };
        let collector = |path: &str| scope(&format!("go.opentelemetry.io/collector/{path}"));
        let mut scopes = vec![
            (collector("service"), process),
            (collector("receiver/receiverhelper"), receivers),
            (collector("exporter/exporterhelper"), exporters),
        ];
        scopes.extend(
            collector_other::scopes(&mut at, &shape)
                .into_iter()
                .map(|(name, metrics)| (scope(&name), metrics)),
        );
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", self.service),
                        kv("service.instance.id", &uid.to_string()),
                        kv("service.version", self.version),
                    ],
                    ..Default::default()
                }),
                scope_metrics: scopes
                    .into_iter()
                    .map(|(scope, metrics)| ScopeMetrics {
                        scope: Some(scope),
                        metrics,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
        };
        (request, at.points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Sum, metric::Data, number_data_point};
    use prost::Message;
    use std::collections::{BTreeMap, BTreeSet};

    const T0: u64 = 1_800_000_000_000_000_000;
    const S: u64 = 1_000_000_000;

    fn agent(failing: bool) -> Collector<'static> {
        Collector {
            uid: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042),
            service: "io.opentelemetry.collector",
            version: "0.110.0",
            started_ns: T0,
            failing,
        }
    }

    /// The names the gateway keeps (gateway/src/otlp.rs).
    fn kept(name: &str) -> bool {
        let n = name.strip_prefix("otelcol_").unwrap_or(name);
        matches!(
            n,
            "process_cpu_seconds"
                | "process_memory_rss"
                | "exporter_queue_size"
                | "exporter_queue_capacity"
        ) || [
            "receiver_accepted_",
            "receiver_refused_",
            "exporter_sent_",
            "exporter_send_failed_",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    }

    fn metrics(req: &ExportMetricsServiceRequest) -> Vec<&Metric> {
        req.resource_metrics[0]
            .scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .collect()
    }

    /// Every number point by metric and component (receiver or exporter, else its attributes),
    /// and every histogram's count by metric and its point's position.
    fn values(req: &ExportMetricsServiceRequest) -> BTreeMap<(String, String), f64> {
        let mut out = BTreeMap::new();
        for m in metrics(req) {
            let points: Vec<(String, f64)> = match m.data.as_ref().unwrap() {
                Data::Sum(Sum { data_points, .. }) | Data::Gauge(Gauge { data_points }) => {
                    data_points
                        .iter()
                        .map(|p| {
                            let text = |a: &KeyValue| match a.value.as_ref()?.value.as_ref()? {
                                any_value::Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            };
                            // The receiver or exporter, else all attributes.
                            let component = p
                                .attributes
                                .iter()
                                .find(|a| ["receiver", "exporter"].contains(&a.key.as_str()))
                                .and_then(text)
                                .unwrap_or_else(|| {
                                    let all: Vec<_> =
                                        p.attributes.iter().filter_map(text).collect();
                                    all.join(",")
                                });
                            let v = match p.value.unwrap() {
                                number_data_point::Value::AsInt(i) => i as f64,
                                number_data_point::Value::AsDouble(d) => d,
                            };
                            (component, v)
                        })
                        .collect()
                }
                Data::Histogram(h) => h
                    .data_points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{}", m.name);
                        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                        (i.to_string(), p.count as f64)
                    })
                    .collect(),
                _ => panic!("{}: unexpected kind", m.name),
            };
            for (component, v) in points {
                out.insert((m.name.clone(), component), v);
            }
        }
        out
    }

    #[test]
    fn an_export_has_what_flotilla_keeps_and_about_thirty_metrics_more() {
        let (req, points) = agent(false).export(T0 + 10 * S);
        let all = metrics(&req);
        let names: BTreeSet<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "each metric once");
        let kept_metrics = all.iter().filter(|m| kept(&m.name)).count();
        assert_eq!(kept_metrics, 16);
        assert!(
            all.len() - kept_metrics >= 30,
            "{} others",
            all.len() - kept_metrics
        );
        let v = values(&req);
        assert_eq!(points, v.len());
        let components = |prefix: &str| -> BTreeSet<&str> {
            v.keys()
                .filter(|(n, c)| n.starts_with(prefix) && !c.is_empty())
                .map(|(_, c)| c.as_str())
                .collect()
        };
        assert_eq!(
            components("otelcol_receiver_"),
            BTreeSet::from(["filelog", "otlp", "prometheus"])
        );
        assert_eq!(
            components("otelcol_exporter_sent_"),
            BTreeSet::from(["otlp", "otlphttp", "prometheusremotewrite"])
        );
        let resource = req.resource_metrics[0].resource.as_ref().unwrap();
        assert!(resource.attributes.contains(&kv(
            "service.instance.id",
            "01900000-0000-7000-8000-000000000042"
        )));
        let size = req.encoded_len();
        eprintln!(
            "{} metrics ({kept_metrics} kept), {points} points, {size} bytes",
            all.len()
        );
        assert!((4096..65536).contains(&size), "{size} bytes");
    }

    #[test]
    fn counters_grow_between_exports() {
        for failing in [false, true] {
            let a = values(&agent(failing).export(T0 + 10 * S).0);
            let b = values(&agent(failing).export(T0 + 11 * S).0);
            for (key, before) in &a {
                let gauge = key.0.contains("queue_size")
                    || key.0.contains("memory")
                    || key.0.contains("heap")
                    || key.0.contains("files")
                    || key.0.contains("cardinality");
                if !gauge {
                    assert!(b[key] >= *before, "{key:?} went down");
                }
            }
            let grew = |name: &str, component: &str| {
                let k = (name.to_owned(), component.to_owned());
                b[&k] > a[&k]
            };
            assert!(grew("otelcol_process_cpu_seconds", ""));
            assert!(grew("otelcol_receiver_accepted_spans", "otlp"));
            assert!(grew("otelcol_receiver_accepted_log_records", "filelog"));
        }
    }

    #[test]
    fn a_failing_agent_has_one_exporter_failing_with_its_queue_near_full() {
        let fill = |v: &BTreeMap<(String, String), f64>, e: &str| {
            let k = |n: &str| (format!("otelcol_exporter_queue_{n}"), e.to_owned());
            v[&k("size")] / v[&k("capacity")]
        };
        let healthy = values(&agent(false).export(T0 + 10 * S).0);
        let (a, b) = (
            values(&agent(true).export(T0 + 10 * S).0),
            values(&agent(true).export(T0 + 11 * S).0),
        );
        let mut failing = Vec::new();
        for (e, s) in EXPORTERS {
            let signal = SIGNALS[s].0;
            let failed = (
                format!("otelcol_exporter_send_failed_{signal}"),
                e.to_owned(),
            );
            let sent = (format!("otelcol_exporter_sent_{signal}"), e.to_owned());
            assert_eq!(healthy[&failed], 0.0);
            assert!(fill(&healthy, e) < 0.9);
            if b[&failed] > a[&failed] {
                assert_eq!(b[&sent], a[&sent], "{e} sends nothing");
                assert!(fill(&b, e) >= 0.9, "{e}'s queue");
                failing.push(e);
            } else {
                assert!(b[&sent] > a[&sent] && fill(&b, e) < 0.9, "{e}");
            }
        }
        assert_eq!(failing.len(), 1, "{failing:?}");
    }
}
