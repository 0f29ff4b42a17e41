//! Agents that stop reporting: the silence sweep (each owned shard's due deadlines, claimed under
//! the shard's fence, so one owner marks an agent silent once), and the removal of agents gone
//! longer than the agent retention.

use super::millis;
use super::owner::Owner;
use crate::fleet::agents::attributes;
use crate::opamp::EventKind;
use crate::opamp::desired::heartbeat_interval;
use crate::opamp::process::silence_deadline;
use crate::ops::audit;
use crate::ops::caller::SYSTEM;
use flotilla_common::names::shard_of;
use flotilla_common::store::{Deadline, StoreError};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use futures_util::StreamExt;
use tracing::info;
use uuid::Uuid;

/// How long a claimed silence deadline waits before another sweep may claim it again (if the
/// claimer died before settling it).
const CLAIM_RETRY_MS: u64 = 5_000;

impl Owner {
    /// Marks agents of owned shards whose deadline passed without a message as silent, once per
    /// silence: each due deadline is claimed under the shard's fence, so one owner handles it,
    /// and one that dies midway leaves it due again for the next.
    pub(super) async fn sweep_silent(&self) -> Result<(), StoreError> {
        self.count_shards().await?;
        let now = now_unix_ms();
        // Only the shards whose earliest deadline may have passed: a claim answers with the
        // shard's next one, and the owner's own writes are the only ones that arm earlier.
        let claims = futures_util::stream::iter(self.shards.owned())
            .filter_map(|shard| std::future::ready(self.shards.fence(shard)))
            .filter(|fence| std::future::ready(self.shards.may_be_due(*fence, now)))
            .map(|fence| async move {
                self.shards.claiming(fence);
                match self.store.claim_due(fence, now, CLAIM_RETRY_MS).await {
                    Ok(claimed) => {
                        let next = claimed.next_unix_ms.unwrap_or(u64::MAX);
                        self.shards.armed(fence, next);
                        Ok((fence, claimed.due))
                    }
                    Err(StoreError::Fenced { .. }) => {
                        self.fenced(fence.shard);
                        Ok((fence, Vec::new()))
                    }
                    Err(e) => {
                        self.shards.due_unknown(fence.shard);
                        Err(e)
                    }
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for claim in claims {
            let (fence, uids) = claim?;
            for uid in uids {
                self.settle_due(fence.shard, uid, now).await?;
            }
        }
        Ok(())
    }

    /// One claimed deadline: silent if still due, otherwise re-armed (or cleared).
    async fn settle_due(&self, shard: u16, uid: Uuid, now: u64) -> Result<(), StoreError> {
        let Some(mut shard) = self.lock_owned(shard).await else {
            return Ok(());
        };
        // In the copy's form: only the status and deadline change, nothing is decoded.
        let Some(mut rec) = shard.get_for_message(uid).await? else {
            return Ok(());
        };
        let attrs = attributes(&rec);
        let interval = heartbeat_interval(
            &rec,
            &attrs,
            &self.desired.current(),
            self.cfg.heartbeat_interval,
        );
        let silent = match silence_deadline(&rec, interval) {
            Some(at) if at > now => {
                self.save_or_drop(&mut shard, &mut rec, Deadline::Arm(at), None)
                    .await?;
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        if silent {
            rec.status = AgentStatus::Silent as i32;
        }
        if self
            .save_or_drop(&mut shard, &mut rec, Deadline::Clear, None)
            .await?
            && silent
        {
            info!(%uid, "agent silent");
            self.events.emit(EventKind::Silent, &rec).await;
        }
        Ok(())
    }

    /// Removes the agents of owned shards that have been disconnected or silent for longer than
    /// the agent retention, each with its audit entry.
    pub(super) async fn expire_agents(&self) -> Result<(), String> {
        let horizon = now_unix_ms().saturating_sub(millis(self.cfg.agent_retention));
        let expired = |rec: &AgentRecord| {
            rec.status != AgentStatus::Connected as i32 && rec.last_seen_unix_ms < horizon
        };
        let mut gone: Vec<Uuid> = Vec::new();
        self.visit_owned(&|_| true, &mut |rec| {
            if expired(rec)
                && let Ok(uid) = Uuid::from_slice(&rec.instance_uid)
            {
                gone.push(uid);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        for uid in gone {
            let Some(mut shard) = self.lock_owned(shard_of(uid.as_bytes())).await else {
                continue;
            };
            // Read again under the lock: the agent may have come back meanwhile.
            let Some(rec) = shard.get(uid).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if !expired(&rec) {
                continue;
            }
            let entry = audit::entry(
                SYSTEM,
                "agent.expire",
                format!("agent/{uid}"),
                Some(
                    serde_json::json!({ "last_seen": crate::ops::views::rfc3339(rec.last_seen_unix_ms) }),
                ),
                None,
            );
            match self.delete_or_drop(&mut shard, uid, Some(&entry)).await {
                Ok(Some(_)) => info!(%uid, "agent removed after the agent retention"),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}
