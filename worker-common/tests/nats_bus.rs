//! NatsBus against a real `nats-server` on a free loopback port.

use flotilla_common::bus::{Bus, BusError, BusMessage, NatsBus};
use flotilla_common::config::NatsSecurity;
use flotilla_testkit::NatsServer;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn request_reply_headers_no_responders_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let bus = NatsBus::connect(&nats.url(), "test", &NatsSecurity::default())
        .await
        .unwrap();

    let err = bus.request(BusMessage::new("x.0001", "hi"), T).await;
    assert_eq!(err, Err(BusError::NoResponders("x.0001".into())));

    let mut sub = bus.subscribe("x.*").await.unwrap();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(inc) = sub.next().await {
            seen.push(inc.msg.header("Flotilla-Gateway").unwrap_or("").to_owned());
            let answer = format!(
                "{}:{}",
                inc.msg.subject,
                String::from_utf8_lossy(&inc.msg.payload)
            );
            inc.reply.unwrap().send(answer.into()).await.unwrap();
            if seen.len() == 2 {
                // A drained subscription still delivers what was already sent, then ends.
                sub.drain().await;
            }
        }
        seen
    });
    let msg = BusMessage::new("x.0002", "a").with_header("Flotilla-Gateway", "gw-1");
    assert_eq!(bus.request(msg, T).await.unwrap().as_ref(), b"x.0002:a");
    let msg = BusMessage::new("x.0003", "b").with_header("Flotilla-Gateway", "gw-2");
    assert_eq!(bus.request(msg, T).await.unwrap().as_ref(), b"x.0003:b");
    let seen = tokio::time::timeout(T, server).await.unwrap().unwrap();
    assert_eq!(seen, vec!["gw-1", "gw-2"]);
    let gone = bus.request(BusMessage::new("x.0004", "c"), T).await;
    assert_eq!(gone, Err(BusError::NoResponders("x.0004".into())));
}

#[tokio::test]
async fn subscriptions_come_back_after_a_nats_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path());
    let bus = NatsBus::connect(&nats.url(), "test", &NatsSecurity::default())
        .await
        .unwrap();
    let mut sub = bus.subscribe("svc").await.unwrap();
    tokio::spawn(async move {
        while let Some(inc) = sub.next().await {
            inc.reply.unwrap().send(inc.msg.payload).await.unwrap();
        }
    });
    assert_eq!(
        bus.request(BusMessage::new("svc", "1"), T)
            .await
            .unwrap()
            .as_ref(),
        b"1"
    );
    nats.restart();
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(b) = bus
            .request(BusMessage::new("svc", "2"), Duration::from_millis(200))
            .await
        {
            answered = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered.expect("no answer after the restart").as_ref(),
        b"2"
    );
    assert!(bus.is_connected());
}

#[tokio::test]
async fn a_wrong_url_is_a_clear_error() {
    let port = flotilla_testkit::free_port();
    let err = NatsBus::connect(
        &format!("nats://127.0.0.1:{port}"),
        "t",
        &NatsSecurity::default(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[tokio::test]
async fn a_message_over_the_servers_max_payload_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with_config(dir.path(), "max_payload: 65536");
    let bus = NatsBus::connect(&nats.url(), "test", &NatsSecurity::default())
        .await
        .unwrap();
    assert_eq!(bus.max_payload(), 65536, "read from the server");
    let mut sub = bus.subscribe("big").await.unwrap();
    tokio::spawn(async move {
        while let Some(inc) = sub.next().await {
            inc.reply.unwrap().send("ok".into()).await.unwrap();
        }
    });
    let fits = BusMessage::new("big", vec![0u8; 60_000]).with_header("h", "v");
    assert_eq!(bus.request(fits, T).await.unwrap().as_ref(), b"ok");
    let started = std::time::Instant::now();
    let too_big = BusMessage::new("big", vec![0u8; 70_000]);
    let err = flotilla_common::bus::request_with_retry(&bus, too_big, T, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::TooLarge {
                size: 70_000,
                max: 65536,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "not retried"
    );
    assert!(
        bus.publish(BusMessage::new("big", vec![0u8; 70_000]))
            .await
            .is_err()
    );
}

/// A gather reaches every subscriber and their answers arrive for as long as they are read;
/// with nobody subscribed it ends at once (the server's "no responders").
#[tokio::test]
async fn gather_hears_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let bus = NatsBus::connect(&nats.url(), "test", &NatsSecurity::default())
        .await
        .unwrap();

    let mut none = bus.gather(BusMessage::new("all", "?")).await.unwrap();
    let ended = tokio::time::timeout(T, none.next()).await;
    assert_eq!(ended, Ok(None), "nobody subscribes: no answer, no wait");

    for name in ["a", "b", "c"] {
        let mut sub = bus.subscribe("all").await.unwrap();
        tokio::spawn(async move {
            while let Some(inc) = sub.next().await {
                inc.reply.unwrap().send(name.into()).await.unwrap();
            }
        });
    }
    let mut answers = bus.gather(BusMessage::new("all", "?")).await.unwrap();
    let mut names = Vec::new();
    for _ in 0..3 {
        let answer = tokio::time::timeout(T, answers.next()).await.unwrap();
        names.push(String::from_utf8_lossy(&answer.unwrap()).into_owned());
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let more = tokio::time::timeout(Duration::from_millis(300), answers.next()).await;
    assert!(more.is_err(), "three subscribers, three answers: {more:?}");
}
