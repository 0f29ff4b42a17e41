//! One simulated agent's protocol state, independent of transport.

use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentConfigMap, AgentDescription, AgentDisconnect, AgentToServer,
    AnyValue, ComponentHealth, EffectiveConfig, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerToAgent, ServerToAgentFlags, any_value,
};
use std::collections::HashMap;
use uuid::Uuid;

/// Capabilities of a typical OpenTelemetry Collector managed by OpAMP.
pub const COLLECTOR_CAPS: u64 = Cap::ReportsStatus as u64
    | Cap::AcceptsRemoteConfig as u64
    | Cap::ReportsEffectiveConfig as u64
    | Cap::ReportsHealth as u64
    | Cap::ReportsRemoteConfig as u64
    | Cap::ReportsHeartbeat as u64
    | Cap::AcceptsRestartCommand as u64;

#[derive(Debug, Clone)]
pub struct SimAgent {
    pub uid: Uuid,
    pub capabilities: u64,
    pub description: AgentDescription,
    pub health: ComponentHealth,
    /// Configs whose body contains this string fail to apply.
    pub fail_marker: Option<String>,
    pub remote_status: Option<RemoteConfigStatus>,
    pub effective: Option<AgentConfigMap>,
    pub heartbeat_interval_seconds: Option<u64>,
    pub restarts: u32,
    next_seq: u64,
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

impl SimAgent {
    pub fn new(service: &str, non_identifying: &[(&str, &str)]) -> Self {
        let uid = Uuid::now_v7();
        Self {
            uid,
            capabilities: COLLECTOR_CAPS,
            description: AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", service),
                    kv("service.instance.id", &uid.to_string()),
                ],
                non_identifying_attributes: non_identifying.iter().map(|(k, v)| kv(k, v)).collect(),
            },
            health: ComponentHealth {
                healthy: true,
                status: "StatusOK".into(),
                component_health_map: HashMap::from([(
                    "pipeline:traces".to_string(),
                    ComponentHealth {
                        healthy: true,
                        status: "StatusOK".into(),
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            },
            fail_marker: None,
            remote_status: None,
            effective: None,
            heartbeat_interval_seconds: None,
            restarts: 0,
            next_seq: 0,
        }
    }

    fn base(&mut self) -> AgentToServer {
        let seq = self.next_seq;
        self.next_seq += 1;
        AgentToServer {
            instance_uid: self.uid.as_bytes().to_vec(),
            sequence_num: seq,
            capabilities: self.capabilities,
            ..Default::default()
        }
    }

    /// Every compressible sub-message.
    pub fn full_report(&mut self) -> AgentToServer {
        AgentToServer {
            agent_description: Some(self.description.clone()),
            health: Some(self.health.clone()),
            remote_config_status: self.remote_status.clone(),
            effective_config: self.effective.clone().map(|m| EffectiveConfig {
                config_map: Some(m),
            }),
            ..self.base()
        }
    }

    /// A compressed message: only what must always be there.
    pub fn heartbeat(&mut self) -> AgentToServer {
        self.base()
    }

    pub fn disconnect(&mut self) -> AgentToServer {
        AgentToServer {
            agent_disconnect: Some(AgentDisconnect {}),
            ..self.base()
        }
    }

    /// Reacts to a server message the way a collector does; returns the messages it sends back.
    pub fn handle(&mut self, reply: &ServerToAgent) -> Vec<AgentToServer> {
        let mut out = Vec::new();
        if reply.error_response.is_some() {
            return out;
        }
        if let Some(uid) = reply
            .agent_identification
            .as_ref()
            .and_then(|id| Uuid::from_slice(&id.new_instance_uid).ok())
        {
            self.uid = uid;
        }
        if reply.command.is_some() {
            // A restart: a new process, so the sequence starts over with a full report.
            self.restarts += 1;
            self.next_seq = 0;
            out.push(self.full_report());
            return out;
        }
        if let Some(hb) = reply
            .connection_settings
            .as_ref()
            .and_then(|c| c.opamp.as_ref())
        {
            self.heartbeat_interval_seconds = Some(hb.heartbeat_interval_seconds);
        }
        let full_state = reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0;
        if let Some(rc) = &reply.remote_config {
            let already = self
                .remote_status
                .as_ref()
                .is_some_and(|s| s.last_remote_config_hash == rc.config_hash);
            if !already {
                let map = rc.config.clone().unwrap_or_default();
                let fails = self.fail_marker.as_ref().is_some_and(|m| {
                    map.config_map
                        .values()
                        .any(|f| String::from_utf8_lossy(&f.body).contains(m.as_str()))
                });
                let (status, error_message) = if fails {
                    (
                        RemoteConfigStatuses::Failed,
                        "config rejected: invalid pipeline".to_string(),
                    )
                } else {
                    self.effective = Some(map);
                    (RemoteConfigStatuses::Applied, String::new())
                };
                self.remote_status = Some(RemoteConfigStatus {
                    last_remote_config_hash: rc.config_hash.clone(),
                    status: status as i32,
                    error_message,
                });
                if !full_state {
                    let mut msg = self.base();
                    msg.remote_config_status = self.remote_status.clone();
                    msg.effective_config = self.effective.clone().map(|m| EffectiveConfig {
                        config_map: Some(m),
                    });
                    out.push(msg);
                }
            }
        }
        if full_state {
            out.push(self.full_report());
        }
        out
    }
}
