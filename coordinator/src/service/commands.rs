//! The owner's side of the operations on one agent (restart, labels, certificate, removal), and
//! the signing of an agent's CSR: each under the shard's lock and fence, each change written with
//! its audit entry.

use super::millis;
use super::owner::Owner;
use super::pusher::{live_ws, push_for};
use super::records::Locked;
use crate::fleet::agents::has;
use crate::opamp::SERVER_CAPABILITIES;
use crate::opamp::identity::{certificate_offer, record_issued};
use crate::ops::audit;
use crate::ops::views::AgentSummary;
use flotilla_common::names::{shard_of, uid_text};
use flotilla_common::pki::Issued;
use flotilla_common::store::{AuditEntry, Deadline, StoreError};
use flotilla_common::telemetry::now_unix_ms;
use flotilla_proto::bus::{
    AgentRecord, CustomMessageResult, DeleteAgent, DeleteResult, IssueCertificate,
    IssuedCertificate, LabelsResult, PendingCustomMessage, RestartAgent, RestartResult,
    SendCustomMessage, SetLabels,
};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, CommandType, ConnectionSettingsOffers, CustomMessage, ServerToAgent,
    ServerToAgentCommand,
};
use std::collections::BTreeMap;
use tracing::{info, warn};
use uuid::Uuid;

/// How many custom messages may wait in one agent's record for its next message.
pub(crate) const MAX_PENDING_CUSTOM_MESSAGES: usize = 8;

/// What the audit log keeps of an issued certificate (never its key).
fn issued_json(issued: &Issued) -> serde_json::Value {
    serde_json::json!({
        "sha256": hex::encode(&issued.sha256),
        "not_after": issued.not_after.unix_timestamp(),
    })
}

/// An agent's record read under its shard's lock and fence, for one operation on it.
pub(super) struct Held<'a> {
    shard: Locked<'a>,
    uid: Uuid,
    /// Ok(None): no such agent (or the uid is not one).
    record: Result<Option<AgentRecord>, StoreError>,
}

impl Owner {
    /// Takes the lock of agent `uid`'s shard and reads its record; None if this process does not
    /// own the shard.
    async fn hold(&self, uid: &[u8]) -> Option<Held<'_>> {
        let mut shard = self.lock_for_uplink(shard_of(uid)).await?;
        let (uid, record) = match Uuid::from_slice(uid) {
            Ok(u) => (u, shard.get(u).await),
            Err(_) => (Uuid::nil(), Ok(None)),
        };
        Some(Held { shard, uid, record })
    }

    /// The owner's side of a restart; None if this process does not own the shard.
    pub(super) async fn restart_here(&self, req: &RestartAgent) -> Option<RestartResult> {
        let Held {
            mut shard,
            uid,
            record,
        } = self.hold(&req.instance_uid).await?;
        let mut rec = match record {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(RestartResult::UnknownAgent),
            Err(e) => {
                warn!(error = %e, %uid, "restart: agent unreadable");
                return Some(RestartResult::Failed);
            }
        };
        if !has(rec.capabilities, Cap::AcceptsRestartCommand) {
            return Some(RestartResult::NotCapable);
        }
        let entry = |how: &str| {
            (!req.caller.is_empty()).then(|| {
                audit::entry(
                    &req.caller,
                    "agent.restart",
                    format!("agent/{uid}"),
                    None,
                    Some(serde_json::json!({ "restart": how })),
                )
            })
        };
        if let Some(origin) = live_ws(&rec) {
            let cmd = ServerToAgent {
                instance_uid: rec.instance_uid.clone(),
                capabilities: SERVER_CAPABILITIES,
                command: Some(ServerToAgentCommand {
                    r#type: CommandType::Restart as i32,
                }),
                ..Default::default()
            };
            if self.pusher.push(origin, &cmd).await {
                info!(%uid, "restart delivered");
                if let Some(e) = entry("delivered") {
                    audit::record(self.store.as_ref(), e).await;
                }
                return Some(RestartResult::Delivered);
            }
        }
        rec.restart_expires_unix_ms = now_unix_ms().saturating_add(millis(self.cfg.command_ttl));
        match self
            .save_or_drop(
                &mut shard,
                &mut rec,
                Deadline::Keep,
                entry("queued").as_ref(),
            )
            .await
        {
            Ok(true) => {
                info!(%uid, "restart queued until the agent's next message");
                Some(RestartResult::Queued)
            }
            Ok(false) => None,
            Err(e) => {
                warn!(error = %e, %uid, "restart: could not queue");
                Some(RestartResult::Failed)
            }
        }
    }

    /// The owner's side of a custom message to an agent; None if this process does not own the
    /// agent's shard. Sent now over the agent's live WebSocket, else kept in its record (at most
    /// [`MAX_PENDING_CUSTOM_MESSAGES`]) for the reply to its next message.
    pub(super) async fn custom_message_here(
        &self,
        req: SendCustomMessage,
    ) -> Option<CustomMessageResult> {
        let unknown = CustomMessageResult {
            unknown_agent: true,
            ..Default::default()
        };
        let Held {
            mut shard,
            uid,
            record,
        } = self.hold(&req.instance_uid).await?;
        let failed = |e: &dyn std::fmt::Display| {
            Some(CustomMessageResult {
                error: e.to_string(),
                ..Default::default()
            })
        };
        let refused = |why: String| {
            Some(CustomMessageResult {
                refused: why,
                ..Default::default()
            })
        };
        let mut rec = match record {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(unknown),
            Err(e) => return failed(&e),
        };
        let declared = rec
            .custom_capabilities
            .as_ref()
            .is_some_and(|c| c.capabilities.contains(&req.capability));
        if !declared {
            return refused(format!(
                "agent {uid} does not declare the custom capability {:?}",
                req.capability
            ));
        }
        let how = |how: &str| {
            audit::entry(
                &req.caller,
                "agent.custom_message",
                format!("agent/{uid}"),
                None,
                Some(serde_json::json!({
                    "capability": req.capability,
                    "type": req.r#type,
                    "data_bytes": req.data.len(),
                    "sent": how,
                })),
            )
        };
        if let Some(origin) = live_ws(&rec) {
            let msg = ServerToAgent {
                instance_uid: rec.instance_uid.clone(),
                capabilities: SERVER_CAPABILITIES,
                custom_message: Some(CustomMessage {
                    capability: req.capability.clone(),
                    r#type: req.r#type.clone(),
                    data: req.data.clone(),
                }),
                ..Default::default()
            };
            if self.pusher.push(origin, &msg).await {
                info!(%uid, capability = %req.capability, "custom message delivered");
                audit::record(self.store.as_ref(), how("delivered")).await;
                return Some(CustomMessageResult {
                    delivered: true,
                    ..Default::default()
                });
            }
        }
        let now = now_unix_ms();
        rec.pending_custom_messages
            .retain(|m| m.expires_unix_ms > now);
        if rec.pending_custom_messages.len() >= MAX_PENDING_CUSTOM_MESSAGES {
            return refused(format!(
                "agent {uid} already has {MAX_PENDING_CUSTOM_MESSAGES} custom messages waiting \
                 for its next message; try again after it has taken them"
            ));
        }
        rec.pending_custom_messages.push(PendingCustomMessage {
            capability: req.capability.clone(),
            r#type: req.r#type.clone(),
            data: req.data.clone(),
            expires_unix_ms: now.saturating_add(millis(self.cfg.command_ttl)),
        });
        match self
            .save_or_drop(&mut shard, &mut rec, Deadline::Keep, Some(&how("queued")))
            .await
        {
            Ok(true) => {
                info!(%uid, "custom message queued until the agent's next message");
                Some(CustomMessageResult {
                    queued: true,
                    ..Default::default()
                })
            }
            Ok(false) => None,
            Err(e) => failed(&e),
        }
    }

    /// The owner's side of a change of labels; None if this process does not own the agent's
    /// shard.
    pub(super) async fn labels_here(&self, req: SetLabels) -> Option<LabelsResult> {
        let Held {
            mut shard,
            uid,
            record,
        } = self.hold(&req.instance_uid).await?;
        let failed = |e: &dyn std::fmt::Display| {
            Some(LabelsResult {
                error: e.to_string(),
                ..Default::default()
            })
        };
        let mut rec = match record {
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
            let entry = audit::entry(
                &req.caller,
                "labels.set",
                format!("agent/{uid}"),
                Some(sorted(&before)),
                Some(sorted(&rec.labels)),
            );
            match self
                .save_or_drop(&mut shard, &mut rec, Deadline::Keep, Some(&entry))
                .await
            {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return failed(&e),
            }
            // Labels can change which config the agent gets: push it now if it is connected.
            if let Some((origin, msg)) = push_for(&rec, &self.desired.current()) {
                self.pusher.push(&origin, &msg).await;
            }
        }
        Some(LabelsResult {
            unknown_agent: false,
            before,
            after: rec.labels,
            error: String::new(),
        })
    }

    /// The owner's side of a removal; None if this process does not own the shard.
    pub(super) async fn delete_here(&self, req: &DeleteAgent) -> Option<DeleteResult> {
        let unknown = DeleteResult {
            unknown_agent: true,
            ..Default::default()
        };
        let Held {
            mut shard,
            uid,
            record,
        } = self.hold(&req.instance_uid).await?;
        let before = match record {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(unknown),
            Err(e) => {
                return Some(DeleteResult {
                    error: e.to_string(),
                    ..Default::default()
                });
            }
        };
        let entry = audit::entry(
            &req.caller,
            "agent.delete",
            format!("agent/{uid}"),
            serde_json::to_value(AgentSummary::of(&before, &self.desired.current())).ok(),
            None,
        );
        match self.delete_or_drop(&mut shard, uid, Some(&entry)).await {
            Ok(Some(true)) => {
                info!(%uid, caller = %req.caller, "agent deleted");
                Some(DeleteResult::default())
            }
            Ok(Some(false)) => Some(unknown),
            Ok(None) => None,
            Err(e) => Some(DeleteResult {
                error: e.to_string(),
                ..Default::default()
            }),
        }
    }

    /// Signs the PEM CSR an agent sent and returns the offer carrying the certificate, recorded in
    /// `rec`, and the audit entry to store with it (the record must be durable before the agent
    /// hears of its certificate). Err is the reason for the agent (a BAD_REQUEST, as the spec
    /// requires).
    pub(super) fn sign_csr(
        &self,
        csr: &[u8],
        rec: &mut AgentRecord,
    ) -> Result<(ConnectionSettingsOffers, AuditEntry), String> {
        let issuer = self
            .cfg
            .issuer
            .as_deref()
            .ok_or("this server does not issue certificates (no signing CA configured)")?;
        if !has(rec.capabilities, Cap::AcceptsOpAmpConnectionSettings) {
            return Err("a CSR needs the AcceptsOpAMPConnectionSettings capability".into());
        }
        let uid = Uuid::from_slice(&rec.instance_uid).map_err(|e| e.to_string())?;
        let csr = std::str::from_utf8(csr).map_err(|_| "the CSR is not PEM text".to_owned())?;
        let issued = issuer
            .ca
            .sign_csr(csr, uid, issuer.validity)
            .map_err(|e| e.to_string())?;
        info!(%uid, sha256 = %hex::encode(&issued.sha256), "signed the agent's CSR");
        let offer = certificate_offer(&issued, issuer, self.cfg.heartbeat_interval);
        record_issued(rec, &issued, offer.clone());
        let entry = audit::entry(
            &format!("agent/{uid}"),
            "certificate.sign",
            format!("agent/{uid}"),
            None,
            Some(issued_json(&issued)),
        );
        Ok((offer, entry))
    }

    /// The owner's side of issuing a certificate; None if this process does not own the shard.
    pub(super) async fn issue_here(&self, req: &IssueCertificate) -> Option<IssuedCertificate> {
        let refuse = |error: String| IssuedCertificate {
            not_capable: true,
            error,
            ..Default::default()
        };
        let Some(issuer) = self.cfg.issuer.as_deref() else {
            return Some(refuse(
                "this server does not issue certificates: start the coordinators with \
                 --signing-ca-cert and --signing-ca-key"
                    .into(),
            ));
        };
        let Held {
            mut shard,
            uid,
            record,
        } = self.hold(&req.instance_uid).await?;
        let failed = |error: String| IssuedCertificate {
            error,
            ..Default::default()
        };
        let mut rec = match record {
            Ok(Some(rec)) => rec,
            Ok(None) => return Some(refuse(format!("no agent {}", uid_text(&req.instance_uid)))),
            Err(e) => return Some(failed(format!("agent {uid} unreadable: {e}"))),
        };
        if !has(rec.capabilities, Cap::AcceptsOpAmpConnectionSettings) {
            return Some(refuse(format!(
                "agent {uid} does not accept connection settings offers \
                 (no AcceptsOpAMPConnectionSettings capability)"
            )));
        }
        let issued = match issuer.ca.issue_client(uid, issuer.validity) {
            Ok(i) => i,
            Err(e) => return Some(failed(e.to_string())),
        };
        let offer = certificate_offer(&issued, issuer, self.cfg.heartbeat_interval);
        record_issued(&mut rec, &issued, offer.clone());
        let entry = audit::entry(
            &req.caller,
            "certificate.issue",
            format!("agent/{uid}"),
            None,
            Some(issued_json(&issued)),
        );
        match self
            .save_or_drop(&mut shard, &mut rec, Deadline::Keep, Some(&entry))
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(failed(format!("agent {uid} not written: {e}"))),
        }
        let mut delivered = false;
        if let Some(origin) = live_ws(&rec) {
            let msg = ServerToAgent {
                instance_uid: rec.instance_uid.clone(),
                capabilities: SERVER_CAPABILITIES,
                connection_settings: Some(offer),
                ..Default::default()
            };
            delivered = self.pusher.push(origin, &msg).await;
        }
        info!(%uid, sha256 = %hex::encode(&issued.sha256), delivered, "certificate issued and offered");
        if !delivered && rec.origin.is_none() {
            warn!(%uid, "the agent is not connected; the offer waits for its next message");
        }
        Some(IssuedCertificate {
            sha256: issued.sha256,
            not_after_unix_ms: (issued.not_after.unix_timestamp() as u64) * 1000,
            delivered,
            ..Default::default()
        })
    }
}
