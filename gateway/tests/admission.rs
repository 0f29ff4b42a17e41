//! A gateway sends its owners at most `MAX_UPLINKS_IN_FLIGHT` agent messages at a time: when
//! more agents speak at once, the rest wait at the gateway and are sent as answers come back,
//! and every agent is answered.

mod common;

use flotilla_common::bus::{Bus, InProcessBus};
use flotilla_common::names::Subjects;
use flotilla_gateway::MAX_UPLINKS_IN_FLIGHT;
use flotilla_loadtest::client::WsClient;
use flotilla_loadtest::sim::SimAgent;
use flotilla_proto::bus::{Uplink, UplinkReply, uplink};
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test]
async fn agents_past_the_bound_wait_at_the_gateway_and_are_all_answered() {
    let bus = Arc::new(InProcessBus::default());
    // A slow owner: each message is answered 300 ms after it arrives.
    let mut uplinks = bus
        .subscribe(&Subjects::new("test").uplink_all())
        .await
        .unwrap();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (at_owner, peak) = (now.clone(), most.clone());
    tokio::spawn(async move {
        while let Some(i) = uplinks.next().await {
            // Agents' messages only (a closed connection is told too).
            let up = Uplink::decode(i.msg.payload).unwrap();
            let Some(uplink::Kind::AgentToServer(a)) = up.kind else {
                continue;
            };
            let n = at_owner.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            let at_owner = at_owner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let answer = ServerToAgent {
                    instance_uid: AgentToServer::decode(a.as_slice()).unwrap().instance_uid,
                    ..Default::default()
                };
                let reply = UplinkReply {
                    server_to_agent: answer.encode_to_vec(),
                    ..Default::default()
                };
                at_owner.fetch_sub(1, Ordering::SeqCst);
                let _ = i.reply.unwrap().send(reply.encode_to_vec().into()).await;
            });
        }
    });
    let gateway = common::serve(bus.clone()).await;
    let url = gateway.url.clone();

    let agents = MAX_UPLINKS_IN_FLIGHT + 100;
    let mut connected = Vec::new();
    for _ in 0..agents {
        let agent = SimAgent::new("otelcol", &[]);
        connected.push((agent, WsClient::connect(&url).await.unwrap()));
    }
    let speaking: Vec<_> = connected
        .into_iter()
        .map(|(mut agent, mut ws)| {
            tokio::spawn(async move {
                let reply = ws.request(&agent.full_report()).await.unwrap();
                assert_eq!(reply.instance_uid, agent.uid.as_bytes());
            })
        })
        .collect();
    for s in speaking {
        tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .expect("every agent answered")
            .unwrap();
    }
    let peak = most.load(Ordering::SeqCst);
    assert!(
        peak <= MAX_UPLINKS_IN_FLIGHT,
        "{peak} messages at the owner at once"
    );
    assert!(peak >= MAX_UPLINKS_IN_FLIGHT / 2, "only {peak} at once");
    gateway.stop().await;
}
