//! The parts a swarm agent's own-metrics export is built from ([`super::collector_metrics`],
//! [`super::collector_other`]): the collector's exporters and signals, what one export is made of
//! ([`Shape`]), numbers drawn from the agent's uid, attributes, and the point and metric builders
//! ([`At`]). Builds protobuf only: no I/O, no clock.

pub(super) use crate::otlp::kv;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
    metric::Data, number_data_point::Value,
};
use uuid::Uuid;

/// Exporters, each sending one signal (an index into [`SIGNALS`]).
pub(super) const EXPORTERS: [(&str, usize); 3] =
    [("otlp", 0), ("prometheusremotewrite", 1), ("otlphttp", 2)];
/// Metric name suffix and otel.signal of each signal.
pub(super) const SIGNALS: [(&str, &str); 3] = [
    ("spans", "traces"),
    ("metric_points", "metrics"),
    ("log_records", "logs"),
];

/// What one export is made from.
pub(super) struct Shape {
    pub uid: Uuid,
    /// Seconds since the agent started.
    pub t: f64,
    /// Spans, metric points and log records taken in per second.
    pub rates: [f64; 3],
    /// The exporter (index into [`EXPORTERS`]) that fails, if one does.
    pub failing: Option<usize>,
    pub rss: f64,
}

impl Shape {
    /// A cumulative count at `rate` per second.
    pub fn n(&self, rate: f64) -> i64 {
        (rate * self.t).floor() as i64
    }
}

/// A number in [0, 1) drawn from the uid, one per `k`.
pub(super) fn draw(uid: Uuid, k: u64) -> f64 {
    let (hi, lo) = uid.as_u64_pair();
    // splitmix64
    let mut z = (hi ^ lo.rotate_left(17)).wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

pub(super) fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Whole-number points: attributes and value.
pub(super) type Points = Vec<(Vec<KeyValue>, i64)>;

/// The points of one export: all start with the agent and are taken now; counted.
pub(super) struct At {
    pub start: u64,
    pub now: u64,
    pub points: usize,
}

impl At {
    fn number(&mut self, attrs: Vec<KeyValue>, v: Value) -> NumberDataPoint {
        self.points += 1;
        NumberDataPoint {
            attributes: attrs,
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            value: Some(v),
            ..Default::default()
        }
    }

    fn sum_of(
        &mut self,
        name: &str,
        unit: &str,
        monotonic: bool,
        v: Vec<NumberDataPoint>,
    ) -> Metric {
        metric(
            name,
            unit,
            Data::Sum(Sum {
                data_points: v,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: monotonic,
            }),
        )
    }

    /// A cumulative counter (or up-down counter, not `monotonic`) of whole numbers.
    pub fn sum(&mut self, name: &str, unit: &str, monotonic: bool, pts: Points) -> Metric {
        let v = pts
            .into_iter()
            .map(|(a, v)| self.number(a, Value::AsInt(v)))
            .collect();
        self.sum_of(name, unit, monotonic, v)
    }

    pub fn counter(&mut self, name: &str, unit: &str, pts: Points) -> Metric {
        self.sum(name, unit, true, pts)
    }

    /// A cumulative counter of seconds, without attributes.
    pub fn seconds(&mut self, name: &str, v: f64) -> Metric {
        let p = vec![self.number(vec![], Value::AsDouble(v))];
        self.sum_of(name, "s", true, p)
    }

    pub fn gauge(&mut self, name: &str, unit: &str, pts: Points) -> Metric {
        let data_points = pts
            .into_iter()
            .map(|(a, v)| self.number(a, Value::AsInt(v)))
            .collect();
        metric(name, unit, Data::Gauge(Gauge { data_points }))
    }

    /// A cumulative histogram over `bounds`: per attribute set, `count` values around `mean`.
    pub fn histogram(
        &mut self,
        name: &str,
        unit: &str,
        bounds: &[f64],
        pts: Vec<(Vec<KeyValue>, u64, f64)>,
    ) -> Metric {
        let data_points = pts
            .into_iter()
            .map(|(attrs, count, mean)| {
                self.points += 1;
                HistogramDataPoint {
                    attributes: attrs,
                    start_time_unix_nano: self.start,
                    time_unix_nano: self.now,
                    count,
                    sum: Some(count as f64 * mean),
                    bucket_counts: buckets(bounds, count, mean),
                    explicit_bounds: bounds.to_vec(),
                    min: (count > 0).then_some(mean * 0.2),
                    max: (count > 0).then_some(mean * 3.0),
                    ..Default::default()
                }
            })
            .collect();
        let h = Histogram {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        };
        metric(name, unit, Data::Histogram(h))
    }
}

fn metric(name: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

/// `count` values spread over the buckets around the one `mean` falls in (summing to `count`).
fn buckets(bounds: &[f64], count: u64, mean: f64) -> Vec<u64> {
    let mut out = vec![0u64; bounds.len() + 1];
    let mode = bounds
        .iter()
        .position(|b| mean <= *b)
        .unwrap_or(bounds.len());
    let mut given = 0;
    for (offset, weight) in [(-2i64, 1u64), (-1, 3), (1, 3), (2, 1)] {
        let i = mode as i64 + offset;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = count / 16 * weight;
            given += *slot;
        }
    }
    out[mode] = count - given;
    out
}
