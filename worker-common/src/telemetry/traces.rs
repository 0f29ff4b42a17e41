//! Traces: `tracing` spans exported over OTLP (gRPC or http/protobuf) by `opentelemetry-otlp`,
//! off unless an endpoint is configured. The standard `OTEL_*` variables apply (endpoint, headers,
//! compression, protocol, service name, resource attributes, sampler, batch queue; the timeout for
//! gRPC, an http/protobuf request being cut at 10 s); the `--otlp-*` and `--trace-sample-ratio`
//! flags override them.
//!
//! Export never blocks the hot path: ended spans go to a bounded batch queue drained by a thread
//! of its own; a span that finds the queue full is dropped and counted
//! (`flotilla_trace_spans_total{fate="dropped"}`), a batch the backend refused too
//! (`fate="failed"`).
//!
//! The context crosses the bus in W3C `traceparent`/`tracestate` headers: [`inject`] on the
//! sending side, [`continued`] on the receiving one, so one agent message is one trace across the
//! gateway and coordinator processes.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How spans are exported, as given by flags or the config file (the `OTEL_*` environment fills
/// in what these leave out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceConfig {
    /// Base URL of the OTLP receiver, as `OTEL_EXPORTER_OTLP_ENDPOINT` (http/protobuf appends
    /// `/v1/traces`).
    pub endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    /// Share of traces started here that are kept (parent-based: a message whose sender sampled
    /// it is always kept).
    pub sample_ratio: Option<f64>,
}

/// The OTLP transports offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    #[value(name = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Share of the traces started in Flotilla that are kept unless configured otherwise.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// Spans the batch queue holds unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
const DEFAULT_QUEUE: usize = 8192;

/// What [`resolve`] decided: export, where and how.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Export {
    /// None: `opentelemetry-otlp` reads the `OTEL_EXPORTER_OTLP_*` variables.
    endpoint: Option<String>,
    protocol: OtlpProtocol,
    /// Share of the traces started here that are kept.
    sample_ratio: f64,
    queue: usize,
}

/// Whether and how to export, from the flags and the environment (`env` reads a variable).
pub(crate) fn resolve(
    cfg: &TraceConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Export>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter = set("OTEL_TRACES_EXPORTER");
    match exporter.as_deref() {
        None | Some("otlp") => {}
        Some("none") if cfg.endpoint.is_none() => return Ok(None),
        Some("none") => {}
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not offered: Flotilla exports traces over \
                 OTLP (otlp) or not at all (none)"
            ));
        }
    }
    let env_endpoint =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if cfg.endpoint.is_none() && env_endpoint.is_none() && exporter.is_none() {
        return Ok(None);
    }
    let protocol = match cfg.protocol {
        Some(p) => p,
        None => match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            // The OpenTelemetry specification's default.
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTLP protocol {other:?} is not offered: use grpc or http/protobuf"
                ));
            }
        },
    };
    let endpoint = match &cfg.endpoint {
        None => None,
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--otlp-endpoint {url:?} is not an http:// or https:// URL"
                ));
            }
            Some(match protocol {
                OtlpProtocol::Grpc => url.clone(),
                OtlpProtocol::HttpProtobuf => {
                    format!("{}/v1/traces", url.trim_end_matches('/'))
                }
            })
        }
    };
    let sample_ratio = match cfg.sample_ratio {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            return Err(format!("--trace-sample-ratio {r} is not between 0 and 1"));
        }
        Some(r) => r,
        None => match set("OTEL_TRACES_SAMPLER").as_deref() {
            None => DEFAULT_SAMPLE_RATIO,
            Some("always_on" | "parentbased_always_on") => 1.0,
            Some("always_off" | "parentbased_always_off") => 0.0,
            Some("traceidratio" | "parentbased_traceidratio") => {
                let arg = set("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1".into());
                arg.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1")
                    })?
            }
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not offered: use always_on, always_off, \
                     traceidratio or their parentbased_ forms"
                ));
            }
        },
    };
    let queue = match set("OTEL_BSP_MAX_QUEUE_SIZE") {
        None => DEFAULT_QUEUE,
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!("OTEL_BSP_MAX_QUEUE_SIZE={v:?} is not a positive number of spans")
        })?,
    };
    Ok(Some(Export {
        endpoint,
        protocol,
        sample_ratio,
        queue,
    }))
}

/// Whether spans are exported; when not, spans are made as they are (for the logs) and no
/// context is propagated.
static ON: AtomicBool = AtomicBool::new(false);
/// The share of traces started here that are kept (f64 bits).
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Spans by fate, shared by every registry of the process (tests run several apps in one).
static SPANS: LazyLock<Family<Vec<(&'static str, &'static str)>, Counter>> =
    LazyLock::new(Family::default);

fn count(fate: &'static str, n: usize) {
    SPANS.get_or_create(&vec![("fate", fate)]).inc_by(n as u64);
}

/// Adds the exporter's counters to a registry.
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "flotilla_trace_spans",
        "Sampled spans by fate: exported; dropped (the export queue was full); failed (the OTLP \
         receiver refused them or could not be reached)",
        SPANS.clone(),
    );
}

/// Who is exporting: the resource every span carries.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
    pub name: &'static str,
    /// `service.instance.id`: the node id.
    pub instance: String,
    pub region: String,
}

/// Builds the tracer provider, or None when tracing is off. Needs a Tokio runtime (gRPC).
pub(crate) fn provider(
    cfg: &TraceConfig,
    service: &ServiceInfo,
) -> Result<Option<SdkTracerProvider>, String> {
    let Some(export) = resolve(cfg, |name| std::env::var(name).ok())? else {
        return Ok(None);
    };
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &export.endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(BlockingHttp::new()?);
            if let Some(e) = &export.endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
    }
    .map_err(|e| format!("cannot export traces over OTLP: {e}"))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(export.queue)
            .build(),
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder().with_attributes([
        opentelemetry::KeyValue::new("service.instance.id", service.instance.clone()),
        opentelemetry::KeyValue::new("flotilla.region", service.region.clone()),
    ]);
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.name);
    }
    let builder = SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batch,
            queued,
            capacity: export.queue,
        })
        .with_resource(resource.build());
    // Flotilla decides where traces start (see [`root`]); the SDK keeps what it is given.
    let provider = builder
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    RATIO.store(export.sample_ratio.to_bits(), Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The `tracing` layer that turns Flotilla's spans into OpenTelemetry spans.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flotilla"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        // Flotilla's debug-level spans are its trace spans (its info-level ones give log lines
        // their context and may last as long as the process); of the events, warnings and errors
        // only (span events; an error one marks the span failed).
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            if meta.is_span() {
                *meta.level() == tracing::Level::DEBUG && meta.target().starts_with("flotilla")
            } else {
                *meta.level() <= tracing::Level::WARN
            }
        }))
}

// Sampling happens where a trace would start, before any span is made: the spans of a trace not
// kept are never created (creating and dropping them cost a fifth of an agent message's CPU), and
// the decision travels in `traceparent` (flag 01 or 00) so the next process makes none either.

fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A valid W3C context whose trace is not kept (flag 00).
const NOT_KEPT: &str = "00-00000000000000000000000000000001-0000000000000001-00";

/// Whether a trace starting here is kept.
fn keep_new_trace() -> bool {
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// The trace the current span belongs to, if it is a kept one.
fn current_kept() -> Option<opentelemetry::Context> {
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_sampled().then_some(cx)
}

/// A span that starts a trace (`make` gives it `parent: None`): made if this trace is kept.
pub fn root(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !on() || keep_new_trace() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// A span inside the current trace: made if that trace is kept (none outside a trace).
pub fn child(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !on() || current_kept().is_some() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// A span inside the current trace if there is one, else starting one.
pub fn child_or_root(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !on() || current_kept().is_some() || keep_new_trace() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// A span continuing the trace an incoming message carries (`make` gives it `parent: None`):
/// made and joined to it if the sender kept it, not made if the sender did not; a message with
/// no trace starts one.
pub fn continued(carrier: &dyn Extractor, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !on() || carrier.get("traceparent").is_none() {
        return root(make);
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    if !cx.span().span_context().is_sampled() {
        return tracing::Span::none();
    }
    let span = make();
    let _ = span.set_parent(cx);
    span
}

/// [`continued`] for an HTTP request's headers.
pub fn continued_http(
    headers: &http::HeaderMap,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    continued(&opentelemetry_http::HeaderExtractor(headers), make)
}

/// Writes the current trace into an outgoing message's headers: its context if it is kept, else
/// that it was not kept (so the receiver makes no spans of it either).
pub fn inject(carrier: &mut dyn Injector) {
    if !on() {
        return;
    }
    match current_kept() {
        Some(cx) => TraceContextPropagator::new().inject_context(&cx, carrier),
        // Only the flag is read downstream: one constant context does, with no work per message.
        None => carrier.set("traceparent", NOT_KEPT.to_owned()),
    }
}

/// Spans ended but not yet taken by the exporter, capped at the batch queue's size: past it a
/// span is dropped here, and counted, before the SDK's queue could overflow silently.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            count("dropped", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and what fails.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        count(if result.is_ok() { "exported" } else { "failed" }, n);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// http/protobuf export through the workspace's reqwest (rustls on ring), blocking: the batch
/// processor calls it from its own thread.
#[derive(Debug, Clone)]
struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    fn new() -> Result<Self, String> {
        // A blocking client may not be built inside the async runtime.
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
        })
        .join()
        .map_err(|_| "the OTLP HTTP client could not be built".to_owned())?
        .map(Self)
        .map_err(|e| format!("the OTLP HTTP client could not be built: {e}"))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .0
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let resp = req.send()?;
        let mut out = http::Response::builder().status(resp.status());
        for (name, value) in resp.headers() {
            out = out.header(name, value);
        }
        Ok(out.body(resp.bytes()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn off_unless_an_endpoint_or_exporter_is_configured() {
        let none = TraceConfig::default();
        assert_eq!(resolve(&none, with(&[])), Ok(None));
        assert_eq!(
            resolve(&none, with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Ok(None),
            "an empty variable is unset"
        );
        let on = resolve(
            &none,
            with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, None, "the exporter reads the variable itself");
        assert_eq!(on.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(on.sample_ratio, DEFAULT_SAMPLE_RATIO);
        assert_eq!(on.queue, DEFAULT_QUEUE);
        assert!(
            resolve(&none, with(&[("OTEL_TRACES_EXPORTER", "otlp")]))
                .unwrap()
                .is_some()
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ];
        assert_eq!(resolve(&none, with(&disabled)), Ok(None));
        let exporter_none = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(resolve(&none, with(&exporter_none)), Ok(None));
    }

    #[test]
    fn flags_override_the_environment() {
        let cfg = TraceConfig {
            endpoint: Some("http://collector:4318/".into()),
            protocol: None,
            sample_ratio: Some(1.0),
        };
        let env = [
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let e = resolve(&cfg, with(&env)).unwrap().unwrap();
        assert_eq!(
            e.protocol,
            OtlpProtocol::Grpc,
            "protocol from the environment"
        );
        assert_eq!(e.endpoint.as_deref(), Some("http://collector:4318/"));
        assert_eq!(
            e.sample_ratio, 1.0,
            "the flag wins over the sampler variable"
        );
        let http = TraceConfig {
            protocol: Some(OtlpProtocol::HttpProtobuf),
            ..cfg
        };
        let e = resolve(&http, with(&env)).unwrap().unwrap();
        assert_eq!(
            e.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces"),
            "a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        let env_sampler = resolve(
            &TraceConfig::default(),
            with(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(env_sampler.sample_ratio, 1.0);
        assert_eq!(env_sampler.queue, 100);
        let ratio = resolve(
            &TraceConfig::default(),
            with(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ratio.sample_ratio, 0.25);
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_use() {
        let endpoint = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        // Settings, environment, what the error says.
        type Case = (TraceConfig, Vec<(&'static str, &'static str)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                TraceConfig::default(),
                vec![("OTEL_TRACES_EXPORTER", "zipkin")],
                "otlp",
            ),
            (
                TraceConfig::default(),
                vec![endpoint[0], ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "grpc or http/protobuf",
            ),
            (
                TraceConfig {
                    endpoint: Some("collector:4317".into()),
                    ..Default::default()
                },
                vec![],
                "http:// or https://",
            ),
            (
                TraceConfig {
                    sample_ratio: Some(1.5),
                    ..Default::default()
                },
                endpoint.to_vec(),
                "between 0 and 1",
            ),
            (
                TraceConfig::default(),
                vec![endpoint[0], ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
                "positive",
            ),
            (
                TraceConfig::default(),
                vec![endpoint[0], ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
                "always_on, always_off, traceidratio",
            ),
            (
                TraceConfig::default(),
                vec![
                    endpoint[0],
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "most"),
                ],
                "not a ratio",
            ),
        ];
        for (cfg, env, says) in cases {
            let err = resolve(&cfg, with(&env)).unwrap_err();
            assert!(err.contains(says), "{cfg:?} {env:?}: {err}");
        }
    }

    /// Where traces start, Flotilla decides; a trace not kept makes no spans anywhere, and says
    /// so to the next process.
    #[test]
    fn a_trace_not_kept_makes_no_spans_and_tells_the_next_hop() {
        use opentelemetry_sdk::trace::InMemorySpanExporter;
        use std::collections::HashMap;
        use tracing::debug_span;
        use tracing_subscriber::layer::SubscriberExt as _;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        ON.store(true, Ordering::Relaxed);
        // Headers of a bus message, as the bus carries them.
        let sent_from = || {
            let mut headers = HashMap::new();
            inject(&mut headers);
            headers
        };
        let flag =
            |h: &HashMap<String, String>| h.get("traceparent").map(|t| t[t.len() - 2..].to_owned());
        tracing::subscriber::with_default(subscriber, || {
            RATIO.store(1.0f64.to_bits(), Ordering::Relaxed);
            let message = root(|| debug_span!(parent: None, "message"));
            let sent = message.in_scope(|| {
                let hop = child(|| debug_span!("hop"));
                hop.in_scope(sent_from)
            });
            assert_eq!(flag(&sent).as_deref(), Some("01"));
            let processed = continued(&sent, || debug_span!(parent: None, "process"));
            assert!(!processed.is_none());
            drop((message, processed));

            RATIO.store(0.0f64.to_bits(), Ordering::Relaxed);
            let message = root(|| debug_span!(parent: None, "unkept"));
            assert!(message.is_none());
            let sent = message.in_scope(|| {
                assert!(child(|| debug_span!("unkept hop")).is_none());
                sent_from()
            });
            assert_eq!(flag(&sent).as_deref(), Some("00"), "the decision travels");
            assert!(continued(&sent, || debug_span!(parent: None, "p")).is_none());
            let bare = HashMap::<String, String>::new();
            assert!(
                continued(&bare, || debug_span!(parent: None, "p")).is_none(),
                "no context: a new trace, at the ratio"
            );
        });
        ON.store(false, Ordering::Relaxed);
        let spans = exporter.get_finished_spans().unwrap();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let by = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let (m, h, p) = (by("message"), by("hop"), by("process"));
        assert_eq!(h.parent_span_id, m.span_context.span_id());
        assert_eq!(
            p.parent_span_id,
            h.span_context.span_id(),
            "continued from the header"
        );
        assert_eq!(p.span_context.trace_id(), m.span_context.trace_id());
    }
}
