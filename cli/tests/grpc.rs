//! The admin gRPC service on the API port, with the generated tonic client over HTTP/2
//! cleartext: configs (and a refused one naming its line), agents by selector, labels, history,
//! a rollout to completion and the audit log; then bearer tokens, roles and attribution, as in
//! the REST API.

mod common;

use common::fleet::{Fleet, collectors};
use common::{config, start};
use flotilla_proto::admin::admin_client::AdminClient;
use flotilla_proto::admin::{self as pb, start_rollout_request::Phases};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

fn collector_yaml(note: &str) -> String {
    format!(
        "# {note}\nreceivers:\n  otlp:\n    protocols: {{grpc: {{}}}}\nprocessors:\n  batch: {{}}\n\
         exporters:\n  debug: {{}}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      \
         processors: [batch]\n      exporters: [debug]\n"
    )
}

fn put(name: &str, selector: &str, yaml: String, activate: Option<bool>) -> pb::PutConfigRequest {
    pb::PutConfigRequest {
        name: name.into(),
        selector: selector.into(),
        files: [("collector.yaml".to_owned(), yaml)].into(),
        activate,
        ..Default::default()
    }
}

async fn list(client: &mut AdminClient<Channel>, selector: &str) -> pb::ListAgentsResponse {
    client
        .list_agents(pb::ListAgentsRequest {
            selector: selector.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn actions(log: &pb::QueryAuditResponse) -> Vec<(&str, &str)> {
    log.entries
        .iter()
        .map(|e| (e.action.as_str(), e.caller.as_str()))
        .collect()
}

#[tokio::test]
async fn admin_operations_over_grpc_on_the_api_port() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(config(dir.path())).await;
    // Prior-knowledge HTTP/2 on the listener that serves REST over HTTP/1.
    let mut client = AdminClient::connect(srv.api.clone()).await.unwrap();

    let v1 = client
        .put_config(put("otel", "env=prod", collector_yaml("v1"), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            v1.version,
            v1.active,
            v1.selector.as_str(),
            v1.created_by.as_str()
        ),
        (1, true, "env=prod", "anonymous")
    );
    let broken = collector_yaml("x").replace("exporters: [debug]", "exporters: [debug, otlp/2]");
    let e = client
        .put_config(put("bad", "", broken, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("collector.yaml:14:26:"), "{e:?}");
    let e = client
        .get_config(pb::GetConfigRequest {
            name: "bad".into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "a refused config is not stored: {e:?}"
    );

    let mut agents = collectors(2, &[("env", "prod")], |_| false, "");
    agents.extend(collectors(1, &[("env", "dev")], |_| false, ""));
    let fleet = Fleet::start(&srv.ws_url, agents).await;
    let deadline = Instant::now() + WAIT;
    while list(&mut client, "").await.total < 3 {
        assert!(Instant::now() < deadline, "the agents never showed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prod = list(&mut client, "env=prod").await;
    assert_eq!(prod.total, 2);
    let mut listed: Vec<String> = prod.agents.iter().map(|a| a.instance_uid.clone()).collect();
    listed.sort();
    let mut expected: Vec<String> = fleet.uids[..2].iter().map(|u| u.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(prod.agents.iter().all(|a| a.status == "connected"
        && a.non_identifying_attributes.get("env").map(String::as_str) == Some("prod")));
    let e = client
        .list_agents(pb::ListAgentsRequest {
            selector: "env in (a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let health = client
        .get_fleet_health(pb::GetFleetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((health.total_agents, health.connected_agents), (3, 3));
    let metrics = client
        .get_fleet_agent_metrics(pb::GetFleetAgentMetricsRequest {
            selector: "env=prod".into(),
            top: 5,
        })
        .await
        .unwrap()
        .into_inner();
    // No agent sends its own metrics here: selected, none reporting, the lists empty.
    assert_eq!(
        (metrics.agents_reporting, metrics.agents_selected > 0),
        (0, true)
    );
    let lists: serde_json::Value = serde_json::from_str(&metrics.json).unwrap();
    assert_eq!(lists["top_cpu"], serde_json::json!([]));
    let e = client
        .get_fleet_agent_metrics(pb::GetFleetAgentMetricsRequest {
            top: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let a = fleet.uids[0].to_string();
    let labels = client
        .set_labels(pb::SetLabelsRequest {
            instance_uid: a.clone(),
            set: [("ring".to_owned(), "canary".to_owned())].into(),
            remove: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        labels.labels.get("ring").map(String::as_str),
        Some("canary")
    );
    let canary = list(&mut client, "env=prod,ring=canary").await;
    assert_eq!(canary.agents.len(), 1);
    assert_eq!(canary.agents[0].instance_uid, a);
    let detail = client
        .get_agent(pb::GetAgentRequest {
            instance_uid: a.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detail.summary.unwrap().labels["ring"], "canary");
    let detail: serde_json::Value = serde_json::from_str(&detail.detail_json).unwrap();
    assert_eq!(detail["instance_uid"], a.as_str());
    let e = client
        .get_agent(pb::GetAgentRequest {
            instance_uid: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The fleet's agents declare no custom capability: refused as the REST API refuses it.
    let e = client
        .send_custom_message(pb::SendCustomMessageRequest {
            instance_uid: a.clone(),
            capability: "io.example.ping".into(),
            r#type: "ping".into(),
            data: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not declare"), "{e:?}");

    let v2 = client
        .put_config(put("otel", "env=prod", collector_yaml("v2"), Some(false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v2.version, v2.active), (2, false));
    let history = client
        .get_config_versions(pb::GetConfigVersionsRequest {
            name: "otel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<(u64, bool)> = history
        .versions
        .iter()
        .map(|v| (v.version, v.active))
        .collect();
    assert_eq!(versions, [(2, false), (1, true)]);
    assert_eq!(history.active_version, Some(1));
    let diff = client
        .get_config_diff(pb::GetConfigDiffRequest {
            name: "otel".into(),
            from: 1,
            to: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(diff.diff.contains("-# v1\n+# v2\n"), "{}", diff.diff);

    let r = client
        .start_rollout(pb::StartRolloutRequest {
            config: "otel".into(),
            phases: Some(Phases::Steps(pb::StepPhases {
                initial: 1,
                ..Default::default()
            })),
            soak: "0s".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.from_version, r.to_version, r.state.as_str()),
        (1, 2, "running")
    );
    assert_eq!(r.phases.first().map(|p| p.agents), Some(1), "{r:?}");
    let deadline = Instant::now() + WAIT;
    let done = loop {
        let now = client
            .get_rollout(pb::GetRolloutRequest { id: r.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if now.state == "completed" {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout never completed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (done.enrolled, done.applied, done.failed),
        (2, 2, 0),
        "{done:?}"
    );
    let sizes: Vec<u64> = done.phases.iter().map(|p| p.agents).collect();
    assert_eq!(sizes, [1, 1]);
    assert!(done.phases.iter().all(|p| !p.completed.is_empty()));
    let listed = client
        .list_rollouts(pb::ListRolloutsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rollouts.len(), 1);
    let e = client
        .control_rollout(pb::ControlRolloutRequest {
            id: r.id.clone(),
            action: "pause".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "a completed rollout: {e:?}"
    );

    let log = client
        .query_audit(pb::QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let actions = actions(&log);
    for expected in [
        ("config.put", "anonymous"),
        ("labels.set", "anonymous"),
        ("rollout.start", "anonymous"),
        ("rollout.completed", "flotilla"),
    ] {
        assert!(
            actions.contains(&expected),
            "{expected:?} not in {actions:?}"
        );
    }
    assert_eq!(
        actions.iter().filter(|a| a.0 == "config.put").count(),
        2,
        "the refused config is not on record: {actions:?}"
    );

    // The REST API is still there on the same port, and unknown paths are still not gRPC's.
    assert_eq!(srv.get("/api/v1/configs/otel").await.1["version"], 2);
    assert_eq!(srv.get("/api/v1/nope").await.0, 404);

    // Deleted: no version active any more, the history kept; a second delete finds nothing.
    let deleted = client
        .delete_config(pb::DeleteConfigRequest {
            name: "otel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (deleted.name.as_str(), deleted.deactivated_version),
        ("otel", 2)
    );
    let listed = client
        .list_configs(pb::ListConfigsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.configs.is_empty(), "{listed:?}");
    let e = client
        .delete_config(pb::DeleteConfigRequest {
            name: "otel".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    fleet.stop().await;
    srv.stop().await;
}

fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn tokens_and_roles_apply_to_grpc_calls_and_the_caller_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::api_tokens_file(
        dir.path(),
        &[
            ("ann", "admin", "ann-token"),
            ("vic", "viewer", "vic-token"),
        ],
    );
    let mut cfg = config(dir.path());
    cfg.api_tokens = Some(tokens);
    let srv = start(cfg).await;
    let mut client = AdminClient::connect(srv.api.clone()).await.unwrap();

    let e = client
        .get_fleet_health(pb::GetFleetHealthRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("Bearer"), "{e:?}");
    let e = client
        .get_fleet_health(bearer("wrong", pb::GetFleetHealthRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    client
        .get_fleet_health(bearer("vic-token", pb::GetFleetHealthRequest {}))
        .await
        .expect("a viewer reads");
    let e = client
        .put_config(bearer(
            "vic-token",
            put("otel", "env=prod", collector_yaml("v1"), None),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs the admin role"), "{e:?}");

    let v1 = client
        .put_config(bearer(
            "ann-token",
            put("otel", "env=prod", collector_yaml("v1"), None),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v1.created_by, "ann",
        "the handler saw the middleware's caller"
    );
    let log = client
        .query_audit(bearer(
            "vic-token",
            pb::QueryAuditRequest {
                object: "config/otel".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(actions(&log), [("config.put", "ann")]);
    srv.stop().await;
}
