//! Operations on rollouts across regions ([`RegionRollout`]: a region is a phase): starting one,
//! reading them, and the step that moves them on.
//!
//! A rollout across regions lives in the store of the region where it was started (collection
//! [`REGION_ROLLOUTS`]), written with compare-and-set; that region's holder of shard 0 steps it
//! every second: it asks the current region for its part (over the bus, or itself), which that
//! region starts as its own rollout (id `<id>-<region>`) the first time it is asked, and moves on
//! with the answer. A region that cannot be asked, or that lacks the version yet, is waited for.

use super::audit;
use super::regions::{RegionAnswer, RegionQuery};
use super::rollouts::RolloutRequest;
use super::{Caller, Error, Ops, Result};
use crate::fleet::region_rollout::{Heard, RegionPhase, RegionRollout};
use crate::fleet::rollout::State;
use flotilla_common::telemetry::now_unix_ms;
use serde::Deserialize;
use tracing::{info, warn};
use uuid::Uuid;

/// Rollouts across regions, by id.
pub const REGION_ROLLOUTS: &str = "region-rollouts";

/// What `POST /api/v1/region-rollouts` takes: the config, its version (the latest when left
/// out), the regions in order, and what each region's rollout is started with (`phases`, `soak`,
/// `error_budget`, as `POST /api/v1/rollouts` takes them).
#[derive(Debug, Deserialize)]
pub struct RegionRolloutRequest {
    pub config: String,
    #[serde(default)]
    pub version: Option<u64>,
    pub regions: Vec<String>,
    #[serde(flatten)]
    pub rollout: serde_json::Map<String, serde_json::Value>,
}

fn parse_doc(json: &str, id: &str) -> Result<RegionRollout> {
    serde_json::from_str(json).map_err(|e| {
        Error::Store(flotilla_common::store::StoreError::Corrupt(format!(
            "rollout across regions {id}: {e}"
        )))
    })
}

impl Ops {
    /// Starts a rollout of a config's version across regions, in the order given.
    pub async fn start_region_rollout(
        &self,
        caller: &Caller,
        req: RegionRolloutRequest,
    ) -> Result<RegionRollout> {
        if self.peer_regions().is_empty() {
            return Err(Error::BadRequest(
                "this fleet has one region (--regions): start a rollout with /api/v1/rollouts"
                    .into(),
            ));
        }
        if req.regions.is_empty() {
            return Err(Error::BadRequest(
                "regions must name at least one region".into(),
            ));
        }
        for (i, r) in req.regions.iter().enumerate() {
            if r != self.region() && !self.peer_regions().contains(r) {
                return Err(Error::BadRequest(format!(
                    "region {r:?} is not a region of this fleet (--regions: {}, {})",
                    self.region(),
                    self.peer_regions().join(", ")
                )));
            }
            if req.regions[..i].contains(r) {
                return Err(Error::BadRequest(format!("region {r:?} is named twice")));
            }
        }
        let versions = self.store().config_versions(&req.config).await?;
        let version = match req.version {
            Some(v) if versions.iter().any(|c| c.version == v) => v,
            Some(v) => {
                return Err(Error::NotFound(format!(
                    "no version {v} of config {:?}",
                    req.config
                )));
            }
            None => versions
                .last()
                .map(|c| c.version)
                .ok_or_else(|| Error::NotFound(format!("no config {:?}", req.config)))?,
        };
        let mut request = req.rollout;
        for field in ["config", "version", "regions", "allow_empty"] {
            request.remove(field);
        }
        request.insert("config".into(), req.config.clone().into());
        request.insert("version".into(), version.into());
        // A region without agents for it completes its part at once.
        request.insert("allow_empty".into(), true.into());
        let request = serde_json::Value::Object(request);
        let checked: RolloutRequest = serde_json::from_value(request.clone())
            .map_err(|e| Error::BadRequest(format!("invalid rollout: {e}")))?;
        checked.phases.check().map_err(Error::BadRequest)?;
        checked.error_budget.check().map_err(Error::BadRequest)?;
        let now = now_unix_ms();
        let r = RegionRollout {
            id: Uuid::now_v7().to_string(),
            config: req.config,
            version,
            regions: req.regions.into_iter().map(RegionPhase::pending).collect(),
            state: State::Running,
            reason: String::new(),
            request,
            created_by: caller.name.clone(),
            created_unix_ms: now,
            updated_unix_ms: now,
        };
        let entry = audit::entry(
            &caller.name,
            "region_rollout.start",
            format!("region-rollout/{}", r.id),
            None,
            serde_json::to_value(&r).ok(),
        );
        let json = serde_json::to_string(&r).unwrap_or_default();
        self.store()
            .put_doc(REGION_ROLLOUTS, &r.id, 0, &json, Some(&entry))
            .await?;
        info!(rollout = %r.id, config = %r.config, version, "rollout across regions started");
        if let Err(e) = self.step_region_rollout(&r.id).await {
            warn!(rollout = %r.id, error = %e, "first step of a rollout across regions failed");
        }
        self.region_rollout(caller, &r.id).await
    }

    /// Every rollout across regions started here, newest first.
    pub async fn region_rollouts(&self, _caller: &Caller) -> Result<Vec<RegionRollout>> {
        let mut all = Vec::new();
        for doc in self.store().list_docs(REGION_ROLLOUTS).await? {
            all.push(parse_doc(&doc.json, &doc.id)?);
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.created_unix_ms));
        Ok(all)
    }

    pub async fn region_rollout(&self, _caller: &Caller, id: &str) -> Result<RegionRollout> {
        let doc = self
            .store()
            .get_doc(REGION_ROLLOUTS, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no rollout across regions {id:?}")))?;
        parse_doc(&doc.json, id)
    }

    /// Steps every running rollout across regions started here (the holder of shard 0 does,
    /// every second).
    pub async fn step_region_rollouts(&self) -> Result<()> {
        for doc in self.store().list_docs(REGION_ROLLOUTS).await? {
            if parse_doc(&doc.json, &doc.id)?.state == State::Running {
                self.step_region_rollout(&doc.id).await?;
            }
        }
        Ok(())
    }

    async fn step_region_rollout(&self, id: &str) -> Result<()> {
        let Some(doc) = self.store().get_doc(REGION_ROLLOUTS, id).await? else {
            return Ok(());
        };
        let mut r = parse_doc(&doc.json, id)?;
        let Some(current) = r.current().map(|p| p.region.clone()) else {
            return Ok(());
        };
        let query = RegionQuery::RolloutPart {
            id: format!("{}-{current}", r.id),
            request: r.request.clone(),
            caller: r.created_by.clone(),
        };
        let answer = if current == self.region() {
            self.region_answer(query).await.map_err(|e| e.to_string())
        } else {
            self.ask_region(&current, &query).await
        };
        let heard = match answer {
            Ok(RegionAnswer::RolloutState { state, reason }) => Heard::State(state, reason),
            Ok(RegionAnswer::Error(why)) | Err(why) => Heard::Waiting(why),
            Ok(_) => Heard::Waiting(super::regions::UNEXPECTED.into()),
        };
        let before = r.clone();
        r.advance(heard, now_unix_ms());
        let moved = RegionRollout {
            updated_unix_ms: before.updated_unix_ms,
            ..r.clone()
        };
        if moved == before {
            return Ok(());
        }
        let entry = (r.state != before.state).then(|| {
            audit::entry(
                super::caller::SYSTEM,
                &format!("region_rollout.{}", r.state.as_str()),
                format!("region-rollout/{id}"),
                serde_json::to_value(&before).ok(),
                serde_json::to_value(&r).ok(),
            )
        });
        let json = serde_json::to_string(&r).unwrap_or_default();
        // A write that lost a race is redone from the store at the next step.
        self.store()
            .put_doc(REGION_ROLLOUTS, id, doc.revision, &json, entry.as_ref())
            .await?;
        Ok(())
    }
}
