//! The shard owner's part of the agent lists a coordinator's API asks of every owner at once
//! ([`crate::ops::OwnerClient::gather_lists`]): the matches among the records of the shards it
//! owns, read from its copies of them (ADR 0019), so that a list page reads no store.

use super::{Owner, Service, answer_each};
use crate::ops::agents::{AgentQuery, ListPart};
use crate::ops::owner::{ListAnswer, ListAsk};
use bytes::Bytes;
use flotilla_proto::bus::AgentRecord;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Lists answered at once; past that an owner declines (the asker reads its shards from the
/// store) rather than queue walks behind one another.
const LIST_ANSWERS: usize = 4;

/// Largest answer sent: the bus's messages are at most 1 MiB by default (nats-server's
/// max_payload); a larger part is declined.
const MAX_LIST_ANSWER: usize = 768 * 1024;

impl Service {
    /// Answers the agent lists asked of every owner, until `cancel`. With a store that holds
    /// every record in memory (the embedded mode) the API walks the store itself: nothing to do.
    pub(super) async fn answer_lists(self: Arc<Self>, cancel: CancellationToken) {
        if self.owner.store.holds_agents_in_memory() {
            return;
        }
        let asks = match self.bus.subscribe(&self.subjects.owned_lists()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot answer agent lists; they read the store instead");
                return;
            }
        };
        let owner = self.owner.clone();
        let answer = move |ask: Bytes| {
            let owner = owner.clone();
            async move { owner.list_part(&ask).await }
        };
        answer_each(asks, cancel, LIST_ANSWERS, answer, || self.owner.declined()).await;
    }
}

impl Owner {
    /// This owner's part of the list `ask` asks for (a [`ListAsk`]), as a [`ListAnswer`].
    async fn list_part(&self, ask: &[u8]) -> Bytes {
        let Ok(ask) = serde_json::from_slice::<ListAsk>(ask) else {
            return self.declined();
        };
        let params = ask.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let Ok(q) = AgentQuery::parse(params) else {
            return self.declined();
        };
        let started = std::time::Instant::now();
        let desired = self.desired.current();
        let mut part = ListPart::new(&q, &desired, &self.cfg.region, ask.keep);
        let owned = self.shards.owned();
        let filters = q.record_filters();
        let take = &mut |rec: &AgentRecord| part.add(rec);
        let visited = match self.visit_shards(&owned, filters.as_deref(), take).await {
            Ok(shards) => shards,
            Err(e) => {
                warn!(error = %e, "an agent list was left to the store");
                return self.declined();
            }
        };
        self.metrics
            .list_part_seconds
            .observe(started.elapsed().as_secs_f64());
        let answer = ListAnswer {
            shards: visited,
            part: Some(part.finish(0)),
        };
        match serde_json::to_vec(&answer) {
            Ok(json) if json.len() <= MAX_LIST_ANSWER => json.into(),
            _ => self.declined(),
        }
    }

    /// The answer that leaves this owner's shards to the asker's walk over the store.
    fn declined(&self) -> Bytes {
        let answer: ListAnswer<()> = ListAnswer {
            shards: self.shards.owned(),
            part: None,
        };
        serde_json::to_vec(&answer).unwrap_or_default().into()
    }
}
