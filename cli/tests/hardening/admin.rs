//! What admins could do: settings out of range, names that are not names, agents' records
//! that must go, and calls that are refused.

use super::*;

/// Items 1 and 16: settings out of range are refused at PUT; a huge interval already stored (by
/// an older version) cannot crash message handling or the silence sweep.
#[tokio::test]
async fn out_of_range_settings_are_refused_and_stored_ones_cannot_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    {
        use flotilla_common::store::{
            AgentSettings, AuditEntry, EmbeddedStore, Store, StoredConfig,
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let forever = StoredConfig {
            name: "forever".into(),
            version: 0,
            selector: Default::default(),
            files: Default::default(),
            hash: String::new(),
            packages: Default::default(),
            settings: Some(AgentSettings {
                heartbeat_interval: Some(humantime::parse_duration("99999999999999d").unwrap()),
                ..Default::default()
            }),
            created_unix_ms: 1,
            created_by: "an older version".into(),
            comment: String::new(),
        };
        let audit = |c: &StoredConfig| AuditEntry {
            id: String::new(),
            at_unix_ms: 1,
            caller: "test".into(),
            action: "config.put".into(),
            object: format!("config/{}", c.name),
            before: None,
            after: None,
        };
        store.put_config(forever, true, &audit).await.unwrap();
    }
    let mut cfg = config(dir.path());
    cfg.heartbeat_interval = Duration::from_secs(1);
    let srv = start(cfg).await;

    let (status, body) = srv
        .put(
            "/api/v1/configs/huge",
            json!({"settings": {"heartbeat_interval": "99999999999999d"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("from 1s to 1day"), "{msg}");
    assert_eq!(
        srv.get("/api/v1/configs/huge").await.0,
        404,
        "nothing stored"
    );
    let (status, body) = srv
        .put(
            "/api/v1/configs/half",
            json!({"settings": {"heartbeat_interval": "1500ms"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The stored interval reaches agents without a panic: answered, offered, not unavailable.
    let mut agent = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    let reply = answered_ok(&mut ws, &agent.full_report()).await;
    let offered = reply.connection_settings.unwrap().opamp.unwrap();
    assert!(offered.heartbeat_interval_seconds > 1 << 60);
    answered_ok(&mut ws, &agent.heartbeat()).await;
    // The silence sweep ran over it (every second) and the duties are fine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready = reqwest::get(format!("{}/readyz", srv.api)).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_eq!(
        srv.metric("flotilla_coordinator_duty_failures_total").await,
        0.0
    );
    assert_eq!(srv.agent(agent.uid).await["status"], "connected");
    srv.stop().await;
}

/// Item 11: messages without a uid leave no records; agents can be deleted (audited) and are
/// removed after the agent retention.
#[tokio::test]
async fn uidless_floods_leave_no_records_and_agents_are_deleted_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.agent_retention = Duration::from_secs(2);
    let srv = start(cfg).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let anonymous = AgentToServer::default().encode_to_vec();
    for _ in 0..200 {
        let r = client
            .post(&srv.http_url)
            .header("Content-Type", "application/x-protobuf")
            .body(anonymous.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply = ServerToAgent::decode(r.bytes().await.unwrap()).unwrap();
        assert!(reply.agent_identification.is_some());
    }
    let (_, health) = srv.get("/api/v1/fleet/health").await;
    assert_eq!(health["total_agents"], 0, "{health}");

    // Deleted on request, with an audit entry.
    let mut kept = SimAgent::new("otelcol", &[]);
    let mut ws = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws, &kept.full_report()).await;
    let mut gone = SimAgent::new("otelcol", &[]);
    let mut ws2 = WsClient::connect(&srv.ws_url).await.unwrap();
    answered_ok(&mut ws2, &gone.full_report()).await;
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/agents/{}", srv.api, gone.uid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        srv.get(&format!("/api/v1/agents/{}", gone.uid)).await.0,
        404
    );
    let (_, audit) = srv
        .get(&format!("/api/v1/audit?object=agent/{}", gone.uid))
        .await;
    assert_eq!(audit["entries"][0]["action"], "agent.delete", "{audit}");

    // Disconnected past the retention: removed by the server, audited as its own doing.
    answered_ok(&mut ws, &kept.disconnect()).await;
    srv.wait_for(
        &format!("/api/v1/audit?object=agent/{}", kept.uid),
        Duration::from_secs(10),
        |v| v["entries"][0]["action"] == "agent.expire" && v["entries"][0]["caller"] == "flotilla",
    )
    .await;
    assert_eq!(
        srv.get(&format!("/api/v1/agents/{}", kept.uid)).await.0,
        404
    );
    srv.stop().await;
}

/// Item 16: `.`/`..` are not config names; multi-member gzip bodies are read whole; refused
/// admin calls are counted, logged and audited.
#[tokio::test]
async fn dot_names_multi_member_gzip_and_refused_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::api_tokens_file(
        dir.path(),
        &[
            ("ann", "admin", "ann-secret"),
            ("vic", "viewer", "vic-secret"),
        ],
    );
    let mut cfg = config(dir.path());
    cfg.api_tokens = Some(tokens);
    let srv = start(cfg).await;

    let body = json!({"settings": {"heartbeat_interval": "10s"}}).to_string();
    for name in ["%2E", "%2E%2E"] {
        let mut s = TcpStream::connect(api_addr(&srv)).await.unwrap();
        let head = format!(
            "PUT /api/v1/configs/{name} HTTP/1.1\r\nAuthorization: Bearer ann-secret\r\n\
             Content-Type: application/json"
        );
        let (status, reply) = http_on(&mut s, &head, body.as_bytes()).await.unwrap();
        assert_eq!(status, 400, "{name}: {}", String::from_utf8_lossy(&reply));
    }

    // One AgentToServer, gzipped as two members.
    let mut agent = SimAgent::new("otelcol", &[]);
    let bytes = agent.full_report().encode_to_vec();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let gzip = |part: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, part).unwrap();
        enc.finish().unwrap()
    };
    let mut two_members = gzip(a);
    two_members.extend(gzip(b));
    let r = HttpClient::new(&srv.http_url)
        .post_raw(two_members, &[("Content-Encoding", "gzip".into())])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.message.unwrap().error_response.is_none());

    // Refused calls: counted, and on record.
    let client = reqwest::Client::new();
    let put = |token: Option<&str>| {
        let mut r = client
            .put(format!("{}/api/v1/configs/x", srv.api))
            .json(&json!({"settings": {"heartbeat_interval": "10s"}}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some("vic-secret")).await.unwrap().status(), 403);
    assert_eq!(
        srv.metric("flotilla_coordinator_api_refused_total{reason=\"unauthenticated\"")
            .await,
        1.0
    );
    assert_eq!(
        srv.metric("flotilla_coordinator_api_refused_total{reason=\"forbidden\"")
            .await,
        1.0
    );
    let audit: Value = client
        .get(format!("{}/api/v1/audit?object=api", srv.api))
        .bearer_auth("ann-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["caller"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("api.forbidden", "vic"),
            ("api.unauthenticated", "(no valid token)")
        ]
    );
    srv.stop().await;
}
