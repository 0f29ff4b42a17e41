//! RedisStore and shard leases against a real `redis-server` on a free loopback port.

use flotilla_common::names::shard_of;
use flotilla_common::store::{
    AgentCounts, Claimed, Deadline, Fence, RedisStore, Store, StoreError, StoredConfig, Touch,
};
use flotilla_proto::bus::AgentRecord;
use flotilla_testkit::RedisServer;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

fn audit_of(c: &StoredConfig) -> flotilla_common::store::AuditEntry {
    flotilla_common::store::AuditEntry {
        id: String::new(),
        at_unix_ms: flotilla_common::telemetry::now_unix_ms(),
        caller: "test".into(),
        action: "config.put".into(),
        object: format!("config/{}", c.name),
        before: None,
        after: Some(serde_json::json!({"version": c.version})),
    }
}

fn record(uid: Uuid, seq: u64) -> AgentRecord {
    AgentRecord {
        instance_uid: uid.as_bytes().to_vec(),
        sequence_num: seq,
        ..Default::default()
    }
}

/// A connection of its own to `redis`, to read and write what the store keeps as it is.
async fn raw_connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The fences of the shards of `uids`, each acquired by node "n".
async fn acquire_for(store: &RedisStore, uids: &[Uuid]) -> BTreeMap<u16, Fence> {
    let mut fences = BTreeMap::new();
    for uid in uids {
        let shard = shard_of(uid.as_bytes());
        if let std::collections::btree_map::Entry::Vacant(e) = fences.entry(shard) {
            let f = store.acquire(shard, "n", Duration::from_secs(10)).await;
            e.insert(f.unwrap().expect("a free shard"));
        }
    }
    fences
}

#[tokio::test]
async fn a_taken_over_shard_fences_its_former_owner() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    let shard = shard_of(uid.as_bytes());
    let ttl = Duration::from_millis(300);

    let a = store
        .acquire(shard, "a", ttl)
        .await
        .unwrap()
        .expect("free shard");
    assert_eq!(
        store.acquire(shard, "b", ttl).await.unwrap(),
        None,
        "held by a"
    );
    store
        .save_agent(a, &record(uid, 1), Deadline::Arm(1000), None)
        .await
        .unwrap();
    assert_eq!(store.renew(&[a], "a", ttl).await.unwrap(), vec![true]);
    assert_eq!(store.renew(&[a], "b", ttl).await.unwrap(), vec![false]);

    // a stops renewing (paused); its lease expires and b takes the shard with a higher epoch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = store
        .acquire(shard, "b", ttl)
        .await
        .unwrap()
        .expect("expired");
    assert!(b.epoch > a.epoch);
    assert_eq!(store.renew(&[a], "a", ttl).await.unwrap(), vec![false]);

    // Every write of a's is refused from now on, its audit entry with it; b's go through.
    let change = |caller: &str| flotilla_common::store::AuditEntry {
        id: String::new(),
        at_unix_ms: flotilla_common::telemetry::now_unix_ms(),
        caller: caller.into(),
        action: "labels.set".into(),
        object: format!("agent/{uid}"),
        before: None,
        after: None,
    };
    let stale = store
        .save_agent(a, &record(uid, 99), Deadline::Clear, Some(&change("a")))
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    let claim = store.claim_due(a, 5000, 1000).await;
    assert!(matches!(claim, Err(StoreError::Fenced { .. })), "{claim:?}");
    let gone = store.delete_agent(a, uid, Some(&change("a"))).await;
    assert!(matches!(gone, Err(StoreError::Fenced { .. })), "{gone:?}");
    assert_eq!(store.get_agent(uid).await.unwrap().unwrap().sequence_num, 1);
    store
        .save_agent(b, &record(uid, 2), Deadline::Keep, Some(&change("b")))
        .await
        .unwrap();
    assert_eq!(store.get_agent(uid).await.unwrap().unwrap().sequence_num, 2);
    let all = flotilla_common::store::AuditQuery {
        limit: 10,
        ..Default::default()
    };
    let callers: Vec<String> = store
        .query_audit(&all)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.caller)
        .collect();
    assert_eq!(callers, ["b"], "only the write that happened is on record");
    assert!(
        store
            .delete_agent(b, uid, Some(&change("b")))
            .await
            .unwrap()
    );
    assert!(store.get_agent(uid).await.unwrap().is_none());
    assert!(
        !store.delete_agent(b, uid, None).await.unwrap(),
        "already gone"
    );
    assert_eq!(store.query_audit(&all).await.unwrap().entries.len(), 2);
    let mut left = 0;
    store
        .visit_agents(&|_| true, &mut |_| left += 1)
        .await
        .unwrap();
    assert_eq!(left, 0, "no longer in its shard's index");

    // Release is compare-and-delete: a cannot release b's lease; b can, and the shard is free.
    assert!(!store.release(a, "a").await.unwrap());
    assert!(store.release(b, "b").await.unwrap());
    let c = store
        .acquire(shard, "c", ttl)
        .await
        .unwrap()
        .expect("released");
    assert!(c.epoch > b.epoch);
}

#[tokio::test]
async fn deadlines_are_claimed_once_and_return_if_the_claimer_dies() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    let f = store
        .acquire(shard_of(uid.as_bytes()), "a", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    store
        .save_agent(f, &record(uid, 1), Deadline::Arm(100), None)
        .await
        .unwrap();
    // Each answer names the shard's earliest deadline after the claim.
    let claimed = |due: Vec<Uuid>, next| Claimed {
        due,
        next_unix_ms: Some(next),
    };
    assert_eq!(
        store.claim_due(f, 99, 1000).await.unwrap(),
        claimed(vec![], 100)
    );
    assert_eq!(
        store.claim_due(f, 100, 1000).await.unwrap(),
        claimed(vec![uid], 1100)
    );
    assert_eq!(
        store.claim_due(f, 500, 1000).await.unwrap(),
        claimed(vec![], 1100),
        "claimed"
    );
    assert_eq!(
        store.claim_due(f, 1100, 1000).await.unwrap(),
        claimed(vec![uid], 2100),
        "claimer died"
    );
    store
        .save_agent(f, &record(uid, 2), Deadline::Clear, None)
        .await
        .unwrap();
    assert_eq!(
        store.claim_due(f, 1_000_000, 1000).await.unwrap(),
        Claimed::default(),
        "no deadline left"
    );
}

#[tokio::test]
async fn a_touch_writes_the_sequence_number_and_last_seen_time_alone_and_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    let shard = shard_of(uid.as_bytes());
    let f = store
        .acquire(shard, "a", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let touch = |seq, seen| Touch {
        uid,
        sequence_num: seq,
        last_seen_unix_ms: seen,
    };
    assert!(
        !store
            .touch_agent(f, touch(1, 1), Deadline::Keep)
            .await
            .unwrap(),
        "no record to touch: nothing written"
    );
    assert_eq!(store.get_agent(uid).await.unwrap(), None);

    let mut rec = record(uid, 1);
    rec.labels.insert("team".into(), "a".into());
    store
        .save_agent(f, &rec, Deadline::Arm(100), None)
        .await
        .unwrap();
    let mut raw = raw_connection(&redis).await;
    let key = format!("opamp:t:{{s{shard:04}}}:a:{uid}");
    let whole: Vec<u8> = redis::AsyncCommands::hget(&mut raw, &key, "r")
        .await
        .unwrap();

    assert!(
        store
            .touch_agent(f, touch(2, 5_000), Deadline::Arm(9_000))
            .await
            .unwrap()
    );
    let after: Vec<u8> = redis::AsyncCommands::hget(&mut raw, &key, "r")
        .await
        .unwrap();
    assert_eq!(after, whole, "the record itself is not written again");
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!((read.sequence_num, read.last_seen_unix_ms), (2, 5_000));
    assert_eq!(read.labels, rec.labels);
    let mut visited = Vec::new();
    store
        .visit_agents(&|s| s == shard, &mut |r| visited.push(r.sequence_num))
        .await
        .unwrap();
    assert_eq!(visited, vec![2], "visits see the touch too");
    assert_eq!(
        store.claim_due(f, 8_999, 1000).await.unwrap(),
        Claimed {
            due: vec![],
            next_unix_ms: Some(9_000)
        },
        "the touch moved the deadline"
    );
    assert_eq!(
        store.claim_due(f, 9_000, 1000).await.unwrap().due,
        vec![uid]
    );

    // A whole save replaces the touch.
    store
        .save_agent(f, &record(uid, 3), Deadline::Keep, None)
        .await
        .unwrap();
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!((read.sequence_num, read.last_seen_unix_ms), (3, 0));

    // Once another owner has the shard, a touch from the former one is refused.
    store.release(f, "a").await.unwrap();
    let g = store
        .acquire(shard, "b", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let stale = store.touch_agent(f, touch(9, 9), Deadline::Keep).await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    assert!(
        store
            .touch_agent(g, touch(4, 6_000), Deadline::Keep)
            .await
            .unwrap()
    );
    assert_eq!(store.get_agent(uid).await.unwrap().unwrap().sequence_num, 4);
}

#[tokio::test]
async fn counts_follow_every_write_and_records_from_before_are_counted_once() {
    use flotilla_proto::bus::AgentStatus;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::new_v4());
    let fences = acquire_for(&store, &[a, b]).await;
    let fence = |uid: Uuid| fences[&shard_of(uid.as_bytes())];
    let with = |uid, status: AgentStatus| AgentRecord {
        status: status as i32,
        ..record(uid, 1)
    };
    assert_eq!(
        store.agent_counts().await.unwrap(),
        Some(AgentCounts::default())
    );
    store
        .save_agent(
            fence(a),
            &with(a, AgentStatus::Connected),
            Deadline::Keep,
            None,
        )
        .await
        .unwrap();
    store
        .save_agent(
            fence(b),
            &with(b, AgentStatus::Connected),
            Deadline::Keep,
            None,
        )
        .await
        .unwrap();
    store
        .save_agent(
            fence(b),
            &with(b, AgentStatus::Silent),
            Deadline::Keep,
            None,
        )
        .await
        .unwrap();
    let touch = Touch {
        uid: a,
        sequence_num: 2,
        last_seen_unix_ms: 2,
    };
    store
        .touch_agent(fence(a), touch, Deadline::Keep)
        .await
        .unwrap();
    let counts = AgentCounts {
        total: 2,
        connected: 1,
        silent: 1,
        ..Default::default()
    };
    assert_eq!(store.agent_counts().await.unwrap(), Some(counts));
    assert!(
        !store.count_shard(fence(a)).await.unwrap(),
        "counted already"
    );
    assert!(store.delete_agent(fence(b), b, None).await.unwrap());
    let one = AgentCounts {
        total: 1,
        connected: 1,
        ..Default::default()
    };
    assert_eq!(store.agent_counts().await.unwrap(), Some(one));

    // A record written before counts were kept (no tally, its shard's counts not complete) is
    // not in the counts: none are given until its shard is counted.
    let mut raw = raw_connection(&redis).await;
    let shard = shard_of(a.as_bytes());
    let key = |what: &str| format!("opamp:t:{{s{shard:04}}}:{what}");
    let _: () = redis::cmd("HDEL")
        .arg(key(&format!("a:{a}")))
        .arg("c")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(key("counts"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(store.agent_counts().await.unwrap(), None);
    assert!(store.count_shard(fence(a)).await.unwrap());
    assert_eq!(store.agent_counts().await.unwrap(), Some(one));
    store
        .save_agent(
            fence(a),
            &with(a, AgentStatus::Disconnected),
            Deadline::Keep,
            None,
        )
        .await
        .unwrap();
    let gone = AgentCounts {
        total: 1,
        disconnected: 1,
        ..Default::default()
    };
    assert_eq!(store.agent_counts().await.unwrap(), Some(gone));

    // Counting is fenced like every other write of the shard.
    let _: () = redis::cmd("DEL")
        .arg(key("counts"))
        .query_async(&mut raw)
        .await
        .unwrap();
    store.release(fence(a), "n").await.unwrap();
    let taken = store
        .acquire(shard, "m", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let stale = store.count_shard(fence(a)).await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    assert!(store.count_shard(taken).await.unwrap());
    assert_eq!(store.agent_counts().await.unwrap(), Some(gone));
}

#[tokio::test]
async fn effective_configs_are_kept_once_for_every_agent_reporting_them() {
    use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, EffectiveConfig};
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let config = |body: String| EffectiveConfig {
        config_map: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigFile {
                    body: body.into_bytes().into(),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    };
    let big = config(format!("receivers: {{}}\n# {}", "x".repeat(20_000)));
    let small = config("receivers: {}".into());
    let (a, b) = (Uuid::now_v7(), Uuid::new_v4());
    let fences = acquire_for(&store, &[a, b]).await;
    let fence = |uid: Uuid| fences[&shard_of(uid.as_bytes())];
    let with = |uid, c: &EffectiveConfig| AgentRecord {
        effective_config: Some(Box::new(c.clone())),
        ..record(uid, 1)
    };
    let mut raw = raw_connection(&redis).await;
    let bodies = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("opamp:t:ec:*")
                .query_async(&mut raw)
                .await
                .unwrap();
            keys.len()
        }
    };
    for uid in [a, b] {
        store
            .save_agent(fence(uid), &with(uid, &big), Deadline::Keep, None)
            .await
            .unwrap();
    }
    assert_eq!(bodies(&mut raw).await, 1, "one body for both agents");
    let stored: Vec<u8> = redis::AsyncCommands::hget(
        &mut raw,
        format!("opamp:t:{{s{:04}}}:a:{a}", shard_of(a.as_bytes())),
        "r",
    )
    .await
    .unwrap();
    assert!(
        stored.len() < 1_000,
        "the record without it: {} bytes",
        stored.len()
    );
    let read = store.get_agent(a).await.unwrap().unwrap();
    assert_eq!(read.effective_config.as_deref(), Some(&big), "read whole");
    let mut visited = Vec::new();
    store
        .visit_agents(&|_| true, &mut |r| {
            visited.push((
                r.effective_config.is_none(),
                r.effective_config_sha256.len(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        visited,
        vec![(true, 32); 2],
        "visits name it without reading it"
    );
    let sha = read.effective_config_sha256.clone();
    assert_eq!(
        store.effective_config(&sha).await.unwrap(),
        Some(big.clone())
    );

    // One agent moves to a small config (kept in its record), the other is removed: the body
    // goes with its last reference.
    store
        .save_agent(
            fence(a),
            &AgentRecord {
                effective_config_sha256: sha.clone(),
                ..with(a, &small)
            },
            Deadline::Keep,
            None,
        )
        .await
        .unwrap();
    let read = store.get_agent(a).await.unwrap().unwrap();
    assert_eq!(read.effective_config.as_deref(), Some(&small));
    assert!(
        read.effective_config_sha256.is_empty(),
        "it names none any more"
    );
    assert_eq!(bodies(&mut raw).await, 1, "b still names it");
    assert!(store.delete_agent(fence(b), b, None).await.unwrap());
    assert_eq!(bodies(&mut raw).await, 0);
    let refs: std::collections::HashMap<String, i64> =
        redis::AsyncCommands::hgetall(&mut raw, "opamp:t:ec-refs")
            .await
            .unwrap();
    assert!(refs.is_empty(), "{refs:?}");
    // Saved again by an agent, it is stored again.
    store
        .save_agent(fence(b), &with(b, &big), Deadline::Keep, None)
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(b).await.unwrap().unwrap().effective_config,
        Some(Box::new(big))
    );
}

/// An owner writes from its copy, which keeps the description and the health's components
/// encoded (bus.proto `copied_description`, `copied_components`): every reader gets the record
/// they stand for, its effective config kept apart as any other.
/// A collector's record, decoded and in an owner's copy's form (description and the health's
/// components encoded), with a 20 KB effective config.
fn collector(uid: Uuid) -> (AgentRecord, AgentRecord) {
    use flotilla_proto::opamp::{
        AgentConfigFile, AgentConfigMap, AgentDescription, ComponentHealth, EffectiveConfig,
    };
    use prost::Message;
    let component = |healthy| ComponentHealth {
        healthy,
        status: "StatusOK".into(),
        ..Default::default()
    };
    let whole = AgentRecord {
        description: Some(Box::new(AgentDescription {
            identifying_attributes: vec![attribute("service.name", "otelcol")],
            non_identifying_attributes: vec![attribute("host.name", "h1")],
        })),
        health: Some(Box::new(ComponentHealth {
            healthy: false,
            last_error: "exporter down".into(),
            component_health_map: [
                ("receiver:otlp".into(), component(true)),
                ("exporter:otlp".into(), component(false)),
            ]
            .into(),
            ..Default::default()
        })),
        effective_config: Some(Box::new(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(
                    String::new(),
                    AgentConfigFile {
                        body: "x".repeat(20_000).into_bytes().into(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        })),
        ..record(uid, 3)
    };
    let mut copy = whole.clone();
    copy.copied_description = copy.description.take().unwrap().encode_to_vec();
    let tree = std::mem::take(&mut copy.health.as_mut().unwrap().component_health_map);
    copy.copied_components = ComponentHealth {
        component_health_map: tree,
        ..Default::default()
    }
    .encode_to_vec();
    (whole, copy)
}

fn attribute(key: &str, value: &str) -> flotilla_proto::opamp::KeyValue {
    use flotilla_proto::opamp::{AnyValue, KeyValue, any_value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

#[tokio::test]
async fn a_record_in_an_owners_copy_form_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let uid = Uuid::now_v7();
    let fence = acquire_for(&store, &[uid]).await[&shard_of(uid.as_bytes())];
    let (whole, copy) = collector(uid);
    store
        .save_agent(fence, &copy, Deadline::Keep, None)
        .await
        .unwrap();
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(read.description, whole.description);
    assert_eq!(read.health, whole.health);
    assert_eq!(read.effective_config, whole.effective_config);
    assert!(read.copied_description.is_empty() && read.copied_components.is_empty());
    let mut visited = Vec::new();
    store
        .visit_agents(&|_| true, &mut |r| {
            visited.push((r.description.clone(), r.health.clone()))
        })
        .await
        .unwrap();
    assert_eq!(visited, vec![(whole.description, whole.health)]);
}

/// Parts kept apart (fields d, k) only while every live coordinator reads them: a version
/// before names no layout in the membership and reads field r alone. A save that keeps a part
/// leaves it as it is; where r has a part of its own (written whole by a version before), the
/// reader takes r's.
#[tokio::test]
async fn description_and_health_are_kept_apart_once_every_member_reads_them() {
    use flotilla_common::store::KeptParts;
    use flotilla_proto::opamp::AgentDescription;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let mut raw = raw_connection(&redis).await;
    let uid = Uuid::now_v7();
    let shard = shard_of(uid.as_bytes());
    let fence = acquire_for(&store, &[uid]).await[&shard];
    let key = format!("opamp:t:{{s{shard:04}}}:a:{uid}");
    let (whole, copy) = collector(uid);
    let ttl = Duration::from_secs(30);
    let none = KeptParts::default();
    let both = KeptParts {
        description: true,
        health: true,
    };
    let fields = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        let key = key.clone();
        async move {
            let (r, d, k): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(&key)
                .arg(&["r", "d", "k"][..])
                .query_async(&mut raw)
                .await
                .unwrap();
            (AgentRecord::decode(r.as_slice()).unwrap(), d, k)
        }
    };
    let save = |rec: AgentRecord, kept| {
        let store = store.clone();
        async move {
            store
                .save_agent_keeping(fence, &rec, Deadline::Keep, None, kept)
                .await
                .unwrap()
        }
    };

    assert!(!save(copy.clone(), none).await, "no membership yet: whole");
    let (r, d, k) = fields(&mut raw).await;
    assert_eq!(
        (r.description, r.health),
        (whole.description.clone(), whole.health.clone())
    );
    assert_eq!((d, k), (None, None));

    // A member of a version before beats without naming a layout.
    let _: () = redis::cmd("ZADD")
        .arg("opamp:t:coords")
        .arg(i64::MAX / 2)
        .arg("old")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        store.heartbeat("new", ttl).await.unwrap(),
        vec!["new", "old"]
    );
    assert!(
        !save(copy.clone(), none).await,
        "a member reads r alone: whole"
    );

    let _: () = redis::cmd("ZREM")
        .arg("opamp:t:coords")
        .arg("old")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(store.heartbeat("new", ttl).await.unwrap(), vec!["new"]);
    assert!(
        save(copy.clone(), none).await,
        "every member reads parts apart"
    );
    let (r, d, k) = fields(&mut raw).await;
    assert_eq!((r.description, r.health), (None, None), "r has neither");
    assert!(d.is_some() && k.is_some());
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(read.description, whole.description);
    assert_eq!(read.health, whole.health);
    assert_eq!(read.effective_config, whole.effective_config);
    let mut visited = Vec::new();
    store
        .visit_agents(&|s| s == shard, &mut |r| {
            visited.push((r.description.clone(), r.health.clone()))
        })
        .await
        .unwrap();
    assert_eq!(
        visited,
        vec![(whole.description.clone(), whole.health.clone())]
    );

    // A save that keeps both writes neither: a marker put in d stays.
    let other = AgentDescription {
        identifying_attributes: vec![attribute("service.name", "marker")],
        ..Default::default()
    };
    let marker = AgentRecord {
        description: Some(Box::new(other.clone())),
        ..Default::default()
    }
    .encode_to_vec();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("d")
        .arg(&marker)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        save(
            AgentRecord {
                sequence_num: 4,
                ..copy.clone()
            },
            both
        )
        .await
    );
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(read.sequence_num, 4);
    assert_eq!(
        read.description.as_deref(),
        Some(&other),
        "kept: not written"
    );
    assert_eq!(read.health, whole.health);
    // Not kept: written again.
    assert!(
        save(
            copy.clone(),
            KeptParts {
                health: true,
                ..none
            }
        )
        .await
    );
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(read.description, whole.description);

    // A version before writes r whole (a new description) and leaves d and k: r's is read.
    let mut older = whole.clone();
    older.effective_config = None;
    older.description = Some(Box::new(other.clone()));
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("r")
        .arg(older.encode_to_vec())
        .query_async(&mut raw)
        .await
        .unwrap();
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(read.description.as_deref(), Some(&other));
    assert_eq!(read.health, whole.health);

    // It joins again: this version writes whole, and the parts apart go.
    let _: () = redis::cmd("ZADD")
        .arg("opamp:t:coords")
        .arg(i64::MAX / 2)
        .arg("old")
        .query_async(&mut raw)
        .await
        .unwrap();
    store.heartbeat("new", ttl).await.unwrap();
    assert!(!save(copy.clone(), both).await);
    let (r, d, k) = fields(&mut raw).await;
    assert_eq!(
        (r.description, r.health),
        (whole.description.clone(), whole.health.clone())
    );
    assert_eq!((d, k), (None, None));

    // The layouts named follow the membership.
    store.leave("new").await.unwrap();
    let layouts: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg("opamp:t:formats")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(layouts.is_empty(), "{layouts:?}");
}

#[tokio::test]
async fn membership_visits_configs_and_a_restart_of_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap();
    let ttl = Duration::from_millis(500);
    assert_eq!(store.heartbeat("b", ttl).await.unwrap(), vec!["b"]);
    assert_eq!(store.heartbeat("a", ttl).await.unwrap(), vec!["a", "b"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.heartbeat("a", ttl).await.unwrap(),
        vec!["a"],
        "b stopped beating"
    );
    store.leave("a").await.unwrap();

    let uids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let mut fences: BTreeMap<u16, Fence> = BTreeMap::new();
    for uid in &uids {
        let shard = shard_of(uid.as_bytes());
        if let std::collections::btree_map::Entry::Vacant(e) = fences.entry(shard) {
            let f = store
                .acquire(shard, "a", Duration::from_secs(30))
                .await
                .unwrap();
            e.insert(f.expect("free shard"));
        }
        store
            .save_agent(fences[&shard], &record(*uid, 7), Deadline::Keep, None)
            .await
            .unwrap();
    }
    let draft = StoredConfig {
        name: "base".into(),
        version: 0,
        selector: Default::default(),
        files: BTreeMap::new(),
        hash: "ab".into(),
        packages: BTreeMap::new(),
        settings: None,
        created_unix_ms: 1,
        created_by: "test".into(),
        comment: String::new(),
    };
    assert_eq!(
        store
            .put_config(draft.clone(), true, &audit_of)
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        store
            .put_config(draft.clone(), true, &audit_of)
            .await
            .unwrap()
            .version,
        2
    );
    // A staged version is kept but not active until activated.
    assert_eq!(
        store
            .put_config(draft, false, &audit_of)
            .await
            .unwrap()
            .version,
        3
    );

    // Redis restarts (with its append-only file): the same connection carries on.
    redis.restart();
    let mut seen = Vec::new();
    let mut visit = |r: &AgentRecord| seen.push(Uuid::from_slice(&r.instance_uid).unwrap());
    let mut tries = 0;
    while let Err(e) = store.visit_agents(&|_| true, &mut visit).await {
        tries += 1;
        assert!(tries < 50, "Redis did not come back: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.sort();
    let mut expected = uids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let configs = store.list_configs().await.unwrap();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].version, 2);
    let history = store.config_versions("base").await.unwrap();
    assert_eq!(
        history.iter().map(|c| c.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        store
            .activate_config("base", 3)
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    assert_eq!(store.list_configs().await.unwrap()[0].version, 3);
    assert!(store.activate_config("base", 9).await.unwrap().is_none());
    // Deactivated: no version active, the history kept, the audit entry written with it.
    let audit = flotilla_common::store::AuditEntry {
        id: String::new(),
        at_unix_ms: flotilla_common::telemetry::now_unix_ms(),
        caller: "t".into(),
        action: "config.delete".into(),
        object: "config/base".into(),
        before: None,
        after: None,
    };
    assert!(store.deactivate_config("base", Some(&audit)).await.unwrap());
    assert!(store.list_configs().await.unwrap().is_empty());
    assert!(!store.deactivate_config("base", None).await.unwrap());
    assert_eq!(store.config_versions("base").await.unwrap().len(), 3);
    let q = flotilla_common::store::AuditQuery {
        object: Some("config/base".into()),
        limit: 10,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let page = store.query_audit(&q).await.unwrap();
    assert!(page.entries.iter().any(|e| e.action == "config.delete"));
    assert_eq!(
        store
            .activate_config("base", 3)
            .await
            .unwrap()
            .unwrap()
            .version,
        3,
        "and it can be made active again"
    );
    let only_first = shard_of(uids[0].as_bytes());
    let mut n = 0;
    store
        .visit_agents(&|s| s == only_first, &mut |_| n += 1)
        .await
        .unwrap();
    let expected_n = uids
        .iter()
        .filter(|u| shard_of(u.as_bytes()) == only_first)
        .count();
    assert_eq!(n, expected_n);
}

#[tokio::test]
async fn documents_compare_and_set_and_the_audit_log_is_queried_by_time_and_object() {
    use flotilla_common::store::{AuditEntry, AuditQuery};
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let store = RedisStore::connect(&redis.url(), "t", &Default::default())
        .await
        .unwrap()
        .with_audit_retention(Duration::from_secs(3600));
    let entry = |at: u64, object: &str| AuditEntry {
        id: String::new(),
        at_unix_ms: at,
        caller: "alice".into(),
        action: "config.put".into(),
        object: object.into(),
        before: None,
        after: Some(serde_json::json!({"v": at})),
    };
    assert!(
        store
            .put_doc("rollouts", "r1", 0, "{\"a\":1}", None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_doc(
                "rollouts",
                "r1",
                0,
                "{\"a\":2}",
                Some(&entry(1, "rollout/r1"))
            )
            .await
            .unwrap(),
        "stale"
    );
    assert!(
        store
            .put_doc("rollouts", "r1", 1, "{\"a\":3}", None)
            .await
            .unwrap()
    );
    let doc = store.get_doc("rollouts", "r1").await.unwrap().unwrap();
    assert_eq!((doc.revision, doc.json.as_str()), (2, "{\"a\":3}"));
    assert_eq!(store.list_docs("rollouts").await.unwrap(), vec![doc]);
    assert!(store.list_docs("other").await.unwrap().is_empty());

    let now = flotilla_common::telemetry::now_unix_ms();
    for (i, obj) in ["config/a", "config/b", "agent/x", "config/a"]
        .iter()
        .enumerate()
    {
        store
            .append_audit(entry(now + i as u64, obj))
            .await
            .unwrap();
    }
    let q = |object: Option<&str>, since: Option<u64>| AuditQuery {
        object: object.map(str::to_owned),
        since_unix_ms: since,
        until_unix_ms: None,
        limit: 10,
        max_bytes: 0,
    };
    let got = store
        .query_audit(&q(Some("config/a"), None))
        .await
        .unwrap()
        .entries;
    assert_eq!(
        got.iter().map(|e| e.at_unix_ms).collect::<Vec<_>>(),
        [now + 3, now]
    );
    assert_eq!(
        store
            .query_audit(&q(Some("config"), None))
            .await
            .unwrap()
            .entries
            .len(),
        3
    );
    assert_eq!(
        store
            .query_audit(&q(None, Some(now + 2)))
            .await
            .unwrap()
            .entries
            .len(),
        2
    );
    assert!(
        store
            .query_audit(&q(Some("conf"), None))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
}

/// The error of a connect that must fail.
async fn refused(url: &str) -> String {
    match RedisStore::connect(url, "t", &Default::default()).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn redis_cluster_and_unreachable_sentinels_are_refused_with_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisServer::start_with(dir.path(), &["--cluster-enabled".into(), "yes".into()]);
    let err = refused(&cluster.url()).await;
    assert!(
        err.contains("is a Redis Cluster") && err.contains("redis+sentinel://"),
        "{err}"
    );
    let err = refused("redis+cluster://127.0.0.1:1/").await;
    assert!(err.contains("is a Redis Cluster"), "{err}");

    // Nothing listens as a Sentinel here; and the URL's form is checked first.
    let port = flotilla_testkit::free_port();
    let err = refused(&format!("redis+sentinel://:pw@127.0.0.1:{port}/main")).await;
    assert!(
        err.contains("cannot reach the Redis primary \"main\" through the Sentinels")
            && !err.contains("pw"),
        "{err}"
    );
    let err = refused("redis+sentinel://127.0.0.1:26379").await;
    assert!(err.contains("ends with /<master-name>"), "{err}");
    let tls = flotilla_common::config::RedisTls {
        ca: Some("ca.pem".into()),
        client: None,
    };
    let err = RedisStore::connect("redis+sentinel://127.0.0.1:26379/main", "t", &tls)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.contains("not supported with Sentinel"), "{err}");
}
