//! Requests to the owner of an agent's shard, which alone may change the agent's record: this
//! process or another, found over the bus by the shard's subject. The owner's side is the
//! service's ([`crate::service`]).

use super::error::{Error, Result};
use flotilla_common::bus::{Bus, BusMessage, request_with_retry};
use flotilla_common::names::{Subjects, shard_of};
use flotilla_proto::bus::{Uplink, UplinkReply, uplink};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone)]
pub struct OwnerClient {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    timeout: Duration,
    deadline: Duration,
}

impl OwnerClient {
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        timeout: Duration,
        deadline: Duration,
    ) -> Self {
        Self {
            bus,
            subjects,
            timeout,
            deadline,
        }
    }

    /// Sends `kind` about agent `uid` to the owner of its shard and returns its answer.
    pub async fn ask(&self, uid: Uuid, kind: uplink::Kind) -> Result<UplinkReply> {
        let ask = Uplink {
            origin: None,
            kind: Some(kind),
        };
        let msg = BusMessage::new(
            self.subjects.uplink(shard_of(uid.as_bytes())),
            ask.encode_to_vec(),
        );
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(format!(
                "the owner of agent {uid} did not answer ({e}); try again"
            ))
        };
        let answer = request_with_retry(self.bus.as_ref(), msg, self.timeout, self.deadline)
            .await
            .map_err(|e| unavailable(&e))?;
        UplinkReply::decode(answer).map_err(|e| unavailable(&e))
    }
}
