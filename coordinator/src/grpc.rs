//! The admin API as a gRPC service (`flotilla.admin.v1.Admin`, proto/proto/flotilla/admin.proto).
//!
//! It is routed on the API listener beside the REST routes ([`crate::api::router`]), behind the
//! same [`crate::auth::authorize`] middleware: that authenticates the bearer token, checks the
//! role by RPC name and puts the [`Caller`] in the request's extensions, where each RPC reads it.
//! Every RPC calls the same [`Coordinator`] operation (or shared API helper) as its REST handler;
//! where the REST view derives something (summaries, rollout totals), the message is read from
//! that view, so both APIs say the same.

use crate::admin::ConfigDraft;
use crate::api::{self, ApiError};
use crate::auth::Caller;
use crate::service::{Coordinator, RestartOutcome, ServiceError};
use crate::views;
use flotilla_common::error::ErrorKind;
use flotilla_proto::admin as pb;
use flotilla_proto::admin::admin_server::{Admin, AdminServer};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

pub use flotilla_proto::admin::admin_server::SERVICE_NAME;

mod convert;
use convert::{config_version, restart_job, rollout_message, rollout_request, summary};

/// The service to route under `/flotilla.admin.v1.Admin/`, behind [`crate::auth::authorize`].
pub fn service(coordinator: Arc<Coordinator>) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { c: coordinator })
}

/// The [`Admin`] RPCs, each over the coordinator.
pub struct AdminService {
    c: Arc<Coordinator>,
}

/// The gRPC code of an error kind (the HTTP status, WebSocket close code and OpAMP error type
/// are in [`ErrorKind`]; this crate alone speaks gRPC).
fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::BadRequest | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Conflict => Code::FailedPrecondition,
        ErrorKind::PayloadTooLarge => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(code(e.0), e.1)
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        ApiError::from(e).into()
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Who called: put there by the auth middleware, which every route of the API passes.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Status::unauthenticated("no caller: the Admin service is served without its auth layer")
    })
}

/// The REST API's query parameters from request fields; empty means not given.
fn params<const N: usize>(fields: [(&str, String); N]) -> HashMap<String, String> {
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn nonzero(n: u32) -> String {
    if n == 0 { String::new() } else { n.to_string() }
}

/// An optional JSON field of a request: empty or `null` is none.
fn json_field<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<Option<T>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<Option<T>>(text)
        .map_err(|e| Status::invalid_argument(format!("{name} is not valid: {e}")))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_fleet_health(
        &self,
        _: Request<pb::GetFleetHealthRequest>,
    ) -> Reply<pb::FleetHealth> {
        let [total, connected, healthy, unhealthy, silent, disconnected] =
            api::health_counts(&self.c).await?;
        Ok(Response::new(pb::FleetHealth {
            total_agents: total,
            connected_agents: connected,
            healthy_agents: healthy,
            unhealthy_agents: unhealthy,
            silent_agents: silent,
            disconnected_agents: disconnected,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Reply<pb::ListAgentsResponse> {
        let r = req.into_inner();
        let q = params([
            ("selector", r.selector),
            ("status", r.status),
            ("health", r.health),
            ("limit", nonzero(r.limit)),
            ("cursor", r.cursor),
        ]);
        let page = api::agents_page(&self.c, &q).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            total: page.total as u64,
            agents: page.agents.iter().map(summary).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Reply<pb::AgentDetail> {
        let uid = api::parse_uid(&req.get_ref().instance_uid)?;
        let rec = api::agent_record(&self.c, uid).await?;
        let detail = views::detail(&rec, &self.c.desired(), self.c.redactor());
        Ok(Response::new(pb::AgentDetail {
            summary: Some(summary(&detail)),
            detail_json: detail.to_string(),
        }))
    }

    async fn restart_agent(
        &self,
        req: Request<pb::RestartAgentRequest>,
    ) -> Reply<pb::RestartAgentResponse> {
        let caller = caller(&req)?;
        let uid = api::parse_uid(&req.get_ref().instance_uid)?;
        let outcome = self.c.restart(uid, &caller.name).await?;
        Ok(Response::new(pb::RestartAgentResponse {
            queued: outcome == RestartOutcome::Queued,
            delivered: outcome == RestartOutcome::Delivered,
            instance_uid: uid.to_string(),
        }))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Reply<pb::DeleteAgentResponse> {
        let caller = caller(&req)?;
        let uid = api::parse_uid(&req.get_ref().instance_uid)?;
        self.c.delete_agent(uid, &caller.name).await?;
        Ok(Response::new(pb::DeleteAgentResponse {
            instance_uid: uid.to_string(),
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Reply<pb::IssueCertificateResponse> {
        let caller = caller(&req)?;
        let uid = api::parse_uid(&req.get_ref().instance_uid)?;
        let out = self.c.issue_certificate(uid, &caller.name).await?;
        Ok(Response::new(pb::IssueCertificateResponse {
            instance_uid: uid.to_string(),
            sha256: out.sha256,
            not_after: views::rfc3339(out.not_after_unix_ms),
            delivered: out.delivered,
        }))
    }

    async fn get_labels(&self, req: Request<pb::GetLabelsRequest>) -> Reply<pb::Labels> {
        let uid = api::parse_uid(&req.get_ref().instance_uid)?;
        let rec = api::agent_record(&self.c, uid).await?;
        Ok(Response::new(pb::Labels {
            instance_uid: uid.to_string(),
            labels: rec.labels,
        }))
    }

    async fn set_labels(&self, req: Request<pb::SetLabelsRequest>) -> Reply<pb::Labels> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let uid = api::parse_uid(&r.instance_uid)?;
        let set = r.set.into_iter().collect();
        let labels = self.c.set_labels(uid, set, r.remove, &caller.name).await?;
        Ok(Response::new(pb::Labels {
            instance_uid: uid.to_string(),
            labels: labels.into_iter().collect(),
        }))
    }

    async fn put_config(&self, req: Request<pb::PutConfigRequest>) -> Reply<pb::ConfigVersion> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let draft = ConfigDraft {
            selector: api::parse_selector(&r.selector)?,
            files: r.files.into_iter().collect(),
            packages: json_field("packages_json", &r.packages_json)?.unwrap_or_default(),
            settings: json_field("settings_json", &r.settings_json)?,
            activate: r.activate.unwrap_or(true),
        };
        let active = draft.activate;
        let stored = self
            .c
            .put_config(&r.name, draft, &caller.name, String::new())
            .await?;
        Ok(Response::new(config_version(&stored, active)))
    }

    async fn list_configs(
        &self,
        _: Request<pb::ListConfigsRequest>,
    ) -> Reply<pb::ListConfigsResponse> {
        let configs = self
            .c
            .desired()
            .configs
            .iter()
            .map(|c| config_version(c, true))
            .collect();
        Ok(Response::new(pb::ListConfigsResponse { configs }))
    }

    async fn get_config(&self, req: Request<pb::GetConfigRequest>) -> Reply<pb::Config> {
        let r = req.into_inner();
        let v = match r.version {
            Some(version) => self.c.config_version(&r.name, version).await?,
            None => api::current_config(&self.c, &r.name).await?,
        };
        let active = self
            .c
            .desired()
            .configs
            .iter()
            .any(|a| a.name == v.name && a.version == v.version);
        Ok(Response::new(pb::Config {
            version: Some(config_version(&v, active)),
            packages_json: json!(v.packages).to_string(),
            settings_json: json!(v.settings).to_string(),
            files: v.files.into_iter().map(|(n, f)| (n, f.body)).collect(),
        }))
    }

    async fn get_config_versions(
        &self,
        req: Request<pb::GetConfigVersionsRequest>,
    ) -> Reply<pb::GetConfigVersionsResponse> {
        let name = req.into_inner().name;
        let history = self.c.config_history(&name).await?;
        let active = self
            .c
            .desired()
            .configs
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.version);
        let versions = history
            .iter()
            .rev()
            .map(|v| config_version(v, Some(v.version) == active))
            .collect();
        Ok(Response::new(pb::GetConfigVersionsResponse {
            name,
            active_version: active,
            versions,
        }))
    }

    async fn get_config_diff(
        &self,
        req: Request<pb::GetConfigDiffRequest>,
    ) -> Reply<pb::ConfigDiff> {
        let r = req.into_inner();
        if r.from == 0 {
            return Err(Status::invalid_argument("from (a version) is required"));
        }
        let from = self.c.config_version(&r.name, r.from).await?;
        let to = match r.to {
            Some(v) => self.c.config_version(&r.name, v).await?,
            None => {
                let mut history = self.c.config_history(&r.name).await?;
                history.pop().expect("history is never empty")
            }
        };
        Ok(Response::new(pb::ConfigDiff {
            diff: views::diff(&from, &to),
            name: r.name,
            from: from.version,
            to: to.version,
        }))
    }

    async fn rollback_config(
        &self,
        req: Request<pb::RollbackConfigRequest>,
    ) -> Reply<pb::ConfigVersion> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let stored = self
            .c
            .rollback_config(&r.name, r.version, &caller.name)
            .await?;
        Ok(Response::new(config_version(&stored, true)))
    }

    async fn start_rollout(&self, req: Request<pb::StartRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller(&req)?;
        let rollout = self
            .c
            .start_rollout(rollout_request(req.into_inner())?, &caller.name)
            .await?;
        Ok(Response::new(rollout_message(&views::rollout_json(
            &rollout,
        ))))
    }

    async fn get_rollout(&self, req: Request<pb::GetRolloutRequest>) -> Reply<pb::Rollout> {
        let r = self.c.rollout(&req.get_ref().id).await?;
        Ok(Response::new(rollout_message(&views::rollout_json(&r))))
    }

    async fn list_rollouts(
        &self,
        _: Request<pb::ListRolloutsRequest>,
    ) -> Reply<pb::ListRolloutsResponse> {
        let rollouts = self
            .c
            .rollouts()
            .await?
            .iter()
            .map(|r| rollout_message(&views::rollout_json(r)))
            .collect();
        Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
    }

    async fn control_rollout(&self, req: Request<pb::ControlRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let rollout = self
            .c
            .control_rollout(&r.id, &r.action, &caller.name)
            .await?;
        Ok(Response::new(rollout_message(&views::rollout_json(
            &rollout,
        ))))
    }

    async fn restart_matching(
        &self,
        req: Request<pb::RestartMatchingRequest>,
    ) -> Reply<pb::RestartJob> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let selector = api::parse_selector(&r.selector)?;
        let rate = r.rate_per_second.unwrap_or_else(api::default_restart_rate);
        let job = self
            .c
            .restart_matching(selector, rate, &caller.name)
            .await?;
        Ok(Response::new(restart_job(job)))
    }

    async fn get_restart_job(
        &self,
        req: Request<pb::GetRestartJobRequest>,
    ) -> Reply<pb::RestartJob> {
        let job = self.c.restart_job(&req.get_ref().id).await?;
        Ok(Response::new(restart_job(job)))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Reply<pb::QueryAuditResponse> {
        let r = req.into_inner();
        let query = api::audit_query(&params([
            ("object", r.object),
            ("since", r.since),
            ("until", r.until),
            ("limit", nonzero(r.limit)),
        ]))?;
        let json = |v: Option<Value>| v.map(|v| v.to_string()).unwrap_or_default();
        let page = self.c.audit_log(&query).await?;
        let entries = page
            .entries
            .into_iter()
            .map(|e| pb::AuditEntry {
                id: e.id,
                at: views::rfc3339(e.at_unix_ms),
                caller: e.caller,
                action: e.action,
                object: e.object,
                before_json: json(e.before),
                after_json: json(e.after),
            })
            .collect();
        Ok(Response::new(pb::QueryAuditResponse {
            entries,
            truncated: page.truncated,
        }))
    }
}
