//! The admin API as a gRPC service (`flotilla.admin.v1.Admin`, proto/proto/flotilla/admin.proto).
//!
//! It is routed on the API listener beside the REST routes, behind the same auth gate
//! ([`crate::api::auth::authorize`]): that authenticates the bearer token, checks the role by RPC
//! name and puts the [`Caller`] in the request's extensions, where each RPC reads it. Every RPC
//! reads its request into one operation's arguments, calls it, and converts the operation's typed
//! answer ([`convert`]); the REST handlers do the same with the same operations, so both APIs say
//! the same without knowing of each other.

use crate::ops::agents::{AgentQuery, parse_selector};
use crate::ops::configs::ConfigDraft;
use crate::ops::own_metrics::FleetMetricsQuery;
use crate::ops::restarts::DEFAULT_RATE;
use crate::ops::{self, Caller, Ops, audit};
use flotilla_common::error::ErrorKind;
use flotilla_proto::admin as pb;
use flotilla_proto::admin::admin_server::{Admin, AdminServer};
use tonic::{Code, Request, Response, Status};

pub use flotilla_proto::admin::admin_server::SERVICE_NAME;

mod convert;
use convert::{
    agent_summary, audit_entry, config_message, config_version, restart_job, rollout_message,
    rollout_request, version_message,
};

/// The service to route under `/flotilla.admin.v1.Admin/`, behind the auth gate.
pub fn service(ops: Ops) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { ops })
}

/// The [`Admin`] RPCs, each over one operation.
pub struct AdminService {
    ops: Ops,
}

/// The gRPC code of an error kind (the HTTP status, WebSocket close code and OpAMP error type
/// are in [`ErrorKind`]; this module alone speaks gRPC).
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

fn status(e: ops::Error) -> Status {
    Status::new(code(e.kind()), e.to_string())
}

type Reply<T> = Result<Response<T>, Status>;

/// Who called: put there by the auth gate, which every route of the API passes.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Status::unauthenticated("no caller: the Admin service is served without its auth layer")
    })
}

/// Request fields as text parameters; empty means not given.
fn given<const N: usize>(fields: [(&'static str, String); N]) -> Vec<(&'static str, String)> {
    fields.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

fn nonzero(n: u32) -> String {
    if n == 0 { String::new() } else { n.to_string() }
}

fn ok<T>(r: Result<T, ops::Error>) -> Reply<T> {
    r.map(Response::new).map_err(status)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_fleet_health(
        &self,
        req: Request<pb::GetFleetHealthRequest>,
    ) -> Reply<pb::FleetHealth> {
        let h = self
            .ops
            .fleet_health(&caller(&req)?)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::fleet_health(&h)))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Reply<pb::ListAgentsResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let params = given([
            ("selector", r.selector),
            ("status", r.status),
            ("health", r.health),
            ("limit", nonzero(r.limit)),
            ("cursor", r.cursor),
        ]);
        let query =
            AgentQuery::parse(params.iter().map(|(k, v)| (*k, v.as_str()))).map_err(status)?;
        let page = self
            .ops
            .list_agents(&caller, &query)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            total: page.total as u64,
            agents: page.agents.iter().map(agent_summary).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
            missing_regions: page.missing_regions,
            partial: page.partial,
        }))
    }

    async fn get_fleet_agent_metrics(
        &self,
        req: Request<pb::GetFleetAgentMetricsRequest>,
    ) -> Reply<pb::FleetAgentMetrics> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let top = (r.top != 0).then(|| r.top.to_string());
        let params = [
            ("selector", r.selector.as_str()),
            ("top", top.as_deref().unwrap_or("")),
        ];
        let query = FleetMetricsQuery::parse(params.into_iter().filter(|(_, v)| !v.is_empty()))
            .map_err(status)?;
        let m = self
            .ops
            .fleet_metrics(&caller, &query)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FleetAgentMetrics {
            agents_selected: m.agents_selected,
            agents_reporting: m.agents_reporting,
            json: serde_json::to_string(&m).unwrap_or_default(),
        }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Reply<pb::AgentDetail> {
        let caller = caller(&req)?;
        let detail = self
            .ops
            .agent(&caller, &req.get_ref().instance_uid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AgentDetail {
            summary: Some(agent_summary(&detail.summary)),
            detail_json: serde_json::to_string(&detail).unwrap_or_default(),
        }))
    }

    async fn restart_agent(
        &self,
        req: Request<pb::RestartAgentRequest>,
    ) -> Reply<pb::RestartAgentResponse> {
        let caller = caller(&req)?;
        let r = self
            .ops
            .restart_agent(&caller, &req.get_ref().instance_uid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RestartAgentResponse {
            queued: r.queued,
            delivered: r.delivered,
            instance_uid: r.instance_uid,
        }))
    }

    async fn send_custom_message(
        &self,
        req: Request<pb::SendCustomMessageRequest>,
    ) -> Reply<pb::SendCustomMessageResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let sent = self
            .ops
            .send_custom_message(&caller, &r.instance_uid, &r.capability, &r.r#type, r.data)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SendCustomMessageResponse {
            instance_uid: sent.instance_uid,
            delivered: sent.delivered,
            queued: sent.queued,
        }))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Reply<pb::DeleteAgentResponse> {
        let caller = caller(&req)?;
        let d = self
            .ops
            .delete_agent(&caller, &req.get_ref().instance_uid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteAgentResponse {
            instance_uid: d.instance_uid,
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Reply<pb::IssueCertificateResponse> {
        let caller = caller(&req)?;
        let i = self
            .ops
            .issue_certificate(&caller, &req.get_ref().instance_uid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::IssueCertificateResponse {
            instance_uid: i.instance_uid,
            sha256: i.sha256,
            not_after: i.not_after,
            delivered: i.delivered,
        }))
    }

    async fn get_labels(&self, req: Request<pb::GetLabelsRequest>) -> Reply<pb::Labels> {
        let caller = caller(&req)?;
        let l = self
            .ops
            .labels(&caller, &req.get_ref().instance_uid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Labels {
            instance_uid: l.instance_uid,
            labels: l.labels.into_iter().collect(),
        }))
    }

    async fn set_labels(&self, req: Request<pb::SetLabelsRequest>) -> Reply<pb::Labels> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let set = r.set.into_iter().collect();
        let l = self
            .ops
            .set_labels(&caller, &r.instance_uid, set, r.remove)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Labels {
            instance_uid: l.instance_uid,
            labels: l.labels.into_iter().collect(),
        }))
    }

    async fn put_config(&self, req: Request<pb::PutConfigRequest>) -> Reply<pb::ConfigVersion> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let draft = ConfigDraft::from_parts(
            &r.selector,
            r.files.into_iter().collect(),
            &r.packages_json,
            &r.settings_json,
            r.activate.unwrap_or(true),
        )
        .map_err(status)?;
        let c = self.ops.put_config(&caller, &r.name, draft).await;
        ok(c.map(|c| config_version(&c)))
    }

    async fn list_configs(
        &self,
        req: Request<pb::ListConfigsRequest>,
    ) -> Reply<pb::ListConfigsResponse> {
        let configs = self.ops.configs(&caller(&req)?).await.map_err(status)?;
        Ok(Response::new(pb::ListConfigsResponse {
            configs: configs.iter().map(config_version).collect(),
        }))
    }

    async fn get_config(&self, req: Request<pb::GetConfigRequest>) -> Reply<pb::Config> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let c = self.ops.config(&caller, &r.name, r.version).await;
        ok(c.map(|c| config_message(&c)))
    }

    async fn get_config_versions(
        &self,
        req: Request<pb::GetConfigVersionsRequest>,
    ) -> Reply<pb::GetConfigVersionsResponse> {
        let caller = caller(&req)?;
        let h = self
            .ops
            .config_history(&caller, &req.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConfigVersionsResponse {
            versions: h
                .versions
                .iter()
                .map(|v| version_message(&h.name, v))
                .collect(),
            name: h.name,
            active_version: h.active_version,
        }))
    }

    async fn get_config_diff(
        &self,
        req: Request<pb::GetConfigDiffRequest>,
    ) -> Reply<pb::ConfigDiff> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let from = (r.from != 0).then_some(r.from);
        let d = self
            .ops
            .config_diff(&caller, &r.name, from, r.to)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ConfigDiff {
            name: d.name,
            from: d.from,
            to: d.to,
            diff: d.diff,
        }))
    }

    async fn rollback_config(
        &self,
        req: Request<pb::RollbackConfigRequest>,
    ) -> Reply<pb::ConfigVersion> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let c = self.ops.rollback_config(&caller, &r.name, r.version).await;
        ok(c.map(|c| config_version(&c)))
    }

    async fn delete_config(
        &self,
        req: Request<pb::DeleteConfigRequest>,
    ) -> Reply<pb::DeleteConfigResponse> {
        let caller = caller(&req)?;
        let d = self
            .ops
            .delete_config(&caller, &req.into_inner().name)
            .await;
        ok(d.map(|d| pb::DeleteConfigResponse {
            name: d.name,
            deactivated_version: d.deactivated_version,
        }))
    }

    async fn start_rollout(&self, req: Request<pb::StartRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller(&req)?;
        let request = rollout_request(req.into_inner())?;
        let r = self.ops.start_rollout(&caller, request).await;
        ok(r.map(|r| rollout_message(&r)))
    }

    async fn get_rollout(&self, req: Request<pb::GetRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller(&req)?;
        let r = self.ops.rollout(&caller, &req.get_ref().id).await;
        ok(r.map(|r| rollout_message(&r)))
    }

    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Reply<pb::ListRolloutsResponse> {
        let all = self.ops.rollouts(&caller(&req)?).await.map_err(status)?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: all.iter().map(rollout_message).collect(),
        }))
    }

    async fn start_region_rollout(
        &self,
        req: Request<pb::StartRegionRolloutRequest>,
    ) -> Reply<pb::RegionRollout> {
        let caller = caller(&req)?;
        let request = convert::region_rollout_request(req.into_inner())?;
        let r = self.ops.start_region_rollout(&caller, request).await;
        ok(r.map(|r| convert::region_rollout(&r)))
    }

    async fn get_region_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Reply<pb::RegionRollout> {
        let caller = caller(&req)?;
        let r = self.ops.region_rollout(&caller, &req.get_ref().id).await;
        ok(r.map(|r| convert::region_rollout(&r)))
    }

    async fn list_region_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Reply<pb::ListRegionRolloutsResponse> {
        let all = self
            .ops
            .region_rollouts(&caller(&req)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRegionRolloutsResponse {
            rollouts: all.iter().map(convert::region_rollout).collect(),
        }))
    }

    async fn control_rollout(&self, req: Request<pb::ControlRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let done = self.ops.control_rollout(&caller, &r.id, &r.action).await;
        ok(done.map(|r| rollout_message(&r)))
    }

    async fn restart_matching(
        &self,
        req: Request<pb::RestartMatchingRequest>,
    ) -> Reply<pb::RestartJob> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let selector = parse_selector(&r.selector).map_err(status)?;
        let rate = r.rate_per_second.unwrap_or(DEFAULT_RATE);
        let job = self.ops.restart_matching(&caller, selector, rate).await;
        ok(job.map(restart_job))
    }

    async fn get_restart_job(
        &self,
        req: Request<pb::GetRestartJobRequest>,
    ) -> Reply<pb::RestartJob> {
        let caller = caller(&req)?;
        let job = self.ops.restart_job(&caller, &req.get_ref().id).await;
        ok(job.map(restart_job))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Reply<pb::QueryAuditResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let params = given([
            ("object", r.object),
            ("since", r.since),
            ("until", r.until),
            ("limit", nonzero(r.limit)),
        ]);
        let query = audit::query(params.iter().map(|(k, v)| (*k, v.as_str()))).map_err(status)?;
        let log = self.ops.audit_log(&caller, &query).await.map_err(status)?;
        Ok(Response::new(pb::QueryAuditResponse {
            entries: log.entries.iter().map(audit_entry).collect(),
            truncated: log.truncated,
            missing_regions: log.missing_regions,
            partial: log.partial,
        }))
    }
}
