use super::*;
use flotilla_common::bus::InProcessBus;
use flotilla_proto::opamp::CustomMessage;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;

/// A push of `data` bytes to connection `connection` of gateway `gateway`, for agent `uid`.
fn to(gateway: &str, connection: u64, uid: u8, data: usize) -> Push {
    let (origin, msg) = message_to(gateway, connection, uid, data);
    Push::new(origin, msg, &mut Bodies::default())
}

/// What [`to`] pushes, and to where.
fn message_to(gateway: &str, connection: u64, uid: u8, data: usize) -> (Origin, ServerToAgent) {
    let origin = Origin {
        gateway_id: gateway.into(),
        connection_id: connection,
        transport: Transport::Websocket as i32,
        ..Default::default()
    };
    let msg = ServerToAgent {
        instance_uid: vec![uid; 16],
        custom_message: Some(CustomMessage {
            data: vec![0; data],
            ..Default::default()
        }),
        ..Default::default()
    };
    (origin, msg)
}

/// Small pushes (10 bytes), each to the connection of its agent's uid: `(gateway, n)`.
fn small(pushes: &[(&str, u8)]) -> Vec<Push> {
    pushes
        .iter()
        .map(|&(gateway, n)| to(gateway, n.into(), n, 10))
        .collect()
}

/// Per batch: its gateway and its pushes' connection ids.
fn shape(batches: &[(String, Vec<Push>)]) -> Vec<(&str, Vec<u64>)> {
    batches
        .iter()
        .map(|(g, p)| (g.as_str(), p.iter().map(|p| p.connection_id).collect()))
        .collect()
}

fn encoded(pushes: &[Push]) -> usize {
    DownlinkBatch {
        downlinks: pushes.iter().map(Push::downlink).collect(),
        end_heartbeat_grants: false,
    }
    .encoded_len()
}

#[test]
fn batches_group_by_gateway_in_order_and_split_by_count() {
    let pushes = small(&[
        ("gw-b", 1),
        ("gw-a", 2),
        ("gw-b", 3),
        ("gw-a", 4),
        ("gw-b", 5),
        ("gw-b", 6),
        ("gw-b", 7),
    ]);
    let out = batches(pushes, 2, usize::MAX);
    assert_eq!(
        shape(&out),
        vec![
            ("gw-a", vec![2, 4]),
            ("gw-b", vec![1, 3]),
            ("gw-b", vec![5, 6]),
            ("gw-b", vec![7]),
        ]
    );
    // Each downlink carries its agent's message as encoded, addressed to its uid.
    let first = out[0].1[0].downlink();
    let (origin, msg) = message_to("gw-a", 2, 2, 10);
    assert_eq!(first, downlink(&origin, &msg));
    assert_eq!(
        ServerToAgent::decode(first.server_to_agent.as_slice()).unwrap(),
        msg
    );
    assert!(batches(Vec::new(), 2, 100).is_empty());

    // Each gateway's agents in uid order (spread over the shards), the gateways' batches in turn.
    let pushes = small(&[
        ("gw-b", 9),
        ("gw-a", 5),
        ("gw-b", 1),
        ("gw-a", 2),
        ("gw-b", 4),
        ("gw-a", 8),
        ("gw-b", 3),
        ("gw-a", 7),
    ]);
    assert_eq!(
        shape(&batches(pushes, 2, usize::MAX)),
        vec![
            ("gw-a", vec![2, 5]),
            ("gw-b", vec![1, 3]),
            ("gw-a", vec![7, 8]),
            ("gw-b", vec![4, 9]),
        ]
    );
}

#[test]
fn pushes_of_the_same_contents_hold_one_encoding() {
    let mut bodies = Bodies::default();
    let mut planned: Vec<Push> = (1..=3u8)
        .map(|i| {
            let (origin, msg) = message_to("gw", i.into(), i, 100);
            Push::new(origin, msg, &mut bodies)
        })
        .collect();
    let (origin, other) = message_to("gw", 4, 4, 200);
    planned.push(Push::new(origin, other, &mut bodies));
    assert!(Arc::ptr_eq(&planned[0].rest, &planned[2].rest));
    assert!(!Arc::ptr_eq(&planned[0].rest, &planned[3].rest));
    // Each is still its own agent's message, and its length is known without making it.
    for (i, push) in planned.iter().enumerate() {
        let msg = ServerToAgent::decode(push.downlink().server_to_agent.as_slice()).unwrap();
        assert_eq!(msg.instance_uid, vec![i as u8 + 1; 16]);
        assert_eq!(push.encoded_len(), push.downlink().encoded_len());
    }
    // A message without a uid (a malformed record's), and an empty one.
    let (origin, mut msg) = message_to("gw", 0, 0, 0);
    msg.instance_uid.clear();
    let bare = Push::new(origin.clone(), msg, &mut bodies);
    assert_eq!(bare.encoded_len(), bare.downlink().encoded_len());
    let empty = Push::new(origin, ServerToAgent::default(), &mut bodies);
    assert_eq!(empty.encoded_len(), empty.downlink().encoded_len());
    assert_eq!(empty.downlink().encoded_len(), 0);
}

#[test]
fn batches_split_by_encoded_bytes_and_an_oversized_push_goes_alone() {
    let one = {
        let (o, m) = message_to("gw", 1, 1, 1000);
        DownlinkBatch {
            downlinks: vec![downlink(&o, &m)],
            end_heartbeat_grants: false,
        }
        .encoded_len()
    };
    // Room for exactly three 1000-byte pushes.
    let max = 3 * one;
    let pushes = (1..=7).map(|i| to("gw", i, i as u8, 1000)).collect();
    let out = batches(pushes, 512, max);
    assert_eq!(
        shape(&out),
        vec![
            ("gw", vec![1, 2, 3]),
            ("gw", vec![4, 5, 6]),
            ("gw", vec![7])
        ]
    );
    assert_eq!(encoded(&out[0].1), max, "filled to the byte");
    // One byte less and the third no longer fits.
    let pushes = (1..=3).map(|i| to("gw", i, i as u8, 1000)).collect();
    assert_eq!(
        shape(&batches(pushes, 512, max - 1)),
        vec![("gw", vec![1, 2]), ("gw", vec![3])]
    );

    // A push larger than the bound by itself is a batch of its own, between the others'.
    let pushes = vec![
        to("gw", 1, 1, 1000),
        to("gw", 2, 2, 10 * max),
        to("gw", 3, 3, 1000),
        to("gw", 4, 4, 1000),
    ];
    let out = batches(pushes, 512, max);
    assert_eq!(
        shape(&out),
        vec![("gw", vec![1]), ("gw", vec![2]), ("gw", vec![3, 4])]
    );
    for (_, b) in &out {
        assert!(b.len() == 1 || encoded(b) <= max, "{} bytes", encoded(b));
    }
    // Alone, or first: still sent.
    let out = batches(vec![to("gw", 9, 9, 10 * max)], 512, max);
    assert_eq!(shape(&out), vec![("gw", vec![9])]);
}

/// How a fake gateway serves pushes.
#[derive(Clone, Copy, PartialEq)]
enum Serves {
    /// Batches: delivers every downlink but those to connection 99.
    Batches,
    /// Single downlinks only (a gateway of the version before batches), delivering each.
    Singles,
    /// Batches it never answers.
    Mute,
}

/// A gateway `id` on `bus`; returns the number of downlinks of each request it got.
async fn fake_gateway(bus: &InProcessBus, id: &str, serves: Serves) -> Arc<Mutex<Vec<usize>>> {
    let subjects = Subjects::new("test");
    let subject = match serves {
        Serves::Singles => subjects.downlink(id),
        Serves::Batches | Serves::Mute => subjects.downlink_batch(id),
    };
    let mut sub = bus.subscribe(&subject).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sizes = seen.clone();
    tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some(i) = sub.next().await {
            let ack = match serves {
                Serves::Batches => {
                    let batch = DownlinkBatch::decode(i.msg.payload).unwrap();
                    sizes.lock().push(batch.downlinks.len());
                    let delivered = batch.downlinks.iter().map(|d| d.connection_id != 99);
                    DownlinkBatchAck {
                        delivered: delivered.collect(),
                    }
                    .encode_to_vec()
                }
                Serves::Singles => {
                    Downlink::decode(i.msg.payload).unwrap();
                    sizes.lock().push(1);
                    DownlinkAck { delivered: true }.encode_to_vec()
                }
                Serves::Mute => {
                    sizes.lock().push(0);
                    unanswered.push(i);
                    continue;
                }
            };
            i.reply.unwrap().send(ack.into()).await.unwrap();
        }
    });
    seen
}

// Time is paused: the agents pushed to never answer, and each batch past the window waits for the
// patience with them to run out.
#[tokio::test(start_paused = true)]
async fn push_many_counts_what_each_gateway_acknowledged() {
    let bus = Arc::new(InProcessBus::default());
    let subjects = Subjects::new("test");
    let gw_a = fake_gateway(&bus, "gw-a", Serves::Batches).await;
    let gw_old = fake_gateway(&bus, "gw-old", Serves::Singles).await;
    let gw_mute = fake_gateway(&bus, "gw-mute", Serves::Mute).await;
    let metrics = OwnerMetrics::new(&mut Registry::default());
    let pusher = Pusher::new(
        bus.clone(),
        subjects,
        Duration::from_millis(300),
        metrics.clone(),
        4 << 20,
        Arc::new(Semaphore::new(MAX_UPLINKS_IN_FLIGHT)),
    );
    // gw-a: 600 agents, one of them on a connection it does not know; gw-old takes single
    // downlinks only; gw-mute never answers; gw-gone is not there.
    let mut planned: Vec<_> = (0..600)
        .map(|i| message_to("gw-a", 1000 + i, 1, 100))
        .collect();
    planned[300].0.connection_id = 99;
    planned.extend((0..3).map(|i| message_to("gw-old", i, 2, 100)));
    planned.extend((0..4).map(|i| message_to("gw-mute", i, 3, 100)));
    planned.extend((0..5).map(|i| message_to("gw-gone", i, 4, 100)));
    let mut bodies = Bodies::default();
    let pushes = planned
        .into_iter()
        .enumerate()
        .map(|(i, (origin, mut msg))| {
            msg.instance_uid = uuid::Uuid::from_u128(i as u128 + 1).as_bytes().to_vec();
            Push::new(origin, msg, &mut bodies)
        })
        .collect();
    let delivered = pusher.push_many(pushes).await;
    assert_eq!(delivered, 599 + 3);
    let mut sizes = gw_a.lock().clone();
    sizes.sort_unstable();
    let mut want = vec![MAX_BATCH_COUNT; 600 / MAX_BATCH_COUNT];
    want.insert(0, 600 % MAX_BATCH_COUNT);
    assert_eq!(sizes, want);
    assert_eq!(*gw_old.lock(), vec![1, 1, 1], "one request per push");
    assert_eq!(*gw_mute.lock(), vec![0], "one batch, not answered");
    let count = |result| {
        metrics
            .pushes
            .get_or_create(&vec![("result", result)])
            .get()
    };
    assert_eq!(count("delivered"), 599 + 3);
    assert_eq!(
        count("undelivered"),
        1 + 4 + 5,
        "the unknown connection, the batch not answered, the gateway gone"
    );
    // A single push goes to the single subject.
    let (origin, msg) = message_to("gw-old", 7, 7, 100);
    assert!(pusher.push(&origin, &msg).await);
    assert_eq!(gw_old.lock().len(), 4);
    let (origin, msg) = message_to("gw-a", 7, 7, 100);
    assert!(!pusher.push(&origin, &msg).await, "gw-a takes batches only");
    assert_eq!(count("undelivered"), 11);
}

#[tokio::test]
async fn a_batch_waits_while_the_owner_is_busy_with_agents_messages() {
    let bus = Arc::new(InProcessBus::default());
    let gw = fake_gateway(&bus, "gw-a", Serves::Batches).await;
    let room = Arc::new(Semaphore::new(MAX_UPLINKS_IN_FLIGHT));
    let pusher = Pusher::new(
        bus.clone(),
        Subjects::new("test"),
        Duration::from_millis(300),
        OwnerMetrics::new(&mut Registry::default()),
        4 << 20,
        room.clone(),
    );
    // More than half of the room is taken: agents' messages come first.
    let busy = room
        .clone()
        .acquire_many_owned(MAX_UPLINKS_IN_FLIGHT as u32 / 2 + 1)
        .await
        .unwrap();
    let pushing = tokio::spawn(async move { pusher.push_many(vec![to("gw-a", 1, 1, 100)]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.lock().is_empty(), "sent while the owner was busy");
    drop(busy);
    assert_eq!(pushing.await.unwrap(), 1);
    assert_eq!(*gw.lock(), vec![1]);
}
