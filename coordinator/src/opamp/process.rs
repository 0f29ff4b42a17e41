//! The OpAMP server state machine for one agent message: merge the (compressed) report into the
//! stored record, detect sequence gaps, and decide what the reply carries. Pure: no I/O, no clock
//! (the caller passes `now`), so every protocol rule is unit-tested here.

use super::desired::{MayOfferConfig, Redirect, desired_config, fill_offers, heartbeat_interval};
use super::events::EventKind;
use super::identity::certificate_names;
use crate::fleet::agents::{attributes, cut, effective_map, has, hex_eq};
use crate::fleet::configs::{Aspect, Desired, DriftVerdict, hash_of_config_map};
use crate::fleet::drift;
use crate::fleet::regions::home_region;
use flotilla_common::config::{AgentMetricsOffer, RecordLimits, RegionSettings};
use flotilla_common::error::{ErrorKind, opamp_error};
use flotilla_common::names::{SHARD_COUNT, shard_of};
use flotilla_common::store::Deadline;
use flotilla_proto::bus::{
    AgentRecord, AgentStatus, Drift, HeartbeatGrant, Origin, PendingCustomMessage,
    ReceivedCustomMessage, Transport,
};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentIdentification, AgentToServer, AgentToServerFlags, CommandType,
    CustomMessage, RemoteConfigStatus, RemoteConfigStatuses, ServerCapabilities, ServerToAgent,
    ServerToAgentCommand, ServerToAgentFlags,
};
use prost::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// What this server can do, sent in every reply (every HTTP reply is a connection's first).
pub const SERVER_CAPABILITIES: u64 = ServerCapabilities::AcceptsStatus as u64
    | ServerCapabilities::OffersRemoteConfig as u64
    | ServerCapabilities::AcceptsEffectiveConfig as u64
    | ServerCapabilities::AcceptsPackagesStatus as u64
    | ServerCapabilities::OffersPackages as u64
    | ServerCapabilities::OffersConnectionSettings as u64;

/// How many heartbeat intervals without a message make an agent silent.
pub const SILENT_AFTER_INTERVALS: u32 = 3;

/// Server-side facts the decision depends on.
pub struct Ctx<'a> {
    pub now_unix_ms: u64,
    /// The heartbeat interval of agents whose configs set none.
    pub heartbeat_interval: Duration,
    pub desired: &'a Desired,
    /// How much one agent's record may hold.
    pub limits: &'a RecordLimits,
    /// Keep a queued restart for a later message (this one's reply has something else to
    /// carry, e.g. the answer to a CSR).
    pub hold_restart: bool,
    /// The own-metrics destination offered to agents whose config names none.
    pub agent_metrics: &'a AgentMetricsOffer,
    /// This region, and the fleet's regions (where agents belong).
    pub region: &'a str,
    pub regions: &'a RegionSettings,
    /// The CA of the OpAMP endpoints' certificates, for offers that send an agent elsewhere.
    pub server_ca_pem: Option<&'a str>,
    /// Whether the reply may offer agent `uid` (bytes) the config of hash `hash` now: the owner
    /// paces configs to the answers it can take (ADR 0018). When not, a later reply or a push
    /// offers it.
    pub may_offer_config: &'a MayOfferConfig<'a>,
    /// The agent's gateway answered its heartbeats on this connection up to this sequence
    /// number under the owner's grant (`HeartbeatGrant`): the message is in sequence when it is
    /// the next one, whatever the record has seen of them yet.
    pub heartbeats_answered_through: Option<u64>,
}

#[derive(Debug)]
pub struct Outcome {
    pub reply: ServerToAgent,
    /// The record to store, keyed by its instance_uid; None when there is nothing to store (a
    /// uid was assigned: it becomes a record when the agent uses it; a message was refused).
    pub record: Option<AgentRecord>,
    pub deadline: Deadline,
    pub events: Vec<EventKind>,
    /// The heartbeat (poll) interval the agent is asked for.
    pub interval: Duration,
    /// What the record noted about the reply's offers, as it was before them.
    before_offers: OfferMarks,
    /// The agent asked for a new uid: its old record, marked as moved (`moved_to`), stored once
    /// the record under the new uid is.
    pub left_behind: Option<AgentRecord>,
    /// The agent used its new uid for the first time: remove the marker left under this old uid
    /// once its record is stored.
    pub forget: Option<Uuid>,
}

/// The parts of a record that say what has been offered or queued for the agent.
#[derive(Debug, Default, Clone)]
struct OfferMarks {
    offered_settings_hash: Vec<u8>,
    offered_packages_hash: Vec<u8>,
    restart_expires_unix_ms: u64,
    settings_reoffers: u32,
    settings_reoffer_window_unix_ms: u64,
    pending_custom_messages: Vec<PendingCustomMessage>,
}

impl OfferMarks {
    fn of(rec: &AgentRecord) -> Self {
        Self {
            offered_settings_hash: rec.offered_settings_hash.clone(),
            offered_packages_hash: rec.offered_packages_hash.clone(),
            restart_expires_unix_ms: rec.restart_expires_unix_ms,
            settings_reoffers: rec.settings_reoffers,
            settings_reoffer_window_unix_ms: rec.settings_reoffer_window_unix_ms,
            pending_custom_messages: rec.pending_custom_messages.clone(),
        }
    }

    fn restore(self, rec: &mut AgentRecord) {
        rec.offered_settings_hash = self.offered_settings_hash;
        rec.offered_packages_hash = self.offered_packages_hash;
        rec.restart_expires_unix_ms = self.restart_expires_unix_ms;
        rec.settings_reoffers = self.settings_reoffers;
        rec.settings_reoffer_window_unix_ms = self.settings_reoffer_window_unix_ms;
        rec.pending_custom_messages = self.pending_custom_messages;
    }
}

impl Outcome {
    /// A reply carrying only `reply`, storing nothing.
    fn nothing_stored(reply: ServerToAgent, ctx: &Ctx<'_>) -> Self {
        Self {
            reply,
            record: None,
            deadline: Deadline::Keep,
            events: Vec::new(),
            interval: ctx.heartbeat_interval,
            before_offers: OfferMarks::default(),
            left_behind: None,
            forget: None,
        }
    }

    /// A reply carrying only an error (the spec allows nothing beside it), storing nothing.
    fn refused(instance_uid: Vec<u8>, message: String, ctx: &Ctx<'_>) -> Self {
        let reply = opamp_error(instance_uid, ErrorKind::BadRequest, message, None);
        Self::nothing_stored(reply, ctx)
    }

    /// Replaces the reply by `error` alone. The record keeps what the message reported, but
    /// forgets the offers the reply no longer makes, so they are made again later.
    pub fn answer_with_error(&mut self, kind: ErrorKind, message: String) {
        let uid = std::mem::take(&mut self.reply.instance_uid);
        self.reply = opamp_error(uid, kind, message, None);
        if let Some(rec) = self.record.as_mut() {
            std::mem::take(&mut self.before_offers).restore(rec);
        }
    }

    /// Keeps the reply within `max` bytes, what can reach the agent: packages wait for a later
    /// reply (the record forgets offering them) when the config and packages together are too
    /// large. A config too large on its own (stored before the limit was enforced) is not sent
    /// at all: its size is returned.
    pub fn fit(&mut self, max: usize) -> Option<usize> {
        if self.reply.encoded_len() <= max {
            return None;
        }
        // A custom message goes back to the queue first (its own message is due later).
        if self.reply.custom_message.take().is_some()
            && let Some(rec) = self.record.as_mut()
        {
            rec.pending_custom_messages = self.before_offers.pending_custom_messages.clone();
            if self.reply.encoded_len() <= max {
                return None;
            }
        }
        if self.reply.packages_available.take().is_some() {
            if let Some(rec) = self.record.as_mut() {
                rec.offered_packages_hash.clear();
            }
            if self.reply.encoded_len() <= max {
                return None;
            }
        }
        self.reply.remote_config.take().map(|rc| rc.encoded_len())
    }
}

/// Processes one AgentToServer. `stored` is the record under the message's uid, if any.
pub fn process(
    stored: Option<AgentRecord>,
    msg: AgentToServer,
    origin: Origin,
    ctx: &Ctx<'_>,
) -> Outcome {
    if let Err(why) = ctx.limits.check_message(&msg) {
        return Outcome::refused(msg.instance_uid, why, ctx);
    }
    let mut reply = ServerToAgent {
        instance_uid: msg.instance_uid.clone(),
        capabilities: SERVER_CAPABILITIES,
        ..Default::default()
    };

    // A uid the agent asks us to replace, or one that is not 16 bytes, gets a new one: the uid
    // its client certificate names when it names one (the certificate fixes the uid), else a
    // new UUIDv7. Nothing is stored: the uid becomes a record when the agent uses it, in the
    // full report this reply asks for.
    let requested = msg.flags & AgentToServerFlags::RequestInstanceUid as u64 != 0;
    let named = certificate_names(&origin, &msg.instance_uid);
    let kept = (!requested || named)
        .then(|| Uuid::from_slice(&msg.instance_uid).ok())
        .flatten();
    // An agent that was given a new uid but still uses its old one (the reply was lost): told
    // the same new uid again; nothing is stored.
    if let Some(marker) = stored.as_ref().filter(|r| !r.moved_to.is_empty()) {
        reply.agent_identification = Some(AgentIdentification {
            new_instance_uid: marker.moved_to.clone(),
        });
        reply.flags |= ServerToAgentFlags::ReportFullState as u64;
        return Outcome::nothing_stored(reply, ctx);
    }
    let Some(uid) = kept else {
        reply.flags |= ServerToAgentFlags::ReportFullState as u64;
        // A known agent that asks for a new uid takes its record along (labels, certificate
        // binding, history): a uid in the same shard, so this owner stores the move; the old
        // record stays as a marker until the agent uses the new uid, so a lost reply is answered
        // with the same uid again.
        let moved = stored
            .filter(|_| origin.client_cert_uids.is_empty())
            .and_then(|rec| Some((rec, same_shard_uid(&msg.instance_uid)?)));
        if let Some((old, new)) = moved {
            let new = new.as_bytes().to_vec();
            reply.agent_identification = Some(AgentIdentification {
                new_instance_uid: new.clone(),
            });
            let marker = AgentRecord {
                instance_uid: old.instance_uid.clone(),
                moved_to: new.clone(),
                status: AgentStatus::Disconnected as i32,
                first_seen_unix_ms: old.first_seen_unix_ms,
                last_seen_unix_ms: ctx.now_unix_ms,
                ..Default::default()
            };
            let mut rec = old;
            rec.instance_uid = new;
            rec.moved_from.clone_from(&msg.instance_uid);
            rec.status = AgentStatus::Connected as i32;
            rec.origin = Some(recorded(origin));
            rec.last_seen_unix_ms = ctx.now_unix_ms;
            let attrs = attributes(&rec);
            let interval = heartbeat_interval(&rec, &attrs, ctx.desired, ctx.heartbeat_interval);
            let deadline = silence_deadline(&rec, interval).map_or(Deadline::Clear, Deadline::Arm);
            return Outcome {
                reply,
                record: Some(rec),
                deadline,
                events: Vec::new(),
                interval,
                before_offers: OfferMarks::default(),
                left_behind: Some(marker),
                forget: None,
            };
        }
        let new = match origin.client_cert_uids.as_slice() {
            [only] => Uuid::from_slice(only).unwrap_or_else(|_| Uuid::now_v7()),
            _ => Uuid::now_v7(),
        };
        reply.agent_identification = Some(AgentIdentification {
            new_instance_uid: new.as_bytes().to_vec(),
        });
        return Outcome::nothing_stored(reply, ctx);
    };

    // After heartbeats the gateway answered on the agent's connection, the last of them is
    // the one before (the record may not have seen them yet).
    let in_sequence = stored.as_ref().is_some_and(|r| {
        let before = ctx
            .heartbeats_answered_through
            .filter(|_| same_connection(r.origin.as_ref(), &origin))
            .unwrap_or(r.sequence_num);
        msg.sequence_num == before.wrapping_add(1)
    });
    let was_connected = stored
        .as_ref()
        .is_some_and(|r| r.status == AgentStatus::Connected as i32);
    let mut rec = stored.unwrap_or_else(|| AgentRecord {
        instance_uid: uid.as_bytes().to_vec(),
        first_seen_unix_ms: ctx.now_unix_ms,
        ..Default::default()
    });
    // The first message under a uid the agent was given: the marker under its old uid goes.
    let forget = (!rec.moved_from.is_empty())
        .then(|| Uuid::from_slice(&std::mem::take(&mut rec.moved_from)).ok())
        .flatten();
    let before = EventFacts::of(&rec);
    let leaving = msg.agent_disconnect.is_some();
    // A new session (a restart, a gap) that does not say which connection settings the agent
    // runs: it may have lost what it was offered.
    let settings_unknown = !in_sequence && msg.connection_settings_status.is_none();
    let mut events = Vec::new();

    if !in_sequence {
        reply.flags |= ServerToAgentFlags::ReportFullState as u64;
    }
    let effective_reported = msg.effective_config.is_some();
    if !in_sequence {
        // A new session (a restart may have lost it): a config is sent again once to an agent
        // that does not say what it runs.
        rec.offered_config_hash.clear();
    }
    if let Some(custom) = &msg.custom_message {
        keep_custom_message(&mut rec, custom, ctx.now_unix_ms);
    }
    if merge(&mut rec, msg) {
        reply.flags |= ServerToAgentFlags::ReportAvailableComponents as u64;
    }
    // What the agent reported is held to the record limit; custom messages waiting for it have
    // their own bound (MAX_PENDING_CUSTOM_MESSAGES of at most 64 KiB) and must not lock it out.
    let pending = std::mem::take(&mut rec.pending_custom_messages);
    if let Err(why) = ctx.limits.check_record(&rec) {
        return Outcome::refused(reply.instance_uid, why, ctx);
    }
    rec.pending_custom_messages = pending;
    rec.last_seen_unix_ms = ctx.now_unix_ms;
    rec.unhealthy_since_unix_ms = match rec.health.as_ref().map(|h| h.healthy) {
        Some(false) if rec.unhealthy_since_unix_ms == 0 => ctx.now_unix_ms,
        Some(false) => rec.unhealthy_since_unix_ms,
        _ => 0,
    };

    if leaving {
        rec.status = AgentStatus::Disconnected as i32;
        rec.origin = None;
        events.push(EventKind::Disconnected);
    } else {
        rec.status = AgentStatus::Connected as i32;
        rec.origin = Some(recorded(origin));
        if !was_connected {
            events.push(EventKind::Connected);
        }
    }
    events.extend(before.events_to(&rec));

    let attrs = attributes(&rec);
    let home = home_region(&attrs, ctx.regions);
    rec.home_region = home.unwrap_or_default().to_owned();
    refresh_drift(&mut rec, &attrs, ctx.desired, effective_reported);
    let interval = heartbeat_interval(&rec, &attrs, ctx.desired, ctx.heartbeat_interval);
    let deadline = match silence_deadline(&rec, interval) {
        Some(at) => Deadline::Arm(at),
        None => Deadline::Clear,
    };
    let before_offers = OfferMarks::of(&rec);

    // A queued restart goes alone (the spec forbids other fields beside a command); whatever else
    // is due follows on the next message, which a restarted agent sends in full anyway.
    let restart = reply.flags & ServerToAgentFlags::ReportFullState as u64 == 0
        && !ctx.hold_restart
        && take_restart(&mut rec, ctx.now_unix_ms);
    if restart {
        reply.command = Some(ServerToAgentCommand {
            r#type: CommandType::Restart as i32,
        });
    } else if !leaving {
        let now = ctx.now_unix_ms;
        let redirect = home
            .filter(|h| *h != ctx.region)
            .and_then(|h| ctx.regions.endpoints.get(h))
            .map(|endpoint| Redirect {
                endpoint,
                server_ca_pem: ctx.server_ca_pem,
            });
        let offers = (
            ctx.desired,
            ctx.heartbeat_interval,
            now,
            ctx.agent_metrics,
            redirect,
            ctx.may_offer_config,
        );
        fill_offers(&mut reply, &mut rec, &attrs, offers, settings_unknown);
        reply.custom_message = take_custom_message(&mut rec, now);
    }
    Outcome {
        reply,
        record: Some(rec),
        deadline,
        events,
        interval,
        before_offers,
        left_behind: None,
        forget,
    }
}

/// Whether `recorded` (a record's origin) is the WebSocket connection `origin`.
pub fn same_connection(recorded: Option<&Origin>, origin: &Origin) -> bool {
    recorded.is_some_and(|r| {
        r.transport() == Transport::Websocket
            && origin.transport() == Transport::Websocket
            && r.connection_id == origin.connection_id
            && r.gateway_id == origin.gateway_id
    })
}

/// The leave owner `owner` (its node id) gives the agent's gateway to answer its next heartbeats
/// itself (`HeartbeatGrant`, gateway/src/heartbeats.rs), if the outcome allows it: the agent is
/// connected over a WebSocket, the reply says nothing but its uid and the server's capabilities,
/// and nothing waits for the agent's next message (a custom message, a restart).
pub fn heartbeat_grant(out: &Outcome, now_unix_ms: u64, owner: &str) -> Option<HeartbeatGrant> {
    let rec = out.record.as_ref()?;
    let origin = rec.origin.as_ref()?;
    let bare = ServerToAgent {
        instance_uid: rec.instance_uid.clone(),
        capabilities: out.reply.capabilities,
        ..Default::default()
    };
    let quiet = origin.transport() == Transport::Websocket
        && rec.status == AgentStatus::Connected as i32
        && out.reply == bare
        && out.left_behind.is_none()
        && rec.pending_custom_messages.is_empty()
        && rec.restart_expires_unix_ms <= now_unix_ms;
    quiet.then(|| HeartbeatGrant {
        sequence_num: rec.sequence_num,
        capabilities: rec.capabilities,
        owner: owner.to_owned(),
    })
}

/// The origin a record keeps. A plain-HTTP request's connection id is the gateway's count of
/// requests, and its source port changes with each connection the poller opens: nothing can be
/// sent to either, and keeping them would make every poll a change of the record rather than a
/// touch. So an HTTP agent's peer is its address alone.
fn recorded(mut origin: Origin) -> Origin {
    if origin.transport() == Transport::Http {
        origin.connection_id = 0;
        if let Ok(peer) = origin.peer_addr.parse::<std::net::SocketAddr>() {
            origin.peer_addr = peer.ip().to_string();
        }
    }
    origin
}

/// Moves the sub-messages present in `msg` into the record; an absent one means "unchanged".
/// Returns true when the server should ask for the full map of available components.
fn merge(rec: &mut AgentRecord, msg: AgentToServer) -> bool {
    rec.sequence_num = msg.sequence_num;
    rec.capabilities = msg.capabilities;
    if let Some(s) = &msg.remote_config_status {
        note_refusal(rec, s);
    }
    if let Some(e) = &msg.effective_config {
        rec.effective_config_hash = e
            .config_map
            .as_ref()
            .map(|m| hash_of_config_map(m).to_vec())
            .unwrap_or_default();
    }
    // A record in an owner's copy's form keeps these two encoded (fleet/agents.rs, copy_form):
    // what the agent reports replaces them.
    if msg.agent_description.is_some() {
        rec.copied_description = Vec::new();
    }
    if msg.health.is_some() {
        rec.copied_components = Vec::new();
    }
    macro_rules! take {
        ($($field:ident <- $src:ident),*) => {
            $(if msg.$src.is_some() { rec.$field = msg.$src.map(Into::into); })*
        };
    }
    take!(
        description <- agent_description,
        health <- health,
        effective_config <- effective_config,
        remote_config_status <- remote_config_status,
        package_statuses <- package_statuses,
        custom_capabilities <- custom_capabilities,
        connection_settings_status <- connection_settings_status
    );
    let Some(reported) = msg.available_components else {
        return false;
    };
    // The first report carries only the hash: keep what we know for that hash, and ask for the
    // map unless we have it.
    let stored = rec.available_components.as_ref();
    let same_hash = stored.is_some_and(|k| k.hash == reported.hash);
    if reported.components.is_empty() {
        let have_map = same_hash && stored.is_some_and(|k| !k.components.is_empty());
        if !same_hash {
            rec.available_components = Some(Box::new(reported));
        }
        return !have_map;
    }
    rec.available_components = Some(Box::new(reported));
    false
}

/// Custom messages kept per agent, newest first, and the data kept of each: at most 80 KiB in a
/// record that is written again on every report.
pub const KEPT_CUSTOM_MESSAGES: usize = 20;
pub const KEPT_CUSTOM_DATA: usize = 4 * 1024;

/// Bytes kept of a custom message's capability and type.
const KEPT_CUSTOM_NAME: usize = 256;

/// Keeps a custom message the agent sent (its data cut at [`KEPT_CUSTOM_DATA`], the size as
/// sent kept beside it), dropping the oldest past [`KEPT_CUSTOM_MESSAGES`].
fn keep_custom_message(rec: &mut AgentRecord, msg: &CustomMessage, now_unix_ms: u64) {
    let kept = ReceivedCustomMessage {
        capability: cut(&msg.capability, KEPT_CUSTOM_NAME),
        r#type: cut(&msg.r#type, KEPT_CUSTOM_NAME),
        data: msg.data[..msg.data.len().min(KEPT_CUSTOM_DATA)].to_vec(),
        data_bytes: msg.data.len() as u64,
        at_unix_ms: now_unix_ms,
    };
    rec.custom_messages.insert(0, kept);
    rec.custom_messages.truncate(KEPT_CUSTOM_MESSAGES);
}

/// Judges again whether the agent runs its desired config, when its effective config came with
/// this message or its desired config changed since the last judgement.
fn refresh_drift(
    rec: &mut AgentRecord,
    attrs: &BTreeMap<String, String>,
    desired: &Desired,
    effective_reported: bool,
) {
    let want = desired_config(rec, attrs, desired, Aspect::Files);
    let judged_already = match want {
        Some(c) => hex_eq(&rec.drift_checked_hash, &c.hash),
        None => rec.drift_checked_hash.is_empty(),
    };
    if !effective_reported && judged_already {
        return;
    }
    let verdict = match want {
        // Agents that run the same config with the same desired one share a verdict: the YAML
        // of each pair is parsed once.
        Some(c) => desired.drift_verdict(c, &rec.effective_config_hash, || {
            judge_drift(rec, desired.composed(c).as_deref())
        }),
        None => judge_drift(rec, None),
    };
    rec.runs_desired = verdict.runs_desired;
    rec.config_drift = verdict.drift as i32;
    rec.drift_checked_hash =
        want.map_or_else(Vec::new, |c| hex::decode(&c.hash).unwrap_or_default());
}

/// Whether `rec`'s effective config runs `want` (the desired config, composed as the supervisor
/// composes it; None when it has none or it does not compose).
fn judge_drift(rec: &AgentRecord, want: Option<&serde_json::Value>) -> DriftVerdict {
    let effective = effective_map(rec).map(|m| {
        m.config_map
            .iter()
            .map(|(k, f)| (k.clone(), String::from_utf8_lossy(&f.body).into_owned()))
            .collect::<BTreeMap<_, _>>()
    });
    let judged = match (want, effective) {
        (Some(want), Some(have)) => drift::compose(&have).map(|have| (want, have)),
        _ => None,
    };
    DriftVerdict {
        runs_desired: judged
            .as_ref()
            .is_some_and(|(want, have)| drift::same(want, have)),
        drift: match judged {
            Some((want, have)) if drift::runs(want, &have) => Drift::InSync,
            Some(_) => Drift::Drifted,
            None => Drift::Unknown,
        },
    }
}

/// Remembers the config an agent reported FAILED for (so it is not sent again, and a rollback to
/// the previous config still counts as its failure), until the agent reports running it after
/// all, or moves on to another config. Called before `s` replaces the status in the record.
fn note_refusal(rec: &mut AgentRecord, s: &RemoteConfigStatus) {
    let hash = &s.last_remote_config_hash;
    match s.status() {
        RemoteConfigStatuses::Failed => {
            rec.rejected_config_hash.clone_from(hash);
            rec.rejected_config_error.clone_from(&s.error_message);
            rec.rejected_by_server = false;
        }
        RemoteConfigStatuses::Applied | RemoteConfigStatuses::Applying => {
            let previous = rec.remote_config_status.as_ref();
            // The report right after FAILED is the rollback; the same hash again is a reconnect.
            let rolling_back = previous.is_some_and(|p| {
                p.status == RemoteConfigStatuses::Failed as i32
                    && p.last_remote_config_hash == rec.rejected_config_hash
            });
            let same = previous.is_some_and(|p| p.last_remote_config_hash == *hash);
            if *hash == rec.rejected_config_hash || !(rolling_back || same) {
                rec.rejected_config_hash.clear();
                rec.rejected_config_error.clear();
                rec.rejected_by_server = false;
            }
        }
        RemoteConfigStatuses::Unset => {}
    }
}

/// The few facts of a record that events compare before and after a message.
struct EventFacts {
    healthy: Option<bool>,
    config_status: Option<(i32, Vec<u8>)>,
}

impl EventFacts {
    fn of(rec: &AgentRecord) -> Self {
        Self {
            healthy: rec.health.as_ref().map(|h| h.healthy),
            config_status: rec
                .remote_config_status
                .as_ref()
                .map(|s| (s.status, s.last_remote_config_hash.clone())),
        }
    }

    fn events_to(&self, after: &AgentRecord) -> Vec<EventKind> {
        let now = Self::of(after);
        let mut events = Vec::new();
        if now.healthy == Some(false) && self.healthy != Some(false) {
            events.push(EventKind::Unhealthy);
        }
        if now.healthy == Some(true) && self.healthy == Some(false) {
            events.push(EventKind::Healthy);
        }
        if now.config_status != self.config_status {
            match now
                .config_status
                .map(|(status, _)| RemoteConfigStatuses::try_from(status))
            {
                Some(Ok(RemoteConfigStatuses::Applied)) => {
                    // Applied right after failing another config: the agent went back to it.
                    let went_back = self.config_status.as_ref().is_some_and(|(status, hash)| {
                        *status == RemoteConfigStatuses::Failed as i32
                            && *hash == after.rejected_config_hash
                    });
                    events.push(if went_back {
                        EventKind::ConfigRolledBack
                    } else {
                        EventKind::ConfigApplied
                    });
                }
                Some(Ok(RemoteConfigStatuses::Failed)) => events.push(EventKind::ConfigFailed),
                _ => {}
            }
        }
        events
    }
}

/// When a connected agent becomes silent: agents that promise heartbeats, and HTTP pollers (which
/// poll at the heartbeat interval, 30 s by default), are silent after 3 intervals without a
/// message. A WebSocket agent without ReportsHeartbeat promises nothing; its connection's close
/// tells us it is gone.
pub fn silence_deadline(rec: &AgentRecord, heartbeat_interval: Duration) -> Option<u64> {
    if rec.status != AgentStatus::Connected as i32 {
        return None;
    }
    let http = rec
        .origin
        .as_ref()
        .is_some_and(|o| o.transport() == Transport::Http);
    if !http && !has(rec.capabilities, Cap::ReportsHeartbeat) {
        return None;
    }
    // Saturating: a configured interval near the limits of time must not overflow.
    let window = heartbeat_interval.saturating_mul(SILENT_AFTER_INTERVALS);
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    Some(rec.last_seen_unix_ms.saturating_add(window_ms))
}

/// A new UUIDv7 in the same shard as `uid` (about [`SHARD_COUNT`] tries); None in the unlikely
/// case that none turns up within a bound.
fn same_shard_uid(uid: &[u8]) -> Option<Uuid> {
    let shard = shard_of(uid);
    (0..u32::from(SHARD_COUNT) * 64)
        .map(|_| Uuid::now_v7())
        .find(|u| shard_of(u.as_bytes()) == shard)
}

/// Takes the oldest queued custom message that has not expired and whose capability the agent
/// still declares (one per reply: the message has room for one); forgets the others that fail
/// either test.
fn take_custom_message(rec: &mut AgentRecord, now_unix_ms: u64) -> Option<CustomMessage> {
    let declared = rec
        .custom_capabilities
        .as_ref()
        .map(|c| c.capabilities.as_slice())
        .unwrap_or_default();
    rec.pending_custom_messages
        .retain(|m| m.expires_unix_ms > now_unix_ms && declared.contains(&m.capability));
    if rec.pending_custom_messages.is_empty() {
        return None;
    }
    let m = rec.pending_custom_messages.remove(0);
    Some(CustomMessage {
        capability: m.capability,
        r#type: m.r#type,
        data: m.data,
    })
}

/// Takes a queued, unexpired restart if the agent can restart; forgets an expired one.
fn take_restart(rec: &mut AgentRecord, now_unix_ms: u64) -> bool {
    if rec.restart_expires_unix_ms <= now_unix_ms {
        rec.restart_expires_unix_ms = 0;
        return false;
    }
    if !has(rec.capabilities, Cap::AcceptsRestartCommand) {
        return false;
    }
    rec.restart_expires_unix_ms = 0;
    true
}
