//! Agents' own metrics on `/v1/metrics` (OTLP/HTTP, protobuf, optionally gzipped): the same
//! connection checks as OpAMP (TLS, mutual TLS, tokens, the connection cap and rate), what is kept
//! of each export ([`crate::otlp`]), and the queue ([`crate::shard_queue`]) that takes it to the
//! agents' owners over the bus in batches, each shard's every second. The agent is answered once
//! its sample is queued; a full queue answers 503 with Retry-After, and what the owners never take
//! is counted, not retried forever (these are measurements: the next export carries the same
//! counters).

use crate::gateway::Gateway;
use crate::guard::ConnInfo;
use crate::http::{HttpResponse, PROTOBUF, header_has, protobuf, retry_later, text};
use crate::otlp::{self, Refused};
use crate::shard_queue::{Pushed, flush};
use flotilla_common::config::AgentIdentity;
use flotilla_common::names::FORWARD_HEADER;
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{OwnMetricsBatch, OwnMetricsSample, Transport, Uplink, uplink};
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

/// How long a connection that carried an export may idle.
const EXPORT_KEEP_ALIVE: Duration = Duration::from_secs(130);

impl Gateway {
    /// One OTLP/HTTP metrics export.
    pub(crate) async fn own_metrics(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> HttpResponse {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "OTLP/HTTP exports use POST");
        }
        if !header_has(req.headers(), CONTENT_TYPE, PROTOBUF) {
            let r = text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "agents' own metrics are taken as OTLP/HTTP protobuf (Content-Type: \
                 application/x-protobuf), not JSON",
            );
            return self.reject("bad_request", r);
        }
        if conn.limiter.check().is_err() {
            let r = retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests on this connection; slow down",
                Duration::from_secs(1),
            );
            return self.reject("rate_limited", r);
        }
        let forward = req
            .headers()
            .get(FORWARD_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match self.read_body(req, conn, "OTLP export").await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let certified: Option<Vec<Uuid>> =
            (self.cfg.identity == AgentIdentity::UriSan).then(|| {
                conn.cert
                    .as_ref()
                    .map(|c| c.uids.clone())
                    .unwrap_or_default()
            });
        let kept = match otlp::samples_of(&body, certified.as_deref(), now_unix_ms()) {
            Ok(k) => k,
            Err(Refused::BadRequest(why)) => {
                return self.reject("bad_request", text(StatusCode::BAD_REQUEST, why));
            }
            Err(Refused::Forbidden(why)) => {
                return self.reject("identity", text(StatusCode::FORBIDDEN, why));
            }
        };
        let count = |outcome: &'static str, n: u64| {
            self.metrics
                .own_metrics
                .get_or_create(&vec![("outcome", outcome)])
                .inc_by(n);
        };
        count("dropped_points", kept.dropped_points);
        let origin = self.origin(Transport::Http, conn, String::new());
        let samples: Vec<_> = kept
            .samples
            .into_iter()
            .map(|mut s| {
                s.origin = Some(origin.clone());
                s
            })
            .collect();
        let n = samples.len() as u64;
        match self.own_metrics_queue.push(samples) {
            Pushed::Queued { superseded } => count("superseded", superseded as u64),
            Pushed::Full => {
                count("queue_full", n);
                let r = retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this gateway holds as many agents' metrics as it may; retry later",
                    Duration::from_secs(5),
                );
                return self.reject("own_metrics_queue_full", r);
            }
        }
        count("queued", n);
        // Exporters keep their connection between exports (the OpenTelemetry SDKs every 60 s by
        // default): kept open past two of those, so closing it never races the next export.
        conn.activity.set_idle(Some(EXPORT_KEEP_ALIVE));
        match (forward, self.forwarders.get()) {
            // Under the registry rule the owner, not the gateway, knows whose certificate this
            // is: a copy would leave before anyone checked that it may speak for its agents.
            (Some(_), _) if self.cfg.identity == AgentIdentity::Registry => {
                count("not_forwarded_registry", 1);
            }
            (Some(name), Some(f)) => f.forward(&name, body),
            _ => {}
        }
        protobuf(
            StatusCode::OK,
            ExportMetricsServiceResponse::default().encode_to_vec(),
            false,
        )
    }

    /// Sends queued samples to their owners until `cancel` ([`crate::shard_queue::flush`]).
    pub(crate) async fn flush_own_metrics(self: Arc<Self>, cancel: CancellationToken) {
        let queue = self.own_metrics_queue.clone();
        flush(queue, cancel, move |_shard, batch| {
            let this = self.clone();
            async move { this.send_own_metrics(batch).await }
        })
        .await;
    }

    /// One shard's batch of samples to its owner.
    async fn send_own_metrics(&self, samples: Vec<OwnMetricsSample>) {
        let Some(uid) = samples.first().map(|s| s.instance_uid.clone()) else {
            return;
        };
        let n = samples.len() as u64;
        let uplink = Uplink {
            origin: None,
            kind: Some(uplink::Kind::OwnMetrics(OwnMetricsBatch { samples })),
            heartbeats_answered_through: None,
        };
        let outcome = match self.request_owner(&uid, uplink).await {
            Ok(_) => "delivered",
            Err(e) => {
                debug!(error = %e, samples = n, "agents' metrics not taken by their owner");
                "not_delivered"
            }
        };
        self.metrics
            .own_metrics
            .get_or_create(&vec![("outcome", outcome)])
            .inc_by(n);
    }
}
