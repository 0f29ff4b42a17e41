//! Owners' pushes through the gateway: a batch of downlinks reaches each agent on its own
//! connection and is acknowledged entry by entry, in order; a downlink for a connection the
//! gateway does not hold (or an agent that does not speak on it) is acknowledged undelivered
//! without holding back the others; a batch that does not decode is answered with an empty ack.

mod common;

use flotilla_common::bus::{Bus, BusMessage, InProcessBus};
use flotilla_common::names::Subjects;
use flotilla_loadtest::client::WsClient;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::bus::{
    Downlink, DownlinkAck, DownlinkBatch, DownlinkBatchAck, Origin, Uplink, UplinkReply, uplink,
};
use flotilla_proto::opamp::{AgentToServer, CustomMessage, ServerToAgent};
use parking_lot::Mutex;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

/// An owner of every shard that answers each agent message with an empty reply and keeps the
/// connection each agent spoke on (what a real owner records as the agent's origin).
async fn owner(bus: &InProcessBus) -> Arc<Mutex<HashMap<Vec<u8>, Origin>>> {
    let mut uplinks = bus
        .subscribe(&Subjects::new("test").uplink_all())
        .await
        .unwrap();
    let origins = Arc::new(Mutex::new(HashMap::new()));
    let seen = origins.clone();
    tokio::spawn(async move {
        while let Some(i) = uplinks.next().await {
            let up = Uplink::decode(i.msg.payload).unwrap();
            let mut reply = UplinkReply::default();
            if let Some(uplink::Kind::AgentToServer(a)) = up.kind {
                let uid = AgentToServer::decode(a.as_slice()).unwrap().instance_uid;
                let answer = ServerToAgent {
                    instance_uid: uid.clone(),
                    ..Default::default()
                };
                reply.server_to_agent = answer.encode_to_vec();
                seen.lock().insert(uid, up.origin.unwrap());
            }
            if let Some(r) = i.reply {
                let _ = r.send(reply.encode_to_vec().into()).await;
            }
        }
    });
    origins
}

/// A push carrying `marker` for agent `uid` on connection `connection`.
fn downlink(connection: u64, uid: &[u8], marker: &str) -> Downlink {
    let msg = ServerToAgent {
        instance_uid: uid.to_vec(),
        custom_message: Some(CustomMessage {
            r#type: marker.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Downlink {
        connection_id: connection,
        instance_uid: uid.to_vec(),
        server_to_agent: msg.encode_to_vec(),
    }
}

fn marker(m: &ServerToAgent) -> &str {
    m.custom_message.as_ref().map_or("", |c| c.r#type.as_str())
}

#[tokio::test]
async fn a_batch_reaches_each_agent_on_its_connection_and_is_acknowledged_in_order() {
    let bus = Arc::new(InProcessBus::default());
    let origins = owner(&bus).await;
    let gateway = common::serve(bus.clone()).await;
    let url = gateway.url.clone();

    let mut agents = Vec::new();
    for _ in 0..4 {
        let mut agent = SimAgent::new("otelcol", &[]);
        let mut ws = WsClient::connect(&url).await.unwrap();
        ws.request(&agent.full_report()).await.unwrap();
        agents.push((agent.uid.as_bytes().to_vec(), ws));
    }
    let origin = |uid: &[u8]| origins.lock()[uid].clone();
    let conns: Vec<u64> = agents
        .iter()
        .map(|(u, _)| origin(u).connection_id)
        .collect();
    assert!(agents.iter().all(|(u, _)| origin(u).gateway_id == "gw1"));

    // Every agent's push, with two that cannot be delivered among them: a connection this
    // gateway never had, and agent 3's connection for agent 0.
    let unknown = conns.iter().max().unwrap() + 1000;
    let batch = DownlinkBatch {
        downlinks: vec![
            downlink(conns[0], &agents[0].0, "a0"),
            downlink(unknown, &agents[1].0, "lost"),
            downlink(conns[1], &agents[1].0, "a1"),
            downlink(conns[3], &agents[0].0, "misaddressed"),
            downlink(conns[2], &agents[2].0, "a2"),
            downlink(conns[3], &agents[3].0, "a3"),
        ],
        end_heartbeat_grants: false,
    };
    let subjects = Subjects::new("test");
    let req = BusMessage::new(subjects.downlink_batch("gw1"), batch.encode_to_vec());
    let ack = DownlinkBatchAck::decode(bus.request(req, T).await.unwrap()).unwrap();
    assert_eq!(ack.delivered, vec![true, false, true, false, true, true]);
    for (i, (uid, ws)) in agents.iter_mut().enumerate() {
        let got = ws.recv(T).await.expect("pushed");
        assert_eq!(&got.instance_uid, uid);
        assert_eq!(marker(&got), format!("a{i}"), "only its own push");
    }
    for (_, ws) in &mut agents {
        assert!(
            ws.recv(Duration::from_millis(200)).await.is_err(),
            "nothing more"
        );
    }

    // The single subject still delivers on its own.
    let single = downlink(conns[2], &agents[2].0, "again");
    let req = BusMessage::new(subjects.downlink("gw1"), single.encode_to_vec());
    let ack = DownlinkAck::decode(bus.request(req, T).await.unwrap()).unwrap();
    assert!(ack.delivered);
    assert_eq!(marker(&agents[2].1.recv(T).await.unwrap()), "again");

    // A batch that does not decode: nothing delivered, an empty ack, counted.
    let req = BusMessage::new(subjects.downlink_batch("gw1"), vec![0xff; 8]);
    let ack = DownlinkBatchAck::decode(bus.request(req, T).await.unwrap()).unwrap();
    assert!(ack.delivered.is_empty());
    let text = gateway.metrics();
    let line = r#"flotilla_gateway_rejected_total{reason="malformed_downlink"} 1"#;
    assert!(text.contains(line), "{line} missing from\n{text}");
    assert!(agents[0].1.recv(Duration::from_millis(200)).await.is_err());

    gateway.stop().await;
}
