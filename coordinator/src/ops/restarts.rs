//! Restarting every agent a selector matches, at a bounded rate: a job that runs in the process
//! that accepted it, its progress saved in the store (and audited once, as a whole).

use super::agents::RestartOutcome;
use super::audit;
use super::docs::RESTARTS;
use super::{Caller, Error, Ops, Result};
use crate::fleet::agents::{RecordAttributes, has};
use flotilla_common::selector::Selector;
use flotilla_common::store::{AuditEntry, StoreError};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::opamp::AgentCapabilities as Cap;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

/// A restart of every agent a selector matches, at a bounded rate: its progress, in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartJob {
    pub id: String,
    pub selector: String,
    pub rate_per_second: f64,
    pub matched: usize,
    pub delivered: usize,
    pub queued: usize,
    /// Agents that could not be restarted, with why (the first few).
    pub failed: usize,
    pub errors: Vec<String>,
    pub done: bool,
    pub created_by: String,
    pub created_unix_ms: u64,
}

const MAX_JOB_ERRORS: usize = 20;
/// Restarts per second when a request names no rate.
pub const DEFAULT_RATE: f64 = 10.0;

impl Ops {
    /// Restarts every agent `selector` matches (that can restart), at most `rate_per_second`,
    /// in the background; the job's progress is in the store under the returned id.
    pub async fn restart_matching(
        &self,
        caller: &Caller,
        selector: Selector,
        rate_per_second: f64,
    ) -> Result<RestartJob> {
        if !(rate_per_second.is_finite() && (0.1..=10_000.0).contains(&rate_per_second)) {
            return Err(Error::BadRequest(
                "rate_per_second must be from 0.1 to 10000".into(),
            ));
        }
        let mut uids = Vec::new();
        self.visit_fleet(&mut |rec| {
            if selector.matches(&RecordAttributes(rec))
                && has(rec.capabilities, Cap::AcceptsRestartCommand)
                && let Ok(uid) = Uuid::from_slice(&rec.instance_uid)
            {
                uids.push(uid);
            }
        })
        .await?;
        uids.sort_unstable();
        let job = RestartJob {
            id: Uuid::now_v7().to_string(),
            selector: selector.to_string(),
            rate_per_second,
            matched: uids.len(),
            delivered: 0,
            queued: 0,
            failed: 0,
            errors: Vec::new(),
            done: uids.is_empty(),
            created_by: caller.name.clone(),
            created_unix_ms: now_unix_ms(),
        };
        let entry = audit::entry(
            &caller.name,
            "restart.selector",
            format!("restart/{}", job.id),
            None,
            serde_json::to_value(&job).ok(),
        );
        let rev = self.save_job(&job, 0, Some(&entry)).await?;
        let span = info_span!("restart_job", id = %job.id);
        tokio::spawn(
            self.clone()
                .run_restarts(job.clone(), rev, uids)
                .instrument(span),
        );
        Ok(job)
    }

    async fn save_job(
        &self,
        job: &RestartJob,
        rev: u64,
        audit: Option<&AuditEntry>,
    ) -> Result<u64> {
        let json = serde_json::to_string(job)
            .map_err(|e| Error::BadRequest(format!("restart job: {e}")))?;
        if self
            .store()
            .put_doc(RESTARTS, &job.id, rev, &json, audit)
            .await?
        {
            Ok(rev + 1)
        } else {
            Err(Error::Conflict(format!(
                "restart job {} was changed by someone else",
                job.id
            )))
        }
    }

    /// Restarts `uids` one at a time, spaced by the rate, saving progress about once a second.
    async fn run_restarts(self, mut job: RestartJob, mut rev: u64, uids: Vec<Uuid>) {
        let gap = Duration::from_secs_f64(1.0 / job.rate_per_second);
        let mut tick = tokio::time::interval(gap);
        let mut saved = tokio::time::Instant::now();
        for (i, uid) in uids.iter().enumerate() {
            tick.tick().await;
            // Audited once, as the job; not once per agent.
            match self.restart(*uid, "").await {
                Ok(RestartOutcome::Delivered) => job.delivered += 1,
                Ok(RestartOutcome::Queued) => job.queued += 1,
                Err(e) => {
                    job.failed += 1;
                    if job.errors.len() < MAX_JOB_ERRORS {
                        job.errors.push(e.to_string());
                    }
                }
            }
            job.done = i + 1 == uids.len();
            if job.done || saved.elapsed() >= Duration::from_secs(1) {
                saved = tokio::time::Instant::now();
                match self.save_job(&job, rev, None).await {
                    Ok(r) => rev = r,
                    Err(e) => warn!(error = %e, "restart progress not saved"),
                }
            }
        }
        info!(
            matched = job.matched,
            delivered = job.delivered,
            queued = job.queued,
            failed = job.failed,
            "restart job done"
        );
    }

    pub async fn restart_job(&self, _caller: &Caller, id: &str) -> Result<RestartJob> {
        let doc = self
            .store()
            .get_doc(RESTARTS, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no restart job {id:?}")))?;
        serde_json::from_str(&doc.json)
            .map_err(|e| Error::Store(StoreError::Corrupt(e.to_string())))
    }
}
