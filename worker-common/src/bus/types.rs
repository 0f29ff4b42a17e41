//! What every bus is: messages, requests and their replies, subscriptions, the errors, and the
//! retry loop callers share. The NATS and in-process implementations build on these.

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BusError {
    #[error("no subscriber for subject {0}")]
    NoResponders(String),
    #[error("request on {0} timed out")]
    Timeout(String),
    #[error("subscriber of {0} is overloaded")]
    Overloaded(String),
    #[error("a {size}-byte message on {subject} is larger than the {max} bytes the bus carries")]
    TooLarge {
        subject: String,
        size: usize,
        max: usize,
    },
    #[error("bus closed")]
    Closed,
}

/// One message: a subject, headers and an opaque (protobuf) payload. The payload's envelope is
/// what receivers act on; headers repeat the routing facts (agent, gateway, connection, trace
/// context) for tracing and for whoever watches the bus, and need not be parsed to route.
#[derive(Debug, Clone, Default)]
pub struct BusMessage {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl BusMessage {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Carries the current trace (W3C `traceparent`) to the receiver, who continues it with
    /// [`crate::telemetry::traces::continued`]. Nothing is added while traces are off.
    pub fn with_trace_context(mut self) -> Self {
        crate::telemetry::traces::inject(&mut self);
        self
    }
}

impl opentelemetry::propagation::Injector for BusMessage {
    fn set(&mut self, key: &str, value: String) {
        self.headers.push((key.to_owned(), value));
    }
}

impl opentelemetry::propagation::Extractor for BusMessage {
    fn get(&self, key: &str) -> Option<&str> {
        self.header(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// A received message; `reply` answers it when it was a request.
#[derive(Debug)]
pub struct Incoming {
    pub msg: BusMessage,
    pub reply: Option<Reply>,
}

/// How to answer one request. Dropping it unanswered makes the requester see a timeout (NATS) or
/// `NoResponders` (in-process).
#[derive(Debug)]
pub struct Reply(pub(super) ReplyInner);

#[derive(Debug)]
pub(super) enum ReplyInner {
    InProcess(oneshot::Sender<Bytes>),
    Nats {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
}

impl Reply {
    pub async fn send(self, payload: Bytes) -> Result<(), BusError> {
        match self.0 {
            ReplyInner::InProcess(tx) => tx.send(payload).map_err(|_| BusError::Closed),
            ReplyInner::Nats { client, subject } => client
                .publish(subject, payload)
                .await
                .map_err(|_| BusError::Closed),
        }
    }
}

/// A stream of messages for one subscription; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription(pub(super) SubscriptionInner);

#[derive(Debug)]
pub(super) enum SubscriptionInner {
    InProcess(mpsc::Receiver<Incoming>),
    Nats {
        client: async_nats::Client,
        sub: async_nats::Subscriber,
    },
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Incoming> {
        match &mut self.0 {
            SubscriptionInner::InProcess(rx) => rx.recv().await,
            SubscriptionInner::Nats { client, sub } => {
                let m = futures_util::StreamExt::next(sub).await?;
                Some(incoming(client, m))
            }
        }
    }

    /// Stops new messages from arriving; [`Subscription::next`] then yields the ones already on
    /// their way and ends. How a shard owner hands a shard over without losing an uplink.
    pub async fn drain(&mut self) {
        match &mut self.0 {
            SubscriptionInner::InProcess(rx) => rx.close(),
            SubscriptionInner::Nats { sub, .. } => {
                if sub.drain().await.is_err() {
                    // The connection is gone: nothing more will arrive anyway.
                    let _ = sub.unsubscribe().await;
                }
            }
        }
    }
}

/// The answers to one [`Bus::gather`], as they arrive: the caller decides how long to wait.
#[derive(Debug)]
pub struct Answers(pub(super) AnswersInner);

#[derive(Debug)]
pub(super) enum AnswersInner {
    InProcess(futures_util::stream::FuturesUnordered<oneshot::Receiver<Bytes>>),
    Nats(async_nats::Subscriber),
}

impl Answers {
    /// The next answer; none once every subscriber answered (in-process) or when nobody
    /// subscribes to the subject (NATS's "no responders"). A NATS gather never knows it heard
    /// everyone: the caller stops reading when it has what it needs, or on its own timeout.
    pub async fn next(&mut self) -> Option<Bytes> {
        match &mut self.0 {
            AnswersInner::InProcess(answers) => loop {
                match futures_util::StreamExt::next(answers).await? {
                    Ok(answer) => return Some(answer),
                    // A subscriber that dropped the request unanswered.
                    Err(_) => continue,
                }
            },
            AnswersInner::Nats(sub) => {
                let m = futures_util::StreamExt::next(sub).await?;
                m.status.is_none().then_some(m.payload)
            }
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget; a message nobody listens to is dropped.
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;
    /// Sends `msg` to one subscriber and waits for its answer.
    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<Bytes, BusError>;
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
    /// A subscription in the queue group `group`: each message reaches one member of the group
    /// (NATS prefers members connected to the same cluster as the sender).
    async fn subscribe_queue(&self, subject: &str, group: &str) -> Result<Subscription, BusError>;
    /// Sends `msg` to every subscriber; their answers arrive on the [`Answers`] returned, for
    /// as long as the caller reads them.
    async fn gather(&self, msg: BusMessage) -> Result<Answers, BusError>;
}

/// Sends a request to whoever serves `msg.subject`, retrying while nobody answers (e.g. during a
/// shard handoff) until `deadline` has passed; each attempt waits at most `timeout`.
pub async fn request_with_retry(
    bus: &dyn Bus,
    msg: BusMessage,
    timeout: Duration,
    deadline: Duration,
) -> Result<Bytes, BusError> {
    retry_request(deadline, || bus.request(msg.clone(), timeout)).await
}

/// Makes `attempt` (one request) again while nobody serves its subject, the server did not
/// answer in time or the bus was away, until `deadline` has passed; returns what the last
/// attempt got. Nothing is held between attempts but what `attempt` holds.
pub async fn retry_request<F, Fut>(deadline: Duration, mut attempt: F) -> Result<Bytes, BusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, BusError>>,
{
    let started = tokio::time::Instant::now();
    let give_up = started + deadline;
    let mut backoff = Duration::from_millis(25);
    loop {
        match attempt().await {
            Err(e @ (BusError::NoResponders(_) | BusError::Timeout(_) | BusError::Closed)) => {
                let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    return Err(e);
                }
                // Nobody serves the subject (a shard no coordinator holds yet, as in the first
                // second of a cluster, or one between owners): asking costs little, so for a
                // second it is asked again at most 100 ms later, and answered within 100 ms of
                // an owner taking it; then once a second (a shard whose owner died has none
                // until its lease runs out, seconds later). A server that did not answer in time
                // is given more room.
                let most = match e {
                    BusError::NoResponders(_) if started.elapsed() < NO_OWNER_SOON => {
                        Duration::from_millis(100)
                    }
                    BusError::NoResponders(_) => NO_OWNER_SOON,
                    _ => Duration::from_millis(500),
                };
                tokio::time::sleep(backoff.min(most).min(remaining)).await;
                backoff = (backoff * 2).min(most);
            }
            other => return other,
        }
    }
}

/// How long [`retry_request`] asks often for a subject nobody serves (then once this long).
const NO_OWNER_SOON: Duration = Duration::from_secs(1);

/// NATS subject matching: `*` matches one token, `>` one or more trailing tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// A NATS message as the Bus hands it out.
fn incoming(client: &async_nats::Client, m: async_nats::Message) -> Incoming {
    let headers = m
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter_map(|(name, values)| {
            let value = values.first()?;
            Some((name.to_string(), value.as_str().to_owned()))
        })
        .collect();
    Incoming {
        msg: BusMessage {
            subject: m.subject.to_string(),
            headers,
            payload: m.payload,
        },
        reply: m.reply.map(|subject| {
            Reply(ReplyInner::Nats {
                client: client.clone(),
                subject,
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{BusError, retry_request, subject_matches};
    use std::time::Duration;
    use tokio::time::Instant;

    /// A subject nobody serves is asked again within 100 ms for a second (an owner taking the
    /// shard is reached soon), then once a second: a message for a shard whose owner died asks
    /// 20 times in 5 s, not 50.
    #[tokio::test(start_paused = true)]
    async fn a_subject_nobody_serves_is_asked_often_for_a_second_then_seldom() {
        let started = Instant::now();
        let owner_at = Duration::from_millis(630);
        let answered = retry_request(Duration::from_secs(5), || async move {
            if started.elapsed() >= owner_at {
                Ok(bytes::Bytes::from_static(b"ok"))
            } else {
                Err(BusError::NoResponders("s".into()))
            }
        })
        .await;
        assert_eq!(answered.unwrap(), "ok");
        let late = started.elapsed() - owner_at;
        assert!(
            late <= Duration::from_millis(100),
            "{late:?} after the owner came"
        );

        let mut attempts = 0;
        let gave_up = retry_request(Duration::from_secs(5), || {
            attempts += 1;
            async { Err(BusError::NoResponders("s".into())) }
        })
        .await;
        assert!(matches!(gave_up, Err(BusError::NoResponders(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(5) + owner_at + late);
        assert_eq!(attempts, 20);
    }

    #[test]
    fn wildcards() {
        assert!(subject_matches("opamp.r.up.*", "opamp.r.up.0001"));
        assert!(!subject_matches("opamp.r.up.*", "opamp.r.up.0001.x"));
        assert!(subject_matches("opamp.r.evt.>", "opamp.r.evt.silent"));
        assert!(subject_matches("opamp.r.evt.>", "opamp.r.evt.a.b"));
        assert!(!subject_matches("opamp.r.evt.>", "opamp.r.evt"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }
}
