//! What this region answers when another region asks for its part of a fleet view
//! ([`super::regions`]): the same operations, on this region's store alone.

use super::agents::AgentQuery;
use super::regions::{RegionAnswer, RegionQuery};
use super::{Error, Ops};
use base64::Engine;
use bytes::Bytes;
use prost::Message;

/// The largest answer a region sends another (NATS carries 1 MiB by default).
pub const MAX_ANSWER_BYTES: usize = 900 * 1024;

impl Ops {
    /// The answer to another region's query (`payload`, JSON); always an answer, errors
    /// included, so the asking region never waits for its timeout when this one can say why.
    pub async fn answer_region(&self, payload: &[u8]) -> Bytes {
        let answer = match serde_json::from_slice::<RegionQuery>(payload) {
            Err(e) => RegionAnswer::Error(format!("unreadable region query: {e}")),
            Ok(query) => self
                .region_answer(query)
                .await
                .unwrap_or_else(|e| RegionAnswer::Error(e.to_string())),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_else(|e| {
            serde_json::to_vec(&RegionAnswer::Error(format!("cannot encode: {e}")))
                .unwrap_or_default()
        });
        if bytes.len() > MAX_ANSWER_BYTES {
            // Past what NATS carries by default: say so rather than leave the asker waiting.
            let why = format!(
                "region {}'s answer is {} bytes, more than the {MAX_ANSWER_BYTES} a region \
                 sends: ask for fewer agents",
                self.region(),
                bytes.len()
            );
            return serde_json::to_vec(&RegionAnswer::Error(why))
                .unwrap_or_default()
                .into();
        }
        bytes.into()
    }

    /// The answer when this coordinator answers as many regions' queries as it may at once.
    pub fn region_busy(&self) -> Bytes {
        serde_json::to_vec(&RegionAnswer::Error(format!(
            "region {} is busy answering other fleet views",
            self.region()
        )))
        .unwrap_or_default()
        .into()
    }

    pub(crate) async fn region_answer(&self, query: RegionQuery) -> super::Result<RegionAnswer> {
        Ok(match query {
            RegionQuery::Health => RegionAnswer::Health(self.region_health().await?),
            RegionQuery::Agents { params } => {
                let q = AgentQuery::parse(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
                let deepest = (q.offset + q.limit).min(super::agents::MAX_REGIONS_DEPTH);
                RegionAnswer::Agents(self.region_page(&q, 0, deepest).await?)
            }
            RegionQuery::ConfigDigest => RegionAnswer::ConfigDigest(self.config_digest().await?),
            RegionQuery::ConfigVersion { name, version } => {
                RegionAnswer::ConfigVersion(Box::new(self.config_version(&name, version).await?))
            }
            RegionQuery::RolloutPart {
                id,
                request,
                caller,
            } => {
                let req = serde_json::from_value(request)
                    .map_err(|e| Error::BadRequest(format!("invalid rollout: {e}")))?;
                let (state, reason) = self.rollout_part(&id, req, &caller).await?;
                RegionAnswer::RolloutState { state, reason }
            }
            RegionQuery::Audit { query } => {
                RegionAnswer::Audit(self.store().query_audit(&query).await?.entries)
            }
            RegionQuery::Agent { uid } => {
                let uid = uuid::Uuid::parse_str(&uid)
                    .map_err(|_| Error::BadRequest(format!("invalid instance uid {uid:?}")))?;
                // The record as it is (a marker left under an old uid included): the asking
                // region says what it means.
                RegionAnswer::Agent(self.store().get_agent(uid).await?.map(|rec| {
                    base64::engine::general_purpose::STANDARD.encode(rec.encode_to_vec())
                }))
            }
        })
    }
}
