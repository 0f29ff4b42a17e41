//! The parts of OTLP's metrics messages the gateway reads, with OTLP's field numbers
//! (opentelemetry/proto/metrics/v1/metrics.proto and friends). Decoding an export into
//! opentelemetry-proto's types builds every metric, attribute and bucket, most of which Flotilla
//! drops; these read names and values as slices of the body, leave the data of metrics that are
//! not kept undecoded (only their points are counted) and skip every other field. The tests of
//! [`crate::otlp`] encode exports with opentelemetry-proto's types and read them with these.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

/// A metric: its name, and its data still encoded (one of them is set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", optional, tag = "5")]
    pub gauge: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "7")]
    pub sum: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "9")]
    pub histogram: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "10")]
    pub exponential_histogram: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "11")]
    pub summary: Option<Bytes>,
}

/// A Gauge or a Sum: its number points, and (a Sum's) temporality.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Numbers {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

/// Any metric data, for counting its points only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Points {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<Skipped>,
}

/// A message whose fields are all skipped.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Skipped {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumberDataPoint {
    #[prost(double, optional, tag = "4")]
    pub as_double: Option<f64>,
    #[prost(sfixed64, optional, tag = "6")]
    pub as_int: Option<i64>,
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// An attribute's value, when it is a string.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub string_value: Option<Bytes>,
}

/// OTLP's AGGREGATION_TEMPORALITY_DELTA.
pub const DELTA: i32 = 1;
