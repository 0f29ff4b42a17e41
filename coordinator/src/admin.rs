//! Admin operations on configs, labels and restarts: checked, stored, announced to the other
//! coordinators, and written to the audit log with their caller.

use crate::configs;
use crate::offers;
use crate::service::{Coordinator, RestartOutcome, ServiceError, audit_entry};
use crate::validate;
use flotilla_common::selector::Selector;
use flotilla_common::store::{
    AgentSettings, AuditEntry, ConfigFile, Doc, PackageOffer, StoredConfig,
};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{LabelsResult, SetLabels, Uplink, uplink};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

/// A new config version as the API takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDraft {
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub packages: BTreeMap<String, PackageOffer>,
    #[serde(default)]
    pub settings: Option<AgentSettings>,
    /// False: store the version without giving it to agents (for a rollout). Default true.
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

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

const RESTARTS: &str = "restarts";
const MAX_JOB_ERRORS: usize = 20;

/// Label keys follow the selector grammar's key rules, so every label can be selected on.
pub fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

impl Coordinator {
    /// Stores a new version of a config after checking it; when it is activated, pushes it to
    /// the connected WebSocket agents whose desired state it changes in the shards this process
    /// owns and announces it so the other coordinators push it to theirs. HTTP agents get it on
    /// their next poll.
    pub async fn put_config(
        &self,
        name: &str,
        draft: ConfigDraft,
        caller: &str,
        comment: String,
    ) -> Result<StoredConfig, ServiceError> {
        if !configs::valid_name(name) {
            return Err(ServiceError::BadRequest(format!(
                "config name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.', \
                 and not \".\" or \"..\""
            )));
        }
        if draft.files.is_empty() && draft.packages.is_empty() && draft.settings.is_none() {
            return Err(ServiceError::BadRequest(
                "a config needs at least one of \"files\", \"packages\" or \"settings\"".into(),
            ));
        }
        if let Err(problems) = validate::validate_files(&draft.files) {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(ServiceError::BadRequest(format!(
                "config {name:?} is invalid; nothing was stored or sent:\n{}",
                lines.join("\n")
            )));
        }
        offers::check_packages(&draft.packages).map_err(ServiceError::BadRequest)?;
        if let Some(settings) = &draft.settings {
            offers::check_settings(settings).map_err(ServiceError::BadRequest)?;
        }
        let desired = self.desired();
        if draft.activate
            && let Some(r) = desired.rollouts.get(name)
        {
            return Err(ServiceError::Conflict(format!(
                "rollout {} of {name:?} is active; abort it, or store this version with \"activate\": false and roll it out",
                r.id
            )));
        }
        let before = desired.configs.iter().find(|c| c.name == name).cloned();
        let files: BTreeMap<String, ConfigFile> = draft
            .files
            .into_iter()
            .map(|(n, body)| {
                let content_type = configs::content_type_for(&n).to_owned();
                (n, ConfigFile { body, content_type })
            })
            .collect();
        let version = StoredConfig {
            name: name.to_owned(),
            version: 0,
            selector: draft.selector,
            hash: hex::encode(configs::hash_of_files(&files)),
            files,
            packages: draft.packages,
            settings: draft.settings,
            created_unix_ms: now_unix_ms(),
            created_by: caller.to_owned(),
            comment,
        };
        let size = offers::offer_size(&version);
        let max = self.max_message_size();
        if size > max {
            return Err(ServiceError::BadRequest(format!(
                "config {name:?} would reach agents as a {size}-byte message; the largest message \
                 that can reach agents here is {max} bytes (in a cluster, the NATS server's \
                 max_payload less room for the envelope; docs/operations.md says how to raise \
                 it); nothing was stored or sent"
            )));
        }
        let action = if version.comment.is_empty() {
            "config.put"
        } else {
            "config.rollback"
        };
        let before = before.and_then(|b| serde_json::to_value(b).ok());
        let audit = |stored: &StoredConfig| {
            audit_entry(
                caller,
                action,
                format!("config/{name}"),
                before.clone(),
                serde_json::to_value(stored).ok(),
            )
        };
        let stored = self
            .store()
            .put_config(version, draft.activate, &audit)
            .await?;
        info!(target: "flotilla::audit", config = %name, version = stored.version, hash = %stored.hash, activated = draft.activate, caller, action, "config stored");
        if draft.activate {
            self.announce_change(&format!("config/{name}")).await;
        }
        Ok(stored)
    }

    /// Every version of a config, oldest first.
    pub async fn config_history(&self, name: &str) -> Result<Vec<StoredConfig>, ServiceError> {
        let versions = self.store().config_versions(name).await?;
        if versions.is_empty() {
            return Err(ServiceError::NotFound(format!("no config {name:?}")));
        }
        Ok(versions)
    }

    pub async fn config_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<StoredConfig, ServiceError> {
        self.config_history(name)
            .await?
            .into_iter()
            .find(|c| c.version == version)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("config {name:?} has no version {version}"))
            })
    }

    /// Makes a new version that repeats version `version` (its selector, files, packages and
    /// settings), active at once: history only grows, so the rollback itself is on record.
    pub async fn rollback_config(
        &self,
        name: &str,
        version: u64,
        caller: &str,
    ) -> Result<StoredConfig, ServiceError> {
        let old = self.config_version(name, version).await?;
        let draft = ConfigDraft {
            selector: old.selector,
            files: old.files.into_iter().map(|(n, f)| (n, f.body)).collect(),
            packages: old.packages,
            settings: old.settings,
            activate: true,
        };
        self.put_config(
            name,
            draft,
            caller,
            format!("rollback to version {version}"),
        )
        .await
    }

    /// Sets and removes an agent's server-set labels (through the owner of its shard, which
    /// alone writes the agent's record) and returns them; the agent's desired state follows.
    pub async fn set_labels(
        &self,
        uid: Uuid,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        caller: &str,
    ) -> Result<BTreeMap<String, String>, ServiceError> {
        if let Some(k) = set.keys().chain(&remove).find(|k| !valid_label_key(k)) {
            return Err(ServiceError::BadRequest(format!(
                "label key {k:?} must be 1-253 letters, digits, '.', '_', '-' or '/'"
            )));
        }
        let ask = Uplink {
            origin: None,
            kind: Some(uplink::Kind::SetLabels(SetLabels {
                instance_uid: uid.as_bytes().to_vec(),
                set: set.into_iter().collect(),
                remove,
                caller: caller.to_owned(),
            })),
        };
        let reply = self.ask_owner(uid, ask).await?;
        let result = reply.labels.unwrap_or_default();
        if result.unknown_agent {
            return Err(ServiceError::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(ServiceError::Unavailable(format!(
                "agent {uid}: {}; try again",
                result.error
            )));
        }
        Ok(result.after.into_iter().collect())
    }

    /// The owner's side of [`Coordinator::set_labels`]; None if this process does not own the
    /// agent's shard.
    pub(crate) async fn labels_here(&self, req: SetLabels) -> Option<LabelsResult> {
        let Ok(uid) = Uuid::from_slice(&req.instance_uid) else {
            return Some(LabelsResult {
                unknown_agent: true,
                ..Default::default()
            });
        };
        let shard = flotilla_common::names::shard_of(&req.instance_uid);
        let _guard = self.shards.lock(shard).await;
        let fence = self.fence_for(shard)?;
        let failed = |e: &dyn std::fmt::Display| {
            Some(LabelsResult {
                error: e.to_string(),
                ..Default::default()
            })
        };
        let mut rec = match self.store().get_agent(uid).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                return Some(LabelsResult {
                    unknown_agent: true,
                    ..Default::default()
                });
            }
            Err(e) => return failed(&e),
        };
        let before = rec.labels.clone();
        for k in &req.remove {
            rec.labels.remove(k);
        }
        rec.labels.extend(req.set);
        if rec.labels != before {
            let sorted = |m: &std::collections::HashMap<String, String>| {
                serde_json::json!(m.iter().collect::<BTreeMap<_, _>>())
            };
            let entry = audit_entry(
                &req.caller,
                "labels.set",
                format!("agent/{uid}"),
                Some(sorted(&before)),
                Some(sorted(&rec.labels)),
            );
            match self
                .save_or_drop(
                    fence,
                    &rec,
                    flotilla_common::store::Deadline::Keep,
                    Some(&entry),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return failed(&e),
            }
            // Labels can change which config the agent gets: push it now if it is connected.
            if let Some((origin, msg)) = crate::service::push_for(&rec, &self.desired()) {
                self.push(&origin, &msg).await;
            }
        }
        Some(LabelsResult {
            unknown_agent: false,
            before,
            after: rec.labels,
            error: String::new(),
        })
    }

    /// Restarts every agent `selector` matches (that can restart), at most `rate_per_second`,
    /// in the background; the job's progress is in the store under the returned id.
    pub async fn restart_matching(
        self: &Arc<Self>,
        selector: Selector,
        rate_per_second: f64,
        caller: &str,
    ) -> Result<RestartJob, ServiceError> {
        if !(rate_per_second.is_finite() && (0.1..=10_000.0).contains(&rate_per_second)) {
            return Err(ServiceError::BadRequest(
                "rate_per_second must be from 0.1 to 10000".into(),
            ));
        }
        let mut uids = Vec::new();
        self.visit_agents(&mut |rec| {
            if selector.matches(&crate::agent::attributes(rec))
                && crate::agent::has(
                    rec.capabilities,
                    flotilla_proto::opamp::AgentCapabilities::AcceptsRestartCommand,
                )
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
            created_by: caller.to_owned(),
            created_unix_ms: now_unix_ms(),
        };
        let entry = audit_entry(
            caller,
            "restart.selector",
            format!("restart/{}", job.id),
            None,
            serde_json::to_value(&job).ok(),
        );
        let rev = self.save_job(&job, 0, Some(&entry)).await?;
        let this = self.clone();
        let span = info_span!("restart_job", id = %job.id);
        tokio::spawn(this.run_restarts(job.clone(), rev, uids).instrument(span));
        Ok(job)
    }

    async fn save_job(
        &self,
        job: &RestartJob,
        rev: u64,
        audit: Option<&AuditEntry>,
    ) -> Result<u64, ServiceError> {
        let json = serde_json::to_string(job)
            .map_err(|e| ServiceError::BadRequest(format!("restart job: {e}")))?;
        if self
            .store()
            .put_doc(RESTARTS, &job.id, rev, &json, audit)
            .await?
        {
            Ok(rev + 1)
        } else {
            Err(ServiceError::Conflict(format!(
                "restart job {} was changed by someone else",
                job.id
            )))
        }
    }

    /// Restarts `uids` one at a time, spaced by the rate, saving progress about once a second.
    async fn run_restarts(self: Arc<Self>, mut job: RestartJob, mut rev: u64, uids: Vec<Uuid>) {
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
                    Err(e) => tracing::warn!(error = %e, "restart progress not saved"),
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

    pub async fn restart_job(&self, id: &str) -> Result<RestartJob, ServiceError> {
        let doc: Doc = self
            .store()
            .get_doc(RESTARTS, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no restart job {id:?}")))?;
        serde_json::from_str(&doc.json).map_err(|e| {
            ServiceError::Store(flotilla_common::store::StoreError::Corrupt(e.to_string()))
        })
    }
}
