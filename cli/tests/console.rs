//! The web console end to end: a real `flotilla serve` process with API tokens, simulated agents
//! over real WebSockets, and a real headless Chromium driven over WebDriver. What the browser
//! shows is checked against the REST API, and every change made in the browser against the store.
//!
//! With FLOTILLA_SCREENSHOTS=<dir>, the browser saves a screenshot of each page there (how
//! docs/console.md's pictures are made).

mod common;

use common::browser::Browser;
use common::fleet::{Fleet, collectors};
use flotilla_testkit::free_port;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const ADMIN: &str = "admin-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

struct Serve {
    child: Child,
    api: String,
    ws: String,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve() -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::api_tokens_file(
        dir.path(),
        &[("alice", "admin", ADMIN), ("victor", "viewer", VIEWER)],
    );
    let (opamp, api) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--opamp-listen", &format!("127.0.0.1:{opamp}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .arg("--api-tokens")
        .arg(&tokens)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // The unhealthy agent counts as failing in a rollout at once.
        .args(["--alert-grace", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve {
        child,
        api: format!("http://127.0.0.1:{api}"),
        ws: format!("ws://127.0.0.1:{opamp}/v1/opamp"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{}/healthz", s.api)).await.is_err() {
        assert!(Instant::now() < deadline, "flotilla serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s
}

/// GET an API path as the admin.
async fn api(s: &Serve, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.api))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until `check` holds of the API's answer at `path`.
async fn wait_api(s: &Serve, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = api(s, path).await;
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const VALID: &str = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [debug]}\n";
/// Valid YAML, but its pipeline names a receiver nobody defined (line 4).
const INVALID: &str = "receivers: {otlp: {}}\nexporters: {debug: {}}\nservice:\n  pipelines: {traces: {receivers: [nope], exporters: [debug]}}\n";

async fn sign_in(b: &Browser, s: &Serve, token: &str) {
    b.goto(&format!("{}/", s.api)).await;
    // Signed out: sent to the sign-in page, and back to the overview after.
    assert!(b.url().await.contains("/signin"), "{}", b.url().await);
    b.find("#token").await;
    b.shot("signin").await;
    b.fill("#token", token).await;
    b.click("form[action='/signin'] button[type=submit]").await;
    b.wait_text("h1", "Fleet overview").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_and_changes_it_as_the_api_would() {
    let s = serve().await;
    // Six agents: four in prod (one unhealthy), two in staging.
    let mut agents = collectors(4, &[("deployment.environment", "prod")], |_| false, "");
    agents.extend(collectors(
        2,
        &[("deployment.environment", "staging")],
        |_| false,
        "",
    ));
    agents[1].health.healthy = false;
    agents[1].health.last_error = "exporter otlp: connection refused".into();
    let unhealthy = agents[1].uid;
    let fleet = Fleet::start(&s.ws, agents).await;
    let b = Browser::start().await;
    let base = s.api.clone();

    sign_in(&b, &s, ADMIN).await;

    // The overview's numbers are the API's.
    let (_, health) = api(&s, "/api/v1/fleet/health").await;
    for (tile, key) in [
        ("agents", "total_agents"),
        ("connected", "connected_agents"),
        ("disconnected", "disconnected_agents"),
        ("silent", "silent_agents"),
        ("healthy", "healthy_agents"),
        ("unhealthy", "unhealthy_agents"),
    ] {
        let shown = b.text(&format!("[data-total={tile}]")).await;
        assert_eq!(shown, health[key].to_string(), "tile {tile}");
    }
    assert_eq!(health["total_agents"], 6);
    assert_eq!(health["unhealthy_agents"], 1);
    assert!(b.source().await.contains(&unhealthy.to_string()));
    // One region: no region table, no warning about regions, no "this region" heading.
    for absent in ["#regions", "#missing-regions", "#this-region"] {
        assert!(b.all(absent).await.is_empty(), "{absent} on the overview");
    }

    b.shot("overview").await;

    // A search by selector narrows the list; a bad selector shows its error inline.
    b.goto(&format!("{base}/agents")).await;
    assert_eq!(b.attr("[data-matches]", "data-matches").await, "6");
    assert!(
        b.all("th[data-col=region], td[data-region], #missing-regions")
            .await
            .is_empty()
    );
    b.fill("#selector", "deployment.environment=prod").await;
    b.click("form.search button[type=submit]").await;
    b.find("[data-matches='4']").await;
    assert_eq!(b.all("table.agents tbody tr").await.len(), 4);
    b.fill("#selector", "deployment.environment in (prod").await;
    b.click("form.search button[type=submit]").await;
    let error = b.text("#selector-error").await;
    assert!(error.contains("expected \")\""), "{error}");
    b.goto(&format!(
        "{base}/agents?health=unhealthy&columns=deployment.environment"
    ))
    .await;
    assert_eq!(b.attr("[data-matches]", "data-matches").await, "1");
    b.goto(&format!(
        "{base}/agents?selector=deployment.environment%3Dprod&sort=last_seen&order=desc"
    ))
    .await;
    b.shot("agents").await;

    // An agent's page shows its health tree, with the last error.
    b.goto(&format!("{base}/agents/{unhealthy}")).await;
    let tree = b.text("ul.tree").await;
    assert!(tree.contains("unhealthy"), "{tree}");
    assert!(tree.contains("connection refused"), "{tree}");
    assert!(b.all("form[action$='/restart'] button").await.len() == 1);
    assert!(
        b.all("#region, #home-region, #roaming, #sent-home")
            .await
            .is_empty()
    );
    b.shot("agent").await;

    // A config with an error: the error at its file:line, and nothing stored.
    b.goto(&format!("{base}/configs/base/edit")).await;
    b.fill("#selector", "deployment.environment=prod").await;
    b.fill("#body0", INVALID).await;
    b.click("button[value=save]").await;
    let problems = b.text("#problems").await;
    assert!(problems.contains("collector.yaml:4"), "{problems}");
    assert!(problems.contains("nope"), "{problems}");
    b.shot("config-error").await;
    assert_eq!(api(&s, "/api/v1/configs/base").await.0, 404);

    // A valid one: previewed (how many agents), then saved; it reaches the agents.
    b.fill("#body0", VALID).await;
    b.click("button[value=preview]").await;
    assert_eq!(b.attr("[data-matching]", "data-matching").await, "4");
    assert_eq!(
        api(&s, "/api/v1/configs/base").await.0,
        404,
        "a preview stores nothing"
    );
    b.click("button[value=save]").await;
    b.find("p.notice").await;
    assert!(b.url().await.contains("/configs/base"), "{}", b.url().await);
    wait_api(
        &s,
        "/api/v1/agents?selector=deployment.environment=prod&config=applied",
        "the config applied by the four prod agents",
        |v| v["total"] == 4,
    )
    .await;

    // Version 2, staged (not activated) in the browser, then rolled out from the browser.
    b.goto(&format!("{base}/configs/base/edit")).await;
    b.fill(
        "#body0",
        &VALID.replace("debug: {}", "debug: {verbosity: basic}"),
    )
    .await;
    b.click("input[name=activate]").await;
    b.click("button[value=save]").await;
    b.find("p.notice").await;
    b.goto(&format!("{base}/configs/base?from=1&to=2")).await;
    assert!(!b.all("table.diff td.ins").await.is_empty());
    b.shot("config").await;

    b.goto(&format!("{base}/rollouts")).await;
    b.fill("#version", "2").await;
    b.fill("input[name=percentages]", "50, 100").await;
    b.fill("#soak", "1s").await;
    b.click("button[value=plan]").await;
    assert_eq!(b.attr("[data-candidates]", "data-candidates").await, "4");
    assert_eq!(b.all("ol.phases li").await.len(), 2);
    b.click("button[value=start]").await;
    b.find("#state").await;
    assert!(b.url().await.contains("/rollouts/"), "{}", b.url().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The page updates itself; read what it shows now.
        let state = b.attr("#state", "data-state").await;
        if state == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout still {state}: {}",
            b.text("#live").await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(b.all("table.phases tbody tr[data-phase]").await.len(), 2);
    // The fleet's unhealthy agent failed phase 1: the page says which and why.
    let why = b.text("tr[data-phase-failures='1']").await;
    assert!(
        why.contains("unhealthy: exporter otlp: connection refused"),
        "{why}"
    );
    b.shot("rollout").await;
    let rollouts = api(&s, "/api/v1/rollouts").await.1;
    assert_eq!(rollouts["rollouts"][0]["state"], "completed", "{rollouts}");
    b.goto(&format!("{base}/rollouts")).await;
    b.shot("rollouts").await;
    b.goto(&format!("{base}/configs")).await;
    b.shot("configs").await;

    // The audit log has every change made in the browser, by the signed-in caller.
    b.goto(&format!("{base}/audit")).await;
    let audit = b.text("table.audit").await;
    assert!(
        audit.contains("config.put") && audit.contains("rollout.start"),
        "{audit}"
    );
    assert!(audit.contains("alice"), "{audit}");
    assert!(
        b.all("th[data-col=region], #missing-regions")
            .await
            .is_empty()
    );
    b.shot("audit").await;

    // A forged cross-site POST (a page elsewhere posting to the console) is refused.
    let forged = format!(
        "data:text/html,<form id=f method=post action='{base}/configs/evil'>\
         <input name=csrf value=guess><input name=file value=a.yaml><input name=body value=x>\
         <input name=intent value=save></form><script>f.submit()</script>"
    );
    b.goto(&forged).await;
    b.find("p.error").await;
    assert_eq!(api(&s, "/api/v1/configs/evil").await.0, 404);

    // A viewer sees everything and can change nothing.
    b.goto(&format!("{base}/")).await;
    b.click("form[action='/signout'] button").await;
    b.find("#token").await;
    sign_in(&b, &s, VIEWER).await;
    b.goto(&format!("{base}/agents/{unhealthy}")).await;
    b.find("ul.tree").await;
    assert!(b.all("form[action$='/restart']").await.is_empty());
    assert!(b.all("textarea#labels").await.is_empty());
    b.goto(&format!("{base}/configs/base/edit")).await;
    b.fill("#body0", VALID).await;
    b.click("button[value=save]").await;
    let refused = b.text("p.error").await;
    assert!(refused.contains("needs the admin role"), "{refused}");
    let history = api(&s, "/api/v1/configs/base/versions").await.1;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        2,
        "{history}"
    );
    b.goto(&format!("{base}/")).await;
    // Events appear on the overview as they happen (the page follows /events, with the viewer's
    // session): agents that connect now are listed, with their service name. (Until the page's
    // stream is open an agent's connection goes unseen, so agents keep coming until one is.)
    let mut late = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.all("#events li[data-kind=connected]").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no live event\n{}",
            b.source().await
        );
        let mut agent = flotilla_loadtest::sim::SimAgent::new("otelcol-contrib", &[]);
        let mut ws = flotilla_loadtest::client::WsClient::connect(&s.ws)
            .await
            .unwrap();
        ws.request(&agent.full_report()).await.unwrap();
        late.push(ws);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let event = b.text("#events li[data-kind=connected]").await;
    assert!(event.contains("otelcol-contrib"), "{event}");

    b.close().await;
    fleet.stop().await;
}

/// The CSRF defences one by one, as a client that holds a valid session would meet them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_csrf_token_and_the_same_origin() {
    let s = serve().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Signed out: pages send the browser to sign in; the API is untouched by the console.
    let r = http.get(format!("{}/agents", s.api)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let signin = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(signin.starts_with("/signin?next=%2Fagents"), "{signin}");

    // The sign-in page sets the CSRF cookie; signing in sets the session (HttpOnly, Strict).
    let r = http.get(format!("{}/signin", s.api)).send().await.unwrap();
    let csrf_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(csrf_cookie.contains("SameSite=Strict"), "{csrf_cookie}");
    let csrf = csrf_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("flotilla_csrf=")
        .to_owned();
    let post = |path: &str, cookie: String, body: String| {
        http.post(format!("{}{path}", s.api))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let wrong = post(
        "/signin",
        format!("flotilla_csrf={csrf}"),
        format!("csrf=other&token={ADMIN}"),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status(), 403);
    let ok = post(
        "/signin",
        format!("flotilla_csrf={csrf}"),
        format!("csrf={csrf}&token={ADMIN}"),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 303);
    let session = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");
    let cookies = format!("flotilla_csrf={csrf}; flotilla_session={ADMIN}");
    let body = "file=a.yaml&body=x%3A+1%0A&intent=save";

    // No token, a wrong token, another origin: refused, nothing stored.
    let r = post("/configs/c", cookies.clone(), body.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post("/configs/c", cookies.clone(), format!("csrf=nope&{body}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}/configs/c", s.api))
        .header("cookie", cookies.clone())
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&{body}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("another site"));
    assert_eq!(api(&s, "/api/v1/configs/c").await.0, 404);

    // The same change with the token and from the console's origin is stored.
    let r = http
        .post(format!("{}/configs/c", s.api))
        .header("cookie", cookies)
        .header("origin", s.api.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&{body}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(api(&s, "/api/v1/configs/c").await.0, 200);
}

/// Stores a config through the API (as the admin).
async fn put_config(s: &Serve, name: &str, body: serde_json::Value) -> Value {
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/configs/{name}", s.api))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sends_a_custom_message_and_sees_which_builds_a_version_would_fail() {
    use flotilla_loadtest::client::{WsClient, WsEvent};
    use flotilla_loadtest::sim::SimAgent;
    let s = serve().await;
    let build: &[(&str, &[&str])] = &[("receivers", &["otlp"]), ("exporters", &["debug"])];
    let mut agent = SimAgent::supervisor("otelcol", &[("env", "prod")], build);
    agent.custom_capabilities = vec!["io.example.ping".into()];
    let mut ws = WsClient::connect(&s.ws).await.unwrap();
    let first = agent.full_report();
    common::converse(&mut ws, &mut agent, vec![first]).await;
    put_config(
        &s,
        "otel",
        serde_json::json!({"selector": "env=prod", "files": {"c.yaml": VALID}}),
    )
    .await;
    match ws.next_event(Duration::from_secs(10)).await {
        Ok(WsEvent::Message(push)) => {
            for answer in agent.handle(&push) {
                ws.request(&answer).await.unwrap();
            }
        }
        other => panic!("no config: {other:?}"),
    }
    let b = Browser::start().await;
    sign_in(&b, &s, ADMIN).await;

    // The agent's page: a form to send a custom message under a capability it declares.
    b.goto(&format!("{}/agents/{}", s.api, agent.uid)).await;
    b.fill("#type", "ping").await;
    b.fill("#data", "hello from the console").await;
    b.click("#custom-message button[type=submit]").await;
    match ws.next_event(Duration::from_secs(10)).await {
        Ok(WsEvent::Message(push)) => {
            let m = push.custom_message.expect("a custom message");
            assert_eq!(
                (m.capability.as_str(), m.r#type.as_str(), m.data.as_slice()),
                (
                    "io.example.ping",
                    "ping",
                    b"hello from the console".as_slice()
                )
            );
        }
        other => panic!("no custom message: {other:?}"),
    }
    // Back on the agent's page.
    b.wait_text("h1", "otelcol").await;
    assert!(
        b.url().await.ends_with(&agent.uid.to_string()),
        "{}",
        b.url().await
    );
    b.shot("custom-message").await;

    // A version that sends to Kafka: the preview says this agent's build would fail it.
    let kafka = VALID
        .replace(
            "exporters: {debug: {}}",
            "exporters: {debug: {}, kafka: {}}",
        )
        .replace("exporters: [debug]", "exporters: [debug, kafka]");
    put_config(
        &s,
        "otel",
        serde_json::json!({"selector": "env=prod", "files": {"c.yaml": kafka}, "activate": false}),
    )
    .await;
    b.goto(&format!("{}/rollouts", s.api)).await;
    b.fill("input[name=percentages]", "100").await;
    b.click("button[value=plan]").await;
    assert_eq!(
        b.attr("[data-incompatible]", "data-incompatible").await,
        "1"
    );
    let why = b.text("#plan").await;
    assert!(
        why.contains(&agent.uid.to_string()) && why.contains("lacks exporters/kafka"),
        "{why}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_charts_an_agents_own_metrics_and_lists_the_fleets_failing_exporters() {
    use flotilla_loadtest::sim::SimAgent;
    let s = serve().await;
    let agents = vec![
        SimAgent::new("otelcol", &[("deployment.environment", "prod")]),
        SimAgent::new("otelcol", &[("deployment.environment", "staging")]),
        SimAgent::new("otelcol", &[("deployment.environment", "staging")]),
    ];
    let (failing, healthy, quiet) = (agents[0].uid, agents[1].uid, agents[2].uid);
    let fleet = Fleet::start(&s.ws, agents).await;
    wait_api(&s, "/api/v1/agents", "three agents", |v| v["total"] == 3).await;

    // Two exports 1.1 s apart (rates need two): the prod agent's exporter fails more at each and
    // its queue is 95% full; the staging one's sends everything. The third agent sends nothing.
    let metrics_url =
        s.ws.replace("ws://", "http://")
            .replace("/v1/opamp", "/v1/metrics");
    let otlp = flotilla_loadtest::client::HttpClient::new(&metrics_url);
    for (i, (cpu, sent, failed)) in [(1.0, 100.0, 10.0), (1.5, 200.0, 40.0)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        for (uid, failed, queue) in [(failing, failed, 950.0), (healthy, 0.0, 10.0)] {
            let r = otlp
                .post_raw(
                    flotilla_loadtest::otlp::collector(uid, cpu, sent, failed, queue),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
        }
    }
    // The gateway hands samples to the owner every second.
    wait_api(&s, &format!("/api/v1/agents/{failing}"), "failing", |v| {
        v["own_metrics"]["exporters"][0]["failing_since"].is_string()
    })
    .await;
    wait_api(&s, &format!("/api/v1/agents/{healthy}"), "rates", |v| {
        v["own_metrics"]["exporters"][0]["sent_per_second"].as_f64() > Some(0.0)
    })
    .await;

    let b = Browser::start().await;
    let base = s.api.clone();
    sign_in(&b, &s, VIEWER).await;

    // The failing agent's page: last values, charts drawn on the server, the exporter marked.
    b.goto(&format!("{base}/agents/{failing}")).await;
    assert_eq!(b.text("#own-metrics [data-memory]").await, "143.1 MiB");
    let cpu = b.text("#own-metrics [data-cpu]").await;
    let cpu: f64 = cpu.trim_end_matches(" cores").parse().unwrap();
    assert!(cpu > 0.0, "{cpu}");
    for chart in ["cpu", "memory", "exported"] {
        let svg = format!("#own-metrics [data-chart={chart}] svg[role=img]");
        let title = b.find(&format!("{svg} title")).await;
        let title = title.html(true).await.unwrap();
        assert!(title.contains("the last hour"), "{title}");
        assert!(
            !b.all(&format!("{svg} .series")).await.is_empty(),
            "{chart}"
        );
    }
    let exported = b.attr("[data-chart=exported] svg", "aria-labelledby").await;
    assert_eq!(exported, "chart-exported-title");
    let row = "#own-metrics tr[data-exporter=otlp]";
    assert_eq!(b.attr(row, "data-state").await, "failing near-full");
    assert_eq!(b.attr(row, "class").await, "bad");
    let text = b.text(row).await;
    assert!(
        text.contains("failing") && text.contains("950 / 1,000"),
        "{text}"
    );
    b.shot("agent-own-metrics").await;
    b.goto(&format!("{base}/agents/{healthy}")).await;
    assert_eq!(b.attr("tr[data-exporter=otlp]", "data-state").await, "ok");
    b.goto(&format!("{base}/agents/{quiet}")).await;
    let none = b.text("#no-own-metrics").await;
    assert!(none.contains("sends no own metrics"), "{none}");

    // The fleet page, from the navigation: both reporting agents ranked, the failing one listed.
    b.click("nav a[href='/agent-metrics']").await;
    b.wait_text("h1", "Agent metrics").await;
    assert_eq!(b.attr("[data-selected]", "data-selected").await, "3");
    assert_eq!(b.attr("[data-reporting]", "data-reporting").await, "2");
    assert_eq!(b.all("#top-cpu tbody tr").await.len(), 2);
    assert_eq!(b.attr("#failing", "data-total").await, "1");
    b.find(&format!("#failing tr[data-agent='{failing}']"))
        .await;
    b.find(&format!("#near-full tr[data-agent='{failing}']"))
        .await;
    b.find(&format!("#top-failed tr[data-agent='{failing}']"))
        .await;
    b.shot("agent-metrics").await;

    // Filtered by selector: only staging, where nothing fails.
    b.fill("#selector", "deployment.environment=staging").await;
    b.click("form.search button[type=submit]").await;
    b.find("[data-selected='2']").await;
    assert_eq!(b.attr("#failing", "data-total").await, "0");
    b.find(&format!("#top-cpu tr[data-agent='{healthy}']"))
        .await;
    assert!(
        b.all(&format!("tr[data-agent='{failing}']"))
            .await
            .is_empty()
    );
    // A bad selector: its error under the form, as on the agent list.
    b.fill("#selector", "deployment.environment in (prod").await;
    b.click("form.search button[type=submit]").await;
    let error = b.text("#selector-error").await;
    assert!(error.contains("expected \")\""), "{error}");

    // Each agent links to its page.
    b.goto(&format!("{base}/agent-metrics?top=5")).await;
    b.click(&format!("#failing a[href='/agents/{failing}']"))
        .await;
    b.find("#own-metrics").await;
    assert!(
        b.url().await.ends_with(&failing.to_string()),
        "{}",
        b.url().await
    );

    b.close().await;
    fleet.stop().await;
}
