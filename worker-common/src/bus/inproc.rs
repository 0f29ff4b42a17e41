//! The Bus inside one process: the embedded default. Bounded queues, so a slow subscriber makes
//! requests fail fast with `Overloaded` (which the gateway turns into UNAVAILABLE) instead of
//! buffering without limit.

use super::types::{
    Answers, AnswersInner, Bus, BusError, BusMessage, Incoming, Reply, ReplyInner, Subscription,
    SubscriptionInner, subject_matches,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
pub struct InProcessBus {
    subs: RwLock<Vec<(String, mpsc::Sender<Incoming>)>>,
    queue: usize,
}

impl InProcessBus {
    /// `queue`: messages buffered per subscription before senders see `Overloaded`.
    pub fn new(queue: usize) -> Self {
        Self {
            subs: RwLock::new(Vec::new()),
            queue,
        }
    }

    /// Subscribers of `subject`; forgets subscriptions whose receiver was dropped.
    fn matching(&self, subject: &str) -> Vec<mpsc::Sender<Incoming>> {
        let subs = self.subs.read();
        let found: Vec<_> = subs
            .iter()
            .filter(|(p, tx)| !tx.is_closed() && subject_matches(p, subject))
            .map(|(_, tx)| tx.clone())
            .collect();
        let stale = subs.iter().any(|(_, tx)| tx.is_closed());
        drop(subs);
        if stale {
            self.subs.write().retain(|(_, tx)| !tx.is_closed());
        }
        found
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(16 * 1024)
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        for tx in self.matching(&msg.subject) {
            // Like NATS core: a subscriber that cannot keep up loses messages, the publisher
            // is never blocked.
            let _ = tx.try_send(Incoming {
                msg: msg.clone(),
                reply: None,
            });
        }
        Ok(())
    }

    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<Bytes, BusError> {
        let subject = msg.subject.clone();
        let Some(tx) = self.matching(&subject).into_iter().next() else {
            return Err(BusError::NoResponders(subject));
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.try_send(Incoming {
            msg,
            reply: Some(Reply(ReplyInner::InProcess(reply_tx))),
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BusError::Overloaded(subject.clone()),
            mpsc::error::TrySendError::Closed(_) => BusError::NoResponders(subject.clone()),
        })?;
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(_)) => Err(BusError::NoResponders(subject)),
            Err(_) => Err(BusError::Timeout(subject)),
        }
    }

    async fn gather(&self, msg: BusMessage) -> Result<Answers, BusError> {
        let answers = futures_util::stream::FuturesUnordered::new();
        for tx in self.matching(&msg.subject) {
            let (reply_tx, reply_rx) = oneshot::channel();
            let incoming = Incoming {
                msg: msg.clone(),
                reply: Some(Reply(ReplyInner::InProcess(reply_tx))),
            };
            // Like a publish: a subscriber that cannot keep up does not answer.
            if tx.try_send(incoming).is_ok() {
                answers.push(reply_rx);
            }
        }
        Ok(Answers(AnswersInner::InProcess(answers)))
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(self.queue);
        self.subs.write().push((subject.to_owned(), tx));
        Ok(Subscription(SubscriptionInner::InProcess(rx)))
    }

    /// One process is one member: a plain subscription (requests go to the first subscriber).
    async fn subscribe_queue(&self, subject: &str, _group: &str) -> Result<Subscription, BusError> {
        self.subscribe(subject).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_reply_and_no_responders() {
        let bus = InProcessBus::new(4);
        let mut sub = bus.subscribe("a.*").await.unwrap();
        tokio::spawn(async move {
            while let Some(inc) = sub.next().await {
                let mut answer = inc.msg.payload.to_vec();
                answer.reverse();
                inc.reply.unwrap().send(answer.into()).await.unwrap();
            }
        });
        let out = bus
            .request(BusMessage::new("a.x", vec![1, 2]), Duration::from_secs(1))
            .await;
        assert_eq!(out.unwrap().as_ref(), &[2, 1]);
        let err = bus
            .request(BusMessage::new("b.x", vec![]), Duration::from_secs(1))
            .await;
        assert_eq!(err, Err(BusError::NoResponders("b.x".into())));
    }

    #[tokio::test]
    async fn full_queue_is_overload_and_dropped_subscription_is_forgotten() {
        let bus = InProcessBus::new(1);
        let sub = bus.subscribe("q").await.unwrap();
        // First request fills the queue and times out (nobody reads); the second is refused at once.
        let first = bus
            .request(BusMessage::new("q", vec![]), Duration::from_millis(20))
            .await;
        assert_eq!(first, Err(BusError::Timeout("q".into())));
        let second = bus
            .request(BusMessage::new("q", vec![]), Duration::from_secs(5))
            .await;
        assert_eq!(second, Err(BusError::Overloaded("q".into())));
        drop(sub);
        let third = bus
            .request(BusMessage::new("q", vec![]), Duration::from_secs(5))
            .await;
        assert_eq!(third, Err(BusError::NoResponders("q".into())));
    }

    #[tokio::test]
    async fn gather_hears_every_subscriber_then_ends() {
        let bus = InProcessBus::default();
        for name in ["a", "b", "c"] {
            let mut sub = bus.subscribe("all").await.unwrap();
            tokio::spawn(async move {
                while let Some(inc) = sub.next().await {
                    inc.reply.unwrap().send(name.into()).await.unwrap();
                }
            });
        }
        // One that drops the request unanswered is not waited for.
        let mut mute = bus.subscribe("all").await.unwrap();
        tokio::spawn(async move { while mute.next().await.is_some() {} });
        let mut answers = bus.gather(BusMessage::new("all", "?")).await.unwrap();
        let mut names = Vec::new();
        while let Some(b) = answers.next().await {
            names.push(b);
        }
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        let mut none = bus.gather(BusMessage::new("nobody", "?")).await.unwrap();
        assert_eq!(none.next().await, None);
    }

    #[tokio::test]
    async fn publish_reaches_every_matching_subscriber() {
        let bus = InProcessBus::default();
        let mut a = bus.subscribe("e.>").await.unwrap();
        let mut b = bus.subscribe("e.silent").await.unwrap();
        bus.publish(BusMessage::new("e.silent", vec![9]))
            .await
            .unwrap();
        assert_eq!(a.next().await.unwrap().msg.payload.as_ref(), &[9]);
        assert_eq!(b.next().await.unwrap().msg.payload.as_ref(), &[9]);
    }
}
