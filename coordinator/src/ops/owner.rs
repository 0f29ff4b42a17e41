//! Requests to the owner of an agent's shard, which alone may change the agent's record: this
//! process or another, found over the bus by the shard's subject. The owner's side is the
//! service's ([`crate::service`]).

use super::error::{Error, Result};
use flotilla_common::bus::{Bus, BusMessage, request_with_retry};
use flotilla_common::names::{Subjects, shard_of};
use flotilla_proto::bus::{Uplink, UplinkReply, uplink};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

/// How long the other owners may take past the first owner's answer to a list, at least: under
/// a push to 100,000 agents one owner's walk took 0.2 s and another's 3.3 s (when walks still
/// waited for their shards' locks; docs/benchmarks.md).
const STRAGGLERS: Duration = Duration::from_secs(5);

/// How long a list waits for the owners at most: reading a slow owner's shards from the store
/// instead took 15-20 s at 100,000 agents and slowed every owner's writes meanwhile.
const LIST_WAIT: Duration = Duration::from_secs(10);

/// An agent list asked of every shard owner: the query's text parameters and how many of its
/// first matches each owner sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListAsk {
    pub params: Vec<(String, String)>,
    pub keep: usize,
}

/// One owner's answer: its part of the list over `shards` (a region's part of a list is its
/// shape); or, without a part (busy, or its store failed it), the shards it leaves to the asker's
/// walk over the store.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListAnswer<P> {
    pub shards: Vec<u16>,
    pub part: Option<P>,
}

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

    /// Asks every shard owner for its part of a list (the first `keep` matches of the query of
    /// `params`) and hands each part to `add`, until every shard is answered for, or the others
    /// had three times as long as the first owner to answer ([`STRAGGLERS`] at least), or
    /// [`LIST_WAIT`] passes. The shards a part covers are marked in `unheard` (indexed by
    /// shard); the rest are the caller's to read from the store: those of an owner that is gone,
    /// busy or failed, and of a shard two owners answered for (it changed hands during the walk:
    /// the second part is not taken).
    pub async fn gather_lists<P: DeserializeOwned>(
        &self,
        params: &[(String, String)],
        keep: usize,
        unheard: &mut [bool],
        add: &mut (dyn FnMut(P) + Send),
    ) {
        let ask = ListAsk {
            params: params.to_vec(),
            keep,
        };
        let Ok(payload) = serde_json::to_vec(&ask) else {
            return;
        };
        let msg = BusMessage::new(self.subjects.owned_lists(), payload);
        let mut answers = match self.bus.gather(msg).await {
            Ok(answers) => answers,
            Err(e) => {
                warn!(error = %e, "an agent list was not asked of the shard owners");
                return;
            }
        };
        let mut settled = vec![false; unheard.len()];
        let mut left = unheard.len();
        let asked = Instant::now();
        let mut until = asked + LIST_WAIT;
        while left > 0 {
            let Ok(Some(answer)) = tokio::time::timeout_at(until, answers.next()).await else {
                break;
            };
            // The owners walk at the same time: once one answered, the others get three times
            // as long (at least 5 s): a dead owner's shards are read from the store then,
            // and a busy one is not taken for dead (reading its shards from the store takes far
            // longer than its walk: 15-20 s against 0.2-3.3 s at 100,000 agents).
            until = until.min(Instant::now() + (3 * asked.elapsed()).max(STRAGGLERS));
            let Ok(a) = serde_json::from_slice::<ListAnswer<P>>(&answer) else {
                continue;
            };
            let shards: Vec<usize> = a
                .shards
                .iter()
                .map(|&s| usize::from(s))
                .filter(|&s| s < settled.len())
                .collect();
            let fresh = shards.iter().all(|&s| !settled[s]);
            for &s in &shards {
                if !settled[s] {
                    settled[s] = true;
                    left -= 1;
                }
            }
            if let (Some(part), true) = (a.part, fresh) {
                shards.iter().for_each(|&s| unheard[s] = false);
                add(part);
            }
        }
    }

    /// Sends `kind` about agent `uid` to the owner of its shard and returns its answer.
    pub async fn ask(&self, uid: Uuid, kind: uplink::Kind) -> Result<UplinkReply> {
        let ask = Uplink {
            origin: None,
            kind: Some(kind),
            heartbeats_answered_through: None,
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
