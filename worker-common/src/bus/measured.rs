//! [`Measured`]: any [`Bus`], with requests timed and every request and publish counted by
//! outcome (`flotilla_bus_request_seconds`, `flotilla_bus_requests_total`,
//! `flotilla_bus_publishes_total`), labelled by the kind of subject (uplink, downlink, control,
//! event), never by the subject itself (it names shards and gateways).

use super::types::{Answers, Bus, BusError, BusMessage, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, &'static str)>;

pub struct Measured {
    inner: Arc<dyn Bus>,
    request_seconds: Family<Labels, Histogram>,
    requests: Family<Labels, Counter>,
    publishes: Family<Labels, Counter>,
}

/// The kind of a subject `opamp.<region>.<kind>...`.
fn kind(subject: &str) -> &'static str {
    match subject.split('.').nth(2) {
        Some("up") => "uplink",
        Some("gw") => "downlink",
        Some("ctl") => "control",
        Some("evt") => "event",
        _ => "other",
    }
}

fn outcome<T>(result: &Result<T, BusError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(BusError::NoResponders(_)) => "no_responders",
        Err(BusError::Timeout(_)) => "timeout",
        Err(BusError::Overloaded(_)) => "overloaded",
        Err(BusError::TooLarge { .. }) => "too_large",
        Err(_) => "closed",
    }
}

impl Measured {
    pub fn new(inner: Arc<dyn Bus>, registry: &mut Registry) -> Self {
        let m = Self {
            inner,
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
            }),
            requests: Family::default(),
            publishes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("flotilla_bus");
        r.register(
            "request_seconds",
            "Bus requests by subject kind (uplink, downlink, control), from send to answer or \
             failure",
            m.request_seconds.clone(),
        );
        r.register(
            "requests",
            "Bus requests by subject kind and outcome (ok, timeout, no_responders, overloaded, \
             too_large, closed)",
            m.requests.clone(),
        );
        r.register(
            "publishes",
            "Bus publishes by subject kind and outcome",
            m.publishes.clone(),
        );
        m
    }
}

#[async_trait]
impl Bus for Measured {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        let kind = kind(&msg.subject);
        let result = self.inner.publish(msg).await;
        self.publishes
            .get_or_create(&vec![("kind", kind), ("outcome", outcome(&result))])
            .inc();
        result
    }

    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<Bytes, BusError> {
        let kind = kind(&msg.subject);
        let started = Instant::now();
        let result = self.inner.request(msg, timeout).await;
        self.request_seconds
            .get_or_create(&vec![("kind", kind)])
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&vec![("kind", kind), ("outcome", outcome(&result))])
            .inc();
        result
    }

    async fn gather(&self, msg: BusMessage) -> Result<Answers, BusError> {
        let kind = kind(&msg.subject);
        let result = self.inner.gather(msg).await;
        self.publishes
            .get_or_create(&vec![("kind", kind), ("outcome", outcome(&result))])
            .inc();
        result
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe(subject).await
    }

    async fn subscribe_queue(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe_queue(subject, group).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::inproc::InProcessBus;
    use super::*;

    #[tokio::test]
    async fn requests_are_timed_and_counted_by_kind_and_outcome() {
        let mut registry = Registry::default();
        let bus = Measured::new(Arc::new(InProcessBus::default()), &mut registry);
        let nobody = BusMessage::new("opamp.local.up.0001", "x");
        let err = bus.request(nobody, Duration::from_millis(50)).await;
        assert!(matches!(err, Err(BusError::NoResponders(_))), "{err:?}");
        bus.publish(BusMessage::new("opamp.local.evt.silent", "{}"))
            .await
            .unwrap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"flotilla_bus_requests_total{kind="uplink",outcome="no_responders"} 1"#,
            r#"flotilla_bus_request_seconds_count{kind="uplink"} 1"#,
            r#"flotilla_bus_publishes_total{kind="event",outcome="ok"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(kind("opamp.eu.gw.g1.down"), "downlink");
        assert_eq!(kind("opamp.eu.gw.g1.down.batch"), "downlink");
        assert_eq!(kind("opamp.eu.ctl.desired"), "control");
        assert_eq!(kind("elsewhere"), "other");
    }
}
