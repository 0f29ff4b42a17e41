//! The Bus on NATS core (no JetStream): what gateways and coordinators of a cluster talk over.
//! The client reconnects by itself and re-subscribes every subscription after a NATS restart;
//! requests made while it is away time out and callers retry or answer UNAVAILABLE.

use super::types::{
    Answers, AnswersInner, Bus, BusError, BusMessage, Subscription, SubscriptionInner,
};
use crate::config::{NatsSecurity, redact};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url` (a comma-separated list of servers is allowed), naming the connection
    /// `name` in NATS monitoring. Fails when no server answers within a few seconds, so a wrong
    /// URL is reported at start instead of retried forever; after that, reconnects never stop.
    ///
    /// Credentials come from the URL (`user:password@`, or `token@`) or `security.creds`; TLS is
    /// required by a `tls://` URL or a CA given in `security`.
    pub async fn connect(url: &str, name: &str, security: &NatsSecurity) -> Result<Self, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // At most 1 s between reconnect attempts (the default backs off to 4 s): a NATS
            // restart should cost agents as little as possible.
            .reconnect_delay_callback(|attempt| Duration::from_millis(50 * attempt.min(20) as u64))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            });
        // The client does not send credentials written in the URL by itself.
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(|u| {
                u.trim()
                    .parse()
                    .map_err(|e| format!("--nats-url {:?} is not a NATS URL: {e}", redact(u)))
            })
            .collect::<Result<_, _>>()?;
        if let Some(first) = servers.first() {
            options = match (first.username(), first.password()) {
                (Some(user), Some(pass)) => options.user_and_password(user.into(), pass.into()),
                (Some(token), None) => options.token(token.into()),
                _ => options,
            };
        }
        if let Some(creds) = &security.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                format!(
                    "--nats-creds {}: not a NATS credentials file: {e}",
                    creds.display()
                )
            })?;
        }
        if let Some(ca) = &security.ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &security.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", redact(url)))?;
        Ok(Self { client })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The largest message (payload and headers) the NATS server accepts: its `max_payload`.
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// Refuses at once what the server would refuse (and the caller would otherwise retry until
    /// its deadline).
    fn check_size(&self, msg: &BusMessage) -> Result<(), BusError> {
        let headers: usize = msg
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + if msg.headers.is_empty() { 0 } else { 12 };
        let size = msg.payload.len() + headers;
        let max = self.max_payload();
        if size > max {
            return Err(BusError::TooLarge {
                subject: msg.subject.clone(),
                size,
                max,
            });
        }
        Ok(())
    }
}

fn headers_of(msg: &BusMessage) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in &msg.headers {
        h.insert(name.as_str(), value.as_str());
    }
    h
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        self.check_size(&msg)?;
        let headers = headers_of(&msg);
        self.client
            .publish_with_headers(msg.subject, headers, msg.payload)
            .await
            .map_err(|_| BusError::Closed)
    }

    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<Bytes, BusError> {
        self.check_size(&msg)?;
        let request = async_nats::Request::new()
            .headers(headers_of(&msg))
            .payload(msg.payload)
            .timeout(Some(timeout));
        match self.client.send_request(msg.subject.clone(), request).await {
            Ok(reply) => Ok(reply.payload),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(msg.subject),
                async_nats::RequestErrorKind::TimedOut => BusError::Timeout(msg.subject),
                _ => BusError::Closed,
            }),
        }
    }

    async fn gather(&self, msg: BusMessage) -> Result<Answers, BusError> {
        self.check_size(&msg)?;
        let inbox = self.client.new_inbox();
        let answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|_| BusError::Closed)?;
        let headers = headers_of(&msg);
        self.client
            .publish_with_reply_and_headers(msg.subject, inbox, headers, msg.payload)
            .await
            .map_err(|_| BusError::Closed)?;
        // Dropping the subscriber unsubscribes the inbox.
        Ok(Answers(AnswersInner::Nats(answers)))
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|_| BusError::Closed)?;
        Ok(Subscription(SubscriptionInner::Nats {
            client: self.client.clone(),
            sub,
        }))
    }

    async fn subscribe_queue(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        let sub = self
            .client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(|_| BusError::Closed)?;
        Ok(Subscription(SubscriptionInner::Nats {
            client: self.client.clone(),
            sub,
        }))
    }
}
