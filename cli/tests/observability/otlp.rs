//! An OTLP trace receiver for tests, on the official OpenTelemetry protos (`opentelemetry-proto`'s
//! tonic service): gRPC (`TraceService/Export`) and http/protobuf (`POST /v1/traces`) on one
//! loopback port, keeping every span it is sent.

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    /// Attributes, their values as text.
    pub attrs: BTreeMap<String, String>,
    /// How it arrived: "grpc" or "http".
    pub via: &'static str,
}

impl Span {
    pub fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<Span>>>;

pub struct Receiver {
    pub url: String,
    spans: Spans,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Sink(Spans);

impl Sink {
    fn take(&self, req: ExportTraceServiceRequest, via: &'static str) {
        let mut spans = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                spans.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_id: hex::encode(&s.parent_span_id),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    via,
                });
            }
        }
    }
}

fn text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(req.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let spans = Spans::default();
        let sink = Sink(spans.clone());
        let http_sink = sink.clone();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    http_sink.take(req, "http");
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }),
            )
            .route_service(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                TraceServiceServer::new(sink),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, spans, task }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `found` picks something out of the spans received so far.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&[Span]) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(t) = found(&self.spans()) {
                return t;
            }
            if started.elapsed() > timeout {
                let names: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{}:{} {}", s.service, s.name, s.trace_id))
                    .collect();
                panic!("no {what} within {timeout:?}; received {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
