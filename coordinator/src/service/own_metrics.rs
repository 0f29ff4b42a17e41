//! The owner's side of agents' own metrics: a gateway's batch for one shard, each sample folded
//! into its agent's rollup ([`crate::fleet::own_metrics`]) and the record saved under the
//! shard's lock and fence, as every other write of it. The rollup lives in the record, so a
//! coordinator taking a shard over continues from what the store holds.

use super::owner::Owner;
use crate::fleet::own_metrics::fold;
use crate::opamp::identity::check_identity;
use flotilla_common::names::shard_of;
use flotilla_common::store::Deadline;
use flotilla_proto::bus::{OwnMetricsBatch, UplinkReply};
use tracing::debug;
use uuid::Uuid;

impl Owner {
    /// Folds a batch of one shard's samples; None if this process does not own the shard (the
    /// gateway asks again until its owner answers).
    pub(super) async fn own_metrics_here(&self, batch: OwnMetricsBatch) -> Option<UplinkReply> {
        let shard = shard_of(&batch.samples.first()?.instance_uid);
        let mut locked = self.lock_for_uplink(shard).await?;
        for s in batch.samples {
            let outcome = match Uuid::from_slice(&s.instance_uid) {
                Ok(uid) if shard_of(uid.as_bytes()) == shard => {
                    match locked.get(uid).await {
                        Ok(Some(mut rec)) if rec.moved_to.is_empty() => {
                            let origin = s.origin.clone().unwrap_or_default();
                            if let Err(why) = check_identity(Some(&rec), &origin, &s.instance_uid) {
                                debug!(%uid, %why, "own metrics refused");
                                "identity"
                            } else if !fold(&mut rec.own_metrics, &s) {
                                "stale"
                            } else {
                                match self
                                    .save_or_drop(&mut locked, &mut rec, Deadline::Keep, None)
                                    .await
                                {
                                    Ok(true) => "kept",
                                    // Another coordinator holds the shard now: it gets the next ones.
                                    Ok(false) => return None,
                                    Err(e) => {
                                        debug!(%uid, error = %e, "own metrics not stored");
                                        "store_error"
                                    }
                                }
                            }
                        }
                        Ok(_) => "unknown_agent",
                        Err(e) => {
                            debug!(%uid, error = %e, "own metrics: agent unreadable");
                            "store_error"
                        }
                    }
                }
                _ => "unknown_agent",
            };
            self.metrics
                .own_metrics
                .get_or_create(&vec![("outcome", outcome)])
                .inc();
        }
        Some(UplinkReply::default())
    }
}
