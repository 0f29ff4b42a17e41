//! Builds and runs the roles of one `flotilla serve` process: both on the in-process bus and the
//! embedded store (no URLs), or either or both on NATS and Redis (a cluster). Tests start the same
//! app on `127.0.0.1:0` and read the bound addresses from [`Running`].

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_common::bus::{Bus, InProcessBus, MeasuredBus, NatsBus};
use flotilla_common::config::{AlertSettings, ServeConfig};
use flotilla_common::pki::Ca;
use flotilla_common::store::{EmbeddedStore, LeaseTiming, Measured, RedisStore, Store};
use flotilla_common::tls::ReloadingTls;
use flotilla_coordinator::api::auth::ApiTokens;
use flotilla_coordinator::fleet::alerts::AlertKind;
use flotilla_coordinator::fleet::redact::Redactor;
use flotilla_coordinator::opamp::identity::Issuer;
use flotilla_coordinator::service::alerts::{AlertsConfig, Sink, SinkKind};
use flotilla_coordinator::service::leases::LeaseKeeper;
use flotilla_coordinator::{CoordinatorConfig, Service, ShardTable};
use flotilla_gateway::{AgentTokens, Gateway, GatewayConfig};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// A started process: where it listens, and how to stop it.
pub struct Running {
    /// The OpAMP listener (processes with the gateway role).
    pub opamp_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    /// Stopped first, so sessions close (and are recorded as disconnects) while owners still run.
    gateway: Option<(CancellationToken, JoinHandle<()>)>,
    rest: (CancellationToken, Vec<JoinHandle<()>>),
}

/// Accept queue length. A connection storm (every agent of a lost gateway reconnecting at once)
/// overflows the usual 128 and each dropped SYN costs its agent a 1 s retransmission; the kernel
/// caps this at net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Whether the process can serve, for `/readyz`: Err says why not.
type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Room left in a bus message for the envelope around an agent's message (origin, headers): an
/// agent message may be at most the bus's limit less this.
const ENVELOPE_ROOM: usize = 16 * 1024;

fn spawn_named(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(task.instrument(info_span!("role", name)))
}

/// How often TLS files are checked for changes.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Loads the TLS files of a listener and keeps following them until `cancel`.
fn reloading_tls(
    files: &Option<flotilla_common::config::TlsFiles>,
    what: &str,
    cancel: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Option<Arc<ReloadingTls>>> {
    let Some(files) = files else { return Ok(None) };
    let tls = ReloadingTls::load(files.clone()).with_context(|| format!("TLS on {what}"))?;
    tasks.push(spawn_named(
        "tls-reload",
        tls.clone().watch(TLS_RELOAD_EVERY, cancel.clone()),
    ));
    Ok(Some(tls))
}

/// The alert sinks and policy of `--alert-*` and `--alertmanager-url`, checked.
fn alerts_config(s: &AlertSettings) -> anyhow::Result<AlertsConfig> {
    let mut cfg = AlertsConfig::default();
    for (kind, urls) in [
        (SinkKind::Webhook, &s.webhooks),
        (SinkKind::Alertmanager, &s.alertmanagers),
    ] {
        for url in urls {
            cfg.sinks
                .push(Sink::new(kind, url).map_err(anyhow::Error::msg)?);
        }
    }
    if !s.kinds.is_empty() {
        cfg.kinds = s
            .kinds
            .iter()
            .map(|k| {
                AlertKind::parse(k.trim()).ok_or_else(|| {
                    let all: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
                    anyhow::anyhow!("--alert-kinds: {k:?} is not one of {}", all.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    cfg.policy.grace_ms = u64::try_from(s.grace.as_millis()).unwrap_or(u64::MAX);
    cfg.every = s.interval;
    Ok(cfg)
}

/// Starts the roles of `cfg`.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    let mut registry = Registry::default();
    flotilla_common::telemetry::traces::register_metrics(&mut registry);
    flotilla_common::telemetry::process::register(&mut registry);
    let rest_cancel = CancellationToken::new();
    let mut rest = Vec::new();
    let opamp_tls = match cfg.gateway {
        true => reloading_tls(&cfg.tls, "the OpAMP listener", &rest_cancel, &mut rest)?,
        false => None,
    };
    let api_tls = reloading_tls(&cfg.api_tls, "the API listener", &rest_cancel, &mut rest)?;
    let mut ready: Vec<Readiness> = Vec::new();

    // The largest agent message, and the largest config, that can cross the bus.
    let mut max_message_size = cfg.max_message_size;
    let (bus, bus_connected): (Arc<dyn Bus>, Arc<dyn Fn() -> bool + Send + Sync>) =
        match &cfg.nats_url {
            Some(url) => {
                let name = format!("flotilla-{}", cfg.node_id);
                let nats = NatsBus::connect(url, &name, &cfg.nats_security)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let bus_max = nats.max_payload().saturating_sub(ENVELOPE_ROOM);
                if bus_max < max_message_size {
                    info!(
                        nats_max_payload = nats.max_payload(),
                        max_message_size = bus_max,
                        "agent messages and configs are limited by what NATS carries \
                         (raise max_payload on the NATS servers to allow larger ones)"
                    );
                    max_message_size = bus_max;
                }
                let probe = nats.clone();
                (Arc::new(nats), Arc::new(move || probe.is_connected()))
            }
            None => (Arc::new(InProcessBus::default()), Arc::new(|| true)),
        };
    let bus: Arc<dyn Bus> = Arc::new(MeasuredBus::new(bus, &mut registry));
    let connected = bus_connected.clone();
    ready.push(Arc::new(move || {
        connected()
            .then_some(())
            .ok_or_else(|| "not connected to NATS".to_owned())
    }));

    let mut api_router = None;
    if cfg.coordinator {
        let mut coord_cfg =
            CoordinatorConfig::new(&cfg.region, &cfg.node_id, cfg.heartbeat_interval);
        coord_cfg.limits = cfg.record_limits.clone();
        coord_cfg.agent_retention = cfg.agent_retention;
        coord_cfg.max_message_size = max_message_size;
        if !cfg.redact_patterns.is_empty() {
            coord_cfg.redactor = Redactor::new(&cfg.redact_patterns)
                .context("a --redact-pattern is not a valid regular expression")?;
        }
        coord_cfg.alerts = alerts_config(&cfg.alerts)?;
        coord_cfg.agent_metrics = cfg.agent_metrics.clone();
        coord_cfg.regions = cfg.regions.clone();
        if let Some((cert, key)) = &cfg.signing_ca {
            let ca = Ca::load(cert, key).context("the signing CA (--signing-ca-cert)")?;
            let server_ca_pem = match &cfg.opamp_server_ca {
                Some(path) => Some(read_pem_certificate(path).context("--opamp-server-ca")?),
                None => None,
            };
            coord_cfg.issuer = Some(Arc::new(Issuer {
                ca,
                validity: cfg.issued_cert_validity,
                endpoint: cfg.opamp_advertise_url.clone(),
                server_ca_pem,
            }));
        }
        let coordinator = if let Some(url) = &cfg.redis_url {
            let redis = RedisStore::connect(url, &cfg.region, &cfg.redis_tls)
                .await
                .map_err(anyhow::Error::msg)?
                .with_audit_retention(cfg.audit_retention);
            let store = Arc::new(redis.clone()) as Arc<dyn Store>;
            let store = Arc::new(Measured::new(store, "redis", &mut registry)) as Arc<dyn Store>;
            let coordinator = Service::new(
                coord_cfg,
                bus.clone(),
                store,
                ShardTable::none(),
                &mut registry,
            )
            .await?;
            let keeper = LeaseKeeper::new(
                coordinator.owner(),
                redis,
                bus.clone(),
                bus_connected,
                &cfg.region,
                &cfg.node_id,
                LeaseTiming::from_ttl(cfg.lease_ttl),
            );
            let health = keeper.health();
            let keeping = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let alive = keeping.clone();
            ready.push(Arc::new(move || {
                if !alive.load(Ordering::Relaxed) {
                    Err("the shard lease keeper stopped; restart this process".into())
                } else if !health.load(Ordering::Relaxed) {
                    Err("shard leases cannot be kept (Redis or NATS unreachable)".into())
                } else {
                    Ok(())
                }
            }));
            let cancel = rest_cancel.clone();
            rest.push(spawn_named("leases", async move {
                // Its own task: should it ever panic, readiness says so instead of the shards
                // silently lapsing while the process looks healthy.
                let run = tokio::spawn(keeper.run(cancel.clone()).in_current_span()).await;
                if !cancel.is_cancelled() {
                    keeping.store(false, Ordering::Relaxed);
                    tracing::error!(outcome = ?run.err(), "the shard lease keeper stopped");
                }
            }));
            rest.push(spawn_named(
                "coordinator",
                coordinator.clone().run_duties(rest_cancel.clone()),
            ));
            rest.push(spawn_named(
                "heartbeats",
                coordinator.clone().serve_heartbeats(rest_cancel.clone()),
            ));
            coordinator
        } else {
            let store = EmbeddedStore::open_with(&cfg.data_dir, cfg.audit_retention).with_context(
                || format!("cannot open the data directory {}", cfg.data_dir.display()),
            )?;
            store.register_metrics(&mut registry);
            let probe = store.clone();
            ready.push(Arc::new(move || probe.health()));
            let flusher = store
                .start_flusher(rest_cancel.clone())
                .context("cannot start the thread that writes agent records")?;
            rest.push(spawn_named("store", flusher));
            let store = Measured::new(Arc::new(store), "embedded", &mut registry);
            let coordinator = Service::new(
                coord_cfg,
                bus.clone(),
                Arc::new(store) as Arc<dyn Store>,
                ShardTable::all(),
                &mut registry,
            )
            .await?;
            let c = coordinator.clone();
            let cancel = rest_cancel.clone();
            rest.push(spawn_named("coordinator", async move {
                if let Err(e) = c.run(cancel).await {
                    warn!(error = %e, "coordinator stopped");
                }
            }));
            coordinator
        };
        let duties = coordinator.duty_health();
        ready.push(Arc::new(move || duties.check()));
        let tokens = match &cfg.api_tokens {
            Some(path) => Some(Arc::new(ApiTokens::load(path).map_err(anyhow::Error::msg)?)),
            None => {
                warn!(
                    "the admin API has no tokens (--api-tokens): whoever reaches {} may change \
                     every agent",
                    cfg.api_listen
                );
                None
            }
        };
        api_router = Some(flotilla_coordinator::api::router(
            coordinator.ops(),
            tokens,
            cfg.api_tls.is_some(),
            cfg.api_max_body,
            cfg.per_agent_metrics,
            &mut registry,
        ));
    }

    let gateway = if cfg.gateway {
        let mut gw_cfg = GatewayConfig::new(&cfg.region, &cfg.node_id, max_message_size);
        if let Some(files) = flotilla_common::config::open_file_limit()
            && cfg.limits.max_connections as u64 > files
        {
            warn!(
                max_connections = cfg.limits.max_connections,
                open_file_limit = files,
                "--max-connections is above the open-file limit: connections past the limit fail \
                 to be accepted instead of being answered 503"
            );
        }
        gw_cfg.tls = opamp_tls;
        gw_cfg.identity = cfg.agent_identity;
        gw_cfg.limits = cfg.limits.clone();
        gw_cfg.forward = cfg.agent_metrics_forward.clone();
        gw_cfg.tokens = match &cfg.agent_tokens {
            Some(path) => Some(Arc::new(
                AgentTokens::load(path).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        let gateway = Gateway::new(gw_cfg, bus.clone(), &mut registry);
        let listener = bind(cfg.opamp_listen, "--opamp-listen").await?;
        Some((gateway, listener))
    } else {
        None
    };
    let api = bind(cfg.api_listen, "--api-listen").await?;
    let api_addr = api.local_addr()?;
    let mut router = ops_router(Arc::new(registry), ready);
    if let Some(r) = api_router {
        router = router.merge(r);
    }
    rest.push(spawn_named(
        "api",
        crate::api_server::serve(api, router, api_tls, rest_cancel.clone()),
    ));

    let (opamp_addr, gateway) = match gateway {
        Some((gateway, listener)) => {
            let addr = listener.local_addr()?;
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            let task = spawn_named("gateway", async move {
                if let Err(e) = gateway.run(listener, c).await {
                    warn!(error = %e, "gateway stopped");
                }
            });
            (Some(addr), Some((cancel, task)))
        }
        None => (None, None),
    };
    let mode = if cfg.clustered() {
        "cluster"
    } else {
        "embedded"
    };
    info!(opamp_addr = ?opamp_addr, %api_addr, mode, "flotilla serving");
    Ok(Running {
        opamp_addr,
        api_addr,
        gateway,
        rest: (rest_cancel, rest),
    })
}

impl Running {
    /// Drains: closes agent sessions (WebSocket close 1001), then stops the API and the
    /// coordinator after their work in flight, then writes the store. Gives up after `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let drain = async {
            if let Some((cancel, task)) = self.gateway {
                cancel.cancel();
                let _ = task.await;
            }
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

/// `/healthz`, `/readyz` and `/metrics`: served by every process, whatever its roles. Ready
/// means every check in `ready` passes: NATS connected, Redis answering the lease keeper, the
/// data directory writable, the background duties running; 503 names what fails.
fn ops_router(registry: Arc<Registry>, ready: Vec<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let failing: Vec<String> = ready.iter().filter_map(|check| check().err()).collect();
                async move {
                    if failing.is_empty() {
                        (StatusCode::OK, "ready\n".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", failing.join("; ")),
                        )
                    }
                }
            }),
        )
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

/// A PEM file holding at least one certificate, as text.
fn read_pem_certificate(path: &std::path::Path) -> anyhow::Result<String> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(pem)
}
