//! Operations on rollouts: starting, pausing, resuming and aborting them, and the step that moves
//! them on.
//!
//! A rollout lives in the store as a document (collection `rollouts`) written with
//! compare-and-set. Every second the coordinator that holds shard 0 (any process in the embedded
//! mode; whichever coordinator acquires shard 0 after another dies) steps each running rollout
//! ([`Ops::step_rollouts`]): it looks at the agents, applies [`Rollout::step`] and writes the
//! result; a write that lost a race is dropped and redone from the store next second. So a rollout
//! carries on after any coordinator dies, and no two coordinators move it at once.

use super::audit;
use super::docs::{ROLLOUTS, parse};
use super::views::RolloutView;
use super::{Caller, Error, Ops, Result};
use crate::fleet::agents::{
    ConfigStanding, RecordAttributes, config_failure, config_standing_seen, cut, has, takes,
};
use crate::fleet::components;
use crate::fleet::configs::{Aspect, Desired, resolve_among};
use crate::fleet::rollout::{ErrorBudget, MAX_FAILURES_SHOWN, Outcome, Plan, Rollout, State};
use crate::opamp::offers;
use flotilla_common::store::{Doc, StoredConfig};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_common::telemetry::traces;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use flotilla_proto::opamp::{AgentCapabilities as Cap, PackageStatusEnum};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tracing::{info, warn};
use uuid::Uuid;

/// How many phases a plan preview lists.
const MAX_PLANNED_PHASES: usize = 50;

/// What a rollout would do if started now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutPlan {
    pub config: String,
    pub version: u64,
    /// Agents the rollout could take.
    pub candidates: usize,
    /// Agents each phase would take, in order.
    pub phases: Vec<usize>,
    /// Candidates whose build lacks components the version needs: they would fail it.
    pub incompatible: usize,
    /// The first [`MAX_FAILURES_SHOWN`] of them, `<uid>: its build lacks <kind/type>, ...`.
    pub incompatible_agents: Vec<String>,
}

/// What `POST /api/v1/rollouts` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub config: String,
    /// The version to roll out; the latest when left out.
    #[serde(default)]
    pub version: Option<u64>,
    pub phases: Plan,
    #[serde(default = "default_soak", with = "humantime_serde")]
    pub soak: Duration,
    #[serde(default)]
    pub error_budget: ErrorBudget,
    /// Start it even when no agent would take the version now (it completes at once, or takes
    /// agents that match later). Without it, such a rollout is refused.
    #[serde(default)]
    pub allow_empty: bool,
}

fn default_soak() -> Duration {
    Duration::from_secs(30)
}

fn json(r: &Rollout) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

fn to_value(r: &Rollout) -> Option<serde_json::Value> {
    serde_json::to_value(r).ok()
}

/// The version a rollout moves agents to, with what its offer needs of them.
struct Target {
    config: StoredConfig,
    packages_hash: Vec<u8>,
    /// The components its files need (`kind/type`).
    needs: Vec<String>,
}

impl Target {
    fn new(config: StoredConfig, desired: &Desired) -> Self {
        Self {
            packages_hash: offers::packages_available(&config.packages).all_packages_hash,
            needs: desired.needs(&config).into_owned(),
            config,
        }
    }
}

/// Where agent `rec` stands with `target` at `now_ms`: every aspect the version defines (that the
/// agent can take) reported applied, and not unhealthy for `grace_ms` or longer; or failed (a
/// reported failure, a rollback by the agent, a build that lacks components the version needs),
/// with why; or unknown, for an agent sent the config that reports no status.
fn outcome(rec: &AgentRecord, t: &Target, (now_ms, grace_ms): (u64, u64)) -> (Outcome, String) {
    // An agent's own error text can be long: a rollout keeps the first 512 bytes.
    let failed = |why: String| (Outcome::Failed, cut(&why, 512));
    let target = &t.config;
    let (mut applied, mut unknown) = (true, false);
    if !target.files.is_empty() && has(rec.capabilities, Cap::AcceptsRemoteConfig) {
        let standing = config_standing_seen(rec, &target.hash);
        // What the agent says of the version wins over what its components suggest.
        let reported = matches!(standing, ConfigStanding::Applied | ConfigStanding::Applying);
        let missing = components::missing(rec, &t.needs);
        if !reported && !missing.is_empty() {
            return failed(format!("its build lacks {}", missing.join(", ")));
        }
        match standing {
            ConfigStanding::Applied => {}
            ConfigStanding::Failed => return failed(config_failure(rec)),
            // Sent, and it will never say how it went: neither a success nor a failure.
            ConfigStanding::Unknown => unknown = true,
            ConfigStanding::Applying | ConfigStanding::Pending => applied = false,
        }
    }
    if !target.packages.is_empty() && has(rec.capabilities, Cap::AcceptsPackages) {
        match &rec.package_statuses {
            Some(p) if p.server_provided_all_packages_hash == t.packages_hash => {
                // A package the agent does not report yet is still pending.
                let status = |name: &String| p.packages.get(name).map(|s| s.status());
                if let Some((name, s)) = target
                    .packages
                    .keys()
                    .filter_map(|n| p.packages.get(n).map(|s| (n, s)))
                    .find(|(_, s)| s.status() == PackageStatusEnum::InstallFailed)
                {
                    return failed(format!(
                        "package {name} failed to install: {}",
                        s.error_message
                    ));
                }
                applied &= target
                    .packages
                    .keys()
                    .all(|n| status(n) == Some(PackageStatusEnum::Installed));
            }
            _ => applied = false,
        }
    }
    let unhealthy = rec.health.as_ref().filter(|h| !h.healthy);
    let past_grace = now_ms.saturating_sub(rec.unhealthy_since_unix_ms) >= grace_ms;
    let outcome = match (applied, unhealthy) {
        (true, Some(h)) if past_grace => return failed(format!("unhealthy: {}", h.last_error)),
        // Starting up (a supervisor restarts its collector on a new config): not yet.
        (true, Some(_)) => Outcome::Pending,
        (true, _) if unknown => Outcome::Unknown,
        (true, _) => Outcome::Applied,
        (false, _) => Outcome::Pending,
    };
    (outcome, String::new())
}

/// Would `rec` get config `target.name` for some aspect `target` defines, were `target` active?
fn candidate(rec: &AgentRecord, desired: &Desired, target: &StoredConfig) -> bool {
    let attrs = RecordAttributes(rec);
    Aspect::ALL.iter().any(|aspect| {
        takes(rec, *aspect)
            && aspect.defined_by(target)
            && resolve_among(desired.with_version(target), &attrs, *aspect)
                .is_some_and(|c| c.name == target.name)
    })
}

impl Ops {
    /// Every rollout, newest first.
    pub async fn rollouts(&self, _caller: &Caller) -> Result<Vec<RolloutView>> {
        let docs = self.store().list_docs(ROLLOUTS).await?;
        let mut all = docs
            .iter()
            .map(parse)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        all.sort_by_key(|r| std::cmp::Reverse(r.created_unix_ms));
        Ok(all.iter().map(RolloutView::of).collect())
    }

    pub async fn rollout(&self, _caller: &Caller, id: &str) -> Result<RolloutView> {
        Ok(RolloutView::of(&self.rollout_doc(id).await?.1))
    }

    async fn rollout_doc(&self, id: &str) -> Result<(Doc, Rollout)> {
        let doc = self
            .store()
            .get_doc(ROLLOUTS, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no rollout {id:?}")))?;
        let r = parse(&doc)?;
        Ok((doc, r))
    }

    /// What starting `req` would do, with nothing stored: how many agents it could take, and how
    /// many each phase would (the first [`MAX_PLANNED_PHASES`]).
    pub async fn plan_rollout(
        &self,
        _caller: &Caller,
        req: &RolloutRequest,
    ) -> Result<RolloutPlan> {
        req.phases.check().map_err(Error::BadRequest)?;
        req.error_budget.check().map_err(Error::BadRequest)?;
        let target = self.rollout_target(req).await?;
        let desired = self.desired.current();
        let needs = desired.needs(&target);
        let takes_files = |rec: &AgentRecord| {
            !target.files.is_empty() && has(rec.capabilities, Cap::AcceptsRemoteConfig)
        };
        let (mut candidates, mut incompatible) = (0, 0);
        let mut incompatible_agents = Vec::new();
        self.visit_fleet(&mut |rec| {
            if !candidate(rec, &desired, &target) {
                return;
            }
            candidates += 1;
            let missing = components::missing(rec, &needs);
            if takes_files(rec) && !missing.is_empty() {
                incompatible += 1;
                if incompatible_agents.len() < MAX_FAILURES_SHOWN {
                    let uid = Uuid::from_slice(&rec.instance_uid).unwrap_or_default();
                    incompatible_agents
                        .push(format!("{uid}: its build lacks {}", missing.join(", ")));
                }
            }
        })
        .await?;
        Ok(RolloutPlan {
            config: target.name.clone(),
            version: target.version,
            candidates,
            phases: req.phases.phase_sizes(candidates, MAX_PLANNED_PHASES),
            incompatible,
            incompatible_agents,
        })
    }

    /// The version a rollout request names (the latest when it names none).
    async fn rollout_target(&self, req: &RolloutRequest) -> Result<StoredConfig> {
        let versions = self.store().config_versions(&req.config).await?;
        match req.version {
            Some(v) => versions.into_iter().find(|c| c.version == v),
            None => versions.into_iter().last(),
        }
        .ok_or_else(|| {
            Error::NotFound(format!(
                "config {:?} has no version {}",
                req.config,
                req.version.map_or("at all".into(), |v| v.to_string())
            ))
        })
    }

    /// Starts rolling a version of a config out; its first phase starts at once.
    pub async fn start_rollout(&self, caller: &Caller, req: RolloutRequest) -> Result<RolloutView> {
        let id = Uuid::now_v7().to_string();
        self.start_rollout_as(caller, req, id).await
    }

    /// This region's part of a rollout across regions (`id`: the same in every region): started
    /// when it was not, with how it stands; completed at once when the version is active here
    /// already.
    pub(crate) async fn rollout_part(
        &self,
        id: &str,
        req: RolloutRequest,
        caller: &str,
    ) -> Result<(State, String)> {
        if let Some(doc) = self.store().get_doc(ROLLOUTS, id).await? {
            let r = parse(&doc)?;
            return Ok((r.state, r.reason));
        }
        let active = self.active_version(&req.config);
        if req.version.is_some() && active == req.version {
            return Ok((
                State::Completed,
                "the version is active here already".into(),
            ));
        }
        let caller = Caller {
            name: caller.to_owned(),
            ..Caller::system()
        };
        self.start_rollout_as(&caller, req, id.to_owned()).await?;
        let (_, r) = self.rollout_doc(id).await?;
        Ok((r.state, r.reason))
    }

    async fn start_rollout_as(
        &self,
        caller: &Caller,
        req: RolloutRequest,
        id: String,
    ) -> Result<RolloutView> {
        req.phases.check().map_err(Error::BadRequest)?;
        req.error_budget.check().map_err(Error::BadRequest)?;
        let target = self.rollout_target(&req).await?;
        let desired = self.desired.current();
        let active = desired.configs.iter().find(|c| c.name == req.config);
        if active.is_some_and(|a| a.version == target.version) {
            return Err(Error::Conflict(format!(
                "version {} of {:?} is already active",
                target.version, req.config
            )));
        }
        if let Some(other) = desired.rollouts.get(&req.config) {
            return Err(Error::Conflict(format!(
                "rollout {} of {:?} is still active; pause it, abort it or let it finish",
                other.id, req.config
            )));
        }
        // One active rollout per agent: refuse when an agent this rollout would take is held by
        // another one.
        let mut held: Option<(Uuid, String)> = None;
        let mut candidates = 0usize;
        self.visit_fleet(&mut |rec| {
            let Ok(uid) = Uuid::from_slice(&rec.instance_uid) else {
                return;
            };
            if !candidate(rec, &desired, &target) {
                return;
            }
            candidates += 1;
            if held.is_none()
                && let Some(other) = desired.enrolled.get(&uid)
            {
                held = Some((uid, other.clone()));
            }
        })
        .await?;
        if candidates == 0 && !req.allow_empty {
            return Err(Error::Conflict(format!(
                "no agent would take version {} of {:?} now: its selector matches none, or they \
                 cannot take what it holds; set allow_empty (ctl: --allow-empty) to start it anyway",
                target.version, req.config
            )));
        }
        if let Some((uid, other)) = held {
            let id = desired.rollouts.get(&other).map_or("?", |r| r.id.as_str());
            return Err(Error::Conflict(format!(
                "agent {uid} would be in this rollout but is in rollout {id} of {other:?}; one active rollout per agent"
            )));
        }
        let now = now_unix_ms();
        let r = Rollout {
            id,
            config: req.config.clone(),
            from_version: active.map_or(0, |a| a.version),
            to_version: target.version,
            plan: req.phases,
            soak: req.soak,
            error_budget: req.error_budget,
            state: State::Running,
            reason: String::new(),
            phases: Vec::new(),
            agents_total: 0,
            created_by: caller.name.clone(),
            created_unix_ms: now,
            updated_unix_ms: now,
        };
        let object = format!("rollout/{}", r.id);
        let entry = audit::entry(&caller.name, "rollout.start", object, None, to_value(&r));
        self.store()
            .put_doc(ROLLOUTS, &r.id, 0, &json(&r), Some(&entry))
            .await?;
        info!(rollout = %r.id, config = %r.config, to = r.to_version, "rollout started");
        self.rollout_changed(&r).await;
        self.step_rollout(&r.id).await;
        self.rollout(caller, &r.id).await
    }

    /// Pauses, resumes or aborts a rollout (`action` "pause", "resume" or "abort").
    pub async fn control_rollout(
        &self,
        caller: &Caller,
        id: &str,
        action: &str,
    ) -> Result<RolloutView> {
        let (from, to) = match action {
            "pause" => (&[State::Running][..], State::Paused),
            "resume" => (&[State::Paused][..], State::Running),
            "abort" => (&[State::Running, State::Paused][..], State::Aborted),
            _ => {
                return Err(Error::BadRequest(format!(
                    "unknown rollout action {action:?}; use pause, resume or abort"
                )));
            }
        };
        // Compare-and-set against the driver, which may write in between.
        for _ in 0..10 {
            let (doc, mut r) = self.rollout_doc(id).await?;
            if !from.contains(&r.state) {
                return Err(Error::Conflict(format!(
                    "rollout {id} is {}; it cannot {action}",
                    serde_json::to_value(r.state).unwrap_or_default()
                )));
            }
            let before = to_value(&r);
            r.state = to;
            r.updated_unix_ms = now_unix_ms();
            r.reason = format!("{action} by {}", caller.name);
            let object = format!("rollout/{id}");
            let entry = audit::entry(
                &caller.name,
                &format!("rollout.{action}"),
                object,
                before,
                to_value(&r),
            );
            if self
                .store()
                .put_doc(ROLLOUTS, id, doc.revision, &json(&r), Some(&entry))
                .await?
            {
                self.announce_change(&format!("rollout/{id}")).await;
                self.rollout_changed(&r).await;
                if to == State::Running {
                    self.step_rollout(id).await;
                    return self.rollout(caller, id).await;
                }
                return Ok(RolloutView::of(&r));
            }
        }
        Err(Error::Unavailable(format!(
            "rollout {id} kept changing; try again"
        )))
    }

    /// Moves every running rollout on by one step, and says how many rollouts there were in each
    /// state before it. Called every second by the process that holds shard 0, so one process
    /// drives them at a time.
    pub async fn step_rollouts(&self) -> std::result::Result<[(State, u64); 5], String> {
        let docs = self
            .store()
            .list_docs(ROLLOUTS)
            .await
            .map_err(|e| format!("cannot read rollouts: {e}"))?;
        let mut states = State::ALL.map(|s| (s, 0));
        for doc in docs {
            let Ok(r) = parse(&doc) else { continue };
            if let Some((_, n)) = states.iter_mut().find(|(s, _)| *s == r.state) {
                *n += 1;
            }
            if r.state.is_active() {
                self.step_rollout(&doc.id).await;
            }
        }
        Ok(states)
    }

    /// One step of one rollout; errors are logged and the step is retried next second.
    async fn step_rollout(&self, id: &str) {
        let span = traces::root(|| {
            tracing::debug_span!(
                parent: None,
                "rollout.step",
                rollout = id,
                state = tracing::field::Empty,
                phase = tracing::field::Empty,
            )
        });
        let step = tracing::Instrument::instrument(self.try_step_rollout(id), span);
        if let Err(e) = step.await {
            warn!(rollout = id, error = %e, "rollout step failed; retrying");
        }
    }

    async fn try_step_rollout(&self, id: &str) -> Result<()> {
        let (doc, mut r) = self.rollout_doc(id).await?;
        if !r.state.is_active() {
            return Ok(());
        }
        let Some(target) = self
            .store()
            .config_versions(&r.config)
            .await?
            .into_iter()
            .find(|c| c.version == r.to_version)
        else {
            return Err(Error::NotFound(format!(
                "version {} of {:?} is missing",
                r.to_version, r.config
            )));
        };
        let now = now_unix_ms();
        let grace = u64::try_from(self.cfg.unhealthy_grace.as_millis()).unwrap_or(u64::MAX);
        let desired = self.desired.current();
        let target = Target::new(target, &desired);
        let enrolled = r.enrolled();
        let mut outcomes = HashMap::new();
        let mut failures = HashMap::new();
        let mut candidates: Vec<(bool, Uuid)> = Vec::new();
        self.visit_fleet(&mut |rec| {
            let Ok(uid) = Uuid::from_slice(&rec.instance_uid) else {
                return;
            };
            if enrolled.contains(&uid) {
                let (o, why) = outcome(rec, &target, (now, grace));
                if o == Outcome::Failed {
                    failures.insert(uid, why);
                }
                outcomes.insert(uid, o);
            } else if desired.enrolled.get(&uid).is_none_or(|n| *n == r.config)
                && candidate(rec, &desired, &target.config)
            {
                let connected = rec.status == AgentStatus::Connected as i32;
                candidates.push((!connected, uid));
            }
        })
        .await?;
        // An enrolled agent whose record is gone (removed, or moved to a new uid) cannot be
        // waited on: it settles its phase as unknown.
        for uid in &enrolled {
            outcomes.entry(*uid).or_insert(Outcome::Unknown);
        }
        // Connected agents first (they can apply now), then by uid: a stable order.
        candidates.sort_unstable();
        let candidates: Vec<Uuid> = candidates.into_iter().map(|(_, u)| u).collect();
        let before = r.clone();
        r.note_failures(&failures);
        let effects = r.step(now, &outcomes, &candidates);
        if effects.activate
            && self
                .store()
                .activate_config(&r.config, r.to_version)
                .await?
                .is_none()
        {
            return Err(Error::NotFound(format!(
                "version {} of {:?} vanished",
                r.to_version, r.config
            )));
        }
        tracing::Span::current()
            .record("state", tracing::field::debug(r.state))
            .record("phase", r.phases.len());
        if r == before {
            return Ok(());
        }
        // A change of state is on record with its audit entry, in one write.
        let entry = (r.state != before.state).then(|| {
            let action = format!("rollout.{}", r.state.as_str());
            let object = format!("rollout/{id}");
            audit::entry(
                super::caller::SYSTEM,
                &action,
                object,
                to_value(&before),
                to_value(&r),
            )
        });
        if !self
            .store()
            .put_doc(ROLLOUTS, id, doc.revision, &json(&r), entry.as_ref())
            .await?
        {
            return Ok(()); // Someone else moved it; the next step starts from what they wrote.
        }
        if r.state != before.state {
            info!(rollout = id, state = ?r.state, reason = %r.reason, "rollout state changed");
            self.rollout_changed(&r).await;
        } else if r.phases.len() != before.phases.len() {
            info!(
                rollout = id,
                phase = r.phases.len(),
                "rollout phase started"
            );
        }
        if effects.desired_changed || effects.activate {
            self.announce_change(&format!("rollout/{id}")).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::{ComponentHealth, RemoteConfigStatus, RemoteConfigStatuses};

    /// Version 2 of config "otel": one file, `body`, of hash 0707...
    fn version_2(body: &str) -> StoredConfig {
        let file = flotilla_common::store::ConfigFile {
            body: body.into(),
            content_type: "text/yaml".into(),
        };
        StoredConfig {
            name: "otel".into(),
            version: 2,
            selector: Default::default(),
            files: [("c.yaml".to_string(), file)].into(),
            hash: hex::encode([7; 32]),
            packages: Default::default(),
            settings: None,
            created_unix_ms: 0,
            created_by: String::new(),
            comment: String::new(),
        }
    }

    #[test]
    fn an_agent_unhealthy_on_the_version_fails_only_after_the_grace() {
        let target = version_2("a: 1");
        let rec = AgentRecord {
            capabilities: Cap::AcceptsRemoteConfig as u64 | Cap::ReportsRemoteConfig as u64,
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: vec![7; 32],
                status: RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            }),
            health: Some(Box::new(ComponentHealth {
                healthy: false,
                ..Default::default()
            })),
            unhealthy_since_unix_ms: 1_000_000,
            ..Default::default()
        };
        let mut rec = rec;
        rec.health.as_mut().unwrap().last_error = "exporter otlp: connection refused".into();
        let target = Target::new(target, &Desired::default());
        let at = |ms: u64| outcome(&rec, &target, (1_000_000 + ms, 60_000));
        assert_eq!(at(0).0, Outcome::Pending, "starting up");
        assert_eq!(at(59_999).0, Outcome::Pending);
        assert_eq!(
            at(60_000),
            (
                Outcome::Failed,
                "unhealthy: exporter otlp: connection refused".into()
            )
        );
        let mut healthy = rec.clone();
        healthy.health.as_mut().unwrap().healthy = true;
        let now = (1_000_000, 60_000);
        assert_eq!(outcome(&healthy, &target, now).0, Outcome::Applied);
    }

    #[test]
    fn an_agent_whose_build_lacks_a_component_of_the_version_fails_it_and_says_which() {
        let body = "receivers: {otlp: {}}\nexporters: {kafka/eu: {}}\n\
                    service: {pipelines: {traces: {receivers: [otlp], exporters: [kafka/eu]}}}";
        let target = version_2(body);
        let target = Target::new(target, &Desired::default());
        let build = |exporters: &[&str]| {
            crate::fleet::components::build_of(&[
                ("receivers", &["otlp"]),
                ("exporters", exporters),
            ])
        };
        let mut rec = AgentRecord {
            capabilities: Cap::AcceptsRemoteConfig as u64 | Cap::ReportsRemoteConfig as u64,
            available_components: Some(Box::new(build(&["debug"]))),
            ..Default::default()
        };
        assert_eq!(
            outcome(&rec, &target, (0, 0)),
            (
                Outcome::Failed,
                "its build lacks exporters/kafka".to_string()
            )
        );
        rec.available_components = Some(Box::new(build(&["debug", "kafka"])));
        assert_eq!(outcome(&rec, &target, (0, 0)).0, Outcome::Pending);
    }
}
