//! One fleet over several regions (`--regions`): what a fleet view asks of the other regions and
//! how it asks. Each region is a cell with its own store; the regions' NATS clusters are joined by
//! NATS gateways (a supercluster), so a request on another region's
//! [`Subjects::fleet_query`] reaches one coordinator there, which answers from its own store
//! (`region_answers.rs`). A region that does not answer within `--region-timeout` is left out of
//! the answer and named as missing: a fleet view never waits longer and never undercounts
//! silently.

use super::views::{AgentSummary, FleetHealth};
use super::{Error, Ops, Result};
use flotilla_common::bus::BusMessage;
use flotilla_common::names::Subjects;
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
}

/// A region's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionAnswer {
    Health(FleetHealth),
    Agents(RegionPage),
    /// The agent's record (protobuf, base64), or none.
    Agent(Option<String>),
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
    ) -> Result<Asked<T>> {
        let payload = serde_json::to_vec(query)
            .map_err(|e| Error::Unavailable(format!("cannot encode a region query: {e}")))?;
        let asks = self.cfg.peer_regions.iter().map(|region| {
            let msg = BusMessage::new(Subjects::new(region).fleet_query(), payload.clone())
                .with_trace_context();
            async move {
                let answer = match self.bus.request(msg, self.cfg.region_timeout).await {
                    Ok(bytes) => serde_json::from_slice::<RegionAnswer>(&bytes)
                        .map_err(|e| format!("unreadable answer: {e}")),
                    Err(e) => Err(e.to_string()),
                };
                (region, answer)
            }
        });
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
        Ok(asked)
    }
}

/// Why a region's answer is refused when it is not the kind asked for.
pub(crate) const UNEXPECTED: &str = "an answer of another kind than asked";
