//! The Bus: subject-addressed publish, subscribe and request/reply between Flotilla's roles.
//! NATS in a cluster; [`InProcessBus`] when one process runs every role. Subjects and wildcards
//! follow NATS (`*` one token, `>` the rest), so both implementations route the same names.

mod inproc;

pub use inproc::InProcessBus;

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
    #[error("bus closed")]
    Closed,
}

/// One message: a subject and an opaque (protobuf) payload. Routing facts travel in the payload's
/// envelope, so both implementations carry the same bytes.
#[derive(Debug, Clone, Default)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

impl BusMessage {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
        }
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
pub struct Reply(ReplyInner);

#[derive(Debug)]
enum ReplyInner {
    InProcess(oneshot::Sender<Bytes>),
}

impl Reply {
    pub async fn send(self, payload: Bytes) -> Result<(), BusError> {
        match self.0 {
            ReplyInner::InProcess(tx) => tx.send(payload).map_err(|_| BusError::Closed),
        }
    }
}

/// A stream of messages for one subscription; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Incoming>,
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget; a message nobody listens to is dropped.
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError>;
    /// Sends `msg` to one subscriber and waits for its answer.
    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<Bytes, BusError>;
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
}

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

#[cfg(test)]
mod tests {
    use super::subject_matches;

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
