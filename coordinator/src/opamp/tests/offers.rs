//! The offers a reply carries: remote config, connection settings and packages, once per
//! change, again when the agent may have lost them, never beside an error.

use super::*;
use crate::fleet::agents::{ConfigStanding, config_standing};
use prost::Message;

#[test]
fn config_is_offered_until_the_agent_reports_its_hash() {
    let uid = Uuid::now_v7();
    let configs = [prod_config()];
    let out = process(None, full(uid, 0), ws(), &ctx(&configs));
    let offered = out.reply.remote_config.clone().expect("config offered");
    assert_eq!(hex::encode(&offered.config_hash), configs[0].hash);
    assert_eq!(
        offered.config.unwrap().config_map["c.yaml"].body,
        &b"a: 1"[..]
    );

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
fn a_config_the_owner_has_no_room_for_is_offered_by_a_later_reply() {
    let uid = Uuid::now_v7();
    let configs = [prod_config()];
    let asked = std::sync::Mutex::new(Vec::new());
    let full_window = |uid: &[u8], hash: &[u8]| {
        asked
            .lock()
            .unwrap()
            .push((uid.to_vec(), hex::encode(hash)));
        false
    };
    let busy = Ctx {
        may_offer_config: &full_window,
        heartbeats_answered_through: None,
        ..ctx(&configs)
    };
    let out = process(None, full(uid, 0), ws(), &busy);
    assert!(out.reply.remote_config.is_none(), "offered with no room");
    assert_eq!(
        *asked.lock().unwrap(),
        vec![(uid.as_bytes().to_vec(), configs[0].hash.clone())]
    );
    let rec = out.record.expect("recorded");
    assert!(rec.offered_config_hash.is_empty(), "recorded as offered");
    // Room again: the next heartbeat's reply carries it.
    let out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&configs));
    let offered = out.reply.remote_config.expect("config offered");
    assert_eq!(hex::encode(&offered.config_hash), configs[0].hash);
}

fn status(hash: &[u8], status: RemoteConfigStatuses, error: &str) -> Option<RemoteConfigStatus> {
    Some(RemoteConfigStatus {
        last_remote_config_hash: hash.to_vec(),
        status: status as i32,
        error_message: error.into(),
    })
}

#[test]
fn a_config_the_agent_failed_and_rolled_back_from_is_not_sent_again() {
    let uid = Uuid::now_v7();
    let previous = vec![0xaa; 32];
    let mut first = full(uid, 0);
    first.remote_config_status = status(&previous, RemoteConfigStatuses::Applied, "");
    let configs = [prod_config()];
    let out = process(None, first, ws(), &ctx(&configs));
    let offered = out
        .reply
        .remote_config
        .clone()
        .expect("config offered")
        .config_hash;

    // The supervisor's sequence with rollback on: APPLYING, FAILED, then its previous config.
    let mut applying = heartbeat(uid, 1);
    applying.remote_config_status = status(&offered, RemoteConfigStatuses::Applying, "");
    let out = process(out.record, applying, ws(), &ctx(&configs));
    let mut failed = heartbeat(uid, 2);
    failed.remote_config_status =
        status(&offered, RemoteConfigStatuses::Failed, "no such receiver");
    let out = process(out.record, failed, ws(), &ctx(&configs));
    assert_eq!(out.events, vec![EventKind::ConfigFailed]);
    assert!(out.reply.remote_config.is_none());
    let mut back = heartbeat(uid, 3);
    back.remote_config_status = status(&previous, RemoteConfigStatuses::Applied, "");
    let out = process(out.record, back, ws(), &ctx(&configs));
    assert_eq!(out.events, vec![EventKind::ConfigRolledBack]);
    assert!(
        out.reply.remote_config.is_none(),
        "no re-push after a rollback"
    );
    let rec = out.record.unwrap();
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Failed
    );
    assert_eq!(rec.rejected_config_hash, offered);
    assert_eq!(rec.rejected_config_error, "no such receiver");

    // Heartbeats after it do not bring it back either, nor a reconnect that reports the config
    // it went back to; a fixed version (a new hash) is sent.
    let out = process(Some(rec), heartbeat(uid, 4), ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none());
    let mut reconnect = full(uid, 0);
    reconnect.remote_config_status = status(&previous, RemoteConfigStatuses::Applied, "");
    let out = process(out.record, reconnect, ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none());
    assert_eq!(out.record.as_ref().unwrap().rejected_config_hash, offered);
    let mut fixed = prod_config();
    fixed.version = 2;
    fixed.files.get_mut("c.yaml").unwrap().body = "a: 2".into();
    fixed.hash = hex::encode(configs::hash_of_files(&fixed.files));
    let fixed = [fixed];
    let out = process(out.record, heartbeat(uid, 1), ws(), &ctx(&fixed));
    let sent = out.reply.remote_config.expect("the fixed version is sent");
    assert_eq!(hex::encode(&sent.config_hash), fixed[0].hash);

    // Moving on to it ends the refusal (a later config with the refused files is sent again).
    let mut moved = heartbeat(uid, 2);
    moved.remote_config_status = status(&sent.config_hash, RemoteConfigStatuses::Applied, "");
    let out = process(out.record, moved, ws(), &ctx(&fixed));
    let rec = out.record.unwrap();
    assert!(rec.rejected_config_hash.is_empty());
    assert_eq!(
        config_standing(&rec, &fixed[0].hash),
        ConfigStanding::Applied
    );
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Pending
    );
}

#[test]
fn an_agent_that_reports_no_config_status_is_sent_each_config_once_and_stands_unknown() {
    let uid = Uuid::now_v7();
    let configs = [prod_config()];
    let quiet = |mut m: AgentToServer| {
        m.capabilities &= !(Cap::ReportsRemoteConfig as u64);
        m
    };
    let out = process(None, quiet(full(uid, 0)), ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_some(), "sent once");
    let rec = out.record.clone().unwrap();
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Unknown
    );
    let out = process(out.record, quiet(heartbeat(uid, 1)), ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none(), "not on every reply");
    // Capabilities are read from every message: once it reports status, it is judged by it.
    let out = process(out.record, heartbeat(uid, 2), ws(), &ctx(&configs));
    let rec = out.record.unwrap();
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Pending
    );
    assert!(
        out.reply.remote_config.is_some(),
        "it does not report running it: sent"
    );
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

/// A config of "collector-packages" offering one package and a 10 s heartbeat.
fn package_bundle() -> StoredConfig {
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
    bundle
}

fn accepts_packages(uid: Uuid) -> AgentToServer {
    let mut msg = full(uid, 0);
    msg.capabilities |= Cap::AcceptsPackages as u64 | Cap::ReportsPackageStatuses as u64;
    msg
}

#[test]
fn packages_and_per_selector_settings_are_offered_once_per_change() {
    let uid = Uuid::now_v7();
    let configs = [prod_config(), package_bundle()];
    let msg = accepts_packages(uid);
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

#[test]
fn a_reply_too_large_defers_its_packages_then_drops_a_config_too_large_alone() {
    let configs = [prod_config(), package_bundle()];
    let out = process(None, accepts_packages(Uuid::now_v7()), ws(), &ctx(&configs));
    let full_size = out.reply.encoded_len();
    let packages = out.reply.packages_available.as_ref().unwrap().encoded_len();
    let config = out.reply.remote_config.as_ref().unwrap().encoded_len();

    let mut fits = process(None, accepts_packages(Uuid::now_v7()), ws(), &ctx(&configs));
    assert_eq!(fits.fit(full_size), None);
    assert!(fits.reply.packages_available.is_some());

    // Without the packages it fits: they wait, and the record forgets offering them.
    let mut deferred = process(None, accepts_packages(Uuid::now_v7()), ws(), &ctx(&configs));
    assert_eq!(deferred.fit(full_size - packages), None);
    assert!(deferred.reply.packages_available.is_none());
    assert!(deferred.reply.remote_config.is_some());
    assert!(deferred.record.unwrap().offered_packages_hash.is_empty());

    // Not even the config alone fits: it is not sent, and its size is said.
    let mut dropped = process(None, accepts_packages(Uuid::now_v7()), ws(), &ctx(&configs));
    assert_eq!(dropped.fit(full_size - packages - config), Some(config));
    assert!(dropped.reply.remote_config.is_none() && dropped.reply.packages_available.is_none());
    assert!(dropped.reply.connection_settings.is_some());
}

#[test]
fn a_config_naming_a_component_the_build_lacks_is_not_sent_until_the_build_has_it() {
    use crate::fleet::agents::{config_failure, went_back};
    let uid = Uuid::now_v7();
    let mut cfg = prod_config();
    let body = "receivers: {otlp: {}}\nexporters: {kafka: {}}";
    cfg.files.get_mut("c.yaml").unwrap().body = body.into();
    cfg.hash = hex::encode(configs::hash_of_files(&cfg.files));
    let configs = [cfg];
    let built = |exporters: &[&str]| {
        Some(crate::fleet::components::build_of(&[
            ("receivers", &["otlp"]),
            ("exporters", exporters),
        ]))
    };
    let mut first = full(uid, 0);
    first.available_components = built(&["debug"]);
    let out = process(None, first, ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none(), "not sent");
    let rec = out.record.unwrap();
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Failed
    );
    assert!(!went_back(&rec), "the agent did not go back from anything");
    assert_eq!(
        config_failure(&rec),
        "not sent: this agent's build lacks exporters/kafka (from the components it reports)"
    );
    let out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&configs));
    assert!(
        out.reply.remote_config.is_none(),
        "not on later messages either"
    );

    // Upgraded to a build with the exporter: sent.
    let mut upgraded = full(uid, 0);
    upgraded.available_components = built(&["debug", "kafka"]);
    let out = process(out.record, upgraded, ws(), &ctx(&configs));
    assert!(
        out.reply.remote_config.is_some(),
        "sent once the build has it"
    );
    let rec = out.record.unwrap();
    assert!(!rec.rejected_by_server && rec.rejected_config_hash.is_empty());
}

#[test]
fn an_unbuildable_config_is_not_sent_to_an_agent_without_status_and_a_report_of_running_it_wins() {
    use crate::fleet::components::build_of;
    let uid = Uuid::now_v7();
    let mut cfg = prod_config();
    cfg.files.get_mut("c.yaml").unwrap().body = "exporters: {kafka: {}}".into();
    cfg.hash = hex::encode(configs::hash_of_files(&cfg.files));
    let configs = [cfg];
    // The supervisor's default: it takes configs, says nothing of how they went.
    let mut first = full(uid, 0);
    first.capabilities &= !(Cap::ReportsRemoteConfig as u64);
    first.available_components = Some(build_of(&[("exporters", &["debug"])]));
    let out = process(None, first, ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none(), "not sent");
    let rec = out.record.unwrap();
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Failed
    );
    let out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&configs));
    assert!(out.reply.remote_config.is_none());

    // An agent that reports running it (it got it elsewhere, or names the type otherwise) is
    // believed over its component list.
    let other = Uuid::now_v7();
    let mut report = full(other, 0);
    report.available_components = Some(build_of(&[("exporters", &["debug"])]));
    report.remote_config_status = Some(RemoteConfigStatus {
        last_remote_config_hash: hex::decode(&configs[0].hash).unwrap(),
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    let rec = process(None, report, ws(), &ctx(&configs)).record.unwrap();
    assert!(!rec.rejected_by_server);
    assert_eq!(
        config_standing(&rec, &configs[0].hash),
        ConfigStanding::Applied
    );
}

#[test]
fn a_custom_message_waits_for_a_later_reply_rather_than_push_a_config_out_of_it() {
    use flotilla_proto::bus::PendingCustomMessage;
    let uid = Uuid::now_v7();
    let configs = [prod_config()];
    let mut rec = declaring_ping(uid);
    rec.pending_custom_messages = vec![PendingCustomMessage {
        capability: "io.example.ping".into(),
        r#type: "big".into(),
        data: vec![0; 8 * 1024],
        expires_unix_ms: NOW + 1000,
    }];
    let mut out = process(Some(rec), heartbeat(uid, 1), ws(), &ctx(&configs));
    assert!(out.reply.custom_message.is_some() && out.reply.remote_config.is_some());
    // Room for the config, not for both.
    let max = out.reply.encoded_len() - 1024;
    assert_eq!(out.fit(max), None);
    assert!(out.reply.remote_config.is_some(), "the config goes");
    assert!(out.reply.custom_message.is_none());
    let rec = out.record.unwrap();
    assert_eq!(rec.pending_custom_messages.len(), 1, "the message waits");
}

#[test]
fn an_agent_of_another_region_is_sent_home_when_it_takes_settings_else_served_here() {
    let regions = flotilla_common::config::RegionSettings {
        fleet: vec!["eu".into(), "us".into()],
        endpoints: [("us".to_owned(), "wss://us.example:4320/v1/opamp".to_owned())].into(),
        ..Default::default()
    };
    let eu = Ctx {
        region: "eu",
        regions: &regions,
        server_ca_pem: Some("CA PEM"),
        ..ctx(&[])
    };
    let from_us = |caps: u64| {
        let mut m = full(Uuid::now_v7(), 0);
        m.capabilities = caps;
        m.agent_description
            .as_mut()
            .unwrap()
            .non_identifying_attributes
            .push(kv("cloud.region", "us"));
        m
    };
    let takes = CAPS | Cap::AcceptsOpAmpConnectionSettings as u64;
    let out = process(None, from_us(takes), ws(), &eu);
    let opamp = out.reply.connection_settings.unwrap().opamp.unwrap();
    assert_eq!(opamp.destination_endpoint, "wss://us.example:4320/v1/opamp");
    assert_eq!(opamp.heartbeat_interval_seconds, 30);
    assert_eq!(opamp.tls.unwrap().ca_pem_contents, "CA PEM");
    let rec = out.record.unwrap();
    assert_eq!(
        (rec.home_region.as_str(), rec.redirected_to.as_str()),
        ("us", "wss://us.example:4320/v1/opamp")
    );

    // It does not take connection settings: served here, its home noted, nothing redirected.
    let out = process(None, from_us(CAPS), ws(), &eu);
    let offered = out.reply.connection_settings.and_then(|c| c.opamp);
    assert!(offered.is_none_or(|o| o.destination_endpoint.is_empty()));
    let rec = out.record.unwrap();
    assert_eq!(
        (rec.home_region.as_str(), rec.redirected_to.as_str()),
        ("us", "")
    );

    // At home, or with a home that has no endpoint configured: no redirect.
    let us = Ctx { region: "us", ..eu };
    let rec = process(None, from_us(takes), ws(), &us).record.unwrap();
    assert_eq!(
        (rec.home_region.as_str(), rec.redirected_to.as_str()),
        ("us", "")
    );
    let no_endpoints = flotilla_common::config::RegionSettings {
        endpoints: Default::default(),
        ..regions.clone()
    };
    let eu_blind = Ctx {
        regions: &no_endpoints,
        ..eu
    };
    let rec = process(None, from_us(takes), ws(), &eu_blind)
        .record
        .unwrap();
    assert_eq!(
        (rec.home_region.as_str(), rec.redirected_to.as_str()),
        ("us", "")
    );
}
