//! How long each console page takes to render with 30,000 agents in the store (the embedded store,
//! as `flotilla serve` runs it), request to last byte through the API router, in process (no
//! network). Baselines in the same run: `/healthz`-like trivial routing is not in this router, so
//! the REST API's JSON for the same questions (fleet health, one page of agents, one agent) is
//! measured beside the pages.
//!
//!     cargo bench -p flotilla-coordinator --bench console
//!
//! AGENTS sets the fleet size (default 30000).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_common::bus::InProcessBus;
use flotilla_common::names::shard_of;
use flotilla_common::store::{Deadline, EmbeddedStore, Fence, Store};
use flotilla_coordinator::ops::configs::ConfigDraft;
use flotilla_coordinator::ops::{Caller, DesiredState, Ops, OpsConfig};
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use flotilla_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AgentDescription, AnyValue, ComponentHealth, EffectiveConfig,
    KeyValue, RemoteConfigStatus, RemoteConfigStatuses, any_value,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use uuid::Uuid;

const CONFIG: &str = "receivers: {otlp: {}}\nprocessors: {batch: {}}\nexporters:\n  otlp:\n    endpoint: collector.internal:4317\nservice:\n  pipelines:\n    traces: {receivers: [otlp], processors: [batch], exporters: [otlp]}\n    metrics: {receivers: [otlp], processors: [batch], exporters: [otlp]}\n";

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn component(healthy: bool, error: &str) -> ComponentHealth {
    ComponentHealth {
        healthy,
        last_error: error.into(),
        status: if healthy {
            "StatusOK"
        } else {
            "StatusRecoverableError"
        }
        .into(),
        ..Default::default()
    }
}

/// A collector as the swarm's agents look: attributes, a health tree, an applied config.
fn record(i: usize, now: u64) -> AgentRecord {
    let uid = Uuid::now_v7();
    let env = ["prod", "prod", "staging", "dev"][i % 4];
    let region = ["eu-west-1", "us-east-1", "ap-south-1"][i % 3];
    let healthy = !i.is_multiple_of(50);
    let pipelines: std::collections::BTreeMap<String, ComponentHealth> = ["traces", "metrics"]
        .iter()
        .map(|p| {
            let mut h = component(true, "");
            h.component_health_map = [("receiver:otlp", true), ("exporter:otlp", healthy)]
                .iter()
                .map(|(n, ok)| {
                    (
                        n.to_string(),
                        component(*ok, if *ok { "" } else { "connection refused" }),
                    )
                })
                .collect();
            (format!("pipeline:{p}"), h)
        })
        .collect();
    let mut health = component(healthy, "");
    health.component_health_map = pipelines;
    let files = HashMap::from([(
        "collector.yaml".to_owned(),
        AgentConfigFile {
            body: CONFIG.as_bytes().to_vec().into(),
            content_type: "text/yaml".into(),
        },
    )]);
    AgentRecord {
        instance_uid: uid.as_bytes().to_vec(),
        sequence_num: 42,
        capabilities: 15367,
        description: Some(Box::new(AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "io.opentelemetry.collector"),
                kv("service.instance.id", &uid.to_string()),
                kv("service.version", ["0.110.0", "0.109.0"][i % 2]),
            ],
            non_identifying_attributes: vec![
                kv("deployment.environment", env),
                kv("cloud.region", region),
                kv("host.name", &format!("host-{i}")),
                kv("os.type", "linux"),
            ],
        })),
        health: Some(Box::new(health)),
        effective_config: Some(Box::new(EffectiveConfig {
            config_map: Some(AgentConfigMap { config_map: files }),
        })),
        remote_config_status: Some(RemoteConfigStatus {
            last_remote_config_hash: vec![7; 32],
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        status: if i.is_multiple_of(100) {
            AgentStatus::Silent
        } else {
            AgentStatus::Connected
        } as i32,
        first_seen_unix_ms: now - 3_600_000,
        last_seen_unix_ms: now - (i as u64 % 30_000),
        ..Default::default()
    }
}

fn pages(c: &mut Criterion) {
    let agents: usize = std::env::var("AGENTS")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(30_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let now = flotilla_common::telemetry::now_unix_ms();
    let mut some_uid = String::new();
    rt.block_on(async {
        for i in 0..agents {
            let rec = record(i, now);
            let fence = Fence {
                shard: shard_of(&rec.instance_uid),
                epoch: 1,
            };
            store
                .save_agent(fence, &rec, Deadline::Keep, None)
                .await
                .unwrap();
            if i == agents / 2 {
                some_uid = Uuid::from_slice(&rec.instance_uid).unwrap().to_string();
            }
        }
    });
    let ops = rt.block_on(async {
        let desired = DesiredState::load(store.as_ref()).await.unwrap();
        let ops = Ops::new(
            OpsConfig::new("local"),
            store.clone(),
            Arc::new(InProcessBus::new(1024)),
            desired,
        );
        let caller = Caller::anonymous();
        for v in 0..3 {
            let draft = ConfigDraft {
                selector: "deployment.environment=prod".parse().unwrap(),
                files: BTreeMap::from([(
                    "collector.yaml".to_owned(),
                    CONFIG.replace("4317", &format!("43{v:02}")),
                )]),
                activate: true,
                ..Default::default()
            };
            ops.put_config(&caller, "prod-base", draft).await.unwrap();
        }
        ops
    });
    let router = flotilla_coordinator::api::router(
        ops,
        None,
        false,
        flotilla_common::config::DEFAULT_API_MAX_BODY,
        false,
        &mut prometheus_client::registry::Registry::default(),
    );
    let paths = [
        ("page /", "/".to_owned()),
        ("page /agents", "/agents".to_owned()),
        (
            "page /agents (selector, sorted by last seen)",
            "/agents?selector=deployment.environment%3Dprod,cloud.region%3Deu-west-1&sort=last_seen&order=desc".to_owned(),
        ),
        ("page /agents?config=applied", "/agents?config=applied".to_owned()),
        ("page /agents/{uid}", format!("/agents/{some_uid}")),
        ("page /configs", "/configs".to_owned()),
        ("page /configs/{name} (diff)", "/configs/prod-base?from=1&to=3".to_owned()),
        ("page /configs/{name}/edit", "/configs/prod-base/edit".to_owned()),
        ("page /rollouts", "/rollouts".to_owned()),
        ("page /audit", "/audit".to_owned()),
        ("api /api/v1/fleet/health", "/api/v1/fleet/health".to_owned()),
        ("api /api/v1/fleet/overview", "/api/v1/fleet/overview".to_owned()),
        ("api /api/v1/agents?limit=50", "/api/v1/agents?limit=50".to_owned()),
        ("api /api/v1/agents/{uid}", format!("/api/v1/agents/{some_uid}")),
    ];
    let mut group = c.benchmark_group(format!("console_{agents}_agents"));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, path) in &paths {
        let get = || {
            let router = router.clone();
            let req = Request::get(path.as_str()).body(Body::empty()).unwrap();
            async move {
                let r = router.oneshot(req).await.unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{path}");
                axum::body::to_bytes(r.into_body(), usize::MAX)
                    .await
                    .unwrap()
                    .len()
            }
        };
        let bytes = rt.block_on(get());
        eprintln!("{name}: {bytes} bytes");
        group.bench_function(*name, |b| b.iter(|| rt.block_on(get())));
    }
    group.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
