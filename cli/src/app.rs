//! Builds and runs the roles of one `flotilla serve` process. Tests start the same app on
//! `127.0.0.1:0` and read the bound addresses from [`Running`].

use anyhow::{Context, bail};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_common::bus::{Bus, InProcessBus};
use flotilla_common::config::ServeConfig;
use flotilla_common::store::{EmbeddedStore, Store};
use flotilla_coordinator::{Coordinator, CoordinatorConfig};
use flotilla_gateway::{Gateway, GatewayConfig};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// A started process: where it listens, and how to stop it.
pub struct Running {
    pub opamp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// Stopped first, so sessions close (and are recorded as disconnects) while owners still run.
    gateway: (CancellationToken, JoinHandle<()>),
    rest: (CancellationToken, Vec<JoinHandle<()>>),
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Starts every role of `cfg` (the embedded single-process mode).
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    if cfg.tls.is_some() {
        bail!("TLS on the OpAMP listener (--tls-cert) is not available in this build yet");
    }
    let mut registry = Registry::default();
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let store =
        Arc::new(EmbeddedStore::open(&cfg.data_dir).with_context(|| {
            format!("cannot open the data directory {}", cfg.data_dir.display())
        })?);
    let coordinator = Coordinator::new(
        CoordinatorConfig::new(&cfg.region, &cfg.node_id, cfg.heartbeat_interval),
        bus.clone(),
        store.clone() as Arc<dyn Store>,
        &mut registry,
    )
    .await?;
    let gw_cfg = GatewayConfig::new(&cfg.region, &cfg.node_id, cfg.max_message_size);
    let gateway = Gateway::new(gw_cfg, bus, &mut registry);

    let opamp = bind(cfg.opamp_listen, "--opamp-listen").await?;
    let api = bind(cfg.api_listen, "--api-listen").await?;
    let (opamp_addr, api_addr) = (opamp.local_addr()?, api.local_addr()?);

    let rest_cancel = CancellationToken::new();
    let gw_cancel = CancellationToken::new();
    let router = ops_router(Arc::new(registry))
        .merge(flotilla_coordinator::api::router(coordinator.clone()));
    let api_stop = rest_cancel.clone();
    let mut rest = vec![
        tokio::spawn(
            async move {
                let serve = axum::serve(api, router)
                    .with_graceful_shutdown(async move { api_stop.cancelled().await });
                if let Err(e) = serve.await {
                    warn!(error = %e, "API server failed");
                }
            }
            .instrument(info_span!("api")),
        ),
        tokio::spawn(store.clone().run_flusher(rest_cancel.clone())),
    ];
    let c = rest_cancel.clone();
    rest.push(tokio::spawn(
        async move {
            if let Err(e) = coordinator.run(c).await {
                warn!(error = %e, "coordinator stopped");
            }
        }
        .instrument(info_span!("coordinator")),
    ));
    let g = gw_cancel.clone();
    let gw_task = tokio::spawn(
        async move {
            if let Err(e) = gateway.run(opamp, g).await {
                warn!(error = %e, "gateway stopped");
            }
        }
        .instrument(info_span!("gateway")),
    );
    info!(%opamp_addr, %api_addr, "flotilla serving (embedded mode)");
    Ok(Running {
        opamp_addr,
        api_addr,
        gateway: (gw_cancel, gw_task),
        rest: (rest_cancel, rest),
    })
}

impl Running {
    /// Drains: closes agent sessions (WebSocket close 1001), then stops the API and the
    /// coordinator after their work in flight, then writes the store. Gives up after `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let drain = async {
            self.gateway.0.cancel();
            let _ = self.gateway.1.await;
            self.rest.0.cancel();
            for task in self.rest.1 {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(?grace, "shutdown did not finish within the grace period");
        }
    }
}

/// `/healthz`, `/readyz` and `/metrics`: served by every process, whatever its roles.
fn ops_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // In the embedded mode every shard is owned from the start, so started means ready.
        .route("/readyz", get(|| async { "ready\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    match prometheus_client::encoding::text::encode(&mut out, &registry) {
                        Ok(()) => (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            out,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
}
