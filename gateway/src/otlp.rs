//! Agents' own metrics over OTLP/HTTP: what the gateway keeps of one export. Each resource is an
//! agent (its `service.instance.id`, or the uid its client certificate names); of its metrics only
//! the process's CPU and memory and each receiver's and exporter's item counts and queue are kept
//! (the collector's own names, `otelcol_*`, and the OpenTelemetry semantic conventions' `process.*`
//! where other agents send those), summed over signals and attributes. Everything else is counted
//! as dropped. Pure: the same export always gives the same samples.

use crate::otlp_wire::{self as wire, DELTA, ExportRequest, Numbers, Points};
use bytes::Bytes;
use flotilla_proto::bus::{ComponentSample, OwnMetricsSample};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Receivers, and exporters, kept per agent; the points of others are dropped.
pub const MAX_COMPONENTS: usize = 16;
/// Agents one export may report for (a collector forwarding its peers' metrics, for one).
pub const MAX_AGENTS: usize = 64;
/// Longest receiver or exporter name kept.
const MAX_NAME: usize = 128;

/// Why an export is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Malformed for this purpose (400).
    BadRequest(String),
    /// Names an agent the connection may not speak for (403).
    Forbidden(String),
}

/// What one export is made of, per agent.
#[derive(Debug, Default)]
pub struct Export {
    pub samples: Vec<OwnMetricsSample>,
    /// Points not kept, over all agents.
    pub dropped_points: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cpu,
    Memory,
    Accepted,
    Refused,
    Sent,
    Failed,
    QueueSize,
    QueueCapacity,
}

/// What a metric name is, if it is one that is kept.
fn kind_of(name: &str) -> Option<Kind> {
    let n = name.strip_prefix("otelcol_").unwrap_or(name);
    let n = n.strip_suffix("_total").unwrap_or(n);
    let kind = match n {
        "process_cpu_seconds" | "process.cpu.time" => Kind::Cpu,
        "process_memory_rss" | "process.memory.usage" => Kind::Memory,
        "exporter_queue_size" => Kind::QueueSize,
        "exporter_queue_capacity" => Kind::QueueCapacity,
        n if n.starts_with("receiver_accepted_") => Kind::Accepted,
        n if n.starts_with("receiver_refused_") => Kind::Refused,
        n if n.starts_with("exporter_sent_") => Kind::Sent,
        n if n.starts_with("exporter_send_failed_") => Kind::Failed,
        _ => return None,
    };
    Some(kind)
}

fn string_attr<'a>(attrs: &'a [wire::KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key.as_bytes())
        .and_then(|kv| kv.value.as_ref()?.string_value.as_ref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn value_of(p: &wire::NumberDataPoint) -> Option<f64> {
    let v = match (p.as_double, p.as_int) {
        (Some(d), _) => d,
        (None, Some(i)) => i as f64,
        (None, None) => return None,
    };
    v.is_finite().then_some(v)
}

/// One agent's sample as it is being summed up.
#[derive(Default)]
struct Sums {
    cpu: Option<f64>,
    memory: Option<f64>,
    receivers: BTreeMap<String, ComponentSample>,
    exporters: BTreeMap<String, ComponentSample>,
    dropped: u64,
}

impl Sums {
    /// Adds one point; false when it is not kept.
    fn add(&mut self, kind: Kind, attrs: &[wire::KeyValue], v: f64) -> bool {
        let add = |slot: &mut Option<f64>| *slot = Some(slot.unwrap_or(0.0) + v);
        let (components, key) = match kind {
            Kind::Cpu => {
                add(&mut self.cpu);
                return true;
            }
            Kind::Memory => {
                add(&mut self.memory);
                return true;
            }
            Kind::Accepted | Kind::Refused => (&mut self.receivers, "receiver"),
            Kind::Sent | Kind::Failed | Kind::QueueSize | Kind::QueueCapacity => {
                (&mut self.exporters, "exporter")
            }
        };
        let Some(name) = string_attr(attrs, key).filter(|n| n.len() <= MAX_NAME) else {
            return false;
        };
        if !components.contains_key(name) && components.len() >= MAX_COMPONENTS {
            return false;
        }
        let c = components
            .entry(name.to_owned())
            .or_insert_with(|| ComponentSample {
                name: name.to_owned(),
                ..Default::default()
            });
        match kind {
            Kind::Accepted | Kind::Sent => c.ok_total += v,
            Kind::Refused | Kind::Failed => c.bad_total += v,
            Kind::QueueSize => add(&mut c.queue_size),
            Kind::QueueCapacity => add(&mut c.queue_capacity),
            Kind::Cpu | Kind::Memory => {}
        }
        true
    }

    fn into_sample(self, uid: Uuid, at_unix_ms: u64) -> OwnMetricsSample {
        // Counts and sizes are finite and not negative; sums past f64's range are not kept.
        let valid = |v: f64| v.is_finite() && v >= 0.0;
        let kept = |v: Option<f64>| v.filter(|v| valid(*v));
        let components = |m: BTreeMap<String, ComponentSample>| {
            m.into_values()
                .map(|c| ComponentSample {
                    ok_total: if valid(c.ok_total) { c.ok_total } else { 0.0 },
                    bad_total: if valid(c.bad_total) { c.bad_total } else { 0.0 },
                    queue_size: kept(c.queue_size),
                    queue_capacity: kept(c.queue_capacity),
                    ..c
                })
                .collect()
        };
        OwnMetricsSample {
            instance_uid: uid.as_bytes().to_vec(),
            at_unix_ms,
            cpu_seconds: kept(self.cpu),
            memory_bytes: kept(self.memory),
            receivers: components(self.receivers),
            exporters: components(self.exporters),
            dropped_points: self.dropped,
            origin: None,
        }
    }
}

/// The agent a resource is: the uid its `service.instance.id` names (a UUID), which must be one
/// `cert_uids` names when the connection's certificate binds agents (URI SAN rule); without the
/// attribute, the one agent the certificate names.
fn agent_of(resource: &[wire::KeyValue], cert_uids: Option<&[Uuid]>) -> Result<Uuid, Refused> {
    let named = match string_attr(resource, "service.instance.id") {
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
            Refused::BadRequest(format!(
                "resource attribute service.instance.id {s:?} is not an agent's instance uid (a UUID)"
            ))
        })?),
        None => None,
    };
    match (named, cert_uids) {
        (Some(uid), Some(certified)) if !certified.contains(&uid) => {
            Err(Refused::Forbidden(format!(
                "the client certificate names instance_uid {}, not {uid}: it cannot report \
                 metrics for another agent",
                certified
                    .first()
                    .map_or_else(|| "none".to_owned(), Uuid::to_string)
            )))
        }
        (Some(uid), _) => Ok(uid),
        (None, Some([only])) => Ok(*only),
        (None, _) => Err(Refused::BadRequest(
            "a resource has no service.instance.id attribute naming the agent's instance uid"
                .into(),
        )),
    }
}

/// The samples of one export's protobuf body, received at `at_unix_ms`. `cert_uids`: the uids the
/// connection's certificate names, when the URI SAN identity rule binds agents to certificates.
pub fn samples_of(
    body: &Bytes,
    cert_uids: Option<&[Uuid]>,
    at_unix_ms: u64,
) -> Result<Export, Refused> {
    let malformed = |e: prost::DecodeError| {
        Refused::BadRequest(format!("malformed ExportMetricsServiceRequest: {e}"))
    };
    let req = ExportRequest::decode(body.clone()).map_err(malformed)?;
    let mut agents: BTreeMap<Uuid, Sums> = BTreeMap::new();
    for rm in &req.resource_metrics {
        let attrs = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let uid = agent_of(attrs, cert_uids)?;
        if !agents.contains_key(&uid) && agents.len() >= MAX_AGENTS {
            return Err(Refused::BadRequest(format!(
                "an export may carry the metrics of at most {MAX_AGENTS} agents"
            )));
        }
        let sums = agents.entry(uid).or_default();
        for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let kind = std::str::from_utf8(&metric.name).ok().and_then(kind_of);
            let numbers = match (&metric.gauge, &metric.sum) {
                (Some(data), _) | (None, Some(data)) if kind.is_some() => data,
                _ => {
                    // Not kept: only its points are counted.
                    let data = [
                        &metric.gauge,
                        &metric.sum,
                        &metric.histogram,
                        &metric.exponential_histogram,
                        &metric.summary,
                    ];
                    for d in data.into_iter().flatten() {
                        sums.dropped += Points::decode(d.clone())
                            .map_err(malformed)?
                            .data_points
                            .len() as u64;
                    }
                    continue;
                }
            };
            let numbers = Numbers::decode(numbers.clone()).map_err(malformed)?;
            // Rates are taken between cumulative values; deltas are not kept.
            let cumulative = metric.gauge.is_some() || numbers.aggregation_temporality != DELTA;
            for p in &numbers.data_points {
                let kept = match (kind, value_of(p)) {
                    (Some(k), Some(v)) if cumulative => sums.add(k, &p.attributes, v),
                    _ => false,
                };
                if !kept {
                    sums.dropped += 1;
                }
            }
        }
    }
    let mut export = Export::default();
    for (uid, sums) in agents {
        export.dropped_points += sums.dropped;
        export.samples.push(sums.into_sample(uid, at_unix_ms));
    }
    Ok(export)
}

/// A string attribute, for tests and the swarm's exports.
pub fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, NumberDataPoint, metric::Data, number_data_point,
    };

    /// What the gateway keeps of `req`, as it reads it off the wire.
    fn samples(
        req: &ExportMetricsServiceRequest,
        cert_uids: Option<&[Uuid]>,
        at_unix_ms: u64,
    ) -> Result<Export, Refused> {
        samples_of(&Bytes::from(req.encode_to_vec()), cert_uids, at_unix_ms)
    }
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn point(attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn sum(
        name: &str,
        points: Vec<NumberDataPoint>,
        temporality: AggregationTemporality,
    ) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: points,
            })),
            ..Default::default()
        }
    }

    fn export(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    const CUMULATIVE: AggregationTemporality = AggregationTemporality::Cumulative;

    #[test]
    fn keeps_the_collectors_own_metrics_summed_per_component() {
        let uid = Uuid::now_v7();
        let id = vec![string_kv("service.instance.id", &uid.to_string())];
        let recv = |name: &str| vec![string_kv("receiver", name), string_kv("transport", "grpc")];
        let exp = |name: &str| vec![string_kv("exporter", name)];
        let req = export(
            id,
            vec![
                sum(
                    "otelcol_process_cpu_seconds",
                    vec![point(vec![], 12.5)],
                    CUMULATIVE,
                ),
                gauge("otelcol_process_memory_rss", vec![point(vec![], 1e8)]),
                sum(
                    "otelcol_receiver_accepted_spans",
                    vec![point(recv("otlp"), 100.0), point(recv("jaeger"), 5.0)],
                    CUMULATIVE,
                ),
                sum(
                    "otelcol_receiver_accepted_metric_points_total",
                    vec![point(recv("otlp"), 50.0)],
                    CUMULATIVE,
                ),
                sum(
                    "otelcol_receiver_refused_spans",
                    vec![point(recv("otlp"), 3.0)],
                    CUMULATIVE,
                ),
                sum(
                    "otelcol_exporter_sent_spans",
                    vec![point(exp("otlp"), 140.0)],
                    CUMULATIVE,
                ),
                sum(
                    "otelcol_exporter_send_failed_spans",
                    vec![point(exp("otlp"), 7.0)],
                    CUMULATIVE,
                ),
                gauge(
                    "otelcol_exporter_queue_size",
                    vec![point(exp("otlp"), 900.0)],
                ),
                gauge(
                    "otelcol_exporter_queue_capacity",
                    vec![point(exp("otlp"), 1000.0)],
                ),
                gauge("otelcol_some_other_metric", vec![point(vec![], 1.0)]),
                Metric {
                    name: "otelcol_processor_batch_batch_send_size".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint::default(); 2],
                        aggregation_temporality: CUMULATIVE as i32,
                    })),
                    ..Default::default()
                },
            ],
        );
        let out = samples(&req, None, 42).unwrap();
        assert_eq!(out.dropped_points, 3);
        let [s] = &out.samples[..] else {
            panic!("one agent")
        };
        assert_eq!(s.instance_uid, uid.as_bytes());
        assert_eq!(s.at_unix_ms, 42);
        assert_eq!((s.cpu_seconds, s.memory_bytes), (Some(12.5), Some(1e8)));
        let names: Vec<_> = s.receivers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["jaeger", "otlp"]);
        assert_eq!(
            (s.receivers[1].ok_total, s.receivers[1].bad_total),
            (150.0, 3.0)
        );
        let e = &s.exporters[0];
        assert_eq!(
            (e.name.as_str(), e.ok_total, e.bad_total),
            ("otlp", 140.0, 7.0)
        );
        assert_eq!(
            (e.queue_size, e.queue_capacity),
            (Some(900.0), Some(1000.0))
        );
    }

    #[test]
    fn semantic_convention_process_metrics_and_deltas() {
        let uid = Uuid::now_v7();
        let id = vec![string_kv("service.instance.id", &uid.to_string())];
        let mode = |m: &str| vec![string_kv("cpu.mode", m)];
        let req = export(
            id,
            vec![
                sum(
                    "process.cpu.time",
                    vec![point(mode("user"), 2.0), point(mode("system"), 1.0)],
                    CUMULATIVE,
                ),
                // Deltas give no rate between samples here: dropped.
                sum(
                    "process.memory.usage",
                    vec![point(vec![], 5.0)],
                    AggregationTemporality::Delta,
                ),
            ],
        );
        let out = samples(&req, None, 1).unwrap();
        assert_eq!(out.samples[0].cpu_seconds, Some(3.0));
        assert_eq!(out.samples[0].memory_bytes, None);
        assert_eq!(out.dropped_points, 1);
    }

    #[test]
    fn values_past_range_or_negative_are_not_kept() {
        let uid = Uuid::now_v7();
        let id = vec![string_kv("service.instance.id", &uid.to_string())];
        let exp = vec![string_kv("exporter", "otlp")];
        let req = export(
            id,
            vec![
                sum(
                    "otelcol_process_cpu_seconds",
                    vec![point(vec![], 1e308), point(vec![], 1e308)],
                    CUMULATIVE,
                ),
                gauge("otelcol_process_memory_rss", vec![point(vec![], -5.0)]),
                sum(
                    "otelcol_exporter_sent_spans",
                    vec![point(exp.clone(), -1.0)],
                    CUMULATIVE,
                ),
                gauge("otelcol_exporter_queue_size", vec![point(exp, f64::MAX)]),
            ],
        );
        let s = &samples(&req, None, 1).unwrap().samples[0];
        assert_eq!((s.cpu_seconds, s.memory_bytes), (None, None));
        assert_eq!(s.exporters[0].ok_total, 0.0);
        assert_eq!(s.exporters[0].queue_size, Some(f64::MAX));
    }

    #[test]
    fn components_are_bounded() {
        let uid = Uuid::now_v7();
        let id = vec![string_kv("service.instance.id", &uid.to_string())];
        let points = (0..40)
            .map(|i| point(vec![string_kv("exporter", &format!("otlp/{i}"))], 1.0))
            .chain([point(vec![string_kv("exporter", &"x".repeat(200))], 1.0)])
            .collect();
        let req = export(
            id,
            vec![sum("otelcol_exporter_sent_spans", points, CUMULATIVE)],
        );
        let out = samples(&req, None, 1).unwrap();
        assert_eq!(out.samples[0].exporters.len(), MAX_COMPONENTS);
        assert_eq!(out.dropped_points, 41 - MAX_COMPONENTS as u64);
    }

    #[test]
    fn the_agent_is_the_one_named_and_the_certificate_must_name_it() {
        let (mine, other) = (Uuid::now_v7(), Uuid::now_v7());
        let named = |u: Uuid| {
            export(
                vec![string_kv("service.instance.id", &u.to_string())],
                vec![],
            )
        };
        let cert = [mine];
        assert_eq!(
            samples(&named(mine), Some(&cert), 1).unwrap().samples[0].instance_uid,
            mine.as_bytes()
        );
        assert!(matches!(
            samples(&named(other), Some(&cert), 1),
            Err(Refused::Forbidden(m)) if m.contains("cannot report metrics for another agent")
        ));
        // Without the attribute, the certificate's one agent.
        let unnamed = export(vec![string_kv("service.name", "otelcol")], vec![]);
        assert_eq!(
            samples(&unnamed, Some(&cert), 1).unwrap().samples[0].instance_uid,
            mine.as_bytes()
        );
        assert!(matches!(
            samples(&unnamed, None, 1),
            Err(Refused::BadRequest(_))
        ));
        let bad = export(
            vec![string_kv("service.instance.id", "collector-7")],
            vec![],
        );
        assert!(
            matches!(samples(&bad, None, 1), Err(Refused::BadRequest(m)) if m.contains("UUID"))
        );
    }

    #[test]
    fn an_export_names_a_bounded_number_of_agents() {
        let mut req = ExportMetricsServiceRequest::default();
        for _ in 0..=MAX_AGENTS {
            let one = export(
                vec![string_kv(
                    "service.instance.id",
                    &Uuid::now_v7().to_string(),
                )],
                vec![],
            );
            req.resource_metrics.extend(one.resource_metrics);
        }
        assert!(matches!(
            samples(&req, None, 1),
            Err(Refused::BadRequest(_))
        ));
        req.resource_metrics.pop();
        assert_eq!(samples(&req, None, 1).unwrap().samples.len(), MAX_AGENTS);
    }
}
