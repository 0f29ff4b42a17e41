//! One swarm agent's life: connect (WebSocket or HTTP polling), report, heartbeat, apply pushed
//! configs, restart when told; on a lost connection, back off exponentially with jitter and try
//! the next URL; under churn, leave after a random lifetime and let a new agent take its place.

use super::config::Transport;
use super::shared::Shared;
use crate::client::ConnectOptions;
use crate::client::{HttpClient, WsClient, WsEvent};
use crate::sim::SimAgent;
use flotilla_proto::opamp::{AgentToServer, RemoteConfigStatuses, ServerToAgent};
use rand::Rng;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Why a session ended.
enum End {
    /// The run is over or the agent leaves (churn): it said goodbye.
    Done,
    /// The connection failed or was lost; `kind` names it in the error counts.
    /// The server offered a new client certificate: reconnect with it.
    Rotated,
    Lost {
        kind: &'static str,
        replied: bool,
        /// Why, in the server's or the OS's words, when known.
        why: Option<String>,
    },
}

/// What an agent carries across its connections.
struct Life {
    agent: SimAgent,
    leave_at: Option<Instant>,
    /// Hash of the last config result counted, so a full report on reconnect is not counted again.
    counted: Vec<u8>,
    /// The agent lost a connection and has not been answered on a new one yet.
    lost: bool,
    /// Counted in `Stats::answered` (once per life).
    answered: bool,
    /// The client certificate the server issued this agent, once it offered one.
    identity: Option<ConnectOptions>,
    /// Its place in the run (its own-metrics slot).
    index: usize,
    /// The uid its own metrics are sent under (once answered).
    metrics_uid: Option<uuid::Uuid>,
}

pub(super) async fn run(shared: Arc<Shared>, index: usize) {
    let mut generation = 0u32;
    loop {
        let mut life = Life {
            agent: shared.new_agent(index, generation),
            leave_at: shared.cfg.churn_per_s.map(lifetime),
            counted: Vec::new(),
            lost: false,
            answered: false,
            identity: None,
            index,
            metrics_uid: None,
        };
        live(&shared, index, &mut life).await;
        if let Some(own) = &shared.own_metrics {
            own.left(index);
        }
        if shared.stop.is_cancelled() {
            return;
        }
        // Churn: this agent left; a new one (new uid) joins in its place.
        shared.stats.left.fetch_add(1, Ordering::Relaxed);
        shared.stats.joined.fetch_add(1, Ordering::Relaxed);
        generation += 1;
    }
}

/// A lifetime drawn from an exponential distribution: on average `rate` of the agents leave per
/// second.
fn lifetime(rate: f64) -> Instant {
    let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
    Instant::now() + Duration::from_secs_f64(-u.ln() / rate)
}

async fn live(shared: &Shared, index: usize, life: &mut Life) {
    let cfg = &shared.cfg;
    let mut url = index % cfg.urls.len();
    let mut attempt = 0u32;
    loop {
        let base = life.identity.clone().unwrap_or_else(|| cfg.connect.clone());
        let opts = match cfg.source_ips {
            0 => base,
            n => base.from_source(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (index % n as usize) as u8,
            ))),
        };
        if let Some(own) = &shared.own_metrics {
            own.moved(index, url);
        }
        let end = match cfg.transport {
            Transport::Ws => ws_session(shared, cfg.url(url), &opts, life).await,
            Transport::Http => http_session(shared, cfg.url(url), &opts, life).await,
        };
        let (kind, replied, why) = match end {
            End::Done => return,
            // A new certificate: connect again with it at once.
            End::Rotated => continue,
            End::Lost { kind, replied, why } => (kind, replied, why),
        };
        shared.stats.error(kind);
        if let Some(why) = why
            && shared.stats.reason(kind, &why)
            && shared.cfg.progress
        {
            eprintln!("agent {index}: {kind}: {why}");
        }
        if shared.stop.is_cancelled() {
            return;
        }
        if replied {
            attempt = 0;
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            life.lost = true;
        }
        attempt += 1;
        url = another(url, cfg.urls.len() + cfg.failover_urls.len());
        let backoff = cfg
            .backoff_max
            .min(cfg.backoff_min.saturating_mul(1 << attempt.min(16)));
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(jittered) => {}
        }
    }
}

/// Where an agent goes after losing its connection to endpoint `url` of `n`: any other, at random
/// (as a load balancer in front of several gateways spreads the reconnects of a lost one's agents).
fn another(url: usize, n: usize) -> usize {
    if n < 2 {
        return 0;
    }
    (url + rand::rng().random_range(1..n)) % n
}

/// Decrements the connected count however a session ends.
struct Connected<'a>(&'a Shared);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.stats.disconnected();
    }
}

impl Life {
    /// Counts a config result the first time the agent reports it.
    fn note_sent(&mut self, shared: &Shared, msg: &AgentToServer) {
        let Some(s) = &msg.remote_config_status else {
            return;
        };
        let applied = s.status == RemoteConfigStatuses::Applied as i32;
        if (applied || s.status == RemoteConfigStatuses::Failed as i32)
            && s.last_remote_config_hash != self.counted
        {
            self.counted.clone_from(&s.last_remote_config_hash);
            shared
                .stats
                .config_result(&s.last_remote_config_hash, applied);
        }
    }

    /// Takes up a certificate the server offered: true if the agent now has a new identity to
    /// connect with (its trust in the server stays the swarm's CA, else the offer's).
    fn take_identity(&mut self, shared: &Shared) -> bool {
        let Some(offer) = self.agent.offered_identity.take() else {
            return false;
        };
        let ca = shared.cfg.server_ca.as_deref().unwrap_or(&offer.ca);
        match ConnectOptions::tls(ca, Some((&offer.cert, &offer.key))) {
            Ok(mut opts) => {
                opts.token.clone_from(&shared.cfg.connect.token);
                self.identity = Some(opts);
                shared.stats.rotated.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                shared.stats.error("certificate");
                shared.stats.reason("certificate", &format!("{e:#}"));
                false
            }
        }
    }

    /// The server's message (reply or push): what the agent sends back, in sending order popped
    /// from the back.
    fn react(&mut self, shared: &Shared, msg: &ServerToAgent) -> Vec<AgentToServer> {
        if let Some(e) = &msg.error_response {
            shared.stats.error("error_response");
            shared.stats.reason("error_response", &e.error_message);
        }
        let mut out = self.agent.handle(msg);
        out.reverse();
        // Known to the server now (under a new uid, if it gave one): its own metrics may go.
        if let Some(own) = &shared.own_metrics
            && msg.error_response.is_none()
            && self.metrics_uid != Some(self.agent.uid)
        {
            self.metrics_uid = Some(self.agent.uid);
            own.answered(self.index, &self.agent, &shared.cfg);
        }
        out
    }

    fn answered(&mut self, shared: &Shared) {
        if !std::mem::replace(&mut self.answered, true) {
            shared.stats.answered.fetch_add(1, Ordering::Relaxed);
        }
        if std::mem::take(&mut self.lost) {
            shared.stats.recovered.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn interval(&self, shared: &Shared) -> Duration {
        self.agent
            .heartbeat_interval_seconds
            .filter(|s| *s > 0)
            .map_or(shared.cfg.heartbeat, Duration::from_secs)
    }

    /// The earliest of: the next heartbeat, the end of applying, leaving.
    fn next_wake(&self, next_heartbeat: Instant, apply_due: Option<Instant>) -> Instant {
        [Some(next_heartbeat), apply_due, self.leave_at]
            .into_iter()
            .flatten()
            .min()
            .expect("the heartbeat is always there")
    }

    fn leaving(&self) -> bool {
        self.leave_at.is_some_and(|t| Instant::now() >= t)
    }
}

/// Applying takes `apply_delay`: when it started, the result is due then.
fn apply_due(shared: &Shared, agent: &SimAgent, due: &mut Option<Instant>) {
    if agent.applying() && due.is_none() {
        *due = Some(Instant::now() + shared.cfg.apply.delay);
    }
}

async fn ws_session(
    shared: &Shared,
    url: &str,
    opts: &crate::client::ConnectOptions,
    life: &mut Life,
) -> End {
    let stats = &shared.stats;
    // Connect time is measured from the permit: waiting for one is the swarm's own queue.
    let permit = shared.connecting.acquire().await;
    let t = Instant::now();
    let connect = tokio::select! {
        () = shared.stop.cancelled() => return End::Done,
        c = WsClient::connect_with(url, opts) => c,
    };
    drop(permit);
    let mut ws = match connect {
        Ok(ws) => ws,
        Err(e) => {
            return End::Lost {
                kind: "connect",
                replied: false,
                why: Some(format!("{e:#}")),
            };
        }
    };
    stats.connected(t.elapsed());
    let _connected = Connected(shared);
    // A new connection starts with the full state.
    // First in, first out: messages go in the order (and so the sequence) they were made.
    let mut outbox = VecDeque::from([life.agent.full_report()]);
    let mut replied = false;
    // Agents of a real fleet started at different times: the first heartbeat after the messages
    // of connecting (the full report and what its reply asks for) comes at a random point of the
    // interval, so heartbeats spread evenly over it rather than following the connect ramp
    // (unless they are to come all at once).
    let mut first_phase = first_phase(shared);
    let mut next_heartbeat = next_beat(shared, life.interval(shared), Instant::now());
    let mut due: Option<Instant> = None;
    loop {
        if shared.stop.is_cancelled() || life.leaving() {
            let bye = life.agent.disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                ws.send(&bye).await?;
                ws.close().await
            })
            .await;
            return End::Done;
        }
        if due.is_some_and(|d| Instant::now() >= d) {
            due = None;
            outbox.extend(life.agent.finish_apply());
        }
        if let Some(msg) = outbox.pop_front() {
            let sent = Instant::now();
            life.note_sent(shared, &msg);
            if ws.send(&msg).await.is_err() {
                return End::Lost {
                    kind: "send",
                    replied,
                    why: None,
                };
            }
            // Sent: a full report is tens of KB, and a slow server keeps every agent waiting.
            drop(msg);
            // Replies and pushes both arrive here; the first one answers the message.
            let reply = tokio::select! {
                () = shared.stop.cancelled() => continue,
                r = next_message(&mut ws, shared.cfg.reply_timeout) => r,
            };
            match reply {
                Ok(Some(reply)) => {
                    stats.reply(sent.elapsed());
                    replied = true;
                    life.answered(shared);
                    outbox.extend(life.react(shared, &reply));
                    apply_due(shared, &life.agent, &mut due);
                    if life.take_identity(shared) {
                        let _ = ws.close().await;
                        return End::Rotated;
                    }
                }
                Ok(None) => {
                    return End::Lost {
                        kind: "reply_timeout",
                        replied,
                        why: None,
                    };
                }
                Err(kind) => {
                    return End::Lost {
                        kind,
                        replied,
                        why: None,
                    };
                }
            }
            // The interval counts from the last message sent, not from its answer, at the
            // server's offered value: as a real agent's, whose heartbeat does not wait for the
            // answer. (Counted from the answer, the agents whose answers a stall of the server
            // held back would beat together from then on.)
            next_heartbeat = match outbox.is_empty() {
                true => after_send(shared, life.interval(shared), &mut first_phase, sent),
                false => next_beat(shared, life.interval(shared), sent),
            };
            continue;
        }
        let wait = life
            .next_wake(next_heartbeat, due)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let event = tokio::select! {
            () = shared.stop.cancelled() => continue,
            e = next_message(&mut ws, wait) => e,
        };
        match event {
            Ok(Some(push)) => {
                outbox.extend(life.react(shared, &push));
                apply_due(shared, &life.agent, &mut due);
                if life.take_identity(shared) {
                    let _ = ws.close().await;
                    return End::Rotated;
                }
            }
            // Woken for the heartbeat, applying or leaving.
            Ok(None) if Instant::now() >= next_heartbeat => {
                outbox.push_back(life.agent.heartbeat())
            }
            Ok(None) => {}
            Err(kind) => {
                return End::Lost {
                    kind,
                    replied,
                    why: None,
                };
            }
        }
    }
}

/// The server's next message, or None if `wait` passes first; Err names why the session ended.
async fn next_message(
    ws: &mut WsClient,
    wait: Duration,
) -> Result<Option<ServerToAgent>, &'static str> {
    match tokio::time::timeout(wait, ws.next_event(Duration::MAX)).await {
        Ok(Ok(WsEvent::Message(m))) => Ok(Some(*m)),
        Ok(Ok(WsEvent::Closed(_))) => Err("closed_by_server"),
        Ok(Err(_)) => Err("websocket"),
        Err(_) => Ok(None),
    }
}

async fn http_session(
    shared: &Shared,
    url: &str,
    opts: &crate::client::ConnectOptions,
    life: &mut Life,
) -> End {
    let stats = &shared.stats;
    let client = match HttpClient::with_options(url, opts) {
        Ok(c) => c,
        Err(e) => {
            return End::Lost {
                kind: "connect",
                replied: false,
                why: Some(format!("{e:#}")),
            };
        }
    };
    // A poller counts as connected while its polls are answered.
    let mut connected: Option<Connected> = None;
    let mut outbox = VecDeque::from([life.agent.full_report()]);
    let mut replied = false;
    let mut due: Option<Instant> = None;
    // The first poll after the full report at the poller's own phase, as for heartbeats.
    let mut first_phase = first_phase(shared);
    loop {
        if shared.stop.is_cancelled() || life.leaving() {
            let bye = life.agent.disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.post(&bye, false)).await;
            return End::Done;
        }
        if due.is_some_and(|d| Instant::now() >= d) {
            due = None;
            outbox.extend(life.agent.finish_apply());
        }
        let msg = outbox.pop_front().unwrap_or_else(|| life.agent.heartbeat());
        life.note_sent(shared, &msg);
        let sent = Instant::now();
        let post = tokio::select! {
            () = shared.stop.cancelled() => continue,
            r = tokio::time::timeout(shared.cfg.reply_timeout, client.post(&msg, false)) => r,
        };
        let reply = match post {
            Err(_) => {
                return End::Lost {
                    kind: "reply_timeout",
                    replied,
                    why: None,
                };
            }
            Ok(Err(e)) => {
                return End::Lost {
                    kind: if replied { "http_io" } else { "connect" },
                    replied,
                    why: Some(format!("{e:#}")),
                };
            }
            Ok(Ok(r)) if r.status != 200 => {
                let body = String::from_utf8_lossy(&r.raw);
                return End::Lost {
                    kind: match r.status {
                        429 => "http_429",
                        503 => "http_503",
                        s if s >= 500 => "http_5xx",
                        _ => "http_4xx",
                    },
                    replied,
                    why: Some(format!(
                        "HTTP {}: {}",
                        r.status,
                        body.trim().chars().take(200).collect::<String>()
                    )),
                };
            }
            Ok(Ok(r)) => r.message,
        };
        let Some(reply) = reply else {
            return End::Lost {
                kind: "http_not_protobuf",
                replied,
                why: None,
            };
        };
        stats.reply(sent.elapsed());
        if connected.is_none() {
            stats.connected(sent.elapsed());
            connected = Some(Connected(shared));
        }
        replied = true;
        life.answered(shared);
        outbox.extend(life.react(shared, &reply));
        apply_due(shared, &life.agent, &mut due);
        if outbox.is_empty() {
            // A poller polls an interval after the answer.
            let now = Instant::now();
            let next_poll = after_send(shared, life.interval(shared), &mut first_phase, now);
            let wake = life.next_wake(next_poll, due);
            tokio::select! {
                () = shared.stop.cancelled() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}
/// Where in the interval an agent's first beat after its full report falls (none: synchronized
/// heartbeats).
fn first_phase(shared: &Shared) -> Option<f64> {
    (!shared.cfg.synchronized_heartbeats).then(|| rand::rng().random_range(0.0..1.0))
}

/// When an agent that has sent what it had to send beats next: the first time at its own phase
/// of the interval from now, then [`next_beat`] from `last` (its last message).
fn after_send(
    shared: &Shared,
    interval: Duration,
    phase: &mut Option<f64>,
    last: Instant,
) -> Instant {
    match phase.take() {
        Some(f) => Instant::now() + interval.mul_f64(f),
        None => next_beat(shared, interval, last),
    }
}

/// When an agent beats next, `interval` after `now`; with synchronized heartbeats, at the next
/// multiple of `interval` from the start of the run (every agent at the same moment).
fn next_beat(shared: &Shared, interval: Duration, now: Instant) -> Instant {
    if shared.cfg.synchronized_heartbeats {
        on_grid(shared.stats.started, interval, now)
    } else {
        now + interval
    }
}

/// The first multiple of `interval` from `start` that is after `now`.
fn on_grid(start: Instant, interval: Duration, now: Instant) -> Instant {
    let step = interval.as_nanos().max(1);
    let past = now.saturating_duration_since(start).as_nanos();
    let n = u32::try_from(past / step + 1).unwrap_or(u32::MAX);
    start + interval.saturating_mul(n)
}

#[cfg(test)]
mod tests {
    use super::super::config::{Scenario, SwarmConfig};
    use super::super::stats::Stats;
    use super::*;
    use crate::realistic::Dress;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn synchronized_beats_fall_on_the_next_multiple_of_the_interval() {
        let start = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(on_grid(start, s(30), start), start + s(30));
        assert_eq!(on_grid(start, s(30), start + s(29)), start + s(30));
        assert_eq!(on_grid(start, s(30), start + s(30)), start + s(60));
        assert_eq!(on_grid(start, s(30), start + s(95)), start + s(120));
        // A zero interval does not divide by zero: the grid is the start.
        assert_eq!(on_grid(start, Duration::ZERO, start + s(1)), start);
    }

    /// An agent's next heartbeat is an interval after its last message was sent, however long
    /// the answer took; the first after connecting at its own phase of the interval.
    #[test]
    fn heartbeats_count_from_the_message_sent() {
        let cfg = SwarmConfig::new(Scenario::Steady, Vec::new(), 1);
        let shared = Shared {
            connecting: Semaphore::new(1),
            stats: Stats::new(),
            stop: CancellationToken::new(),
            run_id: "t".into(),
            own_metrics: None,
            dress: Dress::new(cfg.shape),
            cfg,
        };
        let s = Duration::from_secs;
        let sent = Instant::now() - s(12);
        assert_eq!(after_send(&shared, s(30), &mut None, sent), sent + s(30));
        let mut phase = Some(0.5);
        let first = after_send(&shared, s(30), &mut phase, sent);
        assert!(first >= Instant::now() + s(14) && first <= Instant::now() + s(15));
        assert_eq!(phase, None, "the phase is for the first beat only");
        assert_eq!(after_send(&shared, s(30), &mut phase, sent), sent + s(30));
    }

    #[test]
    fn a_lost_agent_moves_to_any_other_endpoint() {
        assert_eq!(another(0, 1), 0);
        for _ in 0..100 {
            assert_eq!(another(0, 2), 1);
        }
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[another(2, 4)] += 1;
        }
        assert_eq!(seen[2], 0, "never the endpoint it lost");
        assert!(seen[0] > 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }
}
