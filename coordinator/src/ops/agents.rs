//! Operations on agents: the fleet's health, the agent list and one agent, and what an operator
//! does to one agent (labels, restart, certificate, removal), carried out by the owner of the
//! agent's shard.

use super::error::bad_request;
use super::query::parse_limit;
use super::views::{AgentDetail, AgentSummary, AgentsPage, FleetHealth, rfc3339};
use super::{Caller, Error, Ops, Result};
use crate::fleet::agents::{attributes, healthy, status_name};
use crate::fleet::checks::valid_label_key;
use flotilla_common::selector::Selector;
use flotilla_proto::bus::{
    AgentRecord, DeleteAgent, IssueCertificate, RestartAgent, RestartResult, SetLabels, uplink,
};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

const DEFAULT_LIMIT: usize = 100;

/// An instance uid from its text (a UUID).
pub fn parse_uid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| {
        bad_request(format!(
            "{s:?} is not an instance uid (expected a UUID such as 0190c9a4-...)"
        ))
    })
}

/// A selector in its text form (`env=prod,region in (eu,us),!canary`).
pub fn parse_selector(s: &str) -> Result<Selector> {
    s.parse().map_err(|e| bad_request(format!("{e}")))
}

/// Which agents a list shows, and which page.
#[derive(Debug, Default)]
pub struct AgentQuery {
    pub selector: Selector,
    pub status: Option<String>,
    pub healthy: Option<bool>,
    pub limit: usize,
    /// The last uid of the previous page.
    pub cursor: Option<Uuid>,
}

impl AgentQuery {
    /// The query of text parameters (`selector`, `status`, `health`, `limit`, `cursor`), as an
    /// interface received them; unknown parameters are refused.
    pub fn parse<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut q = Self {
            limit: DEFAULT_LIMIT,
            ..Default::default()
        };
        for (key, value) in params {
            match key {
                "selector" => q.selector = parse_selector(value)?,
                "status" => {
                    if !matches!(value, "connected" | "disconnected" | "silent") {
                        return Err(bad_request(format!(
                            "status must be connected, disconnected or silent, not {value:?}"
                        )));
                    }
                    q.status = Some(value.to_owned());
                }
                "health" => {
                    q.healthy = match value {
                        "healthy" => Some(true),
                        "unhealthy" => Some(false),
                        h => {
                            return Err(bad_request(format!(
                                "health must be healthy or unhealthy, not {h:?}"
                            )));
                        }
                    }
                }
                "limit" => {
                    q.limit = parse_limit(value)?;
                }
                "cursor" if value.is_empty() => {}
                "cursor" => {
                    let c = Uuid::parse_str(value)
                        .map_err(|_| bad_request(format!("invalid cursor {value:?}")))?;
                    q.cursor = Some(c);
                }
                _ => return Err(bad_request(format!("unknown query parameter {key:?}"))),
            }
        }
        Ok(q)
    }

    fn matches(&self, rec: &AgentRecord) -> bool {
        (self.status.is_none() || self.status.as_deref() == Some(status_name(rec)))
            && self.healthy.is_none_or(|want| healthy(rec) == Some(want))
            && (self.selector.is_empty() || self.selector.matches(&attributes(rec)))
    }
}

/// An agent's server-set labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labels {
    pub instance_uid: String,
    pub labels: BTreeMap<String, String>,
}

/// What a restart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOutcome {
    /// Sent to the agent's live WebSocket connection.
    Delivered,
    /// Kept until the agent's next message (HTTP poll or reconnect), for the restart TTL.
    Queued,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restarted {
    pub instance_uid: String,
    pub delivered: bool,
    pub queued: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deleted {
    pub instance_uid: String,
    pub deleted: bool,
}

/// A client certificate issued to an agent and offered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    pub instance_uid: String,
    pub sha256: String,
    pub not_after: String,
    /// Sent over the agent's live WebSocket now (else with the reply to its next message).
    pub delivered: bool,
}

impl Ops {
    /// The agents' counts by status and health.
    pub async fn fleet_health(&self, _caller: &Caller) -> Result<FleetHealth> {
        let mut h = FleetHealth::default();
        self.store()
            .visit_agents(&|_| true, &mut |a| {
                h.total_agents += 1;
                match status_name(a) {
                    "connected" => {
                        h.connected_agents += 1;
                        match healthy(a) {
                            Some(true) => h.healthy_agents += 1,
                            Some(false) => h.unhealthy_agents += 1,
                            None => {}
                        }
                    }
                    "silent" => h.silent_agents += 1,
                    _ => h.disconnected_agents += 1,
                }
            })
            .await?;
        Ok(h)
    }

    /// One page of the agents `q` selects, sorted by instance uid.
    pub async fn list_agents(&self, _caller: &Caller, q: &AgentQuery) -> Result<AgentsPage> {
        // Only the uids of matching agents are collected; records are read for one page.
        let mut uids: Vec<Uuid> = Vec::new();
        self.store()
            .visit_agents(&|_| true, &mut |a| {
                if q.matches(a) {
                    uids.extend(Uuid::from_slice(&a.instance_uid).ok());
                }
            })
            .await?;
        uids.sort_unstable();
        let total = uids.len();
        let start = q
            .cursor
            .map_or(0, |cur| uids.partition_point(|u| *u <= cur));
        let page = &uids[start..(start + q.limit).min(total)];
        let next_cursor = (start + q.limit < total)
            .then(|| page.last().map(Uuid::to_string))
            .flatten();
        let desired = self.desired.current();
        let mut agents = Vec::with_capacity(page.len());
        for uid in page {
            // Removed since the visit: left out of the page.
            if let Some(rec) = self.store().get_agent(*uid).await? {
                agents.push(AgentSummary::of(&rec, &desired));
            }
        }
        Ok(AgentsPage {
            total,
            agents,
            next_cursor,
        })
    }

    async fn record_of(&self, uid: Uuid) -> Result<AgentRecord> {
        self.store()
            .get_agent(uid)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no agent {uid}")))
    }

    /// Everything known of one agent (secrets in its effective config redacted).
    pub async fn agent(&self, _caller: &Caller, uid: &str) -> Result<AgentDetail> {
        let rec = self.record_of(parse_uid(uid)?).await?;
        Ok(AgentDetail::of(
            &rec,
            &self.desired.current(),
            &self.cfg.redactor,
        ))
    }

    pub async fn labels(&self, _caller: &Caller, uid: &str) -> Result<Labels> {
        let uid = parse_uid(uid)?;
        let rec = self.record_of(uid).await?;
        Ok(Labels {
            instance_uid: uid.to_string(),
            labels: rec.labels.into_iter().collect(),
        })
    }

    /// Sets and removes an agent's server-set labels (the owner writes them with their audit
    /// entry); the agent's desired state follows.
    pub async fn set_labels(
        &self,
        caller: &Caller,
        uid: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Labels> {
        let uid = parse_uid(uid)?;
        if let Some(k) = set.keys().chain(&remove).find(|k| !valid_label_key(k)) {
            return Err(bad_request(format!(
                "label key {k:?} must be 1-253 letters, digits, '.', '_', '-' or '/'"
            )));
        }
        let ask = uplink::Kind::SetLabels(SetLabels {
            instance_uid: uid.as_bytes().to_vec(),
            set: set.into_iter().collect(),
            remove,
            caller: caller.name.clone(),
        });
        let result = self.owners.ask(uid, ask).await?.labels.unwrap_or_default();
        if result.unknown_agent {
            return Err(Error::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "agent {uid}: {}; try again",
                result.error
            )));
        }
        Ok(Labels {
            instance_uid: uid.to_string(),
            labels: result.after.into_iter().collect(),
        })
    }

    /// Restarts an agent: at once over its live WebSocket, otherwise at its next message.
    pub async fn restart_agent(&self, caller: &Caller, uid: &str) -> Result<Restarted> {
        let uid = parse_uid(uid)?;
        let outcome = self.restart(uid, &caller.name).await?;
        Ok(Restarted {
            instance_uid: uid.to_string(),
            delivered: outcome == RestartOutcome::Delivered,
            queued: outcome == RestartOutcome::Queued,
        })
    }

    /// A restart through the owner of the agent's shard; `audit_as` names the caller in the
    /// audit log (empty: not audited on its own, as part of a restart job).
    pub(crate) async fn restart(&self, uid: Uuid, audit_as: &str) -> Result<RestartOutcome> {
        let ask = uplink::Kind::Restart(RestartAgent {
            instance_uid: uid.as_bytes().to_vec(),
            caller: audit_as.to_owned(),
        });
        let reply = self.owners.ask(uid, ask).await?;
        match reply.restart() {
            RestartResult::Delivered => Ok(RestartOutcome::Delivered),
            RestartResult::Queued => Ok(RestartOutcome::Queued),
            RestartResult::UnknownAgent => Err(Error::NotFound(format!("no agent {uid}"))),
            RestartResult::NotCapable => Err(Error::Conflict(format!(
                "agent {uid} does not accept restart commands (no AcceptsRestartCommand capability)"
            ))),
            RestartResult::Failed | RestartResult::Unspecified => Err(Error::Unavailable(format!(
                "agent {uid}: the agent's state could not be written; try again"
            ))),
        }
    }

    /// Removes an agent's record (audited). A connected agent comes back as a new record at its
    /// next message.
    pub async fn delete_agent(&self, caller: &Caller, uid: &str) -> Result<Deleted> {
        let uid = parse_uid(uid)?;
        let ask = uplink::Kind::DeleteAgent(DeleteAgent {
            instance_uid: uid.as_bytes().to_vec(),
            caller: caller.name.clone(),
        });
        let result = self.owners.ask(uid, ask).await?.deleted.unwrap_or_default();
        if result.unknown_agent {
            return Err(Error::NotFound(format!("no agent {uid}")));
        }
        if !result.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "agent {uid} not deleted: {}; try again",
                result.error
            )));
        }
        Ok(Deleted {
            instance_uid: uid.to_string(),
            deleted: true,
        })
    }

    /// Issues agent `uid` a new key and certificate and offers them over OpAMP (now if it is
    /// connected over WebSocket, else with the reply to its next message).
    pub async fn issue_certificate(&self, caller: &Caller, uid: &str) -> Result<Issued> {
        let uid = parse_uid(uid)?;
        let ask = uplink::Kind::IssueCertificate(IssueCertificate {
            instance_uid: uid.as_bytes().to_vec(),
            caller: caller.name.clone(),
        });
        let issued = self.owners.ask(uid, ask).await?.issued.unwrap_or_default();
        if issued.not_capable {
            return Err(Error::Conflict(issued.error));
        }
        if issued.sha256.is_empty() {
            return Err(Error::Unavailable(issued.error));
        }
        Ok(Issued {
            instance_uid: uid.to_string(),
            sha256: hex::encode(&issued.sha256),
            not_after: rfc3339(issued.not_after_unix_ms),
            delivered: issued.delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_are_read_from_text_and_checked() {
        let uid = Uuid::now_v7();
        let cursor = uid.to_string();
        let q = AgentQuery::parse([
            ("selector", "env=prod"),
            ("status", "connected"),
            ("health", "unhealthy"),
            ("limit", "5"),
            ("cursor", cursor.as_str()),
        ])
        .unwrap();
        assert_eq!((q.limit, q.healthy, q.cursor), (5, Some(false), Some(uid)));
        assert_eq!(AgentQuery::parse([]).unwrap().limit, DEFAULT_LIMIT);
        for (bad, why) in [
            (("status", "gone"), "status must be connected"),
            (("health", "meh"), "health must be healthy or unhealthy"),
            (("limit", "1001"), "limit must be a number from 1 to 1000"),
            (("cursor", "x"), "invalid cursor"),
            (("selector", "a in ("), ""),
            (("color", "red"), "unknown query parameter"),
        ] {
            let err = AgentQuery::parse([bad]).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{bad:?}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
