//! Request routing on the OpAMP port and the plain-HTTP transport: one POST carries one
//! AgentToServer (optionally gzipped) and gets one ServerToAgent back.

use crate::gateway::{Gateway, METRICS_PATH, OPAMP_PATH};
use crate::guard::ConnInfo;
use bytes::Bytes;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flotilla_common::error::{ErrorKind, opamp_error_reply};
use flotilla_proto::bus::Transport;
use flotilla_proto::opamp::AgentToServer;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prost::Message;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub const PROTOBUF: &str = "application/x-protobuf";
/// Replies smaller than this are not worth gzipping.
const GZIP_MIN_BYTES: usize = 256;

pub type HttpResponse = Response<Full<Bytes>>;

/// Does header `name` list `token` (comma-separated values, parameters after `;` ignored,
/// case-insensitive)? Serves Content-Type, Accept-Encoding, Upgrade and Connection alike.
pub fn header_has(headers: &http::HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
        })
}

pub fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Gateway {
    /// Routes by the spec's rule: `Content-Type: application/x-protobuf` is plain HTTP, anything
    /// else must be a WebSocket upgrade. Connections past the cap and agents without a valid token
    /// are turned away here, before an upgrade or a body is read.
    pub(crate) async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> HttpResponse {
        // The request's head is in: what arrives next is its body, or the next request.
        conn.activity.settled();
        let Some(slot) = &conn.slot else {
            let mut r = retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "this gateway holds as many agents as it may; retry later",
                self.cfg.retry_after,
            );
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return self.reject("connection_cap", r);
        };
        let own_metrics = req.uri().path() == METRICS_PATH;
        if req.uri().path() != OPAMP_PATH && !own_metrics {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "the OpAMP endpoint is {OPAMP_PATH}; agents' own metrics (OTLP/HTTP) go to \
                     {METRICS_PATH}"
                ),
            );
        }
        if let Some(left) = conn
            .cert
            .as_ref()
            .and_then(|c| self.refused.refused_for(&c.sha256))
        {
            let r = retry_later(
                StatusCode::FORBIDDEN,
                "the server refused this client certificate for its agent (replaced, or bound to \
                 another agent); use the agent's current certificate",
                left,
            );
            return self.reject("refused_certificate", r);
        }
        if let Some(tokens) = &self.cfg.tokens
            && !tokens.accepts(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
        {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer <token>)",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"opamp\""),
            );
            return self.reject("unauthorized", r);
        }
        slot.establish();
        if own_metrics {
            return self.own_metrics(req, &conn).await;
        }
        if header_has(req.headers(), CONTENT_TYPE, PROTOBUF) {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "plain-HTTP OpAMP uses POST");
            }
            return self.http_poll(req, &conn).await;
        }
        self.upgrade(req, conn, cancel, tracker)
    }

    async fn http_poll(&self, req: Request<Incoming>, conn: &ConnInfo) -> HttpResponse {
        if conn.limiter.check().is_err() {
            let r = retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "too many messages on this connection; slow down",
                Duration::from_secs(1),
            );
            return self.reject("rate_limited", r);
        }
        self.metrics
            .messages
            .get_or_create(&vec![("transport", "http"), ("direction", "in")])
            .inc();
        let accepts_gzip = header_has(req.headers(), ACCEPT_ENCODING, "gzip");
        let authority = self.authority(req.headers());
        let header_uid = req
            .headers()
            .get("opamp-instance-uid")
            .map(|v| v.to_str().ok().and_then(|s| uuid::Uuid::parse_str(s).ok()));
        if let Some(None) = header_uid {
            return self.reject(
                "bad_request",
                text(
                    StatusCode::BAD_REQUEST,
                    "OpAMP-Instance-UID header is not a UUID",
                ),
            );
        }

        let body = match self.read_body(req, conn, "AgentToServer").await {
            Ok(b) => b,
            Err(r) => return r,
        };

        // Only the uid is kept while the owner works (see ws_message).
        let uid = match AgentToServer::decode(body.as_ref()) {
            Ok(m) => m.instance_uid,
            Err(e) => {
                let reply = opamp_error_reply(
                    Vec::new(),
                    ErrorKind::BadRequest,
                    format!("malformed AgentToServer: {e}"),
                    None,
                );
                return self.reject(
                    "bad_request",
                    protobuf(StatusCode::BAD_REQUEST, reply, false),
                );
            }
        };
        if let Some(Some(h)) = header_uid
            && uid.len() == 16
            && uid != h.as_bytes()
        {
            let why = "OpAMP-Instance-UID header differs from instance_uid".to_owned();
            let reply = opamp_error_reply(uid, ErrorKind::BadRequest, why, None);
            return self.reject(
                "bad_request",
                protobuf(StatusCode::BAD_REQUEST, reply, false),
            );
        }
        if let Err(why) = conn.may_speak_for(self.cfg.identity, &uid) {
            self.refuse_certificate(conn);
            let reply = opamp_error_reply(uid, ErrorKind::BadRequest, why, None);
            return self.reject("identity", protobuf(StatusCode::FORBIDDEN, reply, false));
        }
        let origin = self.origin(Transport::Http, conn, authority);
        match self.forward(&body, &uid, &origin, None).await {
            Ok(reply) if reply.close_connection => {
                self.refuse_certificate(conn);
                self.reject(
                    "identity",
                    protobuf(StatusCode::FORBIDDEN, reply.server_to_agent, false),
                )
            }
            Ok(reply) if reply.retry_after_ms > 0 => {
                let r = retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server cannot take this agent's message now; retry later",
                    Duration::from_millis(reply.retry_after_ms),
                );
                self.reject("unavailable", r)
            }
            Ok(reply) => {
                self.metrics
                    .messages
                    .get_or_create(&vec![("transport", "http"), ("direction", "out")])
                    .inc();
                if reply.poll_interval_ms > 0 {
                    // The connection stays open well past the agent's next poll, so closing it
                    // never races that poll.
                    let poll = Duration::from_millis(reply.poll_interval_ms);
                    conn.activity
                        .set_idle(Some(poll.saturating_mul(2) + KEEP_ALIVE_MARGIN));
                }
                protobuf(StatusCode::OK, reply.server_to_agent, accepts_gzip)
            }
            Err(e) => {
                debug!(error = %e, "no owner answered");
                let r = retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no server could take this agent's message ({e}); retry later"),
                    self.cfg.retry_after,
                );
                self.reject("unavailable", r)
            }
        }
    }

    /// The body of a request on this connection: at most `max_message_size` bytes (after gunzip,
    /// with `Content-Encoding: gzip`), read within the handshake timeout. Err: the answer to give.
    pub(crate) async fn read_body(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        what: &str,
    ) -> Result<Bytes, HttpResponse> {
        let gzipped = match req
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => false,
            Some(e) if e == "identity" => false,
            Some(e) if e == "gzip" => true,
            Some(e) => {
                return Err(self.reject(
                    "encoding",
                    text(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("unsupported Content-Encoding {e:?}; use gzip or none"),
                    ),
                ));
            }
        };
        let max = self.cfg.max_message_size;
        let too_large = || {
            self.reject(
                "too_large",
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{what} larger than the {max}-byte limit"),
                ),
            )
        };
        let read = Limited::new(req.into_body(), max).collect();
        let body = match tokio::time::timeout(self.cfg.limits.handshake_timeout, read).await {
            Err(_) => {
                let r = text(StatusCode::REQUEST_TIMEOUT, "request body too slow");
                return Err(self.reject("body_timeout", r));
            }
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Err(e)) => {
                debug!(error = %e, "request body not read");
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    "request body could not be read",
                ));
            }
        };
        conn.activity.settled();
        match decode_body(body, gzipped, max) {
            Ok(b) => Ok(b),
            Err(BodyError::TooLarge) => Err(too_large()),
            Err(BodyError::BadGzip(e)) => {
                let r = text(
                    StatusCode::BAD_REQUEST,
                    format!("request body is not valid gzip: {e}"),
                );
                Err(self.reject("bad_request", r))
            }
        }
    }

    pub(crate) fn reject(&self, reason: &'static str, r: HttpResponse) -> HttpResponse {
        self.count_rejected(reason);
        r
    }

    /// Remembers that the connection's certificate was refused for its agent: the next attempt
    /// with it is answered before any upgrade or body.
    pub(crate) fn refuse_certificate(&self, conn: &ConnInfo) {
        if let Some(cert) = &conn.cert {
            self.refused.refuse(&cert.sha256);
        }
    }
}

/// How much longer than two poll intervals an HTTP poller's idle keep-alive connection is kept.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(5);

pub(crate) fn retry_later(status: StatusCode, why: &str, after: Duration) -> HttpResponse {
    let mut r = text(status, why);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    r
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    BadGzip(String),
}

/// The AgentToServer bytes of a request body of at most `max` bytes: gunzipped when `gzipped`
/// (every member of a multi-member gzip stream, as RFC 1952 allows), reading at most one byte past
/// `max`, so a gzip bomb stops there.
pub fn decode_body(body: Bytes, gzipped: bool, max: usize) -> Result<Bytes, BodyError> {
    if !gzipped {
        return if body.len() > max {
            Err(BodyError::TooLarge)
        } else {
            Ok(body)
        };
    }
    let mut out = Vec::new();
    match MultiGzDecoder::new(body.as_ref())
        .take(max as u64 + 1)
        .read_to_end(&mut out)
    {
        Ok(n) if n > max => Err(BodyError::TooLarge),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(BodyError::BadGzip(e.to_string())),
    }
}

pub(crate) fn protobuf(status: StatusCode, body: Vec<u8>, gzip: bool) -> HttpResponse {
    let compress = gzip && body.len() >= GZIP_MIN_BYTES;
    let body = if compress {
        let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 2), Compression::fast());
        match enc.write_all(&body).and_then(|()| enc.finish()) {
            Ok(zipped) => zipped,
            // Into memory this cannot fail; were it to, the reply goes out plain.
            Err(_) => return protobuf(status, body, false),
        }
    } else {
        body
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    if compress {
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}
