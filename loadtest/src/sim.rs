//! One simulated agent's protocol state, independent of transport.

use crate::supervisor;
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentConfigMap, AgentDescription, AgentDisconnect, AgentToServer,
    AnyValue, ComponentHealth, CustomCapabilities, CustomMessage, EffectiveConfig, KeyValue,
    RemoteConfigStatus, RemoteConfigStatuses, ServerToAgent, ServerToAgentFlags, any_value,
};
use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Capabilities of the collector's OpAMP supervisor with remote config on (its defaults plus
/// accepts_remote_config, reports_remote_config and reports_available_components).
pub const SUPERVISOR_CAPS: u64 = Cap::ReportsStatus as u64
    | Cap::ReportsEffectiveConfig as u64
    | Cap::ReportsOwnMetrics as u64
    | Cap::ReportsHealth as u64
    | Cap::ReportsHeartbeat as u64
    | Cap::AcceptsRemoteConfig as u64
    | Cap::ReportsRemoteConfig as u64
    | Cap::ReportsAvailableComponents as u64;

/// Capabilities of a typical OpenTelemetry Collector managed by OpAMP.
pub const COLLECTOR_CAPS: u64 = Cap::ReportsStatus as u64
    | Cap::AcceptsRemoteConfig as u64
    | Cap::ReportsEffectiveConfig as u64
    | Cap::ReportsHealth as u64
    | Cap::ReportsRemoteConfig as u64
    | Cap::ReportsHeartbeat as u64
    | Cap::AcceptsRestartCommand as u64;

/// A client certificate the server offered over OpAMP, with its key and CA (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

/// The file name of the padding in the effective config map: the host's own additions, as a
/// collector started with a second `--config` file reports them.
pub const PADDING_FILE: &str = "host-local.yaml";

#[derive(Debug, Clone)]
pub struct SimAgent {
    pub uid: Uuid,
    pub capabilities: u64,
    pub description: AgentDescription,
    pub health: ComponentHealth,
    /// Configs whose body contains this string fail to apply.
    pub fail_marker: Option<String>,
    /// How long applying takes and how often it fails.
    pub apply: ApplyBehavior,
    /// A config being applied (reported as APPLYING) until [`SimAgent::finish_apply`].
    pending: Option<flotilla_proto::opamp::AgentRemoteConfig>,
    pub remote_status: Option<RemoteConfigStatus>,
    /// The config it runs, as it reports it (with `effective_padding` added).
    pub effective: Option<AgentConfigMap>,
    /// A file every reported effective config also carries, shared by the agents of a swarm
    /// (`--realistic`): the host's own additions to whatever config it runs.
    pub effective_padding: Option<Arc<flotilla_proto::opamp::AgentConfigFile>>,
    /// The health a supervisor's collector reports once up (else the collector's default).
    pub up_health: Option<ComponentHealth>,
    pub heartbeat_interval_seconds: Option<u64>,
    pub restarts: u32,
    /// A client certificate (PEM) and key the server offered, to connect with from now on
    /// (agents with AcceptsOpAMPConnectionSettings take it); taken by the connection loop.
    pub offered_identity: Option<OfferedIdentity>,
    /// Custom capabilities it declares (in its full reports).
    pub custom_capabilities: Vec<String>,
    /// The custom messages the server sent it, in order.
    pub received_custom: Vec<CustomMessage>,
    /// Behaves as the collector's OpAMP supervisor ([`SimAgent::supervisor`]).
    pub supervisor: Option<supervisor::Habits>,
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
            health: collector_health(),
            fail_marker: None,
            apply: ApplyBehavior::default(),
            pending: None,
            remote_status: None,
            effective: None,
            effective_padding: None,
            up_health: None,
            heartbeat_interval_seconds: None,
            restarts: 0,
            offered_identity: None,
            custom_capabilities: Vec::new(),
            received_custom: Vec::new(),
            supervisor: None,
            next_seq: 0,
        }
    }

    /// A collector run by its OpAMP supervisor with remote config on (accepts_remote_config and
    /// reports_remote_config), whose build has `components`: it reports its components by hash
    /// until asked for the list, reports unhealthy until its collector is up (after the server's
    /// first reply), reports the config it runs as one "" entry with the supervisor's own sections,
    /// applies a config only when the composed result changes (an equivalent one under a new hash
    /// gets no status at all), and fails a config that does not compose or names a component its
    /// build lacks.
    pub fn supervisor(
        service: &str,
        non_identifying: &[(&str, &str)],
        components: &[(&str, &[&str])],
    ) -> Self {
        let mut a = Self::new(service, non_identifying);
        a.act_as_supervisor(components);
        a
    }

    /// Turns this agent into a collector run by its supervisor (see [`SimAgent::supervisor`]).
    pub fn act_as_supervisor(&mut self, components: &[(&str, &[&str])]) {
        self.capabilities = SUPERVISOR_CAPS;
        self.health = ComponentHealth {
            healthy: false,
            status: "StatusStarting".into(),
            last_error: "the collector is starting".into(),
            ..Default::default()
        };
        let mut habits = supervisor::Habits::new(components);
        let local = supervisor::compose(&AgentConfigMap::default(), &self.uid.to_string())
            .unwrap_or_default();
        habits.composed = body_of(&local);
        self.effective = Some(local);
        self.supervisor = Some(habits);
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
            remote_config_status: self.reported_status(),
            effective_config: self.reported_effective(),
            custom_capabilities: (!self.custom_capabilities.is_empty()).then(|| {
                CustomCapabilities {
                    capabilities: self.custom_capabilities.clone(),
                }
            }),
            available_components: self
                .supervisor
                .as_mut()
                .map(supervisor::Habits::components_report),
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

    /// Whether a config is being applied; [`SimAgent::finish_apply`] ends it.
    pub fn applying(&self) -> bool {
        self.pending.is_some()
    }

    /// Ends applying the pending config: APPLIED (and the new effective config) or FAILED, by
    /// the fail marker or the failure rate. Returns the status report to send.
    pub fn finish_apply(&mut self) -> Vec<AgentToServer> {
        let Some(rc) = self.pending.take() else {
            return Vec::new();
        };
        let map = rc.config.unwrap_or_default();
        let marked = self.fail_marker.as_ref().is_some_and(|m| {
            map.config_map
                .values()
                .any(|f| String::from_utf8_lossy(&f.body).contains(m.as_str()))
        });
        let fails = marked
            || (self.apply.failure_rate > 0.0
                && rand::rng().random_bool(self.apply.failure_rate.min(1.0)));
        // The supervisor runs what it composes; a config that does not compose fails.
        let (runs, remote) = match &self.supervisor {
            Some(h) => {
                let runs = supervisor::compose(&map, &self.uid.to_string())
                    .and_then(|m| h.check(&m).map(|()| m));
                (runs, Some(map))
            }
            None => (Ok(map), None),
        };
        let (status, error_message) = match runs {
            Err(why) => (RemoteConfigStatuses::Failed, why),
            Ok(_) if fails => (
                RemoteConfigStatuses::Failed,
                "config rejected: invalid pipeline".to_string(),
            ),
            Ok(runs) => {
                if let (Some(h), Some(remote)) = (self.supervisor.as_mut(), remote) {
                    h.composed = body_of(&runs);
                    h.remote = remote;
                }
                self.effective = Some(runs);
                (RemoteConfigStatuses::Applied, String::new())
            }
        };
        let fails = status == RemoteConfigStatuses::Failed;
        let previous = self.remote_status.take();
        self.remote_status = Some(RemoteConfigStatus {
            last_remote_config_hash: rc.config_hash,
            status: status as i32,
            error_message,
        });
        // The effective config goes along only when it changed (OpAMP: fields are sent again
        // when they change).
        let mut out = vec![self.status_report(!fails)];
        // The supervisor with rollback on: FAILED for the new config, then APPLIED for the one
        // it ran before (its effective config never changed).
        if let Some(previous) = previous.filter(|p| {
            fails && self.apply.rollback && p.status == RemoteConfigStatuses::Applied as i32
        }) {
            self.remote_status = Some(previous);
            out.push(self.status_report(false));
        }
        out
    }

    /// The remote config status (when it reports it), with the effective config if `changed`;
    /// compressed otherwise.
    fn status_report(&mut self, changed: bool) -> AgentToServer {
        let mut msg = self.base();
        msg.remote_config_status = self.reported_status();
        if changed {
            msg.effective_config = self.reported_effective();
        }
        msg
    }

    /// The effective config as reported: the config it runs and the padding, if any.
    fn reported_effective(&self) -> Option<EffectiveConfig> {
        let mut map = self.effective.clone()?;
        if let Some(p) = &self.effective_padding {
            map.config_map.insert(PADDING_FILE.into(), (**p).clone());
        }
        Some(EffectiveConfig {
            config_map: Some(map),
        })
    }

    /// The remote config status, if the agent reports it (ReportsRemoteConfig).
    fn reported_status(&self) -> Option<RemoteConfigStatus> {
        (self.capabilities & Cap::ReportsRemoteConfig as u64 != 0)
            .then(|| self.remote_status.clone())
            .flatten()
    }

    /// Reacts to a server message the way a collector does; returns the messages it sends back.
    pub fn handle(&mut self, reply: &ServerToAgent) -> Vec<AgentToServer> {
        let mut out = Vec::new();
        if reply.error_response.is_some() {
            return out;
        }
        self.received_custom.extend(reply.custom_message.clone());
        if let Some(uid) = reply
            .agent_identification
            .as_ref()
            .and_then(|id| Uuid::from_slice(&id.new_instance_uid).ok())
        {
            self.uid = uid;
            // The supervisor composes its config again with the new service.instance.id.
            if let Some(h) = self.supervisor.as_mut()
                && let Ok(runs) = supervisor::compose(&h.remote, &uid.to_string())
            {
                h.composed = body_of(&runs);
                self.effective = Some(runs);
            }
        }
        if reply.command.is_some() {
            // A restart: a new process, so the sequence starts over with a full report.
            self.restarts += 1;
            self.next_seq = 0;
            out.push(self.full_report());
            return out;
        }
        if let Some(opamp) = reply
            .connection_settings
            .as_ref()
            .and_then(|c| c.opamp.as_ref())
        {
            self.heartbeat_interval_seconds = Some(opamp.heartbeat_interval_seconds);
            let accepts = self.capabilities & Cap::AcceptsOpAmpConnectionSettings as u64 != 0;
            if let Some(c) = opamp.certificate.as_ref().filter(|_| accepts)
                && !c.cert.is_empty()
                && !c.private_key.is_empty()
            {
                self.offered_identity = Some(OfferedIdentity {
                    cert: c.cert.clone(),
                    key: c.private_key.clone(),
                    ca: c.ca_cert.clone(),
                });
            }
        }
        let full_state = reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0;
        if let Some(h) = self.supervisor.as_mut() {
            // A full report below carries what is asked for and the health.
            let asked = reply.flags & ServerToAgentFlags::ReportAvailableComponents as u64 != 0;
            h.components_asked |= asked;
            let starting = !std::mem::replace(&mut h.collector_up, true);
            if starting {
                self.health = self.up_health.take().unwrap_or_else(collector_health);
            }
            if !full_state && (asked || starting) {
                let mut msg = self.base();
                msg.health = starting.then(|| self.health.clone());
                msg.available_components = self
                    .supervisor
                    .as_mut()
                    .filter(|_| asked)
                    .map(supervisor::Habits::components_report);
                out.push(msg);
            }
        }
        // The supervisor applies a config only when what it composes changes: an equivalent one
        // under a new hash gets no status at all.
        let equivalent = |rc: &flotilla_proto::opamp::AgentRemoteConfig| {
            self.supervisor.as_ref().is_some_and(|h| {
                let files = rc.config.clone().unwrap_or_default();
                supervisor::compose(&files, &self.uid.to_string())
                    .is_ok_and(|m| body_of(&m) == h.composed)
            })
        };
        if let Some(rc) = reply.remote_config.as_ref().filter(|rc| !equivalent(rc)) {
            let known = |s: &Option<RemoteConfigStatus>| {
                s.as_ref()
                    .is_some_and(|s| s.last_remote_config_hash == rc.config_hash)
            };
            let pending = self
                .pending
                .as_ref()
                .is_some_and(|p| p.config_hash == rc.config_hash);
            if !known(&self.remote_status) && !pending {
                if self.apply.delay.is_zero() {
                    self.pending = Some(rc.clone());
                    let seq = self.next_seq;
                    let done = self.finish_apply();
                    if full_state {
                        // The full report below says it all; the reports not sent take no
                        // sequence numbers (a gap would tell the server messages were lost).
                        self.next_seq = seq;
                    } else {
                        out.extend(done);
                    }
                } else {
                    self.pending = Some(rc.clone());
                    self.remote_status = Some(RemoteConfigStatus {
                        last_remote_config_hash: rc.config_hash.clone(),
                        status: RemoteConfigStatuses::Applying as i32,
                        error_message: String::new(),
                    });
                    if !full_state {
                        out.push(self.status_report(false));
                    }
                }
            }
        }
        if full_state {
            out.push(self.full_report());
        }
        out
    }
}

/// The body of the "" entry of a composed config (what the supervisor reports).
fn body_of(map: &AgentConfigMap) -> String {
    map.config_map
        .get("")
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .unwrap_or_default()
}

/// How a simulated agent applies a pushed config.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyBehavior {
    /// Time between reporting APPLYING and APPLIED/FAILED; zero reports the result at once.
    pub delay: Duration,
    /// Probability (0..=1) that applying fails.
    pub failure_rate: f64,
    /// After a failure, go back to the previous config and report it APPLIED (the collector's
    /// supervisor with rollback on).
    pub rollback: bool,
}

/// A collector's health: two pipelines, each with a receiver and an exporter.
fn collector_health() -> ComponentHealth {
    let ok = |children: &[&str]| ComponentHealth {
        healthy: true,
        status: "StatusOK".into(),
        component_health_map: children
            .iter()
            .map(|c| (c.to_string(), ok_leaf()))
            .collect(),
        ..Default::default()
    };
    ComponentHealth {
        healthy: true,
        status: "StatusOK".into(),
        component_health_map: std::collections::BTreeMap::from([
            (
                "pipeline:traces".to_string(),
                ok(&["receiver:otlp", "exporter:otlp"]),
            ),
            (
                "pipeline:metrics".to_string(),
                ok(&["receiver:hostmetrics", "exporter:prometheusremotewrite"]),
            ),
        ]),
        ..Default::default()
    }
}

fn ok_leaf() -> ComponentHealth {
    ComponentHealth {
        healthy: true,
        status: "StatusOK".into(),
        ..Default::default()
    }
}

/// A weighted choice among values, written `prod=70,staging=20,dev=10` (a value without a weight
/// weighs 1).
#[derive(Debug, Clone)]
pub struct Weighted {
    values: Vec<String>,
    index: WeightedIndex<u32>,
}

impl Weighted {
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> &str {
        &self.values[self.index.sample(rng)]
    }

    /// The values, in the order written.
    pub fn values(&self) -> &[String] {
        &self.values
    }
}

impl std::str::FromStr for Weighted {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut values = Vec::new();
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (value, weight) = match part.rsplit_once('=') {
                Some((v, w)) => (
                    v,
                    w.parse::<u32>().map_err(|_| {
                        format!("{part:?}: the weight after '=' must be a whole number")
                    })?,
                ),
                None => (part, 1),
            };
            values.push(value.to_owned());
            weights.push(weight);
        }
        let index = WeightedIndex::new(&weights)
            .map_err(|e| format!("{s:?}: needs at least one value with a weight above 0 ({e})"))?;
        Ok(Self { values, index })
    }
}

/// Where a swarm's agents' attributes come from.
#[derive(Debug, Clone)]
pub struct Profile {
    pub service: String,
    pub environment: Weighted,
    pub region: Weighted,
    pub version: Weighted,
}

impl Default for Profile {
    fn default() -> Self {
        let w = |s: &str| s.parse().expect("a valid weighted list");
        Self {
            service: "io.opentelemetry.collector".into(),
            environment: w("prod=70,staging=20,dev=10"),
            region: w("eu-west-1=50,us-east-1=30,ap-south-1=20"),
            version: w("0.110.0=80,0.109.0=20"),
        }
    }
}

impl SimAgent {
    /// An agent with attributes drawn from `profile`: identifying service.name,
    /// service.instance.id (its uid), service.version; non-identifying deployment.environment,
    /// cloud.region, host.name, os.type, plus `extra`.
    pub fn from_profile<R: Rng + ?Sized>(
        profile: &Profile,
        host: &str,
        extra: &[(&str, &str)],
        rng: &mut R,
    ) -> Self {
        let mut attrs = vec![
            ("deployment.environment", profile.environment.pick(rng)),
            ("cloud.region", profile.region.pick(rng)),
            ("host.name", host),
            ("os.type", "linux"),
        ];
        attrs.extend_from_slice(extra);
        let mut agent = Self::new(&profile.service, &attrs);
        agent
            .description
            .identifying_attributes
            .push(kv("service.version", profile.version.pick(rng)));
        agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::AgentRemoteConfig;

    fn push(body: &str, hash: &[u8]) -> ServerToAgent {
        ServerToAgent {
            remote_config: Some(AgentRemoteConfig {
                config: Some(AgentConfigMap {
                    config_map: std::collections::HashMap::from([(
                        "collector.yaml".into(),
                        flotilla_proto::opamp::AgentConfigFile {
                            body: body.to_owned().into_bytes().into(),
                            content_type: "text/yaml".into(),
                        },
                    )]),
                }),
                config_hash: hash.to_vec(),
            }),
            ..Default::default()
        }
    }

    fn status(m: &AgentToServer) -> i32 {
        m.remote_config_status.as_ref().unwrap().status
    }

    #[test]
    fn a_config_with_a_full_state_request_keeps_the_sequence_unbroken() {
        let mut a = SimAgent::new("svc", &[]);
        assert_eq!(a.full_report().sequence_num, 0);
        let mut reply = push("receivers: {}", b"h1");
        reply.flags = ServerToAgentFlags::ReportFullState as u64;
        let out = a.handle(&reply);
        assert_eq!(out.len(), 1, "the full report alone");
        assert_eq!(out[0].sequence_num, 1);
        assert_eq!(status(&out[0]), RemoteConfigStatuses::Applied as i32);
    }

    #[test]
    fn a_delayed_apply_reports_applying_then_applied_once() {
        let mut a = SimAgent::new("svc", &[]);
        a.apply.delay = Duration::from_millis(10);
        let out = a.handle(&push("receivers: {}", b"h1"));
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0]), RemoteConfigStatuses::Applying as i32);
        assert!(a.applying());
        // The same config again while applying is not applied twice.
        assert!(a.handle(&push("receivers: {}", b"h1")).is_empty());
        let done = a.finish_apply();
        assert_eq!(status(&done[0]), RemoteConfigStatuses::Applied as i32);
        assert!(done[0].effective_config.is_some());
        assert!(!a.applying() && a.finish_apply().is_empty());
        assert!(a.handle(&push("receivers: {}", b"h1")).is_empty());
    }

    #[test]
    fn failure_rate_and_marker_fail_the_apply_and_keep_the_old_config() {
        let mut a = SimAgent::new("svc", &[]);
        a.handle(&push("good", b"h1"));
        a.apply.failure_rate = 1.0;
        let out = a.handle(&push("other", b"h2"));
        let s = out[0].remote_config_status.as_ref().unwrap();
        assert_eq!(s.status, RemoteConfigStatuses::Failed as i32);
        assert!(!s.error_message.is_empty());
        let effective = &a.effective.as_ref().unwrap().config_map["collector.yaml"].body;
        assert_eq!(&effective[..], b"good");

        let mut b = SimAgent::new("svc", &[]);
        b.fail_marker = Some("BROKEN".into());
        let out = b.handle(&push("x BROKEN", b"h3"));
        assert_eq!(status(&out[0]), RemoteConfigStatuses::Failed as i32);
    }

    #[test]
    fn with_rollback_a_failure_goes_back_to_the_previous_config_and_silence_sends_no_status() {
        let mut a = SimAgent::new("svc", &[]);
        a.apply.rollback = true;
        a.fail_marker = Some("BROKEN".into());
        // Nothing to go back to yet: FAILED alone.
        assert_eq!(a.handle(&push("BROKEN", b"h0")).len(), 1);
        a.handle(&push("good", b"h1"));
        let out = a.handle(&push("BROKEN", b"h2"));
        let reported: Vec<_> = out
            .iter()
            .map(|m| m.remote_config_status.clone().unwrap())
            .map(|s| (s.status, s.last_remote_config_hash))
            .collect();
        assert_eq!(
            reported,
            [
                (RemoteConfigStatuses::Failed as i32, b"h2".to_vec()),
                (RemoteConfigStatuses::Applied as i32, b"h1".to_vec()),
            ]
        );
        let effective = &a.effective.as_ref().unwrap().config_map["collector.yaml"].body;
        assert_eq!(&effective[..], b"good");

        let mut quiet = SimAgent::new("svc", &[]);
        quiet.capabilities &= !(Cap::ReportsRemoteConfig as u64);
        let out = quiet.handle(&push("good", b"h1"));
        assert!(out[0].remote_config_status.is_none());
        assert!(out[0].effective_config.is_some(), "it applied the config");
        assert!(quiet.full_report().remote_config_status.is_none());
    }

    #[test]
    fn weighted_lists_parse_and_pick_by_weight() {
        let w: Weighted = "a=3, b=1,c=0".parse().unwrap();
        let mut rng = rand::rng();
        let picks: Vec<&str> = (0..4000).map(|_| w.pick(&mut rng)).collect();
        let a = picks.iter().filter(|p| **p == "a").count();
        assert!(picks.iter().all(|p| *p != "c"));
        assert!((2700..=3300).contains(&a), "{a} of 4000");
        let single: Weighted = "prod".parse().unwrap();
        assert_eq!(single.pick(&mut rng), "prod");
        for bad in ["", "a=x", "a=0", "a=-1"] {
            assert!(bad.parse::<Weighted>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn profile_agents_carry_drawn_attributes() {
        let a = SimAgent::from_profile(
            &Profile::default(),
            "h1",
            &[("swarm.run", "r")],
            &mut rand::rng(),
        );
        let keys = |kvs: &[KeyValue]| kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(&a.description.identifying_attributes),
            ["service.name", "service.instance.id", "service.version"]
        );
        assert_eq!(
            keys(&a.description.non_identifying_attributes),
            [
                "deployment.environment",
                "cloud.region",
                "host.name",
                "os.type",
                "swarm.run"
            ]
        );
        assert_eq!(a.health.component_health_map.len(), 2);
    }

    #[test]
    fn the_supervisor_profile_starts_unhealthy_lists_components_when_asked_and_skips_equivalents() {
        let mut a = SimAgent::supervisor(
            "otelcol",
            &[],
            &[("receivers", &["otlp"]), ("exporters", &["debug"])],
        );
        let first = a.full_report();
        assert!(!first.health.as_ref().unwrap().healthy, "starting");
        let comps = first.available_components.unwrap();
        assert!(
            comps.components.is_empty() && !comps.hash.is_empty(),
            "hash only"
        );
        let effective = first.effective_config.unwrap().config_map.unwrap();
        assert_eq!(effective.config_map.keys().collect::<Vec<_>>(), [""]);

        // Asked for the list: it comes, with the collector now up.
        let ask = ServerToAgent {
            flags: ServerToAgentFlags::ReportAvailableComponents as u64,
            ..Default::default()
        };
        let out = a.handle(&ask);
        assert_eq!(out.len(), 1);
        assert!(out[0].health.as_ref().unwrap().healthy);
        assert_eq!(
            out[0]
                .available_components
                .as_ref()
                .unwrap()
                .components
                .len(),
            2
        );

        // A config that changes what runs: applied, reported as one "" entry.
        let body = "receivers: {otlp: {}}\nexporters: {debug: {}}";
        let out = a.handle(&push(body, &[1]));
        assert_eq!(status(&out[0]), RemoteConfigStatuses::Applied as i32);
        let runs = &out[0]
            .effective_config
            .as_ref()
            .unwrap()
            .config_map
            .as_ref()
            .unwrap()
            .config_map[""];
        let runs: serde_json::Value = serde_json::from_slice(&runs.body).unwrap();
        assert_eq!(runs["service"]["extensions"], serde_json::json!(["opamp"]));
        assert_eq!(runs["exporters"]["debug"], serde_json::json!({}));
        // The same under another hash (a comment): no status at all.
        assert!(a.handle(&push(&format!("# note\n{body}"), &[2])).is_empty());
        // A component its build lacks: FAILED, as the collector refuses it.
        let out = a.handle(&push("exporters: {kafka: {}}", &[3]));
        assert_eq!(status(&out[0]), RemoteConfigStatuses::Failed as i32);
        let error = &out[0].remote_config_status.as_ref().unwrap().error_message;
        assert!(error.contains("unknown type: \"kafka\""), "{error}");
    }
}
