//! A gateway serving on a free loopback port, for the gateway's tests.

use flotilla_common::bus::{Bus, BusError};
use flotilla_gateway::{Gateway, GatewayConfig};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Running {
    /// Its OpAMP WebSocket endpoint.
    pub url: String,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), BusError>>,
}

/// Gateway "gw1" of region "test" on `bus`, serving until [`Running::stop`].
pub async fn serve(bus: Arc<dyn Bus>) -> Running {
    let gateway = Gateway::new(
        GatewayConfig::new("test", "gw1", 1 << 20),
        bus,
        &mut Registry::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gateway.run(listener, cancel.clone()));
    Running { url, cancel, task }
}

impl Running {
    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
}
