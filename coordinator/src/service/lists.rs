//! The shard owner's part of the agent lists a coordinator's API asks of every owner at once
//! ([`crate::ops::OwnerClient::gather_lists`]): the matches among the records of the shards it
//! owns, read from its copies of them (ADR 0019), so that a list page reads no store.

use super::shards::Walk;
use super::{Owner, Service, answer_each};
use crate::ops::agents::{AgentQuery, ListPart};
use crate::ops::owner::{ListAnswer, ListAsk};
use bytes::Bytes;
use flotilla_proto::bus::AgentRecord;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

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
        let visited = match self.visit_shards(&owned, &mut part).await {
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

/// A list's part walks an owner's records as the list it is part of.
impl Walk for ListPart<'_> {
    fn take(&mut self, rec: &AgentRecord) -> Option<String> {
        self.add(rec)
    }

    fn listing(&self) -> Option<(&str, bool)> {
        ListPart::listing(self)
    }

    fn take_listed<'r>(
        &mut self,
        key: &str,
        uid: Uuid,
        rec: &dyn Fn() -> Option<&'r AgentRecord>,
    ) -> bool {
        self.add_listed(key, uid, rec)
    }

    fn count_listed(&mut self, n: usize) {
        ListPart::count_listed(self, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::configs::Desired;
    use crate::ops::regions::RegionPage;
    use crate::service::shards::{RecordCopy, ShardTable};
    use flotilla_common::store::{Fence, Touch};
    use std::time::{Duration, Instant};

    /// The uids of a page, its counts.
    fn seen(page: RegionPage) -> (usize, usize, Vec<String>) {
        let uids = page.items.into_iter().map(|(_, a)| a.instance_uid);
        (page.total, page.after_cursor, uids.collect())
    }

    /// A list's walk over an owner's whole copies gives the page that every record given to the
    /// list's part gives, the first time (every copy read) and the next (the copies listed
    /// then, in the list's order), also after touches: counts, order, cursor, skip.
    #[tokio::test]
    async fn walks_over_the_listed_copies_give_the_page_every_record_gives() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t = ShardTable::none();
        let shards = 0..8u16;
        let mut fleet = Vec::new();
        for shard in shards.clone() {
            t.hold(
                Fence { shard, epoch: 1 },
                Instant::now() + Duration::from_secs(60),
            );
            let held = t.lock(shard).await;
            let mut cache = held.cache();
            for _ in 0..300 {
                let uid = Uuid::from_u64_pair(next(), next());
                let mut rec = AgentRecord {
                    instance_uid: uid.as_bytes().to_vec(),
                    status: (next() % 2) as i32,
                    ..Default::default()
                };
                let env = ["prod", "dev", "test"][(next() % 3) as usize];
                rec.labels.insert("env".into(), env.into());
                rec.labels.insert("zone".into(), format!("z{}", next() % 7));
                cache.keep(uid, Box::new(RecordCopy::new(rec.clone(), None)));
                fleet.push((shard, uid, rec));
            }
            cache.set_whole(true);
        }
        let desired = Desired::default();
        let cursor = Uuid::from_u64_pair(u64::MAX / 3, 0).to_string();
        for (params, skip, take) in [
            (vec![("selector", "env=prod")], 0, 50),
            (vec![("selector", "env=dev"), ("order", "desc")], 20, 30),
            (
                vec![("selector", "env=dev"), ("cursor", cursor.as_str())],
                0,
                40,
            ),
            (vec![("sort", "zone"), ("status", "connected")], 100, 50),
            (vec![("sort", "status"), ("order", "desc")], 0, 10),
            (vec![("selector", "env=none")], 0, 10),
        ] {
            let q = AgentQuery::parse(params.clone()).unwrap();
            assert!(q.listing().is_some(), "{params:?}");
            let walked = || {
                let mut part = ListPart::new(&q, &desired, "r", skip + take);
                for shard in shards.clone() {
                    assert!(t.read_whole(shard, &mut part));
                }
                seen(part.finish(skip))
            };
            let every = |fleet: &[(u16, Uuid, AgentRecord)]| {
                let mut part = ListPart::new(&q, &desired, "r", skip + take);
                for (_, _, rec) in fleet {
                    part.add(rec);
                }
                seen(part.finish(skip))
            };
            let want = every(&fleet);
            assert_eq!(walked(), want, "every copy read: {params:?}");
            assert_eq!(walked(), want, "the copies listed: {params:?}");
            assert!(want.0 > 0 || params[0].1 == "env=none", "{params:?}");
            for (i, (shard, uid, rec)) in fleet.iter_mut().enumerate().step_by(5) {
                rec.sequence_num += 1;
                rec.last_seen_unix_ms = i as u64;
                let touch = Touch {
                    uid: *uid,
                    sequence_num: rec.sequence_num,
                    last_seen_unix_ms: rec.last_seen_unix_ms,
                };
                assert!(t.lock(*shard).await.cache().touch(&touch));
            }
            assert_eq!(walked(), every(&fleet), "after touches: {params:?}");
        }
    }
}
