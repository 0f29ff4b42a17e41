//! One binary WebSocket message, as the gateway and the owner handle it: frame header, protobuf
//! decoding, and the OpAMP state machine against an empty and a known agent record.
#![no_main]

use flotilla_common::codec::decode_ws_frame;
use flotilla_coordinator::fleet::configs::Desired;
use flotilla_coordinator::opamp::{Ctx, process};
use flotilla_proto::bus::{AgentRecord, Origin};
use flotilla_proto::opamp::AgentToServer;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = AgentToServer::decode(decode_ws_frame(data)) else {
        return;
    };
    let desired = Desired::default();
    let regions = flotilla_common::config::RegionSettings {
        fleet: vec!["eu".into(), "us".into()],
        endpoints: [("us".to_owned(), "ws://127.0.0.1:1/v1/opamp".to_owned())].into(),
        ..Default::default()
    };
    let ctx = Ctx {
        now_unix_ms: 1_700_000_000_000,
        heartbeat_interval: Duration::from_secs(30),
        desired: &desired,
        limits: &flotilla_common::config::RecordLimits::default(),
        hold_restart: false,
        agent_metrics: &flotilla_common::config::AgentMetricsOffer::Gateway,
        region: "eu",
        regions: &regions,
        server_ca_pem: None,
        // Room for some configs and not for others: both ways of a reply are taken.
        may_offer_config: &|_, hash| hash.first().is_none_or(|b| b % 2 == 0),
        heartbeats_answered_through: None,
    };
    let first = process(None, msg.clone(), Origin::default(), &ctx);
    let known = AgentRecord {
        instance_uid: msg.instance_uid.clone(),
        ..first.record.unwrap_or_default()
    };
    let _ = process(Some(known), msg, Origin::default(), &ctx);
});
