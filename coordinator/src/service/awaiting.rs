//! The agents a push or a reply offered a config to that have not answered yet ([`Awaiting`]).
//! Each answers with reports (APPLYING, then APPLIED with its effective config, tens of KB); a
//! change offered to a fleet of 100,000 all at once brings more of them than its owners can take,
//! they queue behind one another with every agent's own heartbeats, the replies pass the agents'
//! timeouts, and the agents reconnect with full reports on top. So an owner awaits about
//! [`WINDOW`] agents at most: a push batch goes while fewer are awaited, and a reply offers a
//! config only while there is room. The reports a change causes that wait anywhere are bounded,
//! and the change goes as fast as the owner answers them (ADR 0018).

use flotilla_proto::opamp::AgentToServer;
use flotilla_proto::opamp::RemoteConfigStatuses::{self, Applied, Applying, Failed};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// Agents awaited at once, per owner (a push batch may go over it by its own size). The reports
/// a push causes wait about as long as the owner takes to answer this many (ADR 0018: 1,024
/// held replies during a push to 24,000 agents at p99 944 ms, 96 at 211 ms, the push no slower;
/// at 100,000 agents 48 against 96 lowered the replies' median during a push, 106 -> 47 ms and
/// 94 -> 60 ms in two pairs of runs).
pub(crate) const WINDOW: usize = 48;
/// How long an agent is awaited, at most: one that does not answer by then (it lost its
/// connection, or does not report config status) no longer holds the window.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// The agents a push plans to reach, and those a push or a reply reached that have not answered.
pub(crate) struct Awaiting {
    state: Mutex<State>,
    freed: Notify,
    window: usize,
    patience: Duration,
    /// Agents awaited now.
    gauge: Gauge,
    /// Agents that did not answer within the patience.
    unanswered: Counter,
}

#[derive(Default)]
struct State {
    /// Agents a push will reach when its turn comes, and the hash of the config it brings them
    /// (None: no config). One that reports that config meanwhile (the reply to its heartbeat
    /// carried it) is not pushed to.
    planned: HashMap<Uuid, Option<Vec<u8>>>,
    /// Agents pushed to or offered a config by a reply, awaited until they answer.
    awaited: HashMap<Uuid, Expect>,
    /// No later than when the longest-awaited agent began to be awaited (None: none is): until
    /// the patience has passed since, no agent's wait can have run out, and none is looked at.
    /// An agent that answers leaves it as it was (still no later than the rest).
    oldest: Option<Instant>,
}

/// What ends the wait for one agent.
struct Expect {
    since: Instant,
    /// The hash of the config pushed: the agent has answered when it reports it APPLIED or
    /// FAILED. None (no config in the push): any message from it.
    config_hash: Option<Vec<u8>>,
}

/// Whether `msg` reports the config of hash `hash` with one of `statuses`.
fn reports(msg: &AgentToServer, hash: &[u8], statuses: &[RemoteConfigStatuses]) -> bool {
    msg.remote_config_status.as_ref().is_some_and(|st| {
        st.last_remote_config_hash == hash && statuses.iter().any(|s| *s as i32 == st.status)
    })
}

impl Awaiting {
    pub(crate) fn new(
        window: usize,
        patience: Duration,
        gauge: Gauge,
        unanswered: Counter,
    ) -> Self {
        Self {
            state: Mutex::default(),
            freed: Notify::new(),
            window,
            patience,
            gauge,
            unanswered,
        }
    }

    /// A push will reach these agents (uid, hash of the config it brings), batch by batch.
    pub(crate) fn plan(&self, agents: impl IntoIterator<Item = (Uuid, Option<Vec<u8>>)>) {
        self.state.lock().planned.extend(agents);
    }

    /// Waits until fewer agents than the window are awaited (so a batch goes over it by its own
    /// size at most), then awaits those of `uids` (a batch of planned agents) still planned and
    /// returns whether each is: the others reported the config on their own since it was planned,
    /// or a reply offered it to them.
    pub(crate) async fn take(&self, uids: &[Uuid]) -> Vec<bool> {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock();
                self.expire(&mut s);
                if s.awaited.len() < self.window {
                    let since = Instant::now();
                    let due = uids
                        .iter()
                        .map(|uid| match s.planned.remove(uid) {
                            Some(config_hash) => {
                                s.await_one(*uid, Expect { since, config_hash });
                                true
                            }
                            None => false,
                        })
                        .collect();
                    self.gauge.set(s.awaited.len() as i64);
                    return due;
                }
            }
            // Woken when answers free room, or soon anyway to let the patient ones expire.
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    /// Whether the reply to agent `uid` may offer it the config of hash `hash`: yes if the agent
    /// is awaited for that config already, or if there is room for one more (it is awaited from
    /// now, and a push no longer plans to reach it); no while the window is full.
    pub(crate) fn may_offer(&self, uid: &[u8], hash: &[u8]) -> bool {
        let Ok(uid) = Uuid::from_slice(uid) else {
            return true;
        };
        let mut s = self.state.lock();
        if s.awaited
            .get(&uid)
            .is_some_and(|e| e.config_hash.as_deref() == Some(hash))
        {
            return true;
        }
        if s.awaited.len() >= self.window {
            self.expire(&mut s);
            if s.awaited.len() >= self.window {
                return false;
            }
        }
        s.planned.remove(&uid);
        let expect = Expect {
            since: Instant::now(),
            config_hash: Some(hash.to_vec()),
        };
        s.await_one(uid, expect);
        self.gauge.set(s.awaited.len() as i64);
        true
    }

    /// Whether a push plans to reach agent `uid` (bytes) or awaits its answer.
    pub(crate) fn expects(&self, uid: &[u8]) -> bool {
        let Ok(uid) = Uuid::from_slice(uid) else {
            return false;
        };
        let s = self.state.lock();
        s.planned.contains_key(&uid) || s.awaited.contains_key(&uid)
    }

    /// The owner took `msg` from an agent: if it answers a push, that agent is no longer
    /// awaited; if it reports the config a push plans to bring it, it is no longer planned.
    pub(crate) fn heard(&self, msg: &AgentToServer) {
        let Ok(uid) = Uuid::from_slice(&msg.instance_uid) else {
            return;
        };
        let mut s = self.state.lock();
        if let Some(expect) = s.awaited.get(&uid) {
            let answered = match &expect.config_hash {
                None => true,
                Some(hash) => reports(msg, hash, &[Applied, Failed]),
            };
            if answered {
                s.awaited.remove(&uid);
                self.freed_one(&s);
            }
        } else if let Some(Some(hash)) = s.planned.get(&uid)
            && reports(msg, hash, &[Applying, Applied, Failed])
        {
            s.planned.remove(&uid);
        }
    }

    /// The agent's connection closed, or the push did not reach it: it is neither planned nor
    /// awaited any more.
    pub(crate) fn gone(&self, uid: Uuid) {
        let mut s = self.state.lock();
        s.planned.remove(&uid);
        if s.awaited.remove(&uid).is_some() {
            self.freed_one(&s);
        }
    }

    fn freed_one(&self, s: &State) {
        self.gauge.set(s.awaited.len() as i64);
        self.freed.notify_waiters();
    }

    /// Stops awaiting the agents that have been awaited longer than the patience. Looks at
    /// none of them before that can have happened: called for every reply that may offer a
    /// config while the window is full, it looked at the whole window each time (8% of the perf
    /// samples of an owner during a push to 24,000 agents).
    fn expire(&self, s: &mut State) {
        let now = Instant::now();
        if s.oldest
            .is_none_or(|t| now.duration_since(t) < self.patience)
        {
            return;
        }
        let before = s.awaited.len();
        s.awaited
            .retain(|_, e| now.duration_since(e.since) < self.patience);
        s.oldest = s.awaited.values().map(|e| e.since).min();
        let expired = before - s.awaited.len();
        if expired > 0 {
            self.unanswered.inc_by(expired as u64);
            self.gauge.set(s.awaited.len() as i64);
        }
    }
}

impl State {
    fn await_one(&mut self, uid: Uuid, expect: Expect) {
        // Agents are awaited from now on: none before the oldest already awaited.
        self.oldest.get_or_insert(expect.since);
        self.awaited.insert(uid, expect);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::RemoteConfigStatus;

    fn awaiting(window: usize, patience: Duration) -> Awaiting {
        Awaiting::new(window, patience, Gauge::default(), Counter::default())
    }

    fn uid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn report(n: u8, hash: &[u8], status: RemoteConfigStatuses) -> AgentToServer {
        AgentToServer {
            instance_uid: vec![n; 16],
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: hash.to_vec(),
                status: status as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Whether `uids` are taken within 300 ms: None if not, else which were still planned.
    async fn taken(a: &Awaiting, uids: &[u8]) -> Option<Vec<bool>> {
        let uids: Vec<Uuid> = uids.iter().map(|n| uid(*n)).collect();
        tokio::time::timeout(Duration::from_millis(300), a.take(&uids))
            .await
            .ok()
    }

    fn plan(a: &Awaiting, uids: &[u8], hash: Option<&[u8]>) {
        a.plan(uids.iter().map(|n| (uid(*n), hash.map(<[u8]>::to_vec))));
    }

    #[tokio::test]
    async fn a_batch_waits_until_the_agents_before_it_answer_with_the_config_applied_or_failed() {
        let a = awaiting(2, Duration::from_secs(60));
        plan(&a, &[1, 2, 3, 4, 5], Some(b"h"));
        assert_eq!(taken(&a, &[1, 2]).await, Some(vec![true, true]));
        assert_eq!(
            taken(&a, &[3]).await,
            None,
            "room while two agents are awaited"
        );
        // APPLYING, another config's APPLIED and a stranger's report answer nothing.
        a.heard(&report(1, b"h", RemoteConfigStatuses::Applying));
        a.heard(&report(1, b"old", RemoteConfigStatuses::Applied));
        a.heard(&report(9, b"h", RemoteConfigStatuses::Applied));
        assert_eq!(taken(&a, &[3]).await, None);
        a.heard(&report(1, b"h", RemoteConfigStatuses::Applied));
        assert_eq!(taken(&a, &[3]).await, Some(vec![true]));
        assert_eq!(taken(&a, &[4, 5]).await, None, "two agents are awaited");
        a.heard(&report(2, b"h", RemoteConfigStatuses::Failed));
        a.heard(&report(3, b"h", RemoteConfigStatuses::Applied));
        assert_eq!(taken(&a, &[4, 5]).await, Some(vec![true, true]));
        assert_eq!(a.gauge.get(), 2);
    }

    #[tokio::test]
    async fn an_agent_that_reports_the_config_before_its_turn_is_not_pushed_to() {
        let a = awaiting(10, Duration::from_secs(60));
        plan(&a, &[1, 2, 3, 4], Some(b"h"));
        // The replies to their heartbeats brought it: 1 is applying it, 2 applied it.
        a.heard(&report(1, b"h", RemoteConfigStatuses::Applying));
        a.heard(&report(2, b"h", RemoteConfigStatuses::Applied));
        a.heard(&report(3, b"other", RemoteConfigStatuses::Applied));
        assert_eq!(
            taken(&a, &[1, 2, 3, 4]).await,
            Some(vec![false, false, true, true])
        );
        assert_eq!(a.gauge.get(), 2);
    }

    #[tokio::test]
    async fn a_push_without_a_config_is_answered_by_any_message_and_a_closed_connection_frees_its_room()
     {
        let a = awaiting(2, Duration::from_secs(60));
        plan(&a, &[1, 2, 3, 4], None);
        assert_eq!(taken(&a, &[1, 2]).await, Some(vec![true, true]));
        a.heard(&AgentToServer {
            instance_uid: vec![1; 16],
            ..Default::default()
        });
        assert_eq!(taken(&a, &[3]).await, Some(vec![true]));
        a.gone(uid(2));
        a.gone(uid(3));
        // A batch goes once fewer than the window are awaited, whatever its size.
        plan(&a, &[5, 6], None);
        assert_eq!(taken(&a, &[4, 5, 6]).await, Some(vec![true, true, true]));
    }

    #[tokio::test]
    async fn replies_offer_a_config_while_there_is_room_and_take_it_from_the_push() {
        let a = awaiting(2, Duration::from_secs(60));
        plan(&a, &[1, 2, 3], Some(b"h"));
        assert!(a.may_offer(&[1; 16], b"h"));
        assert!(a.may_offer(&[1; 16], b"h"), "awaited for it already");
        assert!(a.may_offer(&[4; 16], b"h"));
        assert!(!a.may_offer(&[5; 16], b"h"), "the window is full");
        assert_eq!(a.gauge.get(), 2);
        // Agent 1 got it from a reply: the push skips it once there is room.
        a.heard(&report(1, b"h", RemoteConfigStatuses::Applied));
        assert!(a.may_offer(&[5; 16], b"h"));
        a.heard(&report(4, b"h", RemoteConfigStatuses::Applied));
        assert_eq!(taken(&a, &[1, 2, 3]).await, Some(vec![false, true, true]));
    }

    #[tokio::test]
    async fn agents_that_never_answer_stop_holding_the_window_after_the_patience() {
        let a = awaiting(1, Duration::from_millis(200));
        plan(&a, &[1, 2], Some(b"h"));
        let started = Instant::now();
        a.take(&[uid(1)]).await;
        a.take(&[uid(2)]).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(a.unanswered.get(), 1);
        assert_eq!(a.gauge.get(), 1);
    }

    /// Whichever agents answered, those awaited longer than the patience (and only those) stop
    /// holding the window.
    #[tokio::test(start_paused = true)]
    async fn only_agents_awaited_past_the_patience_expire_after_older_ones_answered() {
        let a = awaiting(2, Duration::from_millis(200));
        let step = |ms| tokio::time::advance(Duration::from_millis(ms));
        assert!(a.may_offer(&[1; 16], b"h"));
        step(150).await;
        assert!(a.may_offer(&[2; 16], b"h"));
        step(10).await;
        a.heard(&report(1, b"h", RemoteConfigStatuses::Applied));
        assert!(a.may_offer(&[3; 16], b"h"), "the first answered: room");
        step(50).await;
        assert!(
            !a.may_offer(&[4; 16], b"h"),
            "the first's patience has passed, but the two awaited are within theirs"
        );
        assert_eq!(a.unanswered.get(), 0);
        step(145).await;
        assert!(
            a.may_offer(&[4; 16], b"h"),
            "the second's patience has passed (205 ms), not the third's (195 ms)"
        );
        assert_eq!(a.unanswered.get(), 1);
        assert!(
            !a.may_offer(&[5; 16], b"h"),
            "the third and fourth are awaited"
        );
    }
}
