//! Unit tests of the protocol layer: one AgentToServer through `process` at a time, checking the
//! reply and the record; `offers` covers what agents are offered.

use super::desired::{SETTINGS_REOFFERS, desired_config};
use super::*;
use crate::fleet::agents::attributes;
use crate::fleet::configs::{self, Aspect, Desired};
use flotilla_common::config::RecordLimits;
use flotilla_common::store::{AgentSettings, ConfigFile, Deadline, PackageOffer, StoredConfig};
use flotilla_proto::bus::{AgentRecord, AgentStatus, Origin, PendingCustomMessage, Transport};
use flotilla_proto::opamp::{
    AgentCapabilities as Cap, AgentDescription, AgentDisconnect, AgentToServer, AgentToServerFlags,
    AnyValue, CommandType, ComponentHealth, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerToAgentFlags, any_value,
};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const NOW: u64 = 1_700_000_000_000;
const CAPS: u64 = Cap::ReportsStatus as u64
    | Cap::AcceptsRemoteConfig as u64
    | Cap::ReportsRemoteConfig as u64
    | Cap::ReportsHeartbeat as u64
    | Cap::AcceptsRestartCommand as u64;

fn ws() -> Origin {
    Origin {
        gateway_id: "g1".into(),
        connection_id: 7,
        transport: Transport::Websocket as i32,
        ..Default::default()
    }
}

fn ctx(configs: &[StoredConfig]) -> Ctx<'static> {
    with_desired(Desired::new(configs.to_vec()))
}

/// Leaks the desired state: a few bytes per test, so contexts can be built inline.
fn with_desired(desired: Desired) -> Ctx<'static> {
    Ctx {
        now_unix_ms: NOW,
        heartbeat_interval: Duration::from_secs(30),
        desired: Box::leak(Box::new(desired)),
        limits: Box::leak(Box::new(RecordLimits::default())),
        hold_restart: false,
        agent_metrics: &flotilla_common::config::AgentMetricsOffer::Gateway,
        region: "local",
        regions: Box::leak(Box::default()),
        server_ca_pem: None,
        may_offer_config: &always,
        heartbeats_answered_through: None,
    }
}

/// Configs may always be offered.
fn always(_: &[u8], _: &[u8]) -> bool {
    true
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn full(uid: Uuid, seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.as_bytes().to_vec(),
        sequence_num: seq,
        capabilities: CAPS,
        agent_description: Some(AgentDescription {
            identifying_attributes: vec![kv("service.name", "otelcol")],
            non_identifying_attributes: vec![kv("env", "prod")],
        }),
        health: Some(ComponentHealth {
            healthy: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn heartbeat(uid: Uuid, seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.as_bytes().to_vec(),
        sequence_num: seq,
        capabilities: CAPS,
        ..Default::default()
    }
}

fn prod_config() -> StoredConfig {
    let files = BTreeMap::from([(
        "c.yaml".to_string(),
        ConfigFile {
            body: "a: 1".into(),
            content_type: "text/yaml".into(),
        },
    )]);
    StoredConfig {
        name: "prod".into(),
        version: 1,
        selector: "env=prod".parse().unwrap(),
        hash: hex::encode(configs::hash_of_files(&files)),
        files,
        packages: BTreeMap::new(),
        settings: None,
        created_unix_ms: 0,
        created_by: String::new(),
        comment: String::new(),
    }
}

/// The record of agent `uid` after a full report that declares custom capability
/// `io.example.ping`.
fn declaring_ping(uid: Uuid) -> AgentRecord {
    let mut first = full(uid, 0);
    first.custom_capabilities = Some(flotilla_proto::opamp::CustomCapabilities {
        capabilities: vec!["io.example.ping".into()],
    });
    process(None, first, ws(), &ctx(&[])).record.unwrap()
}

fn full_state_asked(o: &Outcome) -> bool {
    o.reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0
}

#[test]
fn unknown_agent_gets_full_state_request_then_in_sequence_messages_do_not() {
    let uid = Uuid::now_v7();
    let first = process(None, full(uid, 0), ws(), &ctx(&[]));
    assert!(full_state_asked(&first));
    assert_eq!(first.reply.instance_uid, uid.as_bytes().to_vec());
    assert_eq!(first.reply.capabilities, SERVER_CAPABILITIES);
    assert_eq!(first.events, vec![EventKind::Connected]);

    let second = process(first.record, full(uid, 1), ws(), &ctx(&[]));
    assert!(!full_state_asked(&second));
    assert!(second.events.is_empty());
}

#[test]
fn gaps_and_repeats_ask_for_full_state() {
    let uid = Uuid::now_v7();
    let rec = process(None, full(uid, 0), ws(), &ctx(&[])).record.unwrap();
    let gap = process(Some(rec.clone()), heartbeat(uid, 5), ws(), &ctx(&[]));
    assert!(full_state_asked(&gap));
    let repeat = process(Some(rec), heartbeat(uid, 0), ws(), &ctx(&[]));
    assert!(
        full_state_asked(&repeat),
        "a duplicate is answered, with a full-state request"
    );
}

#[test]
fn compressed_reports_keep_previous_sub_messages() {
    let uid = Uuid::now_v7();
    let rec = process(None, full(uid, 0), ws(), &ctx(&[])).record.unwrap();
    let mut unhealthy = heartbeat(uid, 1);
    unhealthy.health = Some(ComponentHealth {
        healthy: false,
        last_error: "exporter down".into(),
        ..Default::default()
    });
    let out = process(Some(rec), unhealthy, ws(), &ctx(&[]));
    let rec = out.record.unwrap();
    assert_eq!(
        attributes(&rec).get("env").map(String::as_str),
        Some("prod"),
        "description kept"
    );
    assert_eq!(
        rec.health.as_ref().unwrap().last_error,
        "exporter down",
        "health replaced"
    );
    assert_eq!(out.events, vec![EventKind::Unhealthy]);
    let still = heartbeat(uid, 2);
    let out = process(Some(rec), still, ws(), &ctx(&[]));
    assert_eq!(out.events, vec![], "unhealthy once, not once a message");
    let mut healthy = heartbeat(uid, 3);
    healthy.health = Some(ComponentHealth {
        healthy: true,
        ..Default::default()
    });
    let out = process(out.record, healthy, ws(), &ctx(&[]));
    assert_eq!(out.events, vec![EventKind::Healthy]);
}

#[test]
fn a_requested_or_invalid_uid_gets_a_new_uuid_v7_and_no_record_until_it_is_used() {
    let temp = Uuid::now_v7();
    let mut msg = full(temp, 0);
    msg.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let out = process(None, msg, ws(), &ctx(&[]));
    let new = out
        .reply
        .agent_identification
        .as_ref()
        .expect("new uid")
        .new_instance_uid
        .clone();
    assert_eq!(new.len(), 16);
    assert_ne!(new, temp.as_bytes().to_vec());
    assert_eq!(Uuid::from_slice(&new).unwrap().get_version_num(), 7);
    assert_eq!(
        out.reply.instance_uid,
        temp.as_bytes().to_vec(),
        "reply echoes the uid sent"
    );
    assert!(out.record.is_none(), "an assigned uid is not a record yet");
    assert!(
        full_state_asked(&out),
        "the agent reports in full under its new uid"
    );
    assert!(out.events.is_empty());

    let mut bad = full(temp, 0);
    bad.instance_uid = b"01ARZ3NDEKTSV4RRFFQ69G5FAV".to_vec();
    let out = process(None, bad, ws(), &ctx(&[]));
    assert_eq!(
        out.reply
            .agent_identification
            .unwrap()
            .new_instance_uid
            .len(),
        16
    );
    assert!(out.record.is_none());
}

#[test]
fn a_known_agent_that_asks_for_a_new_uid_takes_its_record_along_in_the_same_shard() {
    use flotilla_common::names::shard_of;
    let old = Uuid::now_v7();
    let mut rec = process(None, full(old, 0), ws(), &ctx(&[])).record.unwrap();
    rec.labels.insert("ring".into(), "canary".into());
    rec.cert_sha256 = vec![5; 32];
    let mut ask = heartbeat(old, 1);
    ask.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let out = process(Some(rec), ask, ws(), &ctx(&[]));
    let new = out
        .reply
        .agent_identification
        .as_ref()
        .expect("new uid")
        .new_instance_uid
        .clone();
    assert_ne!(new, old.as_bytes().to_vec());
    assert_eq!(
        shard_of(&new),
        shard_of(old.as_bytes()),
        "the same owner stores the move"
    );
    assert!(full_state_asked(&out));
    let marker = out.left_behind.expect("a marker under the old uid");
    assert_eq!(
        (marker.instance_uid.as_slice(), marker.moved_to.as_slice()),
        (old.as_bytes().as_slice(), new.as_slice())
    );
    assert!(marker.labels.is_empty(), "the record itself moves");
    let moved = out.record.expect("stored under the new uid");
    assert_eq!(moved.instance_uid, new);
    assert_eq!(moved.labels["ring"], "canary");
    assert_eq!(
        moved.cert_sha256,
        vec![5; 32],
        "the certificate binding moves too"
    );
    assert!(matches!(out.deadline, Deadline::Arm(_)));

    // The reply was lost: the agent asks again under its old uid and is told the same new uid.
    let mut again = heartbeat(old, 2);
    again.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let retry = process(Some(marker), again, ws(), &ctx(&[]));
    assert_eq!(
        retry.reply.agent_identification.unwrap().new_instance_uid,
        new
    );
    assert!(retry.record.is_none() && retry.left_behind.is_none());

    // Its first message under the new uid finds the record, and the marker is to go.
    let uid = Uuid::from_slice(&new).unwrap();
    let out = process(Some(moved), full(uid, 2), ws(), &ctx(&[]));
    assert_eq!(out.forget, Some(old));
    let rec = out.record.unwrap();
    assert_eq!(rec.labels["ring"], "canary");
    assert!(rec.moved_from.is_empty());
}

#[test]
fn a_certificate_that_names_the_uid_fixes_it() {
    let uid = Uuid::now_v7();
    let named = Origin {
        client_cert_uids: vec![uid.as_bytes().to_vec()],
        client_cert_sha256: vec![7],
        identity: flotilla_proto::bus::IdentityRule::UriSan as i32,
        ..ws()
    };
    // Asking for a new uid changes nothing: the certificate would refuse any other.
    let mut msg = full(uid, 0);
    msg.flags = AgentToServerFlags::RequestInstanceUid as u64;
    let out = process(None, msg, named.clone(), &ctx(&[]));
    assert!(out.reply.agent_identification.is_none());
    assert_eq!(out.record.unwrap().instance_uid, uid.as_bytes().to_vec());
    // An agent without a usable uid is given the one its certificate names.
    let mut legacy = full(uid, 0);
    legacy.instance_uid = b"01ARZ3NDEKTSV4RRFFQ69G5FAV".to_vec();
    let out = process(None, legacy, named, &ctx(&[]));
    assert_eq!(
        out.reply.agent_identification.unwrap().new_instance_uid,
        uid.as_bytes().to_vec()
    );
}

#[test]
fn reports_beyond_the_record_limits_are_refused_and_nothing_is_stored() {
    let uid = Uuid::now_v7();
    let limits = RecordLimits {
        max_effective_config_bytes: 100,
        max_health_components: 3,
        max_attributes: 4,
        max_record_bytes: 10_000,
    };
    let ctx = Ctx {
        limits: &limits,
        ..ctx(&[])
    };
    let mut big_config = full(uid, 0);
    big_config.effective_config = Some(flotilla_proto::opamp::EffectiveConfig {
        config_map: Some(flotilla_proto::opamp::AgentConfigMap {
            config_map: [(
                String::new(),
                flotilla_proto::opamp::AgentConfigFile {
                    body: vec![b'x'; 200].into(),
                    content_type: String::new(),
                },
            )]
            .into(),
        }),
    });
    let mut many_components = full(uid, 0);
    let leaf = ComponentHealth::default();
    many_components.health = Some(ComponentHealth {
        component_health_map: (0..5).map(|i| (format!("c{i}"), leaf.clone())).collect(),
        ..Default::default()
    });
    let mut many_attributes = full(uid, 0);
    many_attributes
        .agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes = (0..5).map(|i| kv(&format!("k{i}"), "v")).collect();
    let mut huge = full(uid, 0);
    huge.custom_capabilities = Some(flotilla_proto::opamp::CustomCapabilities {
        capabilities: (0..2_000)
            .map(|i| format!("com.example.capability.{i}"))
            .collect(),
    });
    for (msg, limit) in [
        (big_config, "--max-effective-config-size"),
        (many_components, "--max-health-components"),
        (many_attributes, "--max-attributes"),
        (huge, "--max-agent-record-size"),
    ] {
        let out = process(None, msg, ws(), &ctx);
        let e = out.reply.error_response.expect("refused");
        assert!(e.error_message.contains(limit), "{}", e.error_message);
        assert_eq!(
            e.r#type,
            flotilla_proto::opamp::ServerErrorResponseType::BadRequest as i32
        );
        assert!(out.record.is_none(), "nothing of a refused report is kept");
    }
    assert!(process(None, full(uid, 0), ws(), &ctx).record.is_some());
}

#[test]
fn an_interval_near_the_limits_of_time_does_not_overflow() {
    let uid = Uuid::now_v7();
    let mut forever = prod_config();
    forever.files.clear();
    forever.settings = Some(AgentSettings {
        heartbeat_interval: Some(Duration::from_secs(u64::MAX / 2)),
        ..Default::default()
    });
    let out = process(None, full(uid, 0), ws(), &ctx(&[forever]));
    assert_eq!(out.deadline, Deadline::Arm(u64::MAX));
}

/// The gateway answered heartbeats 1 to 3 on the agent's connection; the record saw none.
fn answered_through(seq: u64) -> Ctx<'static> {
    Ctx {
        heartbeats_answered_through: Some(seq),
        ..ctx(&[])
    }
}

#[test]
fn after_heartbeats_a_gateway_answered_the_next_message_is_in_sequence_and_a_repeat_is_not() {
    let uid = Uuid::now_v7();
    let rec = process(None, full(uid, 0), ws(), &ctx(&[])).record.unwrap();
    let next = process(Some(rec.clone()), full(uid, 4), ws(), &answered_through(3));
    assert!(!full_state_asked(&next));
    assert_eq!(next.record.unwrap().sequence_num, 4);
    // The record's next number is not: the gateway answered it already.
    let repeat = process(Some(rec.clone()), full(uid, 1), ws(), &answered_through(3));
    assert!(full_state_asked(&repeat));
    // Named by a connection the agent is not recorded on: the record's own number counts.
    let elsewhere = Origin {
        connection_id: 8,
        ..ws()
    };
    let other = process(
        Some(rec.clone()),
        full(uid, 4),
        elsewhere.clone(),
        &answered_through(3),
    );
    assert!(full_state_asked(&other));
    let other = process(Some(rec), full(uid, 1), elsewhere, &answered_through(3));
    assert!(!full_state_asked(&other));
}

#[test]
fn a_gateway_may_answer_heartbeats_only_after_a_bare_reply_with_nothing_waiting() {
    let uid = Uuid::now_v7();
    let granted = |out: &Outcome| process::heartbeat_grant(out, NOW, "c1");
    let first = process(None, full(uid, 0), ws(), &ctx(&[]));
    assert_eq!(granted(&first), None, "the reply asks for the full state");
    let quiet = process(first.record, heartbeat(uid, 1), ws(), &ctx(&[]));
    let grant = granted(&quiet).expect("a bare reply");
    assert_eq!((grant.sequence_num, grant.capabilities), (1, CAPS));
    assert_eq!(grant.owner, "c1");

    // A reply with an offer in it, or a restart or custom message waiting: none.
    let offered = process(
        quiet.record.clone(),
        heartbeat(uid, 2),
        ws(),
        &ctx(&[prod_config()]),
    );
    assert!(offered.reply.remote_config.is_some());
    assert_eq!(granted(&offered), None);
    // Held for a later reply (the agent's CSR is answered first), and not declared by the agent:
    // each waits with a bare reply.
    let mut rec = quiet.record.clone().unwrap();
    rec.restart_expires_unix_ms = NOW + 1000;
    let held = Ctx {
        hold_restart: true,
        ..ctx(&[])
    };
    let out = process(Some(rec), heartbeat(uid, 2), ws(), &held);
    assert!(out.reply.command.is_none());
    assert_eq!(granted(&out), None, "not while a restart waits");
    // Two custom messages for the agent: one goes, one waits for the next reply.
    let mut rec = declaring_ping(uid);
    let ping = PendingCustomMessage {
        capability: "io.example.ping".into(),
        expires_unix_ms: NOW + 1000,
        ..Default::default()
    };
    rec.pending_custom_messages = vec![ping.clone(), ping];
    let mut out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&[]));
    assert!(out.reply.custom_message.take().is_some());
    assert_eq!(granted(&out), None, "not while a custom message waits");

    // Plain HTTP and a leaving agent: none.
    let http = Origin {
        transport: Transport::Http as i32,
        ..ws()
    };
    let polled = process(quiet.record.clone(), heartbeat(uid, 2), http, &ctx(&[]));
    assert_eq!(granted(&polled), None);
    let mut bye = heartbeat(uid, 2);
    bye.agent_disconnect = Some(AgentDisconnect {});
    assert_eq!(granted(&process(quiet.record, bye, ws(), &ctx(&[]))), None);
}

#[test]
fn disconnect_is_answered_and_clears_liveness() {
    let uid = Uuid::now_v7();
    let rec = process(None, full(uid, 0), ws(), &ctx(&[prod_config()]))
        .record
        .unwrap();
    let mut bye = heartbeat(uid, 1);
    bye.agent_disconnect = Some(AgentDisconnect {});
    let out = process(Some(rec), bye, ws(), &ctx(&[prod_config()]));
    assert_eq!(out.reply.instance_uid, uid.as_bytes().to_vec());
    assert!(
        out.reply.remote_config.is_none(),
        "nothing is pushed to a leaving agent"
    );
    assert_eq!(out.record.unwrap().status, AgentStatus::Disconnected as i32);
    assert_eq!(out.deadline, Deadline::Clear);
    assert_eq!(out.events, vec![EventKind::Disconnected]);
}

#[test]
fn queued_restart_goes_alone_and_once() {
    let uid = Uuid::now_v7();
    let mut rec = process(None, full(uid, 0), ws(), &ctx(&[prod_config()]))
        .record
        .unwrap();
    rec.restart_expires_unix_ms = NOW + 1000;
    let out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&[prod_config()]));
    assert_eq!(
        out.reply.command.map(|c| c.r#type),
        Some(CommandType::Restart as i32)
    );
    assert!(out.reply.remote_config.is_none() && out.reply.connection_settings.is_none());
    let out = process(out.record, heartbeat(uid, 2), ws(), &ctx(&[prod_config()]));
    assert!(out.reply.command.is_none());
    assert!(
        out.reply.remote_config.is_some(),
        "the config follows after the command"
    );
}

#[test]
fn http_pollers_are_judged_by_the_poll_interval_even_without_heartbeat_capability() {
    let uid = Uuid::now_v7();
    let mut msg = full(uid, 0);
    msg.capabilities = Cap::ReportsStatus as u64;
    let http = Origin {
        transport: Transport::Http as i32,
        ..ws()
    };
    let out = process(None, msg, http, &ctx(&[]));
    assert_eq!(out.deadline, Deadline::Arm(NOW + 90_000));
}

#[test]
fn available_components_hash_without_map_asks_for_the_map_once() {
    let uid = Uuid::now_v7();
    let mut msg = full(uid, 0);
    msg.available_components = Some(flotilla_proto::opamp::AvailableComponents {
        hash: vec![9],
        components: Default::default(),
    });
    let out = process(None, msg.clone(), ws(), &ctx(&[]));
    let ask = ServerToAgentFlags::ReportAvailableComponents as u64;
    assert_ne!(out.reply.flags & ask, 0);
    let mut with_map = msg.clone();
    with_map.sequence_num = 1;
    with_map
        .available_components
        .as_mut()
        .unwrap()
        .components
        .insert("otlp".into(), Default::default());
    let out = process(out.record, with_map, ws(), &ctx(&[]));
    assert_eq!(out.reply.flags & ask, 0);
    msg.sequence_num = 2;
    let out = process(out.record, msg, ws(), &ctx(&[]));
    assert_eq!(out.reply.flags & ask, 0, "hash known: no new request");
    assert_eq!(
        out.record
            .unwrap()
            .available_components
            .unwrap()
            .components
            .len(),
        1
    );
}

mod offers;

#[test]
fn the_time_an_agent_turned_unhealthy_is_kept_until_it_is_healthy() {
    let uid = Uuid::now_v7();
    let mut starting = full(uid, 0);
    starting.health.as_mut().unwrap().healthy = false;
    let out = process(None, starting, ws(), &ctx(&[]));
    assert_eq!(out.record.as_ref().unwrap().unhealthy_since_unix_ms, NOW);
    let mut later = ctx(&[]);
    later.now_unix_ms = NOW + 5_000;
    let out = process(out.record, heartbeat(uid, 1), ws(), &later);
    assert_eq!(
        out.record.as_ref().unwrap().unhealthy_since_unix_ms,
        NOW,
        "still the same spell"
    );
    let mut up = heartbeat(uid, 2);
    up.health = Some(ComponentHealth {
        healthy: true,
        ..Default::default()
    });
    let out = process(out.record, up, ws(), &later);
    assert_eq!(out.record.unwrap().unhealthy_since_unix_ms, 0);
}

#[test]
fn drift_is_judged_when_the_effective_or_the_desired_config_changes() {
    use flotilla_proto::bus::Drift;
    use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, EffectiveConfig};
    let uid = Uuid::now_v7();
    let configs = [prod_config()]; // c.yaml: "a: 1"
    let effective = |body: &str| {
        Some(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(
                    String::new(),
                    AgentConfigFile {
                        body: body.to_owned().into_bytes().into(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        })
    };
    let mut first = full(uid, 0);
    first.effective_config = effective("a: 1\nextensions: {opamp: {}}\n");
    let out = process(None, first, ws(), &ctx(&configs));
    let rec = out.record.unwrap();
    assert_eq!(rec.config_drift, Drift::InSync as i32);
    assert_eq!(hex::encode(&rec.drift_checked_hash), configs[0].hash);

    let mut changed = heartbeat(uid, 1);
    changed.effective_config = effective("a: 2\n");
    let out = process(Some(rec), changed, ws(), &ctx(&configs));
    let rec = out.record.unwrap();
    assert_eq!(rec.config_drift, Drift::Drifted as i32);

    // An effective config nested past what is read safely: not judged, and no crash.
    let mut deep = heartbeat(uid, 2);
    deep.effective_config = effective(&format!("{}x", "- ".repeat(100_000)));
    let out = process(Some(rec), deep, ws(), &ctx(&configs));
    let rec = out.record.unwrap();
    assert_eq!(rec.config_drift, Drift::Unknown as i32);

    // No desired config any more: judged again at the next message, unknown.
    let out = process(Some(rec), heartbeat(uid, 3), ws(), &ctx(&[]));
    let rec = out.record.unwrap();
    assert_eq!(rec.config_drift, Drift::Unknown as i32);
    assert!(rec.drift_checked_hash.is_empty());
}

#[test]
fn custom_messages_are_kept_newest_first_bounded_and_cut() {
    use super::process::{KEPT_CUSTOM_DATA, KEPT_CUSTOM_MESSAGES};
    use flotilla_proto::opamp::CustomMessage;
    let uid = Uuid::now_v7();
    let mut out = process(None, full(uid, 0), ws(), &ctx(&[]));
    for i in 1..=25u64 {
        let mut msg = heartbeat(uid, i);
        msg.custom_message = Some(CustomMessage {
            capability: "io.example.echo".into(),
            r#type: format!("t{i}"),
            data: vec![7; if i == 25 { KEPT_CUSTOM_DATA + 10 } else { 3 }],
        });
        out = process(out.record, msg, ws(), &ctx(&[]));
    }
    let kept = out.record.unwrap().custom_messages;
    assert_eq!(kept.len(), KEPT_CUSTOM_MESSAGES);
    assert_eq!(kept[0].r#type, "t25", "newest first");
    assert_eq!(kept[0].data.len(), KEPT_CUSTOM_DATA);
    assert_eq!(kept[0].data_bytes, (KEPT_CUSTOM_DATA + 10) as u64);
    assert_eq!(
        kept[KEPT_CUSTOM_MESSAGES - 1].r#type,
        "t6",
        "the oldest went"
    );
}

#[test]
fn custom_message_names_are_cut_and_supervisors_are_judged_by_their_own_heartbeat() {
    use flotilla_proto::opamp::CustomMessage;
    let uid = Uuid::now_v7();
    let mut msg = full(uid, 0);
    msg.custom_message = Some(CustomMessage {
        capability: "é".repeat(1000),
        r#type: "t".repeat(1000),
        data: Vec::new(),
    });
    // It takes connection settings: no heartbeat is offered, so its own (30 s) is expected,
    // not the 2 s the server would ask for.
    msg.capabilities |= Cap::AcceptsOpAmpConnectionSettings as u64;
    let mut fast = ctx(&[]);
    fast.heartbeat_interval = Duration::from_secs(2);
    let out = process(None, msg, ws(), &fast);
    assert!(out.reply.connection_settings.is_none());
    assert_eq!(out.deadline, Deadline::Arm(NOW + 90_000));
    let kept = &out.record.unwrap().custom_messages[0];
    assert_eq!(kept.capability.len(), 256, "cut on a character boundary");
    assert_eq!(kept.r#type.len(), 256);
}

#[test]
fn queued_custom_messages_go_one_per_reply_while_declared_and_unexpired_and_survive_a_refusal() {
    use flotilla_proto::bus::PendingCustomMessage;
    let uid = Uuid::now_v7();
    let mut rec = declaring_ping(uid);
    let pending = |capability: &str, kind: &str, expires_unix_ms: u64| PendingCustomMessage {
        capability: capability.into(),
        r#type: kind.into(),
        data: kind.as_bytes().to_vec(),
        expires_unix_ms,
    };
    rec.pending_custom_messages = vec![
        pending("io.example.ping", "expired", NOW - 1),
        pending("io.example.other", "undeclared", NOW + 1000),
        pending("io.example.ping", "a", NOW + 1000),
        pending("io.example.ping", "b", NOW + 1000),
    ];
    // A reply replaced by an error (its offers not made) keeps what was queued.
    let mut refused = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&[]));
    refused.answer_with_error(flotilla_common::error::ErrorKind::Unavailable, "x".into());
    let kinds = |r: &AgentRecord| -> Vec<String> {
        r.pending_custom_messages
            .iter()
            .map(|m| m.r#type.clone())
            .collect()
    };
    assert_eq!(
        kinds(refused.record.as_ref().unwrap()),
        ["expired", "undeclared", "a", "b"]
    );
    let out = process(refused.record, heartbeat(uid, 2), ws(), &ctx(&[]));
    let sent = out
        .reply
        .custom_message
        .clone()
        .expect("the oldest valid one");
    assert_eq!(
        (sent.capability.as_str(), sent.r#type.as_str()),
        ("io.example.ping", "a")
    );
    assert_eq!(sent.data, b"a");
    assert_eq!(kinds(out.record.as_ref().unwrap()), ["b"]);
    let out = process(out.record, heartbeat(uid, 3), ws(), &ctx(&[]));
    assert_eq!(out.reply.custom_message.unwrap().r#type, "b");
    let out = process(out.record, heartbeat(uid, 4), ws(), &ctx(&[]));
    assert!(out.reply.custom_message.is_none());
    assert!(out.record.unwrap().pending_custom_messages.is_empty());
}

#[test]
fn custom_messages_waiting_for_an_agent_do_not_count_against_its_record_limit() {
    use flotilla_proto::bus::PendingCustomMessage;
    let uid = Uuid::now_v7();
    let mut rec = declaring_ping(uid);
    let mut tight = ctx(&[]);
    tight.limits = Box::leak(Box::new(RecordLimits {
        max_record_bytes: 4096,
        ..RecordLimits::default()
    }));
    rec.pending_custom_messages = (0..8)
        .map(|i| PendingCustomMessage {
            capability: "io.example.ping".into(),
            r#type: format!("m{i}"),
            data: vec![0; 64 * 1024],
            expires_unix_ms: NOW + 1000,
        })
        .collect();
    let out = process(Some(rec), heartbeat(uid, 1), ws(), &tight);
    assert!(
        out.reply.error_response.is_none(),
        "{:?}",
        out.reply.error_response
    );
    assert_eq!(out.reply.custom_message.unwrap().r#type, "m0");
    assert_eq!(out.record.unwrap().pending_custom_messages.len(), 7);
}
