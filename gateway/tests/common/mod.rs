//! A gateway serving on a free loopback port, and an owner answering its agents' messages, for
//! the gateway's tests (not every test uses both).
#![allow(dead_code)]

use flotilla_common::bus::{Bus, BusError};
use flotilla_gateway::{Gateway, GatewayConfig};
use flotilla_proto::bus::{Uplink, UplinkReply, uplink};
use flotilla_proto::opamp::{AgentToServer, ServerToAgent};
use prometheus_client::registry::Registry;
use prost::Message;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Running {
    /// Its OpAMP WebSocket endpoint.
    pub url: String,
    /// Its metrics.
    pub registry: Registry,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), BusError>>,
}

/// Gateway "gw1" of region "test" on `bus`, serving until [`Running::stop`].
pub async fn serve(bus: Arc<dyn Bus>) -> Running {
    let mut registry = Registry::default();
    let gateway = Gateway::new(
        GatewayConfig::new("test", "gw1", 1 << 20),
        bus,
        &mut registry,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gateway.run(listener, cancel.clone()));
    Running {
        url,
        registry,
        cancel,
        task,
    }
}

impl Running {
    /// Its metrics, in Prometheus' text format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// An owner of the shards of `subject` on `bus`: answers every agent message with what `answer`
/// makes of it (other uplinks go unanswered), until the bus closes.
pub async fn answer_agents(
    bus: &dyn Bus,
    subject: &str,
    answer: impl Fn(AgentToServer) -> ServerToAgent + Send + 'static,
) {
    let mut uplinks = bus.subscribe(subject).await.unwrap();
    tokio::spawn(async move {
        while let Some(i) = uplinks.next().await {
            let up = Uplink::decode(i.msg.payload).unwrap();
            let Some(uplink::Kind::AgentToServer(a)) = up.kind else {
                continue;
            };
            let reply = UplinkReply {
                server_to_agent: answer(AgentToServer::decode(a.as_slice()).unwrap())
                    .encode_to_vec(),
                ..Default::default()
            };
            let _ = i.reply.unwrap().send(reply.encode_to_vec().into()).await;
        }
    });
}
