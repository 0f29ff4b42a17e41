//! One fleet over several regions (`--regions`): what one region asks another (fleet views,
//! config replication, rollouts across regions) and how it asks. Each region is a cell with its own store; the regions' NATS clusters are joined by
//! NATS gateways (a supercluster), so a request on another region's
//! [`Subjects::fleet_query`] reaches one coordinator there, which answers from its own store
//! (`region_answers.rs`). A region that does not answer within `--region-timeout` is left out of
//! the answer and named as missing: a fleet view never waits longer and never undercounts
//! silently.

use super::Ops;
use super::views::{AgentSummary, FleetHealth};
use crate::fleet::rollout::State;
use flotilla_common::bus::BusMessage;
use flotilla_common::names::Subjects;
use flotilla_common::store::{AuditEntry, AuditQuery, StoredConfig};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// A question to one region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegionQuery {
    /// Its agents' counts.
    Health,
    /// The first `offset + limit` agents the list query (its text parameters) selects there.
    Agents { params: Vec<(String, String)> },
    /// One agent's record, if that region holds it.
    Agent { uid: String },
    /// Its newest audit entries.
    Audit { query: AuditQuery },
    /// What it holds of every config.
    ConfigDigest,
    /// One version of a config.
    ConfigVersion { name: String, version: u64 },
    /// Its part of a rollout across regions (started if it was not): how it stands.
    RolloutPart {
        id: String,
        request: serde_json::Value,
        caller: String,
    },
}

/// A region's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionAnswer {
    Health(FleetHealth),
    Agents(RegionPage),
    /// The agent's record (protobuf, base64), or none.
    Agent(Option<String>),
    Audit(Vec<AuditEntry>),
    ConfigDigest(Vec<ConfigDigest>),
    ConfigVersion(Box<StoredConfig>),
    RolloutState {
        state: State,
        reason: String,
    },
    /// The region could not answer (its store is down, the query was refused).
    Error(String),
}

/// A region's part of an agent list: how many agents match there, how many of them come after
/// the cursor, and the first of those in the list's order, with their sort keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegionPage {
    pub total: usize,
    pub after_cursor: usize,
    pub items: Vec<(String, AgentSummary)>,
}

/// Which version of a config an operator last made active (0: none), when, in which region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub active: u64,
    pub at_unix_ms: u64,
    pub region: String,
}

/// What a region holds of one config: its activation and a line per version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigest {
    pub name: String,
    pub activation: Activation,
    pub versions: Vec<VersionDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDigest {
    pub version: u64,
    pub hash: String,
    pub created_unix_ms: u64,
}

/// The answers of the regions that answered, by region, and the regions that did not.
pub struct Asked<T> {
    pub answers: Vec<(String, T)>,
    pub missing: Vec<String>,
}

impl Ops {
    /// The fleet's other regions (sorted; empty when it has one).
    pub fn peer_regions(&self) -> &[String] {
        &self.cfg.peer_regions
    }

    /// This process's region.
    pub fn region(&self) -> &str {
        &self.cfg.region
    }

    /// Asks every other region at once; `accept` takes the answer it expects (or says why the
    /// answer is not one). Each region gets `--region-timeout`, no retry: a region that is cut
    /// off, slow or refusing is listed as missing.
    pub(crate) async fn ask_regions<T>(
        &self,
        query: &RegionQuery,
        accept: impl Fn(RegionAnswer) -> std::result::Result<T, String>,
    ) -> Asked<T> {
        let asks = self
            .cfg
            .peer_regions
            .iter()
            .map(|region| async move { (region, self.ask_region(region, query).await) });
        let mut asked = Asked {
            answers: Vec::new(),
            missing: Vec::new(),
        };
        for (region, answer) in join_all(asks).await {
            match answer.and_then(|a| match a {
                RegionAnswer::Error(e) => Err(e),
                a => accept(a),
            }) {
                Ok(t) => asked.answers.push((region.clone(), t)),
                Err(why) => {
                    warn!(region = %region, reason = %why, "a region did not answer a fleet view");
                    asked.missing.push(region.clone());
                }
            }
        }
        asked
    }
}

impl Ops {
    /// Asks one region, for `--region-timeout` at most.
    pub(crate) async fn ask_region(
        &self,
        region: &str,
        query: &RegionQuery,
    ) -> std::result::Result<RegionAnswer, String> {
        let payload = serde_json::to_vec(query).map_err(|e| format!("cannot encode: {e}"))?;
        let msg =
            BusMessage::new(Subjects::new(region).fleet_query(), payload).with_trace_context();
        let bytes = self
            .bus
            .request(msg, self.cfg.region_timeout)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    }
}

/// Why a region's answer is refused when it is not the kind asked for.
pub(crate) const UNEXPECTED: &str = "an answer of another kind than asked";
