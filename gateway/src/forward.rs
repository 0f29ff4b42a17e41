//! Copies of agents' own-metrics exports passed on to a user's OTLP endpoint: each
//! `--agent-metrics-forward NAME=URL` destination has a queue bounded in exports and bytes and a
//! sender that posts each export (OTLP/HTTP protobuf, as the agent sent it, gunzipped) with a few
//! in flight, following no redirect. A copy that does not fit the queue, or that the destination
//! refuses, is counted and dropped: the agent's next export carries the same cumulative counters.

use crate::metrics::Outcomes;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Exports waiting for one destination at most, and their bytes.
pub const MAX_QUEUED: usize = 1024;
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Posts in flight to one destination at most.
const IN_FLIGHT: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(10);
/// OTLP/HTTP's protobuf content type.
const OTLP_PROTOBUF: &str = "application/x-protobuf";

/// The destinations, by name, and their queues.
pub(crate) struct Forwarders {
    queues: BTreeMap<String, Queue>,
    outcomes: Outcomes,
}

/// One destination's queue and the bytes it holds.
struct Queue {
    tx: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
}

impl Forwarders {
    /// Starts a sender per destination, until `cancel`.
    pub fn start(
        destinations: &BTreeMap<String, String>,
        outcomes: Outcomes,
        cancel: &CancellationToken,
    ) -> Self {
        // No redirects: a copy goes where the operator said, nowhere else.
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let queues = destinations
            .iter()
            .map(|(name, url)| {
                let (tx, rx) = mpsc::channel(MAX_QUEUED);
                let bytes = Arc::new(AtomicUsize::new(0));
                let sender = send_all(
                    rx,
                    bytes.clone(),
                    client.clone(),
                    url.clone(),
                    name.clone(),
                    outcomes.clone(),
                );
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = sender => {}
                        () = cancel.cancelled() => {}
                    }
                });
                (name.clone(), Queue { tx, bytes })
            })
            .collect();
        Self { queues, outcomes }
    }

    /// Queues a copy of `body` for destination `name`.
    pub fn forward(&self, name: &str, body: Bytes) {
        let outcome = match self.queues.get(name) {
            None => "unknown_destination",
            Some(q) => {
                let len = body.len();
                let held = q.bytes.fetch_add(len, Ordering::AcqRel);
                if held + len <= MAX_QUEUED_BYTES && q.tx.try_send(body).is_ok() {
                    return;
                }
                q.bytes.fetch_sub(len, Ordering::AcqRel);
                "queue_full"
            }
        };
        debug!(destination = name, outcome, "own metrics not forwarded");
        self.count(name, outcome);
    }

    fn count(&self, name: &str, outcome: &'static str) {
        // An unknown name is the agent's to choose: not a label value.
        let name = if self.queues.contains_key(name) {
            name
        } else {
            "(unknown)"
        };
        self.outcomes
            .get_or_create(&vec![
                ("destination", name.to_owned()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }
}

async fn send_all(
    rx: mpsc::Receiver<Bytes>,
    held: Arc<AtomicUsize>,
    client: reqwest::Client,
    url: String,
    name: String,
    outcomes: Outcomes,
) {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
        .for_each_concurrent(IN_FLIGHT, |body| {
            held.fetch_sub(body.len(), Ordering::AcqRel);
            let sent = client
                .post(&url)
                .header(http::header::CONTENT_TYPE, OTLP_PROTOBUF)
                .body(body)
                .send();
            let (name, outcomes) = (name.clone(), outcomes.clone());
            async move {
                let outcome = match sent.await {
                    Ok(r) if r.status().is_success() => "sent",
                    Ok(r) => {
                        debug!(destination = %name, status = %r.status(), "forward refused");
                        "failed"
                    }
                    Err(e) => {
                        debug!(destination = %name, error = %e, "forward failed");
                        "failed"
                    }
                };
                outcomes
                    .get_or_create(&vec![("destination", name), ("outcome", outcome.into())])
                    .inc();
            }
        })
        .await;
}
