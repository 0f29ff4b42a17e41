//! A fleet of simulated agents over real WebSockets for tests: each agent answers what the
//! server sends (applying pushed configs, or failing them), and heartbeats every second.

use flotilla_loadtest::client::{WsClient, WsEvent};
use flotilla_loadtest::sim::SimAgent;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Fleet {
    pub uids: Vec<Uuid>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Connects every agent (in order) and starts answering; returns once each has sent its
    /// first report.
    pub async fn start(ws_url: &str, agents: Vec<SimAgent>) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let uids = agents.iter().map(|a| a.uid).collect();
        for mut agent in agents {
            let mut ws = WsClient::connect(ws_url).await.expect("agent connects");
            ws.send(&agent.full_report()).await.expect("first report");
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
                loop {
                    let mut outbox = Vec::new();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = heartbeat.tick() => outbox.push(agent.heartbeat()),
                        ev = ws.next_event(Duration::from_secs(3600)) => match ev {
                            Ok(WsEvent::Message(m)) => outbox = agent.handle(&m),
                            _ => break,
                        },
                    }
                    for msg in outbox {
                        if ws.send(&msg).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = ws.close().await;
            });
        }
        Self { uids, stop, tasks }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// `n` collectors with `attrs`, created in order (so their UUIDv7 uids sort in that order);
/// those for which `fails(i)` fail to apply any config containing `marker`.
pub fn collectors(
    n: usize,
    attrs: &[(&str, &str)],
    fails: impl Fn(usize) -> bool,
    marker: &str,
) -> Vec<SimAgent> {
    (0..n)
        .map(|i| {
            let mut a = SimAgent::new("otelcol", attrs);
            if fails(i) {
                a.fail_marker = Some(marker.to_owned());
            }
            a
        })
        .collect()
}
