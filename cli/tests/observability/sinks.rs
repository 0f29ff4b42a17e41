//! A real HTTP server standing in for alert receivers: a generic webhook (`POST /hook`) and
//! Alertmanager's v2 API (`POST /api/v2/alerts`). It can be down (answering 503) for a while;
//! it keeps what it accepted.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inbox {
    down: AtomicBool,
    refused: AtomicUsize,
    hook: Mutex<Vec<Value>>,
    alertmanager: Mutex<Vec<Value>>,
}

pub struct Receivers {
    pub base: String,
    inbox: Arc<Inbox>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receivers {
    pub async fn start() -> Self {
        let inbox = Arc::new(Inbox::default());
        let (a, b) = (inbox.clone(), inbox.clone());
        let app = Router::new()
            .route(
                "/hook",
                post(move |body: axum::Json<Value>| async move { take(&a, &a.hook, body.0) }),
            )
            .route(
                "/api/v2/alerts",
                post(
                    move |body: axum::Json<Value>| async move { take(&b, &b.alertmanager, body.0) },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, inbox, task }
    }

    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// While down, every request is answered 503 and nothing is kept.
    pub fn set_down(&self, down: bool) {
        self.inbox.down.store(down, Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        self.inbox.refused.load(Ordering::SeqCst)
    }

    /// The webhook notifications accepted: (state, subject, the notification).
    pub fn hook(&self) -> Vec<(String, String, Value)> {
        self.inbox
            .hook
            .lock()
            .unwrap()
            .iter()
            .flat_map(|doc| doc["notifications"].as_array().cloned().unwrap_or_default())
            .map(|n| {
                let s = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
                (s("state"), s("subject"), n)
            })
            .collect()
    }

    /// The alerts Alertmanager accepted: (firing or resolved, alert).
    pub fn alertmanager(&self) -> Vec<(String, Value)> {
        self.inbox
            .alertmanager
            .lock()
            .unwrap()
            .iter()
            .flat_map(|doc| doc.as_array().cloned().unwrap_or_default())
            .map(|a| {
                let ends = a["endsAt"].as_str().unwrap_or_default();
                let now =
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                // Resolved: it ended already (Alertmanager's own reading of endsAt).
                let state = if ends <= now.as_str() {
                    "resolved"
                } else {
                    "firing"
                };
                (state.to_owned(), a)
            })
            .collect()
    }

    /// Waits until `found` holds.
    pub async fn wait(&self, what: &str, timeout: Duration, found: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !found(self) {
            assert!(
                started.elapsed() < timeout,
                "no {what} within {timeout:?}: hook {:#?}, alertmanager {:#?}",
                self.hook(),
                self.alertmanager()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn take(inbox: &Inbox, into: &Mutex<Vec<Value>>, body: Value) -> StatusCode {
    if inbox.down.load(Ordering::SeqCst) {
        inbox.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    into.lock().unwrap().push(body);
    StatusCode::OK
}
