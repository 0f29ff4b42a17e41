//! Heartbeats the gateway answers under an owner's grant, against a scripted owner on the
//! in-process bus: the heartbeats after a grant are answered without the owner and reach it in a
//! batch to the owner the grant names; the message after them names the last one; the owner's
//! answer to a batch, an end of all grants, and a batch nobody took each send the next heartbeat
//! to the owner.

mod common;

use flotilla_common::bus::{Bus, BusMessage, InProcessBus};
use flotilla_common::names::Subjects;
use flotilla_loadtest::client::WsClient;
use flotilla_proto::bus::{
    AnsweredHeartbeats, AnsweredHeartbeatsAck, DownlinkBatch, HeartbeatGrant, Uplink, UplinkReply,
    uplink,
};
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use parking_lot::Mutex;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

/// How the scripted owner answers a batch of answered heartbeats.
#[derive(Clone, Copy, PartialEq)]
enum Batches {
    Take,
    EndGrants,
    /// Grants name an owner nobody answers for (gone, or of a version before grants).
    Elsewhere,
}

#[derive(Default)]
struct Seen {
    /// Agent messages that reached the owner, with the last heartbeat answered before each.
    messages: Vec<(u64, Option<u64>)>,
    batches: Vec<AnsweredHeartbeats>,
}

struct Owner {
    seen: Mutex<Seen>,
    batches: Mutex<Batches>,
}

/// Answers every agent message with a bare reply and a grant naming it ("c1"); batches as
/// `batches` says.
async fn owner(bus: &InProcessBus) -> Arc<Owner> {
    let subjects = Subjects::new("test");
    let mut uplinks = bus.subscribe(&subjects.uplink_all()).await.unwrap();
    let mut answered = bus
        .subscribe(&subjects.answered_heartbeats("c1"))
        .await
        .unwrap();
    let owner = Arc::new(Owner {
        seen: Mutex::default(),
        batches: Mutex::new(Batches::Take),
    });
    let this = owner.clone();
    tokio::spawn(async move {
        while let Some(i) = uplinks.next().await {
            let up = Uplink::decode(i.msg.payload).unwrap();
            let Some(uplink::Kind::AgentToServer(a)) = up.kind else {
                continue;
            };
            let msg = AgentToServer::decode(a.as_slice()).unwrap();
            let bare = ServerToAgent {
                instance_uid: msg.instance_uid.clone(),
                capabilities: 3,
                ..Default::default()
            };
            let to = match *this.batches.lock() {
                Batches::Elsewhere => "nobody",
                _ => "c1",
            };
            let reply = UplinkReply {
                server_to_agent: bare.encode_to_vec(),
                heartbeat_grant: Some(HeartbeatGrant {
                    sequence_num: msg.sequence_num,
                    capabilities: msg.capabilities,
                    owner: to.into(),
                }),
                ..Default::default()
            };
            let through = up.heartbeats_answered_through;
            this.seen.lock().messages.push((msg.sequence_num, through));
            if let Some(r) = i.reply {
                let _ = r.send(reply.encode_to_vec().into()).await;
            }
        }
    });
    let this = owner.clone();
    tokio::spawn(async move {
        while let Some(i) = answered.next().await {
            let batch = AnsweredHeartbeats::decode(i.msg.payload).unwrap();
            let mut ack = AnsweredHeartbeatsAck::default();
            if *this.batches.lock() == Batches::EndGrants {
                ack.grants_ended = batch.heartbeats.iter().map(|h| h.connection_id).collect();
            }
            this.seen.lock().batches.push(batch);
            if let Some(r) = i.reply {
                let _ = r.send(ack.encode_to_vec().into()).await;
            }
        }
    });
    owner
}

fn heartbeat(seq: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: vec![7; 16],
        sequence_num: seq,
        capabilities: 0x2001,
        ..Default::default()
    }
}

/// Waits until a batch has brought the owner the agent's heartbeat `seq` (batches go every 50 ms:
/// the heartbeats before it may have come in others); the connection it names.
async fn recorded(owner: &Owner, seq: u64) -> u64 {
    tokio::time::timeout(T, async {
        loop {
            let found = owner.seen.lock().batches.iter().find_map(|b| {
                assert_eq!(b.gateway_id, "gw1");
                let h = b.heartbeats.iter().find(|h| h.sequence_num == seq)?;
                Some(h.connection_id)
            });
            if let Some(connection) = found {
                return connection;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the heartbeat in a batch")
}

/// Waits until the gateway's metrics show `line`.
async fn shows(gateway: &common::Running, line: &str) {
    tokio::time::timeout(T, async {
        while !gateway.metrics().contains(line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{line} in {}", gateway.metrics()));
}

#[tokio::test]
async fn heartbeats_under_a_grant_are_answered_here_and_reach_the_owner_in_batches() {
    let bus = Arc::new(InProcessBus::default());
    let owner = owner(&bus).await;
    let gateway = common::serve(bus.clone()).await;
    let url = gateway.url.clone();
    let mut ws = WsClient::connect(&url).await.unwrap();
    let messages = || owner.seen.lock().messages.clone();

    // The first message goes to the owner and is granted; the next three are answered here
    // with the same reply, and the owner hears of the latest in a batch.
    let granted = ws.request(&heartbeat(0)).await.unwrap();
    for seq in 1..=3 {
        assert_eq!(ws.request(&heartbeat(seq)).await.unwrap(), granted);
    }
    assert_eq!(messages(), [(0, None)]);
    let connection = recorded(&owner, 3).await;
    // Anything but the next heartbeat goes to the owner, naming the last one answered.
    let mut report = heartbeat(4);
    report.health = Some(Default::default());
    ws.request(&report).await.unwrap();
    assert_eq!(messages(), [(0, None), (4, Some(3))]);

    // The owner ends the grant when it takes the batch: the heartbeat after goes to it.
    *owner.batches.lock() = Batches::EndGrants;
    ws.request(&heartbeat(5)).await.unwrap();
    assert_eq!(recorded(&owner, 5).await, connection);
    shows(
        &gateway,
        "flotilla_gateway_heartbeats_total{outcome=\"grant_ended\"} 1",
    )
    .await;
    ws.request(&heartbeat(6)).await.unwrap();
    assert_eq!(messages().last(), Some(&(6, Some(5))));

    // An end of all grants (a change of the desired state): the next heartbeat goes on.
    *owner.batches.lock() = Batches::Take;
    ws.request(&heartbeat(7)).await.unwrap();
    assert_eq!(messages().len(), 3, "answered here");
    let end = DownlinkBatch {
        downlinks: Vec::new(),
        end_heartbeat_grants: true,
    };
    let subject = Subjects::new("test").downlink_batch("gw1");
    let req = BusMessage::new(subject, end.encode_to_vec());
    bus.request(req, T).await.unwrap();
    ws.request(&heartbeat(8)).await.unwrap();
    assert_eq!(messages().last(), Some(&(8, Some(7))));

    // A grant naming an owner nobody answers for: the batch is not taken, and its grants end.
    *owner.batches.lock() = Batches::Elsewhere;
    let mut report = heartbeat(9);
    report.health = Some(Default::default());
    ws.request(&report).await.unwrap();
    ws.request(&heartbeat(10)).await.unwrap();
    assert_eq!(messages().len(), 5, "answered here");
    let not_delivered = "flotilla_gateway_heartbeats_total{outcome=\"not_delivered\"} 1";
    shows(&gateway, not_delivered).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.request(&heartbeat(11)).await.unwrap();
    assert_eq!(messages().last(), Some(&(11, Some(10))));

    let metrics = gateway.metrics();
    let answered = "flotilla_gateway_heartbeats_total{outcome=\"answered\"} 6";
    assert!(metrics.contains(answered), "{metrics}");
    gateway.stop().await;
}
