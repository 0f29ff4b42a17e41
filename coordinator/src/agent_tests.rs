use super::*;
use flotilla_common::store::{AgentSettings, ConfigFile, PackageOffer};
use flotilla_proto::opamp::{
    AgentDescription, AgentDisconnect, AnyValue, ComponentHealth, KeyValue, RemoteConfigStatus,
};

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
    }
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
}

#[test]
fn config_is_offered_until_the_agent_reports_its_hash() {
    let uid = Uuid::now_v7();
    let configs = [prod_config()];
    let out = process(None, full(uid, 0), ws(), &ctx(&configs));
    let offered = out.reply.remote_config.clone().expect("config offered");
    assert_eq!(hex::encode(&offered.config_hash), configs[0].hash);
    assert_eq!(offered.config.unwrap().config_map["c.yaml"].body, b"a: 1");

    // Still APPLYING with the new hash: not offered again. APPLIED: no offer, an event.
    let mut applying = heartbeat(uid, 1);
    applying.remote_config_status = Some(RemoteConfigStatus {
        last_remote_config_hash: offered.config_hash.clone(),
        status: RemoteConfigStatuses::Applying as i32,
        error_message: String::new(),
    });
    let out = process(out.record, applying, ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none());
    let mut applied = heartbeat(uid, 2);
    applied.remote_config_status = Some(RemoteConfigStatus {
        last_remote_config_hash: offered.config_hash,
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    let out = process(out.record, applied, ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none());
    assert_eq!(out.events, vec![EventKind::ConfigApplied]);
}

#[test]
fn no_config_for_agents_without_accepts_remote_config() {
    let uid = Uuid::now_v7();
    let mut msg = full(uid, 0);
    msg.capabilities = Cap::ReportsStatus as u64;
    let out = process(None, msg, ws(), &ctx(&[prod_config()]));
    assert!(out.reply.remote_config.is_none());
    assert!(
        out.reply.connection_settings.is_none(),
        "no heartbeat offer without ReportsHeartbeat"
    );
    assert_eq!(
        out.deadline,
        Deadline::Clear,
        "a WS agent without heartbeats is never silent"
    );
}

#[test]
fn heartbeat_interval_is_offered_once_and_again_when_the_agent_reports_another_hash() {
    let uid = Uuid::now_v7();
    let out = process(None, full(uid, 0), ws(), &ctx(&[]));
    let offer = out.reply.connection_settings.clone().expect("offered");
    assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 30);
    assert_eq!(out.deadline, Deadline::Arm(NOW + 90_000));
    let out = process(out.record, heartbeat(uid, 1), ws(), &ctx(&[]));
    assert!(out.reply.connection_settings.is_none());
    let mut stale = heartbeat(uid, 2);
    stale.connection_settings_status = Some(flotilla_proto::opamp::ConnectionSettingsStatus {
        last_connection_settings_hash: vec![1, 2, 3],
        ..Default::default()
    });
    let out = process(out.record, stale, ws(), &ctx(&[]));
    assert!(out.reply.connection_settings.is_some());
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
fn an_agent_that_restarts_without_its_settings_is_offered_them_again_a_few_times() {
    let uid = Uuid::now_v7();
    let out = process(None, full(uid, 0), ws(), &ctx(&[]));
    assert!(out.reply.connection_settings.is_some());
    let mut rec = process(out.record, heartbeat(uid, 1), ws(), &ctx(&[]))
        .record
        .unwrap();
    // The agent process restarts: its sequence starts again, and it reports no settings.
    let mut offers = 0;
    for _ in 0..6 {
        let out = process(Some(rec), full(uid, 0), ws(), &ctx(&[]));
        offers += usize::from(out.reply.connection_settings.is_some());
        rec = out.record.unwrap();
    }
    assert_eq!(
        offers, SETTINGS_REOFFERS as usize,
        "re-offered, but not forever to an agent that restarts on every offer"
    );
    // An agent that says it runs the offered settings is not offered them again.
    let mut fresh = process(None, full(Uuid::now_v7(), 0), ws(), &ctx(&[]));
    let hash = fresh.reply.connection_settings.take().unwrap().hash;
    let mut restarted = full(uid, 0);
    restarted.instance_uid = fresh.record.as_ref().unwrap().instance_uid.clone();
    restarted.connection_settings_status = Some(flotilla_proto::opamp::ConnectionSettingsStatus {
        last_connection_settings_hash: hash,
        ..Default::default()
    });
    let out = process(fresh.record, restarted, ws(), &ctx(&[]));
    assert!(out.reply.connection_settings.is_none());
}

#[test]
fn an_error_answer_forgets_the_offers_it_replaced() {
    let uid = Uuid::now_v7();
    let mut out = process(None, full(uid, 0), ws(), &ctx(&[prod_config()]));
    assert!(out.reply.remote_config.is_some() && out.reply.connection_settings.is_some());
    out.answer_with_error(
        flotilla_common::error::ErrorKind::BadRequest,
        "bad CSR".into(),
    );
    let e = out.reply.error_response.as_ref().expect("an error");
    assert_eq!(e.error_message, "bad CSR");
    assert!(
        out.reply.remote_config.is_none()
            && out.reply.connection_settings.is_none()
            && out.reply.flags == 0
            && out.reply.capabilities == 0,
        "the error goes alone: {:?}",
        out.reply
    );
    assert_eq!(out.reply.instance_uid, uid.as_bytes().to_vec());
    // What the message reported is kept; the settings are offered with the next reply.
    let rec = out.record.unwrap();
    assert!(rec.description.is_some());
    let next = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&[prod_config()]));
    assert!(next.reply.connection_settings.is_some());
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
                    body: vec![b'x'; 200],
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

#[test]
fn labels_select_configs_and_win_over_reported_attributes() {
    let uid = Uuid::now_v7();
    let mut canary = prod_config();
    canary.name = "canary".into();
    canary.selector = "env=prod,ring=canary".parse().unwrap();
    canary.files.get_mut("c.yaml").unwrap().body = "canary: true".into();
    canary.hash = hex::encode(configs::hash_of_files(&canary.files));
    let configs = [prod_config(), canary.clone()];
    let rec = process(None, full(uid, 0), ws(), &ctx(&configs))
        .record
        .unwrap();
    let d = Desired::new(configs.to_vec());
    let attrs = attributes(&rec);
    assert_eq!(
        desired_config(&rec, &attrs, &d, Aspect::Files)
            .unwrap()
            .name,
        "prod"
    );
    let mut labelled = rec;
    labelled.labels.insert("ring".into(), "canary".into());
    labelled.labels.insert("env".into(), "prod".into());
    let attrs = attributes(&labelled);
    assert_eq!(
        desired_config(&labelled, &attrs, &d, Aspect::Files)
            .unwrap()
            .name,
        "canary"
    );
    let out = process(Some(labelled), heartbeat(uid, 1), ws(), &ctx(&configs));
    assert_eq!(
        hex::encode(out.reply.remote_config.unwrap().config_hash),
        canary.hash
    );
}

#[test]
fn an_enrolled_agent_gets_the_rollouts_version_and_others_the_active_one() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut v2 = prod_config();
    v2.version = 2;
    v2.files.get_mut("c.yaml").unwrap().body = "a: 2".into();
    v2.hash = hex::encode(configs::hash_of_files(&v2.files));
    let mut d = Desired::new(vec![prod_config()]);
    d.add_rollout("r1", v2.clone(), &std::collections::HashSet::from([a]));
    let ctx = with_desired(d);
    let hash = |o: Outcome| hex::encode(o.reply.remote_config.unwrap().config_hash);
    assert_eq!(hash(process(None, full(a, 0), ws(), &ctx)), v2.hash);
    assert_eq!(
        hash(process(None, full(b, 0), ws(), &ctx)),
        prod_config().hash
    );
}

#[test]
fn packages_and_per_selector_settings_are_offered_once_per_change() {
    let uid = Uuid::now_v7();
    let mut bundle = prod_config();
    bundle.name = "collector-packages".into();
    bundle.files.clear();
    bundle.packages = BTreeMap::from([(
        "otelcol".to_owned(),
        PackageOffer {
            kind: "top_level".into(),
            version: "0.110.0".into(),
            download_url: "https://example.com/otelcol.tgz".into(),
            content_hash: "00".repeat(32),
            signature: String::new(),
            headers: BTreeMap::new(),
        },
    )]);
    bundle.settings = Some(AgentSettings {
        heartbeat_interval: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    let configs = [prod_config(), bundle];
    let mut msg = full(uid, 0);
    msg.capabilities |= Cap::AcceptsPackages as u64 | Cap::ReportsPackageStatuses as u64;
    let out = process(None, msg, ws(), &ctx(&configs));
    assert!(
        out.reply.remote_config.is_some(),
        "files still come from \"prod\""
    );
    let p = out.reply.packages_available.expect("packages offered");
    assert_eq!(p.packages["otelcol"].version, "0.110.0");
    let s = out.reply.connection_settings.expect("settings offered");
    assert_eq!(s.opamp.unwrap().heartbeat_interval_seconds, 10);
    // The agent is silent after 3 of its own (10 s) intervals, not the default 30 s.
    assert_eq!(out.deadline, Deadline::Arm(NOW + 30_000));
    let again = process(out.record, heartbeat(uid, 1), ws(), &ctx(&configs));
    assert!(again.reply.packages_available.is_none(), "offered once");
    assert!(again.reply.connection_settings.is_none(), "offered once");
}
