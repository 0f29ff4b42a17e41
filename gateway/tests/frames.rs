//! A connection's messages are answered in order whatever their sizes, when an agent writes
//! several (larger than the gateway's read buffer, and small) before reading any answer.

mod common;

use flotilla_common::bus::InProcessBus;
use flotilla_common::names::Subjects;
use flotilla_loadtest::client::WsClient;
use flotilla_proto::opamp::{AgentToServer, EffectiveConfig, ServerToAgent};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn messages_sent_back_to_back_after_a_large_one_are_all_answered_in_order() {
    let bus = Arc::new(InProcessBus::default());
    // The owner answers each message with its sequence number in `flags`.
    common::answer_agents(bus.as_ref(), &Subjects::new("test").uplink_all(), |msg| {
        ServerToAgent {
            instance_uid: msg.instance_uid,
            flags: msg.sequence_num,
            ..Default::default()
        }
    })
    .await;
    let gateway = common::serve(bus.clone()).await;
    let url = gateway.url.clone();

    let uid = uuid::Uuid::now_v7().as_bytes().to_vec();
    let message = |sequence_num: u64, config_bytes: usize| AgentToServer {
        instance_uid: uid.clone(),
        sequence_num,
        effective_config: (config_bytes > 0).then(|| EffectiveConfig {
            config_map: Some(flotilla_proto::opamp::AgentConfigMap {
                config_map: [(
                    "collector.yaml".to_owned(),
                    flotilla_proto::opamp::AgentConfigFile {
                        body: vec![b'x'; config_bytes].into(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        }),
        ..Default::default()
    };
    let mut ws = WsClient::connect(&url).await.unwrap();
    // Large, small, large, small, small: all written before any answer is read.
    let sizes = [64 * 1024, 0, 20 * 1024, 0, 0];
    for (seq, size) in sizes.iter().enumerate() {
        ws.send(&message(seq as u64, *size)).await.unwrap();
    }
    for seq in 0..sizes.len() {
        let reply = ws.recv(Duration::from_secs(10)).await.unwrap();
        assert_eq!(reply.flags, seq as u64, "answers in the order sent");
    }
    // And the connection goes on as usual.
    let reply = ws.request(&message(5, 0)).await.unwrap();
    assert_eq!(reply.flags, 5);
    gateway.stop().await;
}
